"""Recipes: whole pruning procedures built on ``prune`` and the ``Pruner``.

* :func:`iterative_pruning` — prune on a geometric schedule, fine-tune between rounds.
* :func:`lottery_ticket` — iterative magnitude pruning with rewinding (Frankle & Carbin).
* :func:`oneshot` — SparseGPT / Wanda / magnitude from calibration data, block by block.
* :func:`oneshot_shards` — the same on a Hugging Face causal LM folder, one block in memory at a time.
* :class:`Recipe` — a YAML file describing schedule, criterion, pattern and targets.
* :func:`sgd_cosine` — the default fine-tuning loop (SGD + cosine learning rate) as a ``train_fn``.
"""

from prunekit.recipes.history import History
from prunekit.recipes.iterative import iterative_pruning
from prunekit.recipes.lottery import LotteryResult, lottery_ticket
from prunekit.recipes.oneshot import oneshot
from prunekit.recipes.owl import owl_sparsities
from prunekit.recipes.recipe import Recipe
from prunekit.recipes.recover import RecoveryResult, recover
from prunekit.recipes.shards import oneshot_shards
from prunekit.recipes.training import sgd_cosine

__all__ = ["iterative_pruning", "lottery_ticket", "oneshot", "oneshot_shards", "owl_sparsities", "recover", "RecoveryResult", "LotteryResult", "Recipe", "History", "sgd_cosine"]
