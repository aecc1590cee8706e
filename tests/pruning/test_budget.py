"""keras_kd.pruning.budget: FLOP budgets and global ranking across groups."""

import keras
import numpy as np
import pytest

from keras_kd.pruning import count_flops, prune
from keras_kd.pruning.budget import normalized_scores
from keras_kd.pruning import DependencyGraph, importance
from tests.pruning.blocks import mobilenet_block, randomize, resnet_block


# Pruning's budgets: no backend-specific path of its own (the Keras
# and keras-kd calls it makes are tested on every backend elsewhere), so CI runs
# this file under one backend (tests/conftest.py, `one_backend`; a test's own
# mark wins).
pytestmark = pytest.mark.one_backend("torch")


def _counts(w, w1, classes=3):
    """Parameters and FLOPs of resnet_block with the residual group (stem,
    c2) at w channels and c1 at w1, by hand (6x6 'same' convolutions)."""
    params = (27 * w + w) + 4 * w + (9 * w * w1 + w1) + 4 * w1 \
        + (9 * w1 * w + w) + 4 * w + (w * classes + classes)
    flops = 2 * (36 * (27 * w + 9 * w * w1 + 9 * w1 * w) + w * classes)
    return params, flops


@pytest.fixture(scope="module")
def resnet():
    return randomize(resnet_block())


def _plant(model, layer, channels, scale=1e-3):
    """Shrink the filters ``channels`` of ``layer`` (kernel and bias)."""
    kernel, bias = model.get_layer(layer).get_weights()
    kernel[..., channels] *= scale
    bias[channels] *= scale
    model.get_layer(layer).set_weights([kernel, bias])


def _scale_layer(model, layer, factor):
    kernel, bias = model.get_layer(layer).get_weights()
    model.get_layer(layer).set_weights([kernel * factor, bias * factor])


def test_a_flop_budget_is_met_by_the_smallest_shared_ratio(resnet):
    target = _counts(6, 6)[1] + 1       # 6 channels per group fits, 7 not
    small, report = prune(resnet, flops=target)
    assert report["flops_after"] == count_flops(small) <= target
    assert report["params_after"] == small.count_params()
    assert [g["channels_after"] for g in report["groups"]] == [6, 6]
    assert (report["params_after"], report["flops_after"]) == _counts(6, 6)
    assert report["flops_before"] == _counts(8, 8)[1]
    # one channel fewer removed (ratios step by 1/8) breaks the budget
    _, looser = prune(resnet, ratio=report["ratio"] - 1 / 8)
    assert looser["flops_after"] > target
    assert report["budget"] == {"params": None, "flops": target}


def test_both_budgets_are_met(resnet):
    params, flops = _counts(7, 7)[0], _counts(5, 5)[1]
    small, report = prune(resnet, params=params, flops=flops)
    assert [g["channels_after"] for g in report["groups"]] == [5, 5]
    assert report["params_after"] == small.count_params() <= params
    assert report["flops_after"] == count_flops(small) <= flops


def test_global_ranking_removes_a_planted_weak_group_first():
    model = randomize(resnet_block())
    weak = [0, 2, 4, 6]
    _plant(model, "c1", weak)
    params = _counts(8, 4)[0]        # exactly what c1 at 4 channels costs
    small, report = prune(model, params=params, global_ranking=True)
    groups = {g["name"]: g for g in report["groups"]}
    assert groups["c1"]["kept"] == [1, 3, 5, 7]
    assert groups["stem"]["channels_after"] == 8
    assert report["params_after"] == small.count_params() == params
    assert report["flops_after"] == count_flops(small) == _counts(8, 4)[1]
    assert report["global_ranking"] and report["ratio"] is None
    # the weak channels are below the threshold, every other one above
    assert 0 < report["threshold"] < 1
    # a uniform ratio meeting the same budget cuts the strong group too
    _, uniform = prune(model, params=params)
    by_name = {g["name"]: g for g in uniform["groups"]}
    assert by_name["stem"]["channels_after"] < 8
    assert by_name["c1"]["channels_after"] > 4


def test_global_ranking_ignores_a_groups_overall_scale(resnet):
    """Mean normalisation: multiplying a whole group's filters by a constant
    leaves the plan unchanged (raw scores would sacrifice the small group)."""
    params = _counts(7, 5)[0]
    _, base = prune(resnet, params=params, global_ranking=True)
    for factor in (1e-3, 1e3):
        scaled = keras.models.clone_model(resnet)
        scaled.set_weights(resnet.get_weights())
        _scale_layer(scaled, "c1", factor)
        _, report = prune(scaled, params=params, global_ranking=True)
        assert [g["kept"] for g in report["groups"]] == \
            [g["kept"] for g in base["groups"]]


def test_normalized_scores_against_numpy(resnet):
    graph = DependencyGraph(resnet, ["head"])
    got = normalized_scores(graph, importance.magnitude(graph))
    # the residual group: stem's and c2's filter L1 norms summed
    stem = np.abs(resnet.get_layer("stem").get_weights()[0]).reshape(-1, 8).sum(0)
    c2 = np.abs(resnet.get_layer("c2").get_weights()[0]).reshape(-1, 8).sum(0)
    c1 = np.abs(resnet.get_layer("c1").get_weights()[0]).reshape(-1, 8).sum(0)
    np.testing.assert_allclose(got["stem"], (stem + c2) / (stem + c2).mean(),
                               rtol=1e-6)
    np.testing.assert_allclose(got["c1"], c1 / c1.mean(), rtol=1e-6)


def test_global_ranking_keeps_min_channels_and_round_to():
    model = randomize(mobilenet_block())
    _plant(model, "expand", list(range(12)))      # 12 of 16 weak
    full = prune(model, ratio=0.0)[1]["flops_before"]
    small, report = prune(model, flops=full // 2, global_ranking=True,
                          round_to=4, min_channels=4)
    after = {g["name"]: g["channels_after"] for g in report["groups"]}
    assert all(k % 4 == 0 and k >= 4 for k in after.values())
    assert report["flops_after"] == count_flops(small) <= full // 2
    assert report["params_after"] == small.count_params()
    assert small.get_layer("expand").filters == after["expand"]


@pytest.mark.parametrize("kwargs, message", [
    (dict(params=0), r"params=0 must be a positive number"),
    (dict(params=-5), r"params=-5 must be a positive number"),
    (dict(flops=0.0), r"flops=0.0 must be a positive number"),
    (dict(flops=float("nan")), r"flops=nan must be a positive number"),
    (dict(params=True), r"params=True must be a positive number"),
    (dict(params=10), r"params=10 cannot be reached.*min_channels=1"),
    (dict(flops=10, global_ranking=True), r"flops=10 cannot be reached"),
    (dict(global_ranking=True), r"pass params= or flops="),
])
def test_bad_budgets_are_refused_naming_the_fix(resnet, kwargs, message):
    with pytest.raises(ValueError, match=message):
        prune(resnet, **kwargs)


def test_a_budget_above_the_model_prunes_nothing(resnet):
    same, report = prune(resnet, flops=10 ** 9, global_ranking=True)
    assert same.count_params() == resnet.count_params()
    assert [g["kept"] for g in report["groups"]] == [list(range(8))] * 2
