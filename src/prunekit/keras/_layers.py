"""Which weights of a Keras 3 layer pruning may mask (TF-MOT's registry, plus the layers Keras 3
models are built from), and whether their layout is known well enough for N:M and block patterns."""

from __future__ import annotations

import keras

__all__ = ["PrunableLayer", "prunable_weights", "known", "unknown_error", "check_layout"]

_KERNEL = ("kernel",)
# (types, weight attributes, layout known: the kernel is (..., inputs, outputs))
_REGISTRY = [
    ((keras.layers.Dense,), _KERNEL, True),
    ((keras.layers.SeparableConv1D, keras.layers.SeparableConv2D), ("pointwise_kernel",), True),
    ((keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose, keras.layers.Conv3DTranspose), _KERNEL, False),
    ((keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D), _KERNEL, True),
    ((keras.layers.Embedding,), ("embeddings",), True),
    ((keras.layers.EinsumDense,), _KERNEL, False),  # kernels of any rank, axes named by the equation
]
_RNN = (keras.layers.LSTM, keras.layers.GRU, keras.layers.SimpleRNN)
# Layers with weights that pruning leaves alone, as TF-MOT's registry does (it prunes no depthwise kernel).
_NOT_PRUNED = (
    keras.layers.BatchNormalization,
    keras.layers.LayerNormalization,
    keras.layers.GroupNormalization,
    keras.layers.UnitNormalization,
    keras.layers.PReLU,
    keras.layers.DepthwiseConv1D,
    keras.layers.DepthwiseConv2D,
)


class PrunableLayer:
    """Mix into a custom layer to say which of its weights may be pruned (TF-MOT's ``PrunableLayer``).
    N:M and block patterns read each returned weight as ``(..., inputs, outputs)``.

    Example:
        >>> class MyDense(keras.layers.Layer, prunekit.keras.PrunableLayer):
        ...     def get_prunable_weights(self):
        ...         return [self.kernel]
    """

    def get_prunable_weights(self) -> list:
        raise NotImplementedError("PrunableLayer subclasses return their prunable variables here")


def known(layer) -> bool | None:
    """True: prunekit knows its prunable weights; False: nothing to prune; None: a custom layer with
    weights it does not know. Needs no build."""
    if isinstance(layer, PrunableLayer) or any(isinstance(layer, types) for types, _, _ in _REGISTRY):
        return True
    if isinstance(layer, (*_RNN, keras.layers.MultiHeadAttention)):
        return True
    if isinstance(layer, _NOT_PRUNED) or (layer.built and not layer.weights):
        return False
    if not layer.built and type(layer).build is keras.layers.Layer.build:
        return False  # a layer without a build of its own creates no weights
    return None


def prunable_weights(layer) -> list | None:
    """The variables of a built ``layer`` that pruning may mask; ``[]`` for layers with nothing to prune;
    ``None`` for a custom layer with weights that prunekit does not know.

    Example:
        >>> [v.name for v in prunable_weights(keras.layers.LSTM(4))]  # once built
        ['kernel', 'recurrent_kernel']
    """
    found = known(layer)
    if not found:
        return None if found is None else []
    if isinstance(layer, PrunableLayer):
        return list(layer.get_prunable_weights())
    for types, names, _ in _REGISTRY:
        if isinstance(layer, types):
            return [getattr(layer, n) for n in names]
    if isinstance(layer, keras.layers.MultiHeadAttention):
        return [d.kernel for d in (layer.query_dense, layer.key_dense, layer.value_dense, layer.output_dense)]
    return [layer.cell.kernel, layer.cell.recurrent_kernel]


def check_layout(layer, pattern: str, kind: str) -> None:
    """N:M and blocks need to know which axis is the input: refuse layers whose kernels do not say."""
    if kind not in ("nm", "block"):
        return
    if isinstance(layer, PrunableLayer) or isinstance(layer, (*_RNN,)):
        return
    for types, _, layout in _REGISTRY:
        if isinstance(layer, types):
            if layout:
                return
            break
    raise ValueError(
        f"pattern='{pattern}' needs kernels laid out (..., inputs, outputs); '{layer.name}' "
        f"({type(layer).__name__}) stores its kernel otherwise. Use pattern='unstructured' for it, or leave "
        f"it out with exclude='{layer.name}'"
    )


def unknown_error(layer) -> TypeError:
    return TypeError(
        f"layer '{layer.name}' ({type(layer).__name__}) has weights prunekit does not know how to prune. "
        "Mix prunekit.keras.PrunableLayer into its class and return the prunable variables from "
        f"get_prunable_weights(), or, when pruning a whole model, leave it out with exclude='{layer.name}'"
    )
