"""keras_kd.pruning.surgery: pruned models are exact, smaller and ordinary."""

import keras
import numpy as np
import pytest

from keras_kd.pruning import kept_count, prune
from tests.pruning.blocks import images, kill, mobilenet_block, randomize, resnet_block

L = keras.layers


# Pruning's surgery (weights copied with NumPy): no backend-specific path of its own (the Keras
# and keras-kd calls it makes are tested on every backend elsewhere), so CI runs
# this file under one backend (tests/conftest.py, `one_backend`; a test's own
# mark wins).
pytestmark = pytest.mark.one_backend("torch")


def _predict(model, x):
    return keras.ops.convert_to_numpy(model(x, training=False))


def _masked(model, report):
    """The original model with every removed channel's weights zeroed, from
    the report's kept indices alone."""
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    for name, per_weight in report["layers"].items():
        layer = clone.get_layer(name)
        arrays = [keras.ops.convert_to_numpy(w).copy() for w in layer.weights]
        for index, w in enumerate(layer.weights):
            for axis, kept in per_weight.get(w.name, {}).items():
                removed = np.setdiff1d(np.arange(arrays[index].shape[axis]), kept)
                index_tuple = [slice(None)] * arrays[index].ndim
                index_tuple[axis] = removed
                arrays[index][tuple(index_tuple)] = 0.0
        layer.set_weights(arrays)
    return clone


def test_dead_channels_of_a_resnet_block_go_and_logits_stay():
    model = randomize(resnet_block())
    # residual group: stem and c2 (and their BatchNorms) dead in channels 1, 5
    kill(model, "stem", "stem_bn", [1, 5])
    kill(model, "c2", "bn2", [1, 5])
    kill(model, "c1", "bn1", [2, 3])
    x = images()
    small, report = prune(model, ratio=0.25)
    groups = {g["name"]: g for g in report["groups"]}
    assert groups["stem"]["kept"] == [0, 2, 3, 4, 6, 7]
    assert groups["c1"]["kept"] == [0, 1, 4, 5, 6, 7]
    assert small.get_layer("stem").filters == 6
    assert small.get_layer("c1").filters == 6
    assert small.get_layer("c2").filters == 6
    np.testing.assert_allclose(_predict(small, x), _predict(model, x), atol=1e-5)


def test_dead_channels_of_a_mobilenet_v2_block_go_and_logits_stay():
    model = randomize(mobilenet_block())
    kill(model, "stem", "stem_bn", [1, 5])
    kill(model, "project", "project_bn", [1, 5])
    dead = [0, 3, 9, 12]
    kill(model, "expand", "expand_bn", dead)
    kill(model, "dw", "dw_bn", dead)    # the depthwise bias, dw_bn γ = β = 0
    x = images()
    small, report = prune(model, ratio=0.25, criterion="bn")
    groups = {g["name"]: g for g in report["groups"]}
    assert groups["expand"]["kept"] == [c for c in range(16) if c not in dead]
    assert small.get_layer("expand").filters == 12
    assert tuple(small.get_layer("dw").kernel.shape) == (3, 3, 12, 1)
    np.testing.assert_allclose(_predict(small, x), _predict(model, x), atol=1e-5)


@pytest.mark.parametrize("block", [resnet_block, mobilenet_block])
@pytest.mark.parametrize("criterion", ["l2", "activation"])
def test_any_pruned_model_equals_the_masked_original(block, criterion):
    model = randomize(block())
    x = images()
    small, report = prune(model, ratio=0.4, criterion=criterion,
                          calibration_data=x)
    assert small.count_params() < model.count_params()
    masked = _masked(model, report)
    np.testing.assert_allclose(_predict(small, x), _predict(masked, x),
                               atol=1e-5)
    # and the mask matters: the original differs
    assert np.abs(_predict(model, x) - _predict(small, x)).max() > 1e-3


def _resnet_counts(w, w1, classes=3):
    """Parameters and FLOPs of resnet_block with the residual group at w
    channels and c1 at w1, counted by hand (6x6 'same' convolutions)."""
    params = (27 * w + w) + 4 * w + (9 * w * w1 + w1) + 4 * w1 \
        + (9 * w1 * w + w) + 4 * w + (w * classes + classes)
    flops = 2 * (36 * (27 * w + 9 * w * w1 + 9 * w1 * w) + w * classes)
    return params, flops


