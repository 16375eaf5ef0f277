"""Pruning for Keras 3 models (TensorFlow or PyTorch backend), TF-MOT's workflow kept.

Migrating from ``tensorflow_model_optimization.sparsity.keras`` is a change of import: the same
``prune_low_magnitude``, ``ConstantSparsity`` / ``PolynomialDecay``, ``UpdatePruningStep``,
``PruningSummaries``, ``strip_pruning`` and ``PrunableLayer``, on Keras 3. Added: ``pattern=`` (prunekit's
``"2:4"`` / ``"block:RxC"`` names), ``criterion="random"``, ``scope="global"`` ranking across layers,
``include`` / ``exclude``, :func:`update_masks` for custom loops, :func:`sparsity_report`, and
:func:`to_tflite`. Works without PyTorch installed. The schedules are :mod:`prunekit.schedules`' own
(one implementation for both frameworks, TF-MOT's formulas step for step).

Example:
    >>> import keras, prunekit.keras as pk
    >>> pruned = pk.prune_low_magnitude(model, pk.PolynomialDecay(0.0, 0.8, begin_step=0, end_step=1000))
    >>> pruned.compile("adam", "sparse_categorical_crossentropy")
    >>> pruned.fit(x, y, epochs=3, callbacks=[pk.UpdatePruningStep()])
    >>> small = pk.strip_pruning(pruned)          # plain Keras layers, zeros in place
    >>> print(pk.sparsity_report(small))
"""

from __future__ import annotations

try:
    import keras as _keras
except ImportError:  # pragma: no cover - depends on the environment
    raise ImportError("prunekit.keras needs Keras 3: pip install 'keras>=3' (and a backend: tensorflow, torch or jax)") from None

if int(_keras.__version__.split(".")[0]) < 3:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"prunekit.keras needs Keras 3, found Keras {_keras.__version__}: pip install 'keras>=3'. "
        "Keras 2 / tf_keras models are TF-MOT's (tensorflow_model_optimization)"
    )

from prunekit.keras._layers import PrunableLayer, prunable_weights
from prunekit.keras.callbacks import PruningSummaries, UpdatePruningStep, sparsity_report, update_masks, wrappers
from prunekit.keras.export import to_tflite
from prunekit.keras.strip import strip_pruning
from prunekit.keras.wrapper import PruneLowMagnitude, prune_low_magnitude
from prunekit.schedules import Constant, PolynomialDecay, Schedule


def ConstantSparsity(target_sparsity: float, begin_step: int, end_step: int = -1, frequency: int = 100) -> Constant:
    """TF-MOT's ``ConstantSparsity`` (its argument names): :class:`prunekit.schedules.Constant`.

    Example:
        >>> ConstantSparsity(0.8, begin_step=0, frequency=100).sparsity_at(500)
        0.8
    """
    return Constant(target_sparsity, begin_step=begin_step, end_step=end_step, frequency=frequency)


__all__ = [
    "prune_low_magnitude",
    "strip_pruning",
    "update_masks",
    "UpdatePruningStep",
    "PruningSummaries",
    "PrunableLayer",
    "PruneLowMagnitude",
    "ConstantSparsity",
    "PolynomialDecay",
    "Schedule",
    "sparsity_report",
    "prunable_weights",
    "wrappers",
    "to_tflite",
]
