"""Small Keras 3 models and the before/after snapshot the error tests compare."""

import keras
import numpy as np


def mlp(name="mlp"):
    inp = keras.Input((16,))
    h = keras.layers.Dense(32, activation="relu", name=f"{name}_hidden")(inp)
    return keras.Model(inp, keras.layers.Dense(2, name=f"{name}_out")(h), name=name)


def cnn():
    return keras.Sequential([
        keras.Input((8, 8, 4)),
        keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv"),
        keras.layers.BatchNormalization(name="bn"),
        keras.layers.Flatten(name="flat"),
        keras.layers.Dense(3, name="head"),
    ])


def compile_(model, lr=1e-2):
    model.compile(keras.optimizers.AdamW(lr, weight_decay=0.05),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def snapshot(model):
    """Everything a failed call must leave as it was: layer classes and names, and every weight."""
    return [(type(layer).__name__, layer.name) for layer in model.layers], [w.copy() for w in model.get_weights()]


def same(a, b) -> bool:
    return a[0] == b[0] and len(a[1]) == len(b[1]) and all(np.array_equal(x, y) for x, y in zip(a[1], b[1]))
