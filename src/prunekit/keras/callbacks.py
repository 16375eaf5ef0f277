"""Mask updates during training (``update_masks``, ``UpdatePruningStep``), TensorBoard scalars
(``PruningSummaries``) and the sparsity table (``sparsity_report``) for Keras 3 models."""

from __future__ import annotations

import keras
import numpy as np

from prunekit._checks import integer
from prunekit._pattern_names import parse_pattern
from prunekit._sparsity import SparsityReport, SparsityRow
from prunekit.keras import _masks
from prunekit.keras._layers import prunable_weights
from prunekit.keras.wrapper import PruneLowMagnitude, group_key

__all__ = ["wrappers", "update_masks", "UpdatePruningStep", "PruningSummaries", "sparsity_report"]


def _layers(model) -> list:
    if hasattr(model, "_flatten_layers"):
        return list(model._flatten_layers(include_self=True, recursive=True))
    return list(getattr(model, "layers", [model]))


def wrappers(model) -> list[PruneLowMagnitude]:
    """Every :class:`PruneLowMagnitude` inside ``model`` (nested models and custom layers included).

    Example:
        >>> [w.layer.name for w in prunekit.keras.wrappers(pruned)]
        ['dense', 'dense_1']
    """
    return [layer for layer in _layers(model) if isinstance(layer, PruneLowMagnitude)]


def update_masks(model, step: int) -> list[str]:
    """Recompute the masks of every wrapper whose schedule updates at ``step``; zero what they drop.

    What :class:`UpdatePruningStep` does before each training batch; call it yourself in a custom
    training loop (before each step's forward pass, with ``step`` 1 for the first batch, as TF-MOT
    counts) or to prune once without training.
    Wrappers made with ``scope="global"`` and the same schedule, pattern and criterion are ranked
    together.

    Returns:
        The names of the wrappers whose masks were recomputed (empty when none was due).

    Example:
        >>> prunekit.keras.update_masks(pruned, step=0)   # prune now, at the schedule's step-0 sparsity
    """
    step = integer(step, "step", 0)
    found = list(model) if isinstance(model, (list, tuple)) else wrappers(model)
    if not found:
        raise ValueError("model has no pruning wrappers; wrap it with prunekit.keras.prune_low_magnitude first")
    unbuilt = [w.name for w in found if not w.built]
    if unbuilt:
        raise ValueError(f"wrappers {unbuilt[:4]} are not built yet: call the model on a batch (or model.build) first")
    return _update([w for w in found if w.due(step)], step, {})


def _update(due: list, step: int, late: dict) -> list[str]:
    """Recompute the masks of ``due`` wrappers at ``step``'s sparsity, or at ``late[id(w)]``'s for one
    whose update came due before it was built."""
    groups: dict = {}
    for w in due:
        at = late.get(id(w), step)
        groups.setdefault((group_key(w), at), []).append(w)
    for (_, at), members in groups.items():
        _update_group(members, at, step)
    return [w.name for members in groups.values() for w in members]


def _update_group(members: list[PruneLowMagnitude], at: int, step: int) -> None:
    first = members[0]
    sparsity = _masks.sparsity_at(first.pruning_schedule, at)
    kind, *args = parse_pattern(first.pattern)
    weights = [[keras.ops.convert_to_numpy(v) for v in w.pruned] for w in members]
    scores = [w.scores(step) for w in members]
    if kind == "nm":
        masks = [[_masks.nm_mask(a, s, *args) for a, s in zip(ws, ss)] for ws, ss in zip(weights, scores)]
    else:
        block = (1, 1) if kind == "unstructured" else (args[1], args[0])  # (inputs, outputs) on the (rest, out) view
        if first.scope == "layer":  # each weight its own threshold, as TF-MOT
            masks = [
                [_masks.ranked_masks([a], [s], sparsity, block, first.block_pooling_type)[0] for a, s in zip(ws, ss)]
                for ws, ss in zip(weights, scores)
            ]
        else:
            flat = _masks.ranked_masks(
                [a for ws in weights for a in ws], [s for ss in scores for s in ss], sparsity, block,
                first.block_pooling_type,
            )
            masks, i = [], 0
            for ws in weights:
                masks.append(flat[i: i + len(ws)])
                i += len(ws)
    for w, new in zip(members, masks):
        w.set_masks(new, step)


