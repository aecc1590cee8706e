"""keras_kd.pruning.graph: which channels must be removed together."""

import keras
import numpy as np
import pytest

from keras_kd.pruning import DependencyGraph
from tests.pruning.blocks import mobilenet_block, resnet_block

L = keras.layers


# Pruning's dependency graph: no backend-specific path of its own (the Keras
# and keras-kd calls it makes are tested on every backend elsewhere), so CI runs
# this file under one backend (tests/conftest.py, `one_backend`; a test's own
# mark wins).
pytestmark = pytest.mark.one_backend("torch")


def _groups(model, never_prune=()):
    return {g.name: g for g in DependencyGraph(model, never_prune).groups}


def test_residual_add_ties_the_stem_and_the_last_conv():
    groups = _groups(resnet_block())
    assert sorted(groups) == ["c1", "stem"]     # head's outputs are frozen
    assert groups["stem"].producers == ["stem", "c2"]
    assert groups["stem"].size == 8
    members = set(groups["stem"].members)
    assert {("stem_bn", "gamma", 0), ("bn2", "beta", 0), ("c1", "kernel", 2),
            ("head", "kernel", 0), ("c2", "kernel", 3)} <= members
    assert ("c2", "kernel", 2) not in members    # c2's input is c1's group
    assert ("c2", "kernel", 2) in set(groups["c1"].members)


def test_depthwise_passes_channels_through():
    groups = _groups(mobilenet_block())
    assert sorted(groups) == ["expand", "stem"]
    assert groups["stem"].producers == ["stem", "project"]
    expand = set(groups["expand"].members)
    assert {("dw", "kernel", 2), ("dw", "bias", 0), ("dw_bn", "gamma", 0),
            ("project", "kernel", 2)} <= expand


def test_concatenate_offsets_and_flatten_blocks():
    i = keras.Input((2, 2, 1))
    a = L.Conv2D(2, 1, name="a")(i)
    b = L.Conv2D(3, 1, name="b")(i)
    x = L.Concatenate(name="cat")([a, b])
    x = L.Flatten(name="flat")(x)
    model = keras.Model(i, L.Dense(2, name="head")(x))
    graph = DependencyGraph(model)
    groups = {g.name: g for g in graph.groups}
    assert (groups["a"].size, groups["b"].size) == (2, 3)
    # head's kernel rows: 4 spatial positions × (a0 a1 b0 b1 b2)
    removed = [groups["a"].roots[1], groups["b"].roots[0]]
    kept = graph.kept_positions(removed)
    rows = kept["head"][0][0]
    expected = [p for p in range(20) if p % 5 not in (1, 2)]
    np.testing.assert_array_equal(rows, expected)
    np.testing.assert_array_equal(kept["a"][0][3], [0])
    np.testing.assert_array_equal(kept["b"][0][3], [1, 2])


def test_squeeze_excitation_multiply_and_separable():
    i = keras.Input((4, 4, 3))
    x = L.SeparableConv2D(6, 3, padding="same", depth_multiplier=2, name="sep")(i)
    s = L.GlobalAveragePooling2D(keepdims=True, name="squeeze")(x)
    s = L.Conv2D(2, 1, activation="relu", name="se_reduce")(s)
    s = L.Conv2D(6, 1, activation="sigmoid", name="se_expand")(s)
    x = L.Multiply(name="excite")([x, s])
    x = L.GlobalAveragePooling2D()(x)
    model = keras.Model(i, L.Dense(2, name="head")(x))
    groups = _groups(model)
    assert groups["sep"].producers == ["sep", "se_expand"]
    assert groups["se_reduce"].size == 2
    assert ("se_reduce", "kernel", 2) in set(groups["sep"].members)
    # the input image's channels are frozen: no group holds them
    assert all("sep" != m[0] or m[1] != "depthwise_kernel"
               for g in groups.values() for m in g.members)


def test_never_prune_and_outputs_freeze_channels():
    model = resnet_block()
    assert sorted(_groups(model, never_prune=["c1"])) == ["stem"]
    # an output tensor from the middle of the model freezes its channels
    two = keras.Model(model.inputs, [model.outputs[0],
                                     model.get_layer("relu1").output])
    assert sorted(_groups(two)) == ["stem"]


def test_sequential_and_layer_norm():
    model = keras.Sequential([keras.Input((5,)), L.Dense(4, name="a"),
                              L.LayerNormalization(name="ln"),
                              L.Dense(6, name="b"), L.Dense(2, name="head")])
    groups = _groups(model)
    assert sorted(groups) == ["b"]      # a feeds a LayerNormalization


def test_refusals_name_the_layer_and_the_fix():
    i = keras.Input((4, 4, 2))
    x = L.Conv2D(4, 1, name="c")(i)
    x = L.Reshape((8, 8), name="reshape")(x)
    x = L.GlobalAveragePooling1D()(x)
    model = keras.Model(i, L.Dense(2, name="head")(x))
    with pytest.raises(ValueError, match="'reshape'.*Reshape.*never_prune"):
        DependencyGraph(model)
    # named in never_prune, it becomes a wall: c's channels are frozen
    assert DependencyGraph(model, never_prune=["reshape"]).groups == []

    shared = L.Dense(3, name="shared")
    i = keras.Input((3,))
    with pytest.raises(ValueError, match="'shared'.*called 2 times"):
        DependencyGraph(keras.Model(i, shared(shared(i))))
    i = keras.Input((4, 4, 2))
    grouped = keras.Model(i, L.Conv2D(4, 1, groups=2, name="g")(i))
    with pytest.raises(ValueError, match="'g'.*Conv2D"):
        DependencyGraph(grouped, never_prune=[])
    with pytest.raises(ValueError, match=r"never_prune names no layer.*\['nope'\]"):
        DependencyGraph(resnet_block(), never_prune=["nope"])

    class Sub(keras.Model):
        def call(self, x):
            return x
    with pytest.raises(ValueError, match="subclassed model"):
        DependencyGraph(Sub())


def test_more_refusals_name_the_layer():
    i = keras.Input((4, 4, 2))
    x = L.Conv2D(4, 1, name="c")(i)
    x = L.BatchNormalization(axis=1, name="bn_h")(x)
    x = L.GlobalAveragePooling2D()(x)
    with pytest.raises(ValueError, match="'bn_h'.*axis=1.*never_prune"):
        DependencyGraph(keras.Model(i, L.Dense(2)(x)))
    i = keras.Input((4, 4, 2))
    x = L.MaxPooling2D(data_format="channels_first", name="pool_cf")(i)
    with pytest.raises(ValueError, match="'pool_cf'.*channels_first"):
        DependencyGraph(keras.Model(i, x))
    model = keras.Sequential([keras.Input((3,)), L.Dense(4, name="lora"),
                              L.Dense(2)])
    model.get_layer("lora").enable_lora(2)
    with pytest.raises(ValueError, match="'lora'.*LoRA or quantized"):
        DependencyGraph(model)
