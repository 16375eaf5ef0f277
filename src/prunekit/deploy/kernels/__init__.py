"""Native CPU kernels, built on first use with ``torch.utils.cpp_extension`` (cached afterwards).

If the build fails (no C++ compiler, headers missing), :func:`load` returns None and warns once;
callers then keep dense layers.
"""

from __future__ import annotations

import os
import warnings

__all__ = ["load"]

_STATE: dict = {}


def _flags() -> list[str]:
    """-O3 plus AVX2/FMA where the CPU has them.

    Not ``-march=native``: measured on this project's AMD EPYC (Zen 3) machines, GCC 12's znver3
    tuning made the token-tile loop 10x slower (3 vs 35-43 GFLOP/s) than ``-mavx2 -mfma``.
    """
    import torch

    flags = ["-O3", "-fopenmp"]  # ATen's parallel_for is inline OpenMP: without -fopenmp it runs serially
    capability = getattr(torch.backends.cpu, "get_cpu_capability", lambda: "")()
    if capability in ("AVX2", "AVX512"):
        flags += ["-mavx2", "-mfma"]
    return flags


def load():
    """The compiled ``prunekit_sparse`` module, or None when it cannot be built here."""
    if "module" in _STATE:
        return _STATE["module"]
    module = None
    try:
        from torch.utils.cpp_extension import load as build

        src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sparse_linear.cpp")
        module = build(name="prunekit_sparse", sources=[src], extra_cflags=_flags(), extra_ldflags=["-fopenmp"],
                       verbose=False)
    except Exception as e:  # compiler missing, headers missing, ...
        warnings.warn(f"prunekit's sparse CPU kernels could not be built ({type(e).__name__}: {e}); "
                      "sparse layers will run dense", stacklevel=2)
    _STATE["module"] = module
    return module