def test_parameter_and_flop_counts():
    model = randomize(resnet_block())
    small, report = prune(model, ratio=0.5, round_to=3)
    # 8 channels, remove 4, keep 4 rounded up to a multiple of 3: 6
    assert [g["channels_after"] for g in report["groups"]] == [6, 6]
    assert (report["params_before"], report["flops_before"]) == _resnet_counts(8, 8)
    assert (report["params_after"], report["flops_after"]) == _resnet_counts(6, 6)
    assert report["params_after"] == small.count_params()
    small, report = prune(model, ratio={"c1": 0.75})
    assert (report["params_after"], report["flops_after"]) == _resnet_counts(8, 2)
    assert report["params_after"] == small.count_params()


def test_kept_count():
    assert kept_count(10, 0.25) == 8                 # ⌊2.5⌋ = 2 removed
    assert kept_count(10, 0.25, round_to=4) == 8
    assert kept_count(10, 0.5, round_to=4) == 8      # 5 -> 8
    assert kept_count(10, 0.95, min_channels=3) == 3
    assert kept_count(3, 0.0, round_to=8) == 3       # never more than n


def test_save_and_load_a_pruned_model(tmp_path):
    model = randomize(mobilenet_block())
    small, _ = prune(model, ratio=0.5)
    path = str(tmp_path / "pruned.keras")
    small.save(path)
    again = keras.saving.load_model(path)
    x = images()
    np.testing.assert_allclose(_predict(again, x), _predict(small, x), atol=1e-6)
    assert [type(l) for l in again.layers] == [type(l) for l in model.layers]


def test_a_pruned_model_keeps_the_original_initializers():
    """The rebuild builds layers with zero initializers (their weights are all
    set), then gives each its own back: configs and re-initialisation are
    the original model's."""
    model = randomize(mobilenet_block())
    small, _ = prune(model, ratio=0.5)
    for layer in model.layers:
        before = layer.get_config()
        after = small.get_layer(layer.name).get_config()
        keys = [k for k in before if k.endswith("_initializer")]
        for key in keys:
            assert after[key] == before[key], (layer.name, key)
    fresh = keras.Model.from_config(small.get_config())
    kernels = [w for w in fresh.weights if "kernel" in w.path]
    assert kernels and all(np.abs(keras.ops.convert_to_numpy(w)).max() > 0
                           for w in kernels)


def test_sequential_with_flatten_keeps_its_class():
    model = keras.Sequential([
        keras.Input((4, 4, 2)), L.Conv2D(6, 3, padding="same", name="c"),
        L.MaxPooling2D(name="pool"), L.Flatten(name="flat"),
        L.Dense(5, activation="relu", name="fc"), L.Dropout(0.1),
        L.Dense(3, name="head")])
    randomize(model)
    x = np.random.default_rng(0).normal(size=(3, 4, 4, 2)).astype("float32")
    small, report = prune(model, ratio=0.5)
    assert isinstance(small, keras.Sequential)
    assert small.get_layer("c").filters == 3 and small.get_layer("fc").units == 3
    # Flatten of (2, 2, 6): fc's kernel keeps 4 blocks of the 3 kept filters
    kept = report["layers"]["fc"]["kernel"][0]
    c_kept = report["layers"]["c"]["kernel"][3]
    assert kept == [6 * p + k for p in range(4) for k in c_kept]
    np.testing.assert_allclose(_predict(small, x),
                               _predict(_masked(model, report), x), atol=1e-5)


def test_refusals_name_the_fix():
    model = resnet_block()
    with pytest.raises(ValueError, match=r"ratio=1.0 must be in \[0, 1\)"):
        prune(model, ratio=1.0)
    with pytest.raises(ValueError, match="min_channels and round_to"):
        prune(model, ratio=0.5, round_to=0)
    i = keras.Input((4, 4, 2))
    x = L.Conv2D(4, 1, name="c")(i)
    x = L.Reshape((8, 8), name="reshape")(x)
    x = L.GlobalAveragePooling1D()(x)
    with pytest.raises(ValueError, match="'reshape'"):
        prune(keras.Model(i, L.Dense(2, name="head")(x)), ratio=0.5)


