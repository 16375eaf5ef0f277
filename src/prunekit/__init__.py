"""prunekit: prune PyTorch models and prove the result (smaller, accurate, measurably faster).

Verbs change the model they are given, in place, and return what they measured: ``prune``,
``finalize``, ``apply_masks``, ``recipes.oneshot``, ``structured.prune_channels``, ``load`` (into a
model). Functions named ``to_*`` (``deploy.to_sparse_runtime``) return a new model and leave yours as
it was; ``compare``, ``benchmark``, ``advise`` and ``sparsity_report`` change nothing. How inputs are
passed (one tensor, a tuple, a dict; calibration batches with a target) is one rule, in
:mod:`prunekit.inputs`.

Example:
    >>> import prunekit as pk
    >>> report = pk.prune(model, sparsity=0.9)      # global magnitude, reversible masks
    >>> pk.finalize(model); info = pk.save(model, "model.pk.safetensors")
"""

from prunekit import criteria, deploy, inputs, patterns, perplexity, recipes, schedules, structured
from prunekit.advise import Advice, advise
from prunekit.bench import BenchmarkResult, Comparison, benchmark, compare
from prunekit.criteria import Criterion, ScoreContext
from prunekit.deploy.storage import SaveInfo, load, save
from prunekit.masks import PruningMask, apply_masks, finalize, from_torch_prune, masks
from prunekit.patterns import Pattern
from prunekit.pruner import Pruner
from prunekit.pruning import prune
from prunekit.report import SparsityReport, SparsityRow, sparsity_report
from prunekit.structured.macs import count_macs_params

__version__ = "0.1.0"

__all__ = [
    "prune",
    "sparsity_report",
    "masks",
    "apply_masks",
    "finalize",
    "from_torch_prune",
    "save",
    "load",
    "benchmark",
    "BenchmarkResult",
    "compare",
    "Comparison",
    "Criterion",
    "ScoreContext",
    "Pattern",
    "PruningMask",
    "SparsityReport",
    "SparsityRow",
    "SaveInfo",
    "Pruner",
    "criteria",
    "inputs",
    "patterns",
    "perplexity",
    "schedules",
    "recipes",
    "deploy",
    "structured",
    "count_macs_params",
    "advise",
    "Advice",
    "__version__",
]
