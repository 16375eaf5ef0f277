"""prunekit: prune PyTorch and Keras 3 models and prove the result (smaller, accurate, measurably faster).

Verbs change the model they are given, in place, and return what they measured: ``prune``,
``finalize``, ``apply_masks``, ``recipes.oneshot``, ``structured.prune_channels``, ``load`` (into a
model). Functions named ``to_*`` (``deploy.to_sparse_runtime``) return a new model and leave yours as
it was; ``compare``, ``benchmark``, ``advise`` and ``sparsity_report`` change nothing. How inputs are
passed (one tensor, a tuple, a dict; calibration batches with a target) is one rule, in
:mod:`prunekit.inputs`. Keras 3 models: :mod:`prunekit.keras` (works without PyTorch installed).

The PyTorch API loads on first use of any of its names, so ``import prunekit.keras`` and
``import prunekit.schedules`` never import torch.

Example:
    >>> import prunekit as pk
    >>> report = pk.prune(model, sparsity=0.9)      # global magnitude, reversible masks
    >>> pk.finalize(model); info = pk.save(model, "model.pk.safetensors")
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

__version__ = "0.1.0"

_SUBMODULES = ("criteria", "deploy", "inputs", "patterns", "perplexity", "recipes", "schedules", "structured")
# name -> the module that defines it (all of these need PyTorch)
_NAMES = {
    "prune": "pruning",
    "sparsity_report": "report",
    "SparsityReport": "report",
    "SparsityRow": "report",
    "masks": "masks",
    "apply_masks": "masks",
    "finalize": "masks",
    "from_torch_prune": "masks",
    "PruningMask": "masks",
    "save": "deploy.storage",
    "load": "deploy.storage",
    "SaveInfo": "deploy.storage",
    "benchmark": "bench",
    "BenchmarkResult": "bench",
    "compare": "bench",
    "Comparison": "bench",
    "Criterion": "criteria",
    "ScoreContext": "criteria",
    "Pattern": "patterns",
    "Pruner": "pruner",
    "count_macs_params": "structured.macs",
    "advise": "advise",
    "Advice": "advise",
}
# Names that are both a function and the submodule defining it: the function wins, as it always has.
_FUNCTION_OVER_MODULE = frozenset(n for n, m in _NAMES.items() if n == m)

__all__ = [*_NAMES, *_SUBMODULES, "__version__"]


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name not in _NAMES:
        if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
            return importlib.import_module(f"{__name__}.{name}")  # any other submodule: prunekit.bench, .keras
        raise AttributeError(f"module 'prunekit' has no attribute {name!r}")
    try:
        module = importlib.import_module(f"{__name__}.{_NAMES[name]}")
    except ModuleNotFoundError as e:
        if e.name != "torch":
            raise
        raise ImportError(
            f"prunekit.{name} needs PyTorch, which is not installed: pip install torch. "
            "prunekit.keras and prunekit.schedules work without it."
        ) from e
    value = getattr(module, name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    def __setattr__(self, name, value):
        # Importing prunekit.masks binds the submodule onto the package; keep pk.masks the function.
        if name in _FUNCTION_OVER_MODULE and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
