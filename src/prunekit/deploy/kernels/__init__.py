"""Native CPU kernels: built when prunekit installs (setup.py), else on first use with
``torch.utils.cpp_extension`` (cached afterwards).

The libraries built at install time are named by their build key (a hash of the sources, flags,
torch and Python): :func:`load` imports one only when its name carries the key computed here and
now, so after the sources were edited in a checkout, torch was upgraded, or the environment was
copied to a CPU without AVX2, the kernels are built on first use as before. If that build fails (no
C++ compiler, headers missing), :func:`load` returns None and warns once; callers then keep dense
layers.

The forwards are also PyTorch operators, ``torch.ops.prunekit_<isa>.linear`` / ``.linear_int8`` /
``.conv2d`` (C++ ``TORCH_LIBRARY`` plus shape-only implementations here), so ``torch.compile`` and
``torch.export`` trace through the kernel layers. An exported program names the build it was
exported with: a process that loads it calls ``load(isa)`` for that build first, which registers
the operators (an ``avx512`` program needs a CPU with AVX-512).

The build targets this CPU: the AVX-512 loop where PyTorch reports AVX512, else the portable one
(AVX2/FMA flags where available). ``PRUNEKIT_KERNELS=portable`` forces the portable build, e.g. to
compare the two or to work around a compiler that mishandles AVX-512.
"""

from __future__ import annotations

import hashlib
import os
import warnings

__all__ = ["load", "cpu_has_avx512"]

_STATE: dict = {}


def cpu_has_avx512() -> bool:
    """Whether PyTorch reports AVX-512 for this CPU (the AVX-512 build needs it)."""
    import torch

    return getattr(torch.backends.cpu, "get_cpu_capability", lambda: "")() == "AVX512"


def _isa() -> str:
    """``"avx512"`` or ``"portable"``: which loop to build for this CPU (see the module docstring)."""
    forced = os.environ.get("PRUNEKIT_KERNELS", "")
    if forced not in ("", "portable"):
        raise ValueError(f"PRUNEKIT_KERNELS={forced!r}: use 'portable' or leave it unset (the CPU decides)")
    if forced:
        return forced
    return "avx512" if cpu_has_avx512() else "portable"


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


def _build_flags(isa: str) -> list[str]:
    """Every compiler flag of a build of ``isa``: the instruction sets and the operators' namespace."""
    return _flags(isa) + [f"-DPRUNEKIT_OPS={_namespace(isa)}"]


def _prebuilt_name(isa: str, key: str) -> str:
    """The module name of the library setup.py builds for ``isa`` with build key ``key`` (beside this file)."""
    return f"_prebuilt_{isa}_{key}"


def _prebuilt(isa: str, key: str):
    """The library built at install time for ``isa`` with this build ``key``, or None (none, or another key)."""
    import importlib
    import importlib.util

    name = f"{__name__}.{_prebuilt_name(isa, key)}"
    if importlib.util.find_spec(name) is None:
        return None
    return importlib.import_module(name)


def _registered(namespace: str) -> bool:
    """Whether some library in this process already registered the operators of ``namespace``."""
    import torch

    try:
        return bool(torch._C._dispatch_has_kernel_for_dispatch_key(f"{namespace}::linear", "CPU"))
    except RuntimeError:  # no such operator
        return False


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


def _build_dir(name: str) -> str:
    """Where the first-use build of ``name`` goes: ``$TORCH_EXTENSIONS_DIR`` (else torch's default root)
    ``/prunekit/<name>``. Passed to torch's build, so that the cache check below looks where it builds."""
    from torch.utils.cpp_extension import get_default_build_root

    path = os.path.join(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root(), "prunekit", name)
    os.makedirs(path, exist_ok=True)
    return path


def _announce(name: str) -> None:
    """Say so on stderr when this call will compile (nothing built yet for this name)."""
    import sys

    if not os.path.exists(os.path.join(_build_dir(name), f"{name}.so")):
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

    register = getattr(torch.library, "register_fake", None) or torch.library.impl_abstract  # torch < 2.4
    for name, fake in (("linear", linear), ("linear_int8", linear_int8), ("conv2d", conv2d)):
        register(f"{namespace}::{name}", fake)


def load(isa: str | None = None):
    """The kernel library for ``isa``: the one built at install time where its key matches, else the
    first-use build ``prunekit_sparse_<isa>_<hash>``; None (with one warning) when neither can be had.

    Loading registers the operators ``torch.ops.prunekit_<isa>.*`` (also on the returned module, as
    ``.ops``); call it before ``torch.export.load`` or ``torch._inductor.aoti_load_package`` of a
    program that uses them. Loaded once per process and build; later calls return the same module.

    Args:
        isa: ``"avx512"`` or ``"portable"``; None picks the CPU's (see the module docstring). Layers
            record which build they use, so that copies of them find it again.

    Raises:
        RuntimeError: ``isa="avx512"`` on a CPU without AVX-512.

    Example:
        >>> from prunekit.deploy.kernels import load
        >>> kernels = load()                   # before loading an exported runtime model
        >>> kernels.isa(), kernels.ops.name    # ('avx512', 'prunekit_avx512') on an AVX-512 CPU
    """
    if isa not in (None, "avx512", "portable"):
        raise ValueError(f"isa={isa!r}: use 'avx512', 'portable' or None (the CPU decides)")
    isa = isa or _isa()
    if isa in _STATE:
        return _STATE[isa]
    if isa == "avx512" and not cpu_has_avx512():
        raise RuntimeError("isa='avx512': this CPU has no AVX-512, so that build would stop the process with an "
                           "illegal instruction; use load() or load('portable')")
    module = None
    try:
        import torch

        here = os.path.dirname(os.path.abspath(__file__))
        sources = [os.path.join(here, f) for f in ("sparse_linear.cpp", "sparse_int8.cpp")]
        flags = _build_flags(isa)
        key = _build_key(here, flags)
        if _registered(_namespace(isa)):  # a second library for one namespace aborts the whole process
            raise RuntimeError(f"torch.ops.{_namespace(isa)} is already registered in this process by a library "
                               "prunekit did not load (torch.ops.load_library?); load that one or restart")
        module = _prebuilt(isa, key)
        if module is None:
            from torch.utils.cpp_extension import load as build

            name = f"prunekit_sparse_{isa}_{key}"
            _announce(name)
            module = build(name=name, sources=sources, extra_include_paths=[here], extra_cflags=flags,
                           extra_ldflags=["-fopenmp"], build_directory=_build_dir(name), verbose=False)
        _register_fakes(_namespace(isa))
        module.ops = getattr(torch.ops, _namespace(isa))
    except Exception as e:  # compiler missing, headers missing, ...
        warnings.warn(f"prunekit's sparse CPU kernels could not be loaded or built ({type(e).__name__}: {e}); "
                      "sparse layers will run dense", stacklevel=2)
        module = None
    _STATE[isa] = module
    return module