class UpdatePruningStep(keras.callbacks.Callback):
    """Count training steps and update the masks when the schedules say (TF-MOT's callback).

    Steps count as TF-MOT 0.8.1 counts them: the k-th training batch (1-based) runs at step k, so
    ``frequency=100`` updates at steps 100, 200, ... Each wrapper keeps the count in ``pruning_step``
    (-1 until training starts), saved with the model, so a loaded model continues its schedule
    (whatever the optimizer). Each epoch ends with the masks re-applied.

    Example:
        >>> pruned.fit(x, y, epochs=2, callbacks=[prunekit.keras.UpdatePruningStep()])
    """

    def on_train_begin(self, logs=None):
        self._wrappers = wrappers(self.model)
        if not self._wrappers:
            raise ValueError(
                "UpdatePruningStep: the model has no pruning wrappers; prune it with "
                "prunekit.keras.prune_low_magnitude(model, schedule) and fit the model it returns"
            )
        if getattr(self.model, "steps_per_execution", 1) != 1:
            raise ValueError(
                f"UpdatePruningStep needs steps_per_execution=1 in compile() (it is "
                f"{self.model.steps_per_execution}): callbacks see only every N-th step, so the schedule would lag"
            )
        self._late = {}
        steps = [int(keras.ops.convert_to_numpy(w.pruning_step)) for w in self._wrappers if w.built]
        self.step = max(steps + [0])

    def on_train_batch_begin(self, batch, logs=None):
        self.step += 1
        # A subclassed model may build its layers only inside the first training step (TensorFlow
        # backend): an update due before a wrapper exists runs at the first batch after it does.
        due = []
        for w in self._wrappers:
            if not w.built:
                if w.due(self.step):
                    self._late[id(w)] = self.step
                continue
            w.pruning_step.assign(self.step)
            if id(w) in self._late or w.due(self.step):
                due.append(w)
        _update(due, self.step, self._late)
        for w in due:
            self._late.pop(id(w), None)

    def on_epoch_end(self, epoch, logs=None):
        for w in self._wrappers:
            if w.built:
                w.apply_masks()

    def on_train_end(self, logs=None):
        for w in self._wrappers:
            if not w.built:
                continue
            if int(keras.ops.convert_to_numpy(w.pruning_step)) < self.step:  # built inside its first step
                w.pruning_step.assign(self.step)
            w.apply_masks()  # an optimizer with use_ema=True overwrites the weights after the last step


class PruningSummaries(keras.callbacks.Callback):
    """TensorBoard scalars: the schedule's target sparsity and each pruned weight's sparsity.

    Tags ``pruning/<weight path>/sparsity`` and ``pruning/<wrapper>/target_sparsity``, at the wrapper's
    pruning step. Written with the ``tensorboard`` package alone, so every Keras backend logs.

    Args:
        log_dir: folder for the event files (TensorBoard's ``--logdir``).
        update_freq: ``"epoch"`` (TF-MOT's default), ``"batch"``, or an int (every N batches).

    Example:
        >>> pruned.fit(x, y, callbacks=[UpdatePruningStep(), PruningSummaries("logs")])
    """

    def __init__(self, log_dir, update_freq="epoch"):
        super().__init__()
        try:
            from tensorboard.summary import Writer  # noqa: F401
        except ImportError:
            raise ImportError("PruningSummaries needs the tensorboard package: pip install tensorboard") from None
        if update_freq not in ("epoch", "batch") and not (isinstance(update_freq, int) and update_freq >= 1):
            raise ValueError(f"update_freq={update_freq!r}: use 'epoch', 'batch' or a positive int")
        self.log_dir, self.update_freq, self._writer = str(log_dir), update_freq, None

    def on_train_begin(self, logs=None):
        from tensorboard.summary import Writer

        self._writer = Writer(self.log_dir)

    def _log(self):
        for w in wrappers(self.model):
            step = int(keras.ops.convert_to_numpy(w.pruning_step))
            self._writer.add_scalar(f"pruning/{w.name}/target_sparsity", w.pruning_schedule.sparsity_at(max(step, 0)),
                                    step)
            for var, mask in zip(w.pruned, w.masks):
                m = keras.ops.convert_to_numpy(mask)
                self._writer.add_scalar(f"pruning/{var.path}/sparsity", 1.0 - float(m.mean()), step)
        self._writer.flush()

    def on_train_batch_end(self, batch, logs=None):
        every = 1 if self.update_freq == "batch" else self.update_freq
        if isinstance(every, int) and (batch + 1) % every == 0:
            self._log()

    def on_epoch_end(self, epoch, logs=None):
        if self.update_freq == "epoch":
            self._log()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()


def sparsity_report(model) -> SparsityReport:
    """Count the zeros of a Keras 3 model's weights, each wrapped weight with its mask applied (what
    :func:`strip_pruning` keeps). Changes nothing.

    Rows: every prunable weight (wrapped or not); totals over every weight except pruning state (masks,
    step counters). The table is :class:`prunekit.SparsityReport`, the same as for PyTorch models.

    Example:
        >>> print(prunekit.keras.sparsity_report(pruned))
    """
    if not isinstance(model, keras.layers.Layer):
        raise TypeError(f"model must be a Keras 3 model or layer, got {type(model).__name__}")
    report = SparsityReport()
    state, masked = set(), {}
    for layer in _layers(model):
        if isinstance(layer, PruneLowMagnitude):
            state.update(id(v) for v in (*layer.masks, layer.pruning_step))
            masked.update((id(v), m) for v, m in zip(layer.pruned, layer.masks))
    for v in model.weights:
        if id(v) not in state:
            a = keras.ops.convert_to_numpy(v)
            if id(v) in masked:
                a = a * keras.ops.convert_to_numpy(masked[id(v)])
            report.model_params += a.size
            report.model_nonzeros += int(np.count_nonzero(a))
    seen = set()
    for layer in _layers(model):
        if isinstance(layer, PruneLowMagnitude):
            pairs = [(v, keras.ops.convert_to_numpy(m), layer.pattern) for v, m in zip(layer.pruned, layer.masks)]
        elif layer.built and not isinstance(layer, keras.Model):
            pairs = [(v, None, "-") for v in (prunable_weights(layer) or [])]
        else:
            continue
        for v, mask, pattern in pairs:
            if id(v) in seen:
                continue
            seen.add(id(v))
            a = keras.ops.convert_to_numpy(v)
            a = a if mask is None else a * mask
            n, nz = a.size, int(np.count_nonzero(a))
            report.rows.append(SparsityRow(v.path, tuple(a.shape), n, nz, 1.0 - nz / n if n else 0.0, pattern))
    return report
