"""Builds prunekit's sparse CPU kernels when the package installs (metadata is in pyproject.toml).

Two libraries, both in every x86-64 install: the AVX-512 loop and the portable loop (with AVX2/FMA
where the build machine has them); ``prunekit.deploy.kernels.load()`` picks one from what the CPU
reports at run time. Each library gets a ``.key`` file beside it: a hash of the sources, flags,
torch and Python it was built with. ``load()`` uses a prebuilt library only when that key equals
the one it computes, so edited sources, another torch or another CPU family fall back to the
first-use build instead of loading a mismatched binary.

The build needs the torch it will run with, so it happens where torch is importable at build time:
``pip install --no-build-isolation prunekit`` (the Makefile does this). In an isolated build, or
without a C++ compiler, the install goes on without them and the kernels compile on first use.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import sys

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))
KERNELS = os.path.join(HERE, "src", "prunekit", "deploy", "kernels")


def _kernel_helpers():
    """prunekit/deploy/kernels/__init__.py as a standalone module: the same flags and key as load()."""
    spec = importlib.util.spec_from_file_location("_prunekit_kernel_build", os.path.join(KERNELS, "__init__.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _extensions():
    if os.environ.get("PRUNEKIT_NO_PREBUILD") or platform.machine().lower() not in ("x86_64", "amd64"):
        return [], {}
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError:  # an isolated build without torch: the kernels build on first use
        return [], {}
    helpers = _kernel_helpers()
    sources = [os.path.relpath(os.path.join(KERNELS, f), HERE) for f in ("sparse_linear.cpp", "sparse_int8.cpp")]
    extensions, keys = [], {}
    for isa in ("avx512", "portable"):
        flags = helpers.build_flags(isa)
        name = f"prunekit.deploy.kernels.{helpers.prebuilt_name(isa)}"
        extensions.append(CppExtension(name, sources, include_dirs=[KERNELS], extra_compile_args=flags,
                                       extra_link_args=["-fopenmp"]))
        keys[name] = helpers._build_key(KERNELS, flags)

    class Build(BuildExtension):
        """Build each kernel library, write its key beside it; a failed build warns and the install goes on."""

        def build_extension(self, ext):
            try:
                super().build_extension(ext)
            except Exception as e:  # no compiler, no headers: first-use build (or dense layers) later
                print(f"prunekit: the sparse CPU kernels were not built ahead of time ({type(e).__name__}: {e}); "
                      "they will build on first use", file=sys.stderr)
                return
            package, stem = ext.name.rsplit(".", 1)
            folders = {os.path.dirname(self.get_ext_fullpath(ext.name))}  # the build folder (wheels)
            if self.inplace or getattr(self, "editable_mode", False):  # and the source tree the library is copied to
                folders.add(os.path.abspath(self.get_finalized_command("build_py").get_package_dir(package)))
            for folder in folders:
                os.makedirs(folder, exist_ok=True)
                with open(os.path.join(folder, stem + ".key"), "w") as f:
                    f.write(keys[ext.name])

    return extensions, {"build_ext": Build.with_options(use_ninja=True)}


extensions, commands = _extensions()
setup(ext_modules=extensions, cmdclass=commands)
