"""``strip_pruning``: the pruned model back as plain Keras layers, zeros in their weights."""

from __future__ import annotations

import warnings

import keras

from prunekit._pattern_names import parse_pattern
from prunekit.keras._layers import prunable_weights
from prunekit.keras.wrapper import PruneLowMagnitude, _check_keras3, _clone, _copy, _is_clonable, _leaves, group_key

__all__ = ["strip_pruning"]


def _final_sparsity(w: PruneLowMagnitude) -> float:
    kind, *args = parse_pattern(w.pattern)
    if kind == "nm":
        return 1.0 - args[0] / args[1]
    s = w.pruning_schedule
    return float(getattr(s, "final_sparsity", getattr(s, "sparsity", 0.0)))


def _warn_short(found: list) -> None:
    """Say so when a model is stripped before its schedule reached its final sparsity (a global group
    is judged as a whole: its layers end at different sparsities by design)."""
    groups: dict = {}
    for w in found:
        groups.setdefault(group_key(w), []).append(w)
    short = []
    for members in groups.values():
        masks = [keras.ops.convert_to_numpy(m) for w in members for m in w.masks]
        size = sum(m.size for m in masks)
        reached = 1.0 - sum(float(m.sum()) for m in masks) / size if size else 0.0
        target = _final_sparsity(members[0])
        if size and reached < target - 0.01:
            names = "+".join(f"'{w.layer.name}'" for w in members[:3]) + ("+..." if len(members) > 3 else "")
            short.append(f"{names} {reached:.0%} of {target:.0%}")
    if short:
        step = max(int(keras.ops.convert_to_numpy(w.pruning_step)) for w in found)
        warnings.warn(
            f"strip_pruning: the schedule has not reached its final sparsity at step {step}: {', '.join(short[:4])}"
            f"{' ...' if len(short) > 4 else ''}. Train longer (or end the schedule earlier) to prune it fully",
            stacklevel=3)


def strip_pruning(model):
    """A copy of a pruned Sequential/Functional model without the wrappers: each wrapped layer comes
    back as itself, its weights multiplied by their masks. Changes nothing it is given; warns when the
    schedule had not reached its final sparsity.

    Raises:
        ValueError: the model has no pruning wrappers, or its masks were never computed (it was
            trained without ``UpdatePruningStep``).

    Example:
        >>> small = prunekit.keras.strip_pruning(pruned); small.save("small.keras")
    """
    from prunekit.keras.callbacks import wrappers

    _check_keras3(model, "model")
    if not isinstance(model, keras.Model) or not _is_clonable(model):
        raise TypeError(
            "strip_pruning copies Sequential and Functional models; a subclassed model keeps its wrappers "
            "(save it as it is: its weights hold the zeros)"
        )
    found = wrappers(model)
    if not found:
        raise ValueError("model was never pruned: it has no pruning wrappers (prune_low_magnitude makes them)")
    reachable = {id(layer) for layer in _leaves(model)}
    hidden = [w.name for w in found if id(w) not in reachable]
    if hidden:
        raise ValueError(f"strip_pruning cannot reach the wrappers {hidden[:4]} inside custom layers; strip them "
                         "where those layers are built")
    idle = [w.name for w in found if int(keras.ops.convert_to_numpy(w.pruning_step)) < 0]
    if idle:
        raise ValueError(
            f"model was never pruned: the masks of {idle[:4]} were never computed. Train with "
            "callbacks=[prunekit.keras.UpdatePruningStep()] (or call prunekit.keras.update_masks) first"
        )
    _warn_short(found)
    made: dict = {}
    clone = _clone(model, lambda layer: _copy(layer.layer if isinstance(layer, PruneLowMagnitude) else layer), made)
    for w in found:
        for var, mask, target in zip(w.pruned, w.masks, prunable_weights(made[id(w)])):
            target.assign(keras.ops.convert_to_numpy(var) * keras.ops.convert_to_numpy(mask))
    return clone
