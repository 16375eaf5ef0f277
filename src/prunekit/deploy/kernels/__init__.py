"""Native CPU kernels, built on first use with ``torch.utils.cpp_extension`` (cached afterwards).

If the build fails (no C++ compiler, headers missing), :func:`load` returns None and warns once;
callers then keep dense layers.

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


def load(isa: str | None = None):
    """The compiled ``prunekit_sparse_<isa>_<hash>`` module, or None when it cannot be built here.

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
        from torch.utils.cpp_extension import load as build

        here = os.path.dirname(os.path.abspath(__file__))
        sources = [os.path.join(here, f) for f in ("sparse_linear.cpp", "sparse_int8.cpp")]
        flags = _flags(isa)
        name = f"prunekit_sparse_{isa}_{_build_key(here, flags)}"
        _announce(name)
        module = build(name=name, sources=sources, extra_include_paths=[here], extra_cflags=flags,
                       extra_ldflags=["-fopenmp"], verbose=False)
    except Exception as e:  # compiler missing, headers missing, ...
        warnings.warn(f"prunekit's sparse CPU kernels could not be built ({type(e).__name__}: {e}); "
                      "sparse layers will run dense", stacklevel=2)
    _STATE[isa] = module
    return module
