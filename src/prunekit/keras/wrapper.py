"""``prune_low_magnitude``: TF-MOT's wrapper, on Keras 3.

A :class:`PruneLowMagnitude` wrapper holds a 0/1 mask per prunable weight and the last pruning step.
Zeros stay zero because each pruned weight gets a constraint ``w * mask`` that every Keras 3 optimizer
applies after each update (after Adam's step and AdamW's decay), on every backend; the forward pass is
the wrapped layer's own, untouched. Masks change only in :func:`prunekit.keras.update_masks`, which the
:class:`prunekit.keras.UpdatePruningStep` callback calls before each training batch.
"""

from __future__ import annotations

import json
import warnings

import keras
import numpy as np

from prunekit._checks import integer
from prunekit._pattern_names import parse_pattern
from prunekit.keras import _masks
from prunekit.keras._layers import check_layout, known, prunable_weights, unknown_error
from prunekit.schedules import SCHEDULES, Constant, Schedule

__all__ = ["PruneLowMagnitude", "prune_low_magnitude", "group_key"]

BACKENDS = ("tensorflow", "torch")
def _check_pattern(pattern, block_size, sparsity_m_by_n) -> str:
    """One pattern string (prunekit's vocabulary) from ``pattern`` or TF-MOT's two arguments."""
    if sparsity_m_by_n is not None:
        if pattern is not None:
            raise ValueError("give pattern= or sparsity_m_by_n=, not both")
        if not isinstance(sparsity_m_by_n, (tuple, list)) or len(sparsity_m_by_n) != 2:
            raise TypeError(f"sparsity_m_by_n must be (zeros, group), e.g. (2, 4); got {sparsity_m_by_n!r}")
        zeros, m = (integer(v, "sparsity_m_by_n", 1) for v in sparsity_m_by_n)
        if zeros >= m:
            raise ValueError(f"sparsity_m_by_n={tuple(sparsity_m_by_n)}: zeros must be fewer than the group, e.g. (2, 4)")
        pattern = f"{m - zeros}:{m}"
    if not isinstance(block_size, (tuple, list)) or len(block_size) != 2:
        raise TypeError(f"block_size must be (rows, cols) of the (inputs, outputs) kernel, e.g. (1, 4); got {block_size!r}")
    if tuple(block_size) != (1, 1):
        if pattern is not None:
            raise ValueError("give pattern= or block_size=, not both")
        bh, bw = (integer(v, "block_size", 1) for v in block_size)
        pattern = f"block:{bw}x{bh}"  # TF-MOT tiles (in, out); prunekit names blocks outputs x inputs
    pattern = "unstructured" if pattern is None else pattern
    kind, *args = parse_pattern(pattern)
    if kind == "channel":
        raise ValueError("pattern='channel' is not available in prunekit.keras; use 'unstructured', 'N:M' or 'block:RxC'")
    if kind == "nm" and not 1 <= args[0] < args[1]:
        raise ValueError(f"pattern={pattern!r}: need 1 <= N < M, e.g. '2:4'")
    if kind == "block" and min(args) < 1:
        raise ValueError(f"pattern={pattern!r}: block sides must be >= 1, e.g. 'block:1x4'")
    return pattern


def _check_schedule(schedule):
    if schedule is None:
        return Constant(0.5, begin_step=0, end_step=-1, frequency=100)  # TF-MOT's default
    if isinstance(schedule, dict):
        schedule = dict(schedule)
        return SCHEDULES[schedule.pop("type")](**schedule)
    if not isinstance(schedule, Schedule):
        raise TypeError(
            "pruning_schedule must be a prunekit schedule, e.g. prunekit.keras.PolynomialDecay(0.0, 0.8, 0, 1000) "
            f"or prunekit.keras.ConstantSparsity(0.8, 0); got {type(schedule).__name__}"
        )
    return schedule


class _MaskConstraint:
    """``w -> inner(w) * mask``: what the optimizer applies after each update of a pruned weight."""

    def __init__(self, mask, inner):
        self.mask, self.inner = mask, inner

    def __call__(self, w):
        return (w if self.inner is None else self.inner(w)) * self.mask


