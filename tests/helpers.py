"""Small models and utilities shared by the tests."""

import keras
import numpy as np


def mlp(width, name, inputs=64, classes=10, hidden_name=None):
    """A one-hidden-layer MLP; its hidden layer is named ``{name}_hidden``."""
    x = keras.Input((inputs,), name=f"{name}_input")
    h = keras.layers.Dense(width, activation="relu",
                           name=hidden_name or f"{name}_hidden")(x)
    return keras.Model(x, keras.layers.Dense(classes, name=f"{name}_logits")(h),
                       name=name)


def cnn(filters, name, classes=10, shape=(8, 8, 1), batchnorm=True):
    """A small CNN with layers ``{name}_conv1``, ``{name}_conv2``, ``{name}_pool``."""
    x = keras.Input(shape, name=f"{name}_input")
    h = keras.layers.Conv2D(filters, 3, padding="same", name=f"{name}_conv1")(x)
    if batchnorm:
        h = keras.layers.BatchNormalization(name=f"{name}_bn")(h)
    h = keras.layers.ReLU()(h)
    h = keras.layers.Conv2D(filters, 3, padding="same", activation="relu",
                            name=f"{name}_conv2")(h)
    h = keras.layers.GlobalAveragePooling2D(name=f"{name}_pool")(h)
    return keras.Model(x, keras.layers.Dense(classes, name=f"{name}_logits")(h),
                       name=name)


def to_numpy(x):
    return np.asarray(keras.ops.convert_to_numpy(x))
