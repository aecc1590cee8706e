"""keras_kd.pruning.schedule: gradual pruning during fit(), the optimizer
state following the kept weights."""

import keras
import numpy as np
import pytest

import keras_kd as kd
from keras_kd.pruning import GradualPruning, PolynomialDecay, kept_count
from tests.pruning.blocks import images, randomize, resnet_block


# Pruning's schedules: no backend-specific path of its own (the Keras
# and keras-kd calls it makes are tested on every backend elsewhere), so CI runs
# this file under one backend (tests/conftest.py, `one_backend`; a test's own
# mark wins).
pytestmark = pytest.mark.one_backend("torch")


def _zhu_gupta(t, s_i, s_f, t0, n, power=3):
    """s(t) = s_f + (s_i − s_f)(1 − (t − t0)/n)^3, clipped to [t0, t0 + n]."""
    if t < t0:
        return 0.0
    p = np.clip((t - t0) / n, 0.0, 1.0)
    return s_f + (s_i - s_f) * (1 - p) ** power


@pytest.mark.parametrize("s_i, s_f, begin, end, freq, power", [
    (0.0, 0.5, 0, 4, 1, 3), (0.1, 0.8, 2, 7, 2, 3), (0.0, 0.9, 1, 3, 1, 1)])
def test_polynomial_decay_is_zhu_and_gupta(s_i, s_f, begin, end, freq, power):
    schedule = PolynomialDecay(s_f, end, initial_sparsity=s_i,
                               begin_epoch=begin, frequency=freq, power=power)
    for e in range(10):
        assert schedule.sparsity(e) == pytest.approx(
            _zhu_gupta(e, s_i, s_f, begin, end - begin, power), abs=1e-12)
    epochs = schedule.pruning_epochs()
    assert epochs[0] == begin and epochs[-1] == end
    assert all(b - a <= freq for a, b in zip(epochs, epochs[1:]))
    assert [s for s in epochs if s != end] == list(range(begin, end, freq))


@pytest.mark.parametrize("kwargs, message", [
    (dict(final_sparsity=1.0, end_epoch=3), r"final_sparsity=1.0 must be in \[0, 1\)"),
    (dict(final_sparsity=0.3, initial_sparsity=0.5, end_epoch=3), "swap them"),
    (dict(final_sparsity=0.5, end_epoch=2, begin_epoch=2), "must come after"),
    (dict(final_sparsity=0.5, end_epoch=2, frequency=0), "frequency=0"),
    (dict(final_sparsity=0.5, end_epoch=-1), "end_epoch=-1"),
])
def test_bad_schedules_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PolynomialDecay(**kwargs)


def _data(n=8):
    return images(n), np.arange(n) % 3


def _optimizer_values(optimizer):
    return {v.name: keras.ops.convert_to_numpy(v).copy()
            for v in optimizer.variables}


@pytest.fixture(scope="module")
def distilled():
    """A Distiller trained one epoch with Adam, its optimizer state, and the
    Distiller after one pruning to half the channels."""
    keras.utils.set_random_seed(0)
    teacher = randomize(resnet_block())
    student = randomize(resnet_block(), seed=1)
    distiller = kd.Distiller(teacher, student)
    distiller.compile(optimizer=keras.optimizers.Adam(0.01),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      alpha=0.3, temperature=2.0)
    x, y = _data()
    distiller.fit(x, y, epochs=1, batch_size=4, verbose=0)
    old = _optimizer_values(distiller.optimizer)
    teacher_weights = [w.copy() for w in teacher.get_weights()]
    pruner = GradualPruning(PolynomialDecay(0.5, end_epoch=1, begin_epoch=0),
                            verbose=0)
    new = pruner.prune_at(distiller, 1)
    return dict(old_distiller=distiller, new=new, old=old, pruner=pruner,
                teacher_weights=teacher_weights)


def test_adam_moments_of_kept_weights_are_the_old_ones_sliced(distilled):
    new, old = distilled["new"], distilled["old"]
    report = distilled["pruner"].reports[-1]
    assert report["params_after"] < report["params_before"]
    got = _optimizer_values(new.optimizer)
    assert sorted(got) == sorted(old)
    checked = 0
    for layer in new.student.layers:
        for w in layer.weights:
            if not w.trainable:
                continue
            axes = report["layers"].get(layer.name, {}).get(w.name, {})
            for slot in ("momentum", "velocity"):
                name = f"{w.path.replace('/', '_')}_{slot}"
                expected = old[name]
                for axis, kept in axes.items():
                    expected = np.take(expected, kept, axis=axis)
                assert got[name].shape == tuple(w.shape)
                np.testing.assert_array_equal(got[name], expected)
                checked += bool(axes)
    assert checked >= 10          # the pruned kernels, biases and BN weights
    assert np.abs(got["c1_kernel_velocity"]).max() > 0   # state, not zeros
    assert int(got["iteration"]) == int(old["iteration"]) == 2
    np.testing.assert_allclose(got["learning_rate"], 0.01)


