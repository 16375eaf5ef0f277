"""prunekit: prune PyTorch models and prove the result (smaller, accurate, measurably faster).

Example:
    >>> import prunekit as pk
    >>> report = pk.prune(model, sparsity=0.9)      # global magnitude, reversible masks
    >>> pk.finalize(model); info = pk.save(model, "model.pk.safetensors")
"""

from prunekit import criteria, deploy, patterns, recipes, schedules, structured
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
    "patterns",
    "schedules",
    "recipes",
    "deploy",
    "structured",
    "count_macs_params",
    "advise",
    "Advice",
    "__version__",
]