def test_squeeze_excitation_with_reshape_follows_the_kept_channels():
    """EfficientNet's SE block: pooling, Reshape((1, 1, C)), reduce, expand,
    Multiply; the Reshape's target shape shrinks with the channels."""
    i = keras.Input((6, 6, 3))
    x = L.Conv2D(8, 3, padding="same", activation="swish", name="c")(i)
    s = L.GlobalAveragePooling2D(name="squeeze")(x)
    s = L.Reshape((1, 1, 8), name="se_reshape")(s)
    s = L.Conv2D(4, 1, activation="swish", name="se_reduce")(s)
    s = L.Conv2D(8, 1, activation="sigmoid", name="se_expand")(s)
    x = L.Multiply(name="excite")([x, s])
    x = L.GlobalAveragePooling2D()(x)
    model = randomize(keras.Model(i, L.Dense(3, name="head")(x)))
    small, report = prune(model, ratio=0.5)
    assert small.get_layer("se_reshape").target_shape == (1, 1, 4)
    assert small.get_layer("se_expand").filters == 4
    x = images()
    np.testing.assert_allclose(_predict(small, x),
                               _predict(_masked(model, report), x), atol=1e-5)


def test_a_global_parameter_budget_picks_the_smallest_ratio():
    model = randomize(resnet_block())
    target = 1000          # 1515 at 8 channels, 1200 at 7, 921 at 6
    small, report = prune(model, params=target)
    assert report["params_after"] == small.count_params() <= target
    # the smallest ratio: one channel fewer removed would break the budget
    # (8 channels: ratios step by 1/8)
    ratio = report["ratio"]
    assert 0 < ratio < 1
    _, looser = prune(model, ratio=ratio - 1 / 8)
    assert looser["params_after"] > target
    # per group counts by hand: both groups at 8 - ⌊8 ratio⌋ channels
    w = 8 - int(np.floor(8 * ratio + 1e-9))
    assert report["params_after"] == _resnet_counts(w, w)[0]
    with pytest.raises(ValueError, match="params=10 cannot be reached.*min_channels=1"):
        prune(model, params=10)
    unpruned, report = prune(model, params=10 ** 6)
    assert report["ratio"] == 0.0 and unpruned.count_params() == model.count_params()


# prune_channels: the surgery from given kept indices (PruningCallback.strip)
def test_prune_channels_cuts_exactly_the_given_channels():
    from keras_kd.pruning import prune_channels
    model = randomize(keras.Sequential([
        keras.Input((5,)), L.Dense(6, name="a"), L.Dense(4, name="b"),
        L.Dense(3, name="head")]))
    kept = {"a": [0, 2, 5], "b": [1, 3]}
    small, report = prune_channels(model, kept)
    assert [g["kept"] for g in report["groups"]] == [kept["a"], kept["b"]]
    weights = {w.path: keras.ops.convert_to_numpy(w) for w in model.weights}
    got = {w.path: keras.ops.convert_to_numpy(w) for w in small.weights}
    a, b, head = (model.get_layer(n) for n in ("a", "b", "head"))
    np.testing.assert_array_equal(got[small.get_layer("a").kernel.path],
                                  weights[a.kernel.path][:, [0, 2, 5]])
    np.testing.assert_array_equal(got[small.get_layer("b").kernel.path],
                                  weights[b.kernel.path][[0, 2, 5]][:, [1, 3]])
    np.testing.assert_array_equal(got[small.get_layer("head").kernel.path],
                                  weights[head.kernel.path][[1, 3]])
    # 5·3 + 3, 3·2 + 2, 2·3 + 3
    assert report["params_after"] == small.count_params() == 35
    with pytest.raises(ValueError, match=r"kept names no pruning group.*\['a', 'b'\]"):
        prune_channels(model, {"c": [0]})
    with pytest.raises(ValueError, match=r"kept\['b'\] must be distinct indices in \[0, 4\)"):
        prune_channels(model, {"b": [0, 4]})
    with pytest.raises(ValueError, match="at least one"):
        prune_channels(model, {"b": []})
