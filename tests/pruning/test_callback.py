"""keras_kd.pruning.callback: masks inside the user's own fit(), then strip."""

import os

import keras
import numpy as np
import pytest

import keras_kd as kd
from keras_kd.pruning import PolynomialDecay, PruningCallback
from tests.pruning.blocks import images, mobilenet_block, randomize

L = keras.layers


def _np(v):
    return keras.ops.convert_to_numpy(v).copy()


def _zhu_gupta(e, s_i, s_f, begin, end):
    """s(e) = s_f + (s_i − s_f)(1 − (e − begin)/(end − begin))³."""
    p = min(1.0, (e - begin) / (end - begin))
    return s_f + (s_i - s_f) * (1 - p) ** 3


def _removed(n, kept):
    return np.setdiff1d(np.arange(n), kept)


def _dead_entries(kept):
    """(layer, weight, axis, removed positions) of a mobilenet_block, from
    the kept indices of its two groups alone: "stem" (stem, project and the
    residual path, 8 channels) and "expand" (expand and the depthwise
    convolution, 16)."""
    stem = _removed(8, kept["stem"])
    expand = _removed(16, kept["expand"])
    entries = [(layer, weight, 0, stem) for layer, weight in (
        ("stem", "bias"), ("stem_bn", "gamma"), ("stem_bn", "beta"),
        ("project", "bias"), ("project_bn", "gamma"), ("project_bn", "beta"),
        ("head", "kernel"))]                         # the classifier's rows
    entries += [("stem", "kernel", 3, stem), ("project", "kernel", 3, stem),
                ("expand", "kernel", 2, stem)]       # expand's input rows
    entries += [(layer, weight, 0, expand) for layer, weight in (
        ("expand", "bias"), ("expand_bn", "gamma"), ("expand_bn", "beta"),
        ("dw", "bias"), ("dw_bn", "gamma"), ("dw_bn", "beta"))]
    entries += [("expand", "kernel", 3, expand), ("dw", "kernel", 2, expand),
                ("project", "kernel", 2, expand)]
    return entries


def _masked_values(model, optimizer, kept):
    """The masked entries of every weight and Adam slot, concatenated."""
    slots = {v.name: v for v in optimizer.variables}
    values = {"weights": [], "slots": []}
    for layer, weight, axis, gone in _dead_entries(kept):
        w = getattr(model.get_layer(layer), weight)
        values["weights"].append(np.take(_np(w), gone, axis=axis).ravel())
        for slot in ("momentum", "velocity"):
            s = slots[f"{w.path.replace('/', '_')}_{slot}"]
            values["slots"].append(np.take(_np(s), gone, axis=axis).ravel())
    return {k: np.concatenate(v) for k, v in values.items()}


class _Recorder(keras.callbacks.Callback):
    """After the pruning callback: the masked entries after every batch,
    and the dead filters of stem and expand at every epoch's start."""

    def __init__(self, pruner, net):
        super().__init__()
        self.pruner, self.net = pruner, net
        self.batches, self.dead, self.kept = [], [], []

    def on_epoch_begin(self, epoch, logs=None):
        _ = self.model      # (JAX: the state in the variables)
        dead = {}
        for name in ("stem", "expand"):
            kernel = _np(self.net.get_layer(name).kernel)
            n = kernel.shape[-1]
            dead[name] = int((np.abs(kernel).reshape(-1, n).sum(0) == 0).sum())
        self.dead.append(dead)
        self.kept.append({g: set(k) for g, k in self.pruner.kept.items()})

    def on_train_batch_end(self, batch, logs=None):
        model = self.model
        self.batches.append(_masked_values(self.net, model.optimizer,
                                           self.pruner.kept))


