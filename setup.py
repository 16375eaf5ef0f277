"""Builds prunekit's sparse CPU kernels when the package installs (metadata is in pyproject.toml).

Two libraries, both in every x86-64 install: the AVX-512 loop and the portable loop (with AVX2/FMA
where the build machine has them); ``prunekit.deploy.kernels.load()`` picks one from what the CPU
reports at run time. Each library's module name ends in its build key, a hash of the sources,
flags, torch and Python it was built with (the same key the first-use build computes), so ``load()``
can only import a library built from what it runs with: edited sources, another torch or another
CPU family fall back to the first-use build instead of loading a mismatched binary.

The build needs the torch it will run with, so it happens where torch is importable at build time:
``pip install --no-build-isolation prunekit`` (the Makefile does this). In an isolated build,
without a C++ compiler, or with CFLAGS/CXXFLAGS/CPPFLAGS set (flags the key cannot see), the
install goes on without them and the kernels compile on first use.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import platform
import sys

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))
KERNELS = os.path.join(HERE, "src", "prunekit", "deploy", "kernels")


def _say(message: str) -> None:
    print(f"prunekit: {message}; the sparse CPU kernels will build on first use", file=sys.stderr)


def _kernel_helpers():
    """prunekit/deploy/kernels/__init__.py as a standalone module: the same flags and key as load()."""
    spec = importlib.util.spec_from_file_location("_prunekit_kernel_build", os.path.join(KERNELS, "__init__.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _extensions():
    if os.environ.get("PRUNEKIT_NO_PREBUILD") or platform.machine().lower() not in ("x86_64", "amd64"):
        return [], {}
    custom = [v for v in ("CFLAGS", "CXXFLAGS", "CPPFLAGS") if os.environ.get(v, "").strip()]
    if custom:
        _say(f"not building ahead of time: {', '.join(custom)} set, flags the library's key would not record")
        return [], {}
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension

        helpers = _kernel_helpers()
        sources = [os.path.relpath(os.path.join(KERNELS, f), HERE) for f in ("sparse_linear.cpp", "sparse_int8.cpp")]
        headers = [os.path.relpath(h, HERE) for h in sorted(glob.glob(os.path.join(KERNELS, "*.h")))]
        extensions = []
        for isa in ("avx512", "portable"):
            flags = helpers._build_flags(isa)
            name = f"prunekit.deploy.kernels.{helpers._prebuilt_name(isa, helpers._build_key(KERNELS, flags))}"
            # optional: a failed build warns (setuptools then copies nothing into the source tree)
            extensions.append(CppExtension(name, sources, include_dirs=[KERNELS], depends=headers,
                                           extra_compile_args=flags, extra_link_args=["-fopenmp"], optional=True))
    except Exception as e:  # an isolated build without torch, a torch that does not import
        _say(f"not building ahead of time ({type(e).__name__}: {e})")
        return [], {}

    class Build(BuildExtension):
        """Build each kernel library; a failed build warns and the install goes on."""

        def build_extension(self, ext):
            stem = ext.name.rsplit(".", 1)[1].rsplit("_", 1)[0]  # _prebuilt_<isa>: older keys of it are stale
            for old in glob.glob(os.path.join(KERNELS, f"{stem}_*")):
                if not os.path.basename(old).startswith(ext.name.rsplit(".", 1)[1]):
                    os.remove(old)
            try:
                super().build_extension(ext)
            except Exception as e:  # no compiler, no headers: first-use build (or dense layers) later
                _say(f"{ext.name} was not built ahead of time ({type(e).__name__}: {e})")

    return extensions, {"build_ext": Build.with_options(use_ninja=True)}


extensions, commands = _extensions()
setup(ext_modules=extensions, cmdclass=commands)
