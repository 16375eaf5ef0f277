"""Native CPU kernels: built when prunekit installs (setup.py), else on first use with
``torch.utils.cpp_extension`` (cached afterwards).

A prebuilt library is used only when the key written beside it at install time (a hash of the
sources, flags, torch and Python) equals the key :func:`load` computes here and now; otherwise, for
example after the sources were edited in a checkout, torch was upgraded, or the environment was
copied to a CPU without AVX2, the kernels are built on first use as before. If that build fails (no C++ compiler, headers missing), :func:`load` returns None and warns once;
callers then keep dense layers.

The forwards are also registered as PyTorch operators, ``torch.ops.prunekit_<isa>.linear`` /
``.linear_int8`` / ``.conv2d`` (C++ ``TORCH_LIBRARY`` plus shape-only implementations here), so
``torch.compile`` and ``torch.export`` trace through the kernel layers; a process that loads an
exported program calls :func:`load` first, which registers them.

The build targets this CPU: the AVX-512 loop where PyTorch reports AVX512, else the portable one
(AVX2/FMA flags where available). ``PRUNEKIT_KERNELS=portable`` forces the portable build, e.g. to
compare the two or to work around a compiler that mishandles AVX-512.
"""

from __future__ import annotations

import hashlib
import os
import warnings

__all__ = ["load"]

_STATE: dict = {}


def _isa() -> str:
    """``"avx512"`` or ``"portable"``: which loop to build for this CPU (see the module docstring)."""
    import torch

    forced = os.environ.get("PRUNEKIT_KERNELS", "")
    if forced not in ("", "portable"):
        raise ValueError(f"PRUNEKIT_KERNELS={forced!r}: use 'portable' or leave it unset (the CPU decides)")
    if forced:
        return forced
    capability = getattr(torch.backends.cpu, "get_cpu_capability", lambda: "")()
    return "avx512" if capability == "AVX512" else "portable"


def _flags(isa: str) -> list[str]:
    """-O3 plus AVX2/FMA where the CPU has them, and AVX-512F for the AVX-512 loop.

    Not ``-march=native``: measured on this project's AMD EPYC (Zen 3) machines, GCC 12's znver3
    tuning made the token-tile loop 10x slower (3 vs 35-43 GFLOP/s) than ``-mavx2 -mfma``.
    """
    import torch

    flags = ["-O3", "-fopenmp"]  # ATen's parallel_for is inline OpenMP: without -fopenmp it runs serially
    capability = getattr(torch.backends.cpu, "get_cpu_capability", lambda: "")()
    if capability in ("AVX2", "AVX512"):
        flags += ["-mavx2", "-mfma"]
    if isa == "avx512":
        flags.append("-mavx512f")
    return flags


def build_flags(isa: str) -> list[str]:
    """Every compiler flag of a build of ``isa``: the instruction sets and the operators' namespace."""
    return _flags(isa) + [f"-DPRUNEKIT_OPS={_namespace(isa)}"]


def prebuilt_name(isa: str) -> str:
    """The module name of the library setup.py builds for ``isa`` (beside this file)."""
    return f"_prebuilt_{isa}"


def _prebuilt(isa: str, key: str):
    """The library built at install time for ``isa``, or None when there is none or its key is not ``key``."""
    import importlib

    here = os.path.dirname(os.path.abspath(__file__))
    try:
        with open(os.path.join(here, prebuilt_name(isa) + ".key")) as f:
            if f.read().strip() != key:
                return None
    except OSError:
        return None
    try:
        return importlib.import_module(f"{__name__}.{prebuilt_name(isa)}")
    except ImportError:
        return None


def _build_key(here: str, flags: list[str]) -> str:
    """A hash of what the build depends on: every source and header, the flags, torch and Python.

    The build folder is named by it, so checkouts with the same sources share one build and
    checkouts with different ones never overwrite each other's (torch's own cache key includes the
    sources' absolute paths, and one folder per name made two checkouts rebuild in turn).
    """
    import sys

    import torch

    digest = hashlib.sha1()
    for name in sorted(os.listdir(here)):
        if name.endswith((".cpp", ".h")):
            digest.update(name.encode())
            with open(os.path.join(here, name), "rb") as f:
                digest.update(f.read())
    digest.update(" ".join(flags + [torch.__version__, sys.version]).encode())
    return digest.hexdigest()[:12]


def _announce(name: str) -> None:
    """Say so on stderr when this call will compile (nothing built yet for this name)."""
    import sys

    from torch.utils.cpp_extension import get_default_build_root

    if not os.path.exists(os.path.join(get_default_build_root(), name, f"{name}.so")):
        print(f"prunekit: compiling the sparse CPU kernels for this machine ({name}; first use only, about a "
              "minute, cached afterwards)", file=sys.stderr, flush=True)


def _namespace(isa: str) -> str:
    """The ``torch.ops`` namespace of a build's operators: one per build, since both can be loaded at once."""
    return f"prunekit_{isa}"


def _register_fakes(namespace: str) -> None:
    """Shape-only implementations of the operators, for tracing (torch.compile, torch.export): the
    outputs are float32 with the input's leading dimensions and the weight's output features."""
    import torch

    def linear(chunks, indptr, indices, values, x, bias):
        return x.new_empty((*x.shape[:-1], indptr.shape[0] - 1), dtype=torch.float32)

    def linear_int8(chunks, indptr, groups, packed, row_sums, scale, x, bias):
        return x.new_empty((*x.shape[:-1], indptr.shape[0] - 1), dtype=torch.float32)

    def conv2d(indptr, indices, values, x, bias, params):  # params[8:10]: the output's height and width
        return x.new_empty((x.shape[0], indptr.shape[0] - 1, params[8], params[9]), dtype=torch.float32)

    for name, fake in (("linear", linear), ("linear_int8", linear_int8), ("conv2d", conv2d)):
        torch.library.register_fake(f"{namespace}::{name}", fake)


def load(isa: str | None = None):
    """The kernel library for ``isa``: the one built at install time where its key matches, else the
    first-use build ``prunekit_sparse_<isa>_<hash>``; None when neither can be had here.

    Args:
        isa: ``"avx512"`` or ``"portable"``; None picks the CPU's (see the module docstring). Layers
            record which build they use, so that copies of them find it again.
    """
    if isa not in (None, "avx512", "portable"):
        raise ValueError(f"isa={isa!r}: use 'avx512', 'portable' or None (the CPU decides)")
    isa = isa or _isa()
    if isa in _STATE:
        return _STATE[isa]
    module = None
    try:
        import torch

        here = os.path.dirname(os.path.abspath(__file__))
        sources = [os.path.join(here, f) for f in ("sparse_linear.cpp", "sparse_int8.cpp")]
        flags = build_flags(isa)
        key = _build_key(here, flags)
        module = _prebuilt(isa, key)
        if module is None:
            from torch.utils.cpp_extension import load as build

            name = f"prunekit_sparse_{isa}_{key}"
            _announce(name)
            module = build(name=name, sources=sources, extra_include_paths=[here], extra_cflags=flags,
                           extra_ldflags=["-fopenmp"], verbose=False)
        _register_fakes(_namespace(isa))
        module.ops = getattr(torch.ops, _namespace(isa))
    except Exception as e:  # compiler missing, headers missing, ...
        warnings.warn(f"prunekit's sparse CPU kernels could not be built ({type(e).__name__}: {e}); "
                      "sparse layers will run dense", stacklevel=2)
        module = None
    _STATE[isa] = module
    return module