@pytest.fixture(scope="module")
def trained():
    """A mobilenet_block trained 5 epochs with Adam under a schedule pruning at
    epochs 0, 2 and 3 (frequency 2, and end_epoch)."""
    keras.utils.set_random_seed(0)
    model = randomize(mobilenet_block())
    model.compile(optimizer=keras.optimizers.Adam(0.05),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    start = {w.path: _np(w) for w in model.weights}
    schedule = PolynomialDecay(0.75, initial_sparsity=0.25, begin_epoch=0,
                               end_epoch=3, frequency=2)
    pruner = PruningCallback(schedule, verbose=0)
    recorder = _Recorder(pruner, model)
    x, y = images(8), np.arange(8) % 3
    model.fit(x, y, epochs=5, batch_size=4, verbose=0,
              callbacks=[pruner, recorder])
    return dict(model=model, pruner=pruner, recorder=recorder, x=x,
                schedule=schedule, start=start)


def test_masked_channels_stay_exactly_zero_through_adam_training(trained):
    model, pruner, recorder = trained["model"], trained["pruner"], trained["recorder"]
    assert len(recorder.batches) == 10
    for values in recorder.batches:
        assert values["weights"].size > 0
        assert np.all(values["weights"] == 0)
        assert np.all(values["slots"] == 0)        # momentum cannot revive them
    final = _masked_values(model, model.optimizer, pruner.kept)
    assert np.all(final["weights"] == 0) and np.all(final["slots"] == 0)
    # the kept weights trained, and Adam's moments of kept β are not zero
    beta = model.get_layer("expand_bn").beta
    kept = pruner.kept["expand"]
    assert np.abs(_np(beta)[kept] - trained["start"][beta.path][kept]).max() > 1e-3
    velocity = {v.name: _np(v) for v in model.optimizer.variables}[
        f"{beta.path.replace('/', '_')}_velocity"]
    assert velocity[kept].min() > 0
    # masks only grow: each epoch's kept channels are within the last's
    for before, after in zip(recorder.kept, recorder.kept[1:]):
        assert all(after[g] <= before[g] for g in before)
    assert recorder.kept[-1] != recorder.kept[0]


def test_sparsity_follows_the_schedule_per_epoch(trained):
    pruner, recorder, schedule = trained["pruner"], trained["recorder"], trained["schedule"]
    # pruning epochs 0, 2, 3: epoch 1 keeps s(0), epoch 4 keeps s(3)
    shares = [_zhu_gupta(e, 0.25, 0.75, 0, 3) for e in (0, 0, 2, 3, 3)]
    assert [h["sparsity"] for h in pruner.history] == pytest.approx(shares)
    assert [schedule.sparsity(e) for e in (0, 2, 3)] == pytest.approx(
        [shares[0], shares[2], shares[3]])
    stem = [8 - int(np.floor(s * 8 + 1e-9)) for s in shares]
    expand = [16 - int(np.floor(s * 16 + 1e-9)) for s in shares]
    assert stem == [6, 6, 3, 2, 2] and expand == [12, 12, 5, 4, 4]
    assert [h["channels"] for h in pruner.history] == [
        {"stem": a, "expand": b} for a, b in zip(stem, expand)]
    # the weights say the same: dead filters of stem and expand at each epoch
    assert recorder.dead == [{"stem": 8 - a, "expand": 16 - b}
                             for a, b in zip(stem, expand)]
    assert [h["epoch"] for h in pruner.history] == [0, 1, 2, 3, 4]


def test_the_stripped_model_equals_the_masked_model(trained):
    model, pruner, x = trained["model"], trained["pruner"], trained["x"]
    small, report = pruner.strip()
    assert small.get_layer("expand").filters == 4
    assert small.get_layer("project").filters == 2
    assert tuple(small.get_layer("dw").kernel.shape) == (3, 3, 4, 1)
    assert small.count_params() == report["params_after"] \
        == pruner.history[-1]["params"] < model.count_params()
    np.testing.assert_allclose(_np(small(x, training=False)),
                               _np(model(x, training=False)), atol=1e-5)
    # its weights are the masked model's at the kept indices
    expand = _np(model.get_layer("expand").kernel)
    expand = expand[:, :, pruner.kept["stem"], :][..., pruner.kept["expand"]]
    np.testing.assert_array_equal(_np(small.get_layer("expand").kernel), expand)
    assert [g["kept"] for g in report["groups"]] == [pruner.kept["stem"],
                                                     pruner.kept["expand"]]
    assert report["sparsity"] == pytest.approx(0.75)


def _sgd_with_masks(weights, x, y, lr, momentum, epochs, mask_epoch, kept):
    """NumPy: Dense(8, sigmoid) -> Dense(3), MSE, SGD with momentum
    (m = μm − lr·g, w = w + m), two batches an epoch in order. At the start
    of ``mask_epoch`` the ``kept`` units of largest L1 norm (of their kernel
    column) are kept; the others are masked (column, bias, head row, and the
    same momentum entries) then and after every batch. Returns the weights
    and the kept units."""
    params = [w.astype("float64") for w in weights]
    slots = [np.zeros_like(p) for p in params]
    n, keep = len(x) // 2, None

    def mask(arrays):
        gone = np.setdiff1d(np.arange(8), keep)
        arrays[0][:, gone] = 0
        arrays[1][gone] = 0
        arrays[2][gone] = 0

    for epoch in range(epochs):
        if epoch == mask_epoch:
            l1 = np.abs(params[0]).sum(0)
            keep = np.sort(np.argsort(-l1, kind="stable")[:kept])
        if keep is not None:
            mask(params), mask(slots)
        for step in range(2):
            xb, yb = x[step * n:(step + 1) * n], y[step * n:(step + 1) * n]
            w1, b1, w2, b2 = params
            h = 1 / (1 + np.exp(-(xb @ w1 + b1)))
            dp = 2 * (h @ w2 + b2 - yb) / yb.size
            dz = (dp @ w2.T) * h * (1 - h)
            grads = [xb.T @ dz, dz.sum(0), h.T @ dp, dp.sum(0)]
            for p, m, g in zip(params, slots, grads):
                m *= momentum
                m -= lr * g
                p += m
            if keep is not None:
                mask(params), mask(slots)
    return params, keep


def test_training_sees_the_masks_even_where_f0_is_not_zero(tmp_path):
    """Dense(8, sigmoid): sigmoid(0) = 0.5, so a masked unit is not zero
    itself, but its head rows are; the training steps (their gradients, the
    momentum) see the masked weights: the weights after fit equal a NumPy
    run of masked SGD. The stripped model equals the masked one, and saves
    and loads."""
    model = keras.Sequential([keras.Input((5,)),
                              L.Dense(8, activation="sigmoid", name="a"),
                              L.Dense(3, name="head")])
    model.compile(optimizer=keras.optimizers.SGD(0.5, momentum=0.9),
                  loss="mse")
    start = [_np(w) for w in model.weights]
    x = np.random.default_rng(0).normal(size=(8, 5)).astype("float32")
    y = np.random.default_rng(1).normal(size=(8, 3)).astype("float32")
    pruner = PruningCallback(PolynomialDecay(0.5, end_epoch=1), verbose=0)
    model.fit(x, y, epochs=3, batch_size=4, shuffle=False, verbose=0,
              callbacks=[pruner])
    expected, keep = _sgd_with_masks(start, x, y, 0.5, 0.9, 3, 1, kept=4)
    assert pruner.kept["a"] == keep.tolist()
    for got, want in zip(model.weights, expected):
        np.testing.assert_allclose(_np(got), want, atol=1e-5)
    momentum = {v.name: _np(v) for v in model.optimizer.variables}[
        model.get_layer("head").kernel.path.replace("/", "_") + "_momentum"]
    gone = _removed(8, keep)
    assert np.all(momentum[gone] == 0) and np.abs(momentum).max() > 0
    assert np.all(_np(model.get_layer("head").kernel)[gone] == 0)
    hidden = keras.Model(model.inputs[0], model.get_layer("a").output)
    assert np.all(_np(hidden(x))[:, gone] == 0.5)     # not zero itself
    small, _ = pruner.strip()
    assert small.get_layer("a").units == 4
    np.testing.assert_allclose(_np(small(x)), _np(model(x)), atol=1e-5)
    path = os.path.join(tmp_path, "small.keras")
    small.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.get_layer("a").units == 4
    np.testing.assert_allclose(_np(loaded(x)), _np(small(x)), atol=1e-6)


def _mlp(seed):
    model = keras.Sequential([
        keras.Input((6,)), L.Dense(16, name="a"), L.BatchNormalization(name="a_bn"),
        L.ReLU(), L.Dense(12, name="b"), L.BatchNormalization(name="b_bn"),
        L.ReLU(), L.Dense(3, name="head")])
    return randomize(model, seed)


def test_inside_distiller_fit_the_student_is_pruned_to_a_budget():
    teacher, student = _mlp(0), _mlp(1)
    teacher_weights = [_np(w) for w in teacher.weights]
    distiller = kd.Distiller(teacher, student)
    distiller.compile(optimizer="adam",
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    schedule = PolynomialDecay(0.5, begin_epoch=0, end_epoch=2, frequency=2)
    pruner = PruningCallback(schedule, target="params", global_ranking=True,
                             criterion="bn", verbose=0)
    x = np.random.default_rng(0).normal(size=(8, 6)).astype("float32")
    y = np.arange(8) % 3
    # starts at epoch 1: catches up with the share of epoch 0 (0)
    distiller.fit(x, y, epochs=3, initial_epoch=1, batch_size=4, verbose=0,
                  callbacks=[pruner])
    full = student.count_params()
    assert [h["epoch"] for h in pruner.history] == [1, 2]
    assert pruner.history[0]["params"] == full
    assert pruner.history[1]["params"] <= full // 2
    for a, b in zip(teacher_weights, teacher.weights):
        np.testing.assert_array_equal(a, _np(b))
    # a unit of "a" and one of "b" hold 6 + 1 + 4 + 12 and 16 + 1 + 4 + 3
    # parameters, and they share b's kernel entries: the masked units are
    # what the budget counts
    gone_a = _removed(16, pruner.kept["a"])
    gone_b = _removed(12, pruner.kept["b"])
    na, nb = len(gone_a), len(gone_b)
    assert full - 23 * na - 24 * nb + na * nb == pruner.history[1]["params"]
    assert np.all(_np(student.get_layer("a").kernel)[:, gone_a] == 0)
    assert np.all(_np(student.get_layer("b").kernel)[gone_a] == 0)
    assert np.all(_np(student.get_layer("b_bn").gamma)[gone_b] == 0)
    small, report = pruner.strip()
    assert small.count_params() == report["params_after"] <= full // 2
    assert small.get_layer("a").units == 16 - len(gone_a)
    np.testing.assert_allclose(_np(small(x, training=False)),
                               _np(student(x, training=False)), atol=1e-5)


def test_bad_input_is_refused_naming_the_fix():
    schedule = PolynomialDecay(0.5, end_epoch=2)
    with pytest.raises(TypeError, match="PolynomialDecay"):
        PruningCallback(0.5)
    with pytest.raises(ValueError, match="use target='params' or 'flops'"):
        PruningCallback(schedule, global_ranking=True)
    with pytest.raises(ValueError, match="criterion='l3' is not one of"):
        PruningCallback(schedule, criterion="l3")
    with pytest.raises(ValueError, match="pass the PruningCallback to"):
        PruningCallback(schedule).strip()
    x, y = np.ones((4, 5), "float32"), np.ones((4, 3), "float32")
    model = keras.Sequential([keras.Input((5,)), L.Dense(4, name="a"),
                              L.Dense(3, name="head")])
    model.compile(optimizer="adam", loss="mse")
    with pytest.raises(ValueError, match="raise epochs above end_epoch"):
        model.fit(x, y, epochs=2, verbose=0,
                  callbacks=[PruningCallback(schedule, verbose=0)])
    refused = keras.Sequential([keras.Input((5,)), L.Dense(4, name="a"),
                                L.UnitNormalization(name="unit"),
                                L.Dense(3, name="head")])
    refused.compile(optimizer="adam", loss="mse")
    with pytest.raises(ValueError, match="Add 'unit' to never_prune="):
        refused.fit(x, y, epochs=3, verbose=0,
                    callbacks=[PruningCallback(schedule, verbose=0)])
    free = keras.Sequential([keras.Input((None, 2)), L.Conv1D(4, 3, name="c"),
                             L.GlobalAveragePooling1D(), L.Dense(3, name="head")])
    free.compile(optimizer="adam", loss="mse")
    with pytest.raises(ValueError, match="give the model a fixed input shape "
                                         "or use target='params'"):
        free.fit(np.ones((4, 6, 2), "float32"), y, epochs=3, verbose=0,
                 callbacks=[PruningCallback(schedule, target="flops", verbose=0)])