@keras.saving.register_keras_serializable(package="prunekit")
class PruneLowMagnitude(keras.layers.Wrapper):
    """A layer whose prunable weights carry masks. Made by :func:`prune_low_magnitude`; the arguments
    are as there. Variables added: one ``<weight>_mask`` per prunable weight and ``pruning_step``
    (-1 until training starts, then the step count of :class:`UpdatePruningStep`)."""

    def __init__(self, layer, pruning_schedule=None, pattern="unstructured", criterion="magnitude",
                 block_pooling_type="AVG", scope="layer", seed=0, **kwargs):
        if isinstance(layer, PruneLowMagnitude):
            raise ValueError(f"layer '{layer.layer.name}' is already wrapped for pruning; wrap it once")
        if keras.backend.backend() not in BACKENDS:
            raise RuntimeError(
                f"prunekit.keras runs on the {' and '.join(BACKENDS)} backends, not {keras.backend.backend()!r} "
                "(there the optimizer's compiled step cannot see mask updates made between steps): set "
                "KERAS_BACKEND=tensorflow or KERAS_BACKEND=torch before importing keras"
            )
        if isinstance(layer, keras.layers.Layer) and known(layer) is None:
            raise unknown_error(layer)
        kwargs.setdefault("name", f"prune_low_magnitude_{layer.name}")
        super().__init__(layer, **kwargs)
        self.pruning_schedule = _check_schedule(pruning_schedule)
        self.pattern = _check_pattern(pattern, (1, 1), None)
        if isinstance(layer, keras.layers.Layer) and known(layer):
            check_layout(layer, self.pattern, parse_pattern(self.pattern)[0])
        if criterion not in _masks.CRITERIA:
            raise ValueError(f"criterion={criterion!r} is unknown; use one of {_masks.CRITERIA}")
        if block_pooling_type not in ("AVG", "MAX"):
            raise ValueError(f"block_pooling_type={block_pooling_type!r}: use 'AVG' or 'MAX'")
        if scope not in ("layer", "global"):
            raise ValueError(f"scope={scope!r}: use 'layer' (each layer to the sparsity) or 'global' (ranked together)")
        self.criterion, self.block_pooling_type, self.scope = criterion, block_pooling_type, scope
        self.seed = integer(seed, "seed", 0)
        self.masks, self.pruned = [], []

    def build(self, input_shape=None):
        super().build(input_shape)
        self.pruned = prunable_weights(self.layer) or []
        kind, *args = parse_pattern(self.pattern)
        for w in self.pruned:
            if kind == "nm" and len(w.shape) < 2:
                raise ValueError(f"pattern='{self.pattern}' needs a weight with an input axis; '{w.path}' is 1-D")
            if kind == "nm" and w.shape[-2] <= args[0]:
                warnings.warn(
                    f"pattern='{self.pattern}' leaves '{w.path}' dense: its input axis holds {w.shape[-2]} weights, "
                    f"no more than the {args[0]} each group keeps", stacklevel=2)
        self.masks = [
            self.add_weight(name=f"{w.name}_mask", shape=w.shape, dtype=w.dtype, initializer="ones", trainable=False)
            for w in self.pruned
        ]
        self.pruning_step = self.add_weight(
            name="pruning_step", shape=(), dtype="int64", initializer=keras.initializers.Constant(-1), trainable=False
        )
        for w, m in zip(self.pruned, self.masks):
            if not isinstance(w.constraint, _MaskConstraint):
                w.constraint = _MaskConstraint(m, w.constraint)

    def call(self, inputs, *args, **kwargs):
        if "training" in kwargs and not self.layer._call_has_training_arg:
            kwargs.pop("training")
        return self.layer(inputs, *args, **kwargs)

    def due(self, step: int) -> bool:
        """Whether the masks update at ``step``: as the schedule says; N:M masks once, at step 1 (TF-MOT)."""
        if parse_pattern(self.pattern)[0] == "nm":
            return step == 1
        return self.pruning_schedule.should_update(step)

    def scores(self, step: int) -> list[np.ndarray]:
        """Element scores of each pruned weight now (higher = keep); what the mask already dropped
        scores -inf, so pruning again only ever removes more."""
        out = []
        for w, m in zip(self.pruned, self.masks):
            s = _masks.scores(keras.ops.convert_to_numpy(w), self.criterion, self.seed, w.path, step)
            out.append(np.where(keras.ops.convert_to_numpy(m) > 0, s, -np.inf).astype(np.float32))
        return out

    def set_masks(self, masks: list[np.ndarray], step: int) -> None:
        """Assign new masks and zero what they drop (the step is recorded). What was pruned stays
        pruned: a mask never regains weights (a schedule resumed at an earlier step cannot un-prune)."""
        for w, m, new in zip(self.pruned, self.masks, masks):
            new = new * keras.ops.convert_to_numpy(m)
            m.assign(new)
            w.assign(keras.ops.convert_to_numpy(w) * new)
        if int(keras.ops.convert_to_numpy(self.pruning_step)) < step:
            self.pruning_step.assign(step)

    def apply_masks(self) -> None:
        """Re-zero what the masks drop (for weights changed outside an optimizer)."""
        for w, m in zip(self.pruned, self.masks):
            w.assign(keras.ops.convert_to_numpy(w) * keras.ops.convert_to_numpy(m))

    def get_config(self):
        return {
            **super().get_config(),
            "pruning_schedule": self.pruning_schedule.config(),
            "pattern": self.pattern,
            "criterion": self.criterion,
            "block_pooling_type": self.block_pooling_type,
            "scope": self.scope,
            "seed": self.seed,
        }


