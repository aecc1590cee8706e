"""keras_kd.pruning.importance: each criterion against a NumPy computation."""

import keras
import numpy as np
import pytest

from keras_kd.pruning import DependencyGraph, importance
from tests.pruning.blocks import images, randomize, resnet_block

L = keras.layers


def _mlp(seed=0):
    model = keras.Sequential([keras.Input((5,)), L.Dense(6, name="h"),
                              L.Dense(2, name="head")])
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        layer.set_weights([rng.normal(size=tuple(w.shape)).astype("float32")
                           for w in layer.weights])
    return model


def _weights(model, name):
    return [keras.ops.convert_to_numpy(w) for w in model.get_layer(name).weights]


def _scores(graph, group_name, class_scores):
    group = next(g for g in graph.groups if g.name == group_name)
    return importance.group_scores(graph, group, class_scores)


def test_magnitude_sums_the_filters_of_a_residual_group():
    model = randomize(resnet_block())
    graph = DependencyGraph(model)
    stem, c2 = _weights(model, "stem")[0], _weights(model, "c2")[0]
    l1 = np.abs(stem).sum((0, 1, 2)) + np.abs(c2).sum((0, 1, 2))
    l2 = np.sqrt((stem ** 2).sum((0, 1, 2))) + np.sqrt((c2 ** 2).sum((0, 1, 2)))
    np.testing.assert_allclose(_scores(graph, "stem", importance.magnitude(graph, 1)),
                               l1, rtol=1e-5)
    np.testing.assert_allclose(_scores(graph, "stem", importance.magnitude(graph, 2)),
                               l2, rtol=1e-5)


def test_bn_scale_is_the_sum_of_gammas():
    model = randomize(resnet_block())
    graph = DependencyGraph(model)
    gamma = np.abs(_weights(model, "stem_bn")[0]) + np.abs(_weights(model, "bn2")[0])
    scores, fallback = importance.scores(graph, "bn")
    np.testing.assert_allclose(_scores(graph, "stem", scores), gamma, rtol=1e-6)
    assert fallback == []
    mlp = _mlp()
    g = DependencyGraph(mlp)
    scores, fallback = importance.scores(g, "bn")      # no BatchNorm: L1
    assert fallback == ["h"]
    np.testing.assert_allclose(_scores(g, "h", scores),
                               np.abs(_weights(mlp, "h")[0]).sum(0), rtol=1e-5)


def test_activation_is_the_mean_magnitude_on_calibration_data():
    model = _mlp()
    x = np.random.default_rng(1).normal(size=(40, 5)).astype("float32")
    kernel, bias = _weights(model, "h")
    expected = np.abs(x @ kernel + bias).mean(0)
    graph = DependencyGraph(model)
    # 40 samples in batches of 32 and 8: a mean over samples, not batches
    scores = importance.activation(graph, x)
    np.testing.assert_allclose(_scores(graph, "h", scores), expected, rtol=1e-5)
    scores = importance.activation(graph, x, steps=1)
    np.testing.assert_allclose(_scores(graph, "h", scores),
                               np.abs(x[:32] @ kernel + bias).mean(0), rtol=1e-5)


def test_taylor_matches_the_hand_gradient():
    """L = Σ (h W2 + b2 - y)², h = x W1 + b1: ∂L/∂h = 2 (out - y) W2ᵀ and
    I_c = mean over batches of (Σ_batch h_c ∂L/∂h_c)²."""
    model = _mlp()
    rng = np.random.default_rng(2)
    x = rng.normal(size=(8, 5)).astype("float32")
    y = rng.normal(size=(8, 2)).astype("float32")
    w1, b1 = _weights(model, "h")
    w2, b2 = _weights(model, "head")

    def loss(t, p):
        return keras.ops.sum(keras.ops.square(p - t))

    expected = 0.0
    for start in (0, 4):
        xb, yb = x[start:start + 4], y[start:start + 4]
        h = xb @ w1 + b1
        dh = 2 * (h @ w2 + b2 - yb) @ w2.T
        expected = expected + (h * dh).sum(0) ** 2
    expected /= 2
    graph = DependencyGraph(model)
    batches = [(x[:4], y[:4]), (x[4:], y[4:])]
    scores = importance.taylor(graph, batches, loss, steps=2)
    np.testing.assert_allclose(_scores(graph, "h", scores), expected, rtol=1e-4)


def test_taylor_on_a_conv_block_runs_with_a_keras_loss():
    model = randomize(resnet_block())
    graph = DependencyGraph(model)
    data = (images(4), np.array([0, 1, 2, 0]))
    scores, _ = importance.scores(
        graph, "taylor", data,
        keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    values = _scores(graph, "c1", scores)
    assert values.shape == (8,) and np.all(values >= 0) and values.max() > 0


def test_refusals():
    graph = DependencyGraph(_mlp())
    with pytest.raises(ValueError, match="criterion='magic' is not one of"):
        importance.scores(graph, "magic")
    with pytest.raises(ValueError, match="pass calibration_data="):
        importance.scores(graph, "activation")
    with pytest.raises(ValueError, match="needs loss="):
        importance.scores(graph, "taylor", np.zeros((2, 5), "float32"))
    with pytest.raises(ValueError, match="needs targets"):
        importance.scores(graph, "taylor", np.zeros((2, 5), "float32"), "mse")
    with pytest.raises(ValueError, match="calibration_steps="):
        importance.scores(graph, "activation", iter([np.zeros((2, 5))]))