def test_the_distiller_is_rebuilt_around_the_pruned_student(distilled):
    old, new = distilled["old_distiller"], distilled["new"]
    assert isinstance(new, kd.Distiller) and new is not old
    assert new.teacher is old.teacher
    for a, b in zip(distilled["teacher_weights"], new.teacher.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert new.student.get_layer("c1").filters == 4
    assert new.student.get_layer("stem").filters == 4
    assert (new.alpha, new.temperature) == pytest.approx((0.3, 2.0))
    # the pruned student is the old one sliced at the kept indices
    report = distilled["pruner"].reports[-1]
    kept = report["layers"]["c1"]["kernel"]
    kernel = keras.ops.convert_to_numpy(old.student.get_layer("c1").kernel)
    for axis, idx in kept.items():
        kernel = np.take(kernel, idx, axis=axis)
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(new.student.get_layer("c1").kernel), kernel)
    x, y = _data()
    new.fit(x, y, epochs=1, batch_size=4, verbose=0)     # it trains on
    assert int(keras.ops.convert_to_numpy(new.optimizer.iterations)) == 4


def test_sgd_momentum_of_a_plain_model_follows_the_kept_channels():
    model = randomize(resnet_block())
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = _data()
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)
    old = _optimizer_values(model.optimizer)
    pruner = GradualPruning(PolynomialDecay(0.25, end_epoch=1), verbose=0)
    new = pruner.prune_at(model, 1)
    report = pruner.reports[-1]
    got = _optimizer_values(new.optimizer)
    assert isinstance(new.optimizer, keras.optimizers.SGD) and new is not model
    for layer, weight in (("c1", "kernel"), ("bn1", "gamma"), ("head", "kernel")):
        name = f"{new.get_layer(layer).path}_{weight}_momentum"
        expected = old[name]
        for axis, kept in report["layers"][layer][weight].items():
            expected = np.take(expected, kept, axis=axis)
        np.testing.assert_array_equal(got[name], expected)
        assert np.abs(expected).max() > 0
    assert report["optimizer_reset"] == []
    assert int(got["iteration"]) == 1


def _plain_model():
    model = randomize(resnet_block())
    model.compile(optimizer=keras.optimizers.Adam(0.01),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


@pytest.mark.one_backend
def test_gradual_fit_of_a_plain_model_is_one_history():
    model = _plain_model()
    x, y = _data()
    schedule = PolynomialDecay(0.75, initial_sparsity=0.5, begin_epoch=1,
                               end_epoch=2)
    pruner = GradualPruning(schedule, verbose=0)
    history = pruner.fit(model, x, y, epochs=3, batch_size=4, verbose=0,
                         validation_data=(x, y))
    assert history.epoch == [0, 1, 2]
    assert sorted(history.history) == ["accuracy", "loss", "val_accuracy",
                                       "val_loss"]
    assert all(len(v) == 3 for v in history.history.values())
    assert history.model is pruner.model is not model
    # epochs 1 and 2 prune each group to kept_count(8, s(e)): 4, then 2
    assert [r["epoch"] for r in pruner.reports] == [1, 2]
    for report, want in zip(pruner.reports, (4, 2)):
        assert want == kept_count(8, schedule.sparsity(report["epoch"]))
        assert [g["channels_after"] for g in report["groups"]] == [want] * 2
    assert pruner.model.get_layer("c1").filters == 2
    # kept: indices into the original channels, composed over the prunings
    first, second = (r["groups"][1]["kept"] for r in pruner.reports)
    assert pruner.kept["c1"] == [first[k] for k in second]
    # the step count runs on through the stages: 3 epochs of 2 steps
    assert int(keras.ops.convert_to_numpy(pruner.model.optimizer.iterations)) == 6


@pytest.mark.one_backend
def test_gradual_distillation_to_a_parameter_budget_with_global_ranking():
    teacher = randomize(resnet_block())
    student = randomize(resnet_block(), seed=2)
    distiller = kd.Distiller(teacher, student)
    distiller.compile(optimizer="adam",
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = _data()
    schedule = PolynomialDecay(0.5, begin_epoch=0, end_epoch=2, frequency=2)
    pruner = GradualPruning(schedule, target="params", global_ranking=True,
                            verbose=0)
    history = pruner.fit(distiller, x, y, epochs=3, batch_size=4, verbose=0)
    assert history.epoch == [0, 1, 2]
    full = student.count_params()
    assert [r["epoch"] for r in pruner.reports] == [2]      # s(0) = 0
    assert pruner.model.student.count_params() <= full // 2
    assert pruner.model.teacher is teacher


def test_refusals_name_the_fix():
    schedule = PolynomialDecay(0.5, end_epoch=2)
    with pytest.raises(ValueError, match="use target='params' or 'flops'"):
        GradualPruning(schedule, global_ranking=True)
    with pytest.raises(ValueError, match="target='weights' is not one of"):
        GradualPruning(schedule, target="weights")
    model = randomize(resnet_block())
    x, y = _data()
    pruner = GradualPruning(schedule, verbose=0)
    with pytest.raises(ValueError, match="raise epochs above end_epoch"):
        pruner.fit(model, x, y, epochs=2)
    with pytest.raises(ValueError, match="a Python iterator or generator"):
        pruner.fit(model, iter([(x, y)]), epochs=3)
    with pytest.raises(ValueError, match=r"call model.compile\(...\)"):
        pruner.prune_at(model, 2)