def _copy(layer):
    """A new layer with ``layer``'s config, built as it was (layers with several inputs, such as
    MultiHeadAttention, cannot be built from the wrapper's one input shape); weights are copied once
    the clone is complete."""
    new = layer.__class__.from_config(layer.get_config())
    build = layer.get_build_config() if layer.built else None
    if build:
        new.build_from_config(build)
    return new


def _is_clonable(model) -> bool:
    return isinstance(model, keras.Sequential) or getattr(model, "_is_graph_network", False) or (
        type(model).__name__ == "Functional"
    )


def _check_keras3(model, name: str):
    if isinstance(model, keras.layers.Layer):
        return
    module = type(model).__module__
    if module.startswith(("tf_keras", "keras.engine", "keras.src.engine", "tensorflow.python.keras")):
        raise TypeError(
            f"{name} is a Keras 2 (tf_keras) {type(model).__name__}; prunekit.keras works on Keras 3 models. "
            "Rebuild it with `import keras` (Keras 3) and load its weights, or keep TF-MOT for Keras 2"
        )
    raise TypeError(f"{name} must be a Keras 3 model or layer (or a list of layers), got {type(model).__name__}")


def _clone(model, make, made: dict | None = None):
    """Clone a Sequential/Functional model layer by layer with ``make(old) -> new`` and copy the
    weights; ``made`` collects ``id(old layer) -> new layer`` (nested models included)."""
    made = {} if made is None else made
    pairs = []

    def clone_function(layer):
        if isinstance(layer, keras.Model) and _is_clonable(layer):
            return _clone(layer, make, made)
        new = make(layer)
        pairs.append((layer, new))
        made[id(layer)] = new
        return new

    clone = keras.models.clone_model(model, clone_function=clone_function)
    for old, new in pairs:
        source = old.layer if isinstance(old, PruneLowMagnitude) else old
        target = new.layer if isinstance(new, PruneLowMagnitude) else new
        target.set_weights(source.get_weights())
        if isinstance(old, PruneLowMagnitude) and isinstance(new, PruneLowMagnitude):
            new.set_weights(old.get_weights())
    return clone


def group_key(w: PruneLowMagnitude):
    """Wrappers ranked together: each alone for ``scope="layer"``; for ``"global"``, all with the same
    schedule, pattern, criterion and pooling."""
    if w.scope == "layer":
        return id(w)
    return (json.dumps(w.pruning_schedule.config(), sort_keys=True), w.pattern, w.criterion, w.block_pooling_type)


