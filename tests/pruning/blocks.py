"""Tiny models for the pruning tests: a ResNet-style and a MobileNetV2-style
block, each with a stem and a classifier."""

import keras
import numpy as np

L = keras.layers


def resnet_block(width=8, classes=3):
    """stem Conv-BN-ReLU, then Conv-BN-ReLU, Conv-BN, + residual, ReLU,
    global pooling, Dense classifier."""
    i = keras.Input((6, 6, 3))
    x = L.Conv2D(width, 3, padding="same", name="stem")(i)
    x = L.BatchNormalization(name="stem_bn")(x)
    x = L.ReLU(name="stem_relu")(x)
    y = L.Conv2D(width, 3, padding="same", name="c1")(x)
    y = L.BatchNormalization(name="bn1")(y)
    y = L.ReLU(name="relu1")(y)
    y = L.Conv2D(width, 3, padding="same", name="c2")(y)
    y = L.BatchNormalization(name="bn2")(y)
    x = L.Add(name="add")([x, y])
    x = L.ReLU(name="out_relu")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(i, L.Dense(classes, name="head")(x))


def mobilenet_block(width=8, expand=16, classes=3):
    """stem, then expand 1x1 - BN - ReLU6, depthwise 3x3 - BN - ReLU6,
    project 1x1 - BN, + residual, global pooling, classifier."""
    i = keras.Input((6, 6, 3))
    x = L.Conv2D(width, 3, padding="same", name="stem")(i)
    x = L.BatchNormalization(name="stem_bn")(x)
    x = L.ReLU(6.0, name="stem_relu")(x)
    y = L.Conv2D(expand, 1, name="expand")(x)
    y = L.BatchNormalization(name="expand_bn")(y)
    y = L.ReLU(6.0, name="expand_relu")(y)
    y = L.DepthwiseConv2D(3, padding="same", name="dw")(y)
    y = L.BatchNormalization(name="dw_bn")(y)
    y = L.ReLU(6.0, name="dw_relu")(y)
    y = L.Conv2D(width, 1, name="project")(y)
    y = L.BatchNormalization(name="project_bn")(y)
    x = L.Add(name="add")([x, y])
    x = L.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(i, L.Dense(classes, name="head")(x))


def randomize(model, seed=0):
    """Random weights everywhere, BatchNorm statistics included (so a wrong
    slice shows up in the outputs)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        arrays = []
        for w in layer.weights:
            shape = tuple(w.shape)
            if w.name == "moving_variance":
                arrays.append(rng.uniform(0.5, 1.5, shape))
            elif w.name == "gamma":
                arrays.append(rng.uniform(0.5, 1.5, shape))
            else:
                arrays.append(rng.normal(0, 0.5, shape))
        if arrays:
            layer.set_weights([a.astype("float32") for a in arrays])
    return model


def kill(model, conv, bn, channels):
    """Make ``channels`` of ``conv`` dead: zero filters and bias, and the
    BatchNorm after it with γ = β = 0."""
    layer = model.get_layer(conv)
    kernel, *rest = layer.get_weights()
    if isinstance(layer, keras.layers.DepthwiseConv2D):   # (kh, kw, C, 1)
        kernel[:, :, channels, :] = 0.0
    else:
        kernel[..., channels] = 0.0
    rest = [b.copy() for b in rest]
    for b in rest:
        b[channels] = 0.0
    model.get_layer(conv).set_weights([kernel] + rest)
    gamma, beta, mean, var = model.get_layer(bn).get_weights()
    gamma[channels] = 0.0
    beta[channels] = 0.0
    model.get_layer(bn).set_weights([gamma, beta, mean, var])


def images(n=4, seed=1):
    return np.random.default_rng(seed).normal(size=(n, 6, 6, 3)).astype("float32")