def prune_low_magnitude(
    to_prune,
    pruning_schedule: Schedule | None = None,
    block_size=(1, 1),
    block_pooling_type: str = "AVG",
    sparsity_m_by_n=None,
    *,
    pattern: str | None = None,
    criterion: str = "magnitude",
    scope: str = "layer",
    include=None,
    exclude=None,
    seed: int = 0,
):
    """Wrap a Keras 3 model's (or layer's) prunable weights with masks that training will update.

    Changes nothing it is given: a Sequential or Functional model is cloned (weights copied) with its
    prunable layers wrapped; a layer (or list of layers) is returned wrapped, for building a model
    (subclassed models wrap their layers this way, where they create them). Train the result with
    ``callbacks=[prunekit.keras.UpdatePruningStep()]``, then :func:`strip_pruning`.

    Args:
        to_prune: a Keras 3 ``Sequential`` or Functional model, a layer, or a list of layers.
        pruning_schedule: ``prunekit.keras.PolynomialDecay`` / ``ConstantSparsity`` (any
            ``prunekit.schedules`` schedule); default TF-MOT's ``ConstantSparsity(0.5, 0)``.
        block_size, block_pooling_type, sparsity_m_by_n: TF-MOT's arguments, kept for migration
            (``block_size=(1, 4)`` is ``pattern="block:4x1"``; ``sparsity_m_by_n=(2, 4)`` is ``"2:4"``).
        pattern: prunekit's name for the same: ``"unstructured"``, ``"N:M"``, ``"block:RxC"``.
        criterion: ``"magnitude"`` (TF-MOT's) or ``"random"`` (a baseline).
        scope: ``"layer"`` prunes every layer to the schedule's sparsity (TF-MOT); ``"global"`` ranks all
            wrapped weights of the model together, so layers end at different sparsities.
        include / exclude: layer names (``fnmatch`` globs) or ``(layer) -> bool``; model pruning only.
        seed: seed of the ``"random"`` criterion.

    Example:
        >>> schedule = prunekit.keras.PolynomialDecay(0.0, 0.8, begin_step=0, end_step=1000)
        >>> pruned = prunekit.keras.prune_low_magnitude(model, schedule)
        >>> pruned.compile("adam", "sparse_categorical_crossentropy")
        >>> pruned.fit(x, y, callbacks=[prunekit.keras.UpdatePruningStep()])
        >>> small = prunekit.keras.strip_pruning(pruned)
    """
    pruning_schedule = _check_schedule(pruning_schedule)
    pattern = _check_pattern(pattern, block_size, sparsity_m_by_n)
    options = dict(pruning_schedule=pruning_schedule, pattern=pattern, criterion=criterion,
                   block_pooling_type=block_pooling_type, scope=scope, seed=seed)
    PruneLowMagnitude(keras.layers.Identity(), **options)  # argument errors now, before anything is built
    if isinstance(to_prune, (list, tuple)):
        for i, layer in enumerate(to_prune):
            _check_keras3(layer, f"to_prune[{i}]")
        return [PruneLowMagnitude(layer, **options) for layer in to_prune]
    _check_keras3(to_prune, "to_prune")
    if not isinstance(to_prune, keras.Model):
        return PruneLowMagnitude(to_prune, **options)
    if not _is_clonable(to_prune):
        raise TypeError(
            f"to_prune is a subclassed model ({type(to_prune).__name__}), which Keras cannot clone; wrap its layers "
            "where __init__ creates them: self.dense = prunekit.keras.prune_low_magnitude(keras.layers.Dense(10), ...)"
        )
    selected = _selector(include, exclude)
    for layer in _leaves(to_prune):
        if isinstance(layer, PruneLowMagnitude):
            raise ValueError(f"to_prune already has pruning wrappers ('{layer.name}'); prune a model once")
        if selected(layer) and known(layer) is None:
            raise unknown_error(layer)

    def make(layer):
        new = _copy(layer)
        return PruneLowMagnitude(new, **options) if selected(layer) and known(layer) else new

    return _clone(to_prune, make)


def _selector(include, exclude):
    from fnmatch import fnmatchcase

    def hit(rule, layer):
        if callable(rule):
            return bool(rule(layer))
        rules = [rule] if isinstance(rule, str) else list(rule)
        return any(fnmatchcase(layer.name, r) for r in rules)

    return lambda layer: (include is None or hit(include, layer)) and not (exclude is not None and hit(exclude, layer))


def _leaves(model):
    for layer in model.layers:
        if isinstance(layer, keras.Model) and _is_clonable(layer):
            yield from _leaves(layer)
        else:
            yield layer


