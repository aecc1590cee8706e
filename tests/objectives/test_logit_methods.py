"""Tf-KD, MLKD and CTKD against NumPy references, in a Distiller, saved."""

import os

import keras
import numpy as np
import pytest
from keras import ops

import keras_kd as kd
from keras_kd import objectives as obj
from tests.helpers import backend_grad, mlp, numeric_grad, to_numpy
from tests.references_logit_schemes import (
    ctkd as np_ctkd,
    ctkd_lambda as np_ctkd_lambda,
    ctkd_temperature as np_ctkd_temperature,
    mlkd as np_mlkd,
    sparse_ce as np_sparse_ce,
    tfkd as np_tfkd,
)


def logits(seed, batch=6, classes=5, scale=2.0):
    rng = np.random.default_rng(seed)
    t, s = [(scale * rng.normal(size=(batch, classes))).astype("float32")
            for _ in range(2)]
    return t, s, rng.integers(0, classes, batch)


# ----------------------------------------------------------------------
# Values against the references
# ----------------------------------------------------------------------
@pytest.mark.parametrize("a,T", [(0.99, 20.0), (0.9, 1.0), (0.6, 4.0)])
def test_tfkd_matches_numpy(a, T):
    _, s, y = logits(0)
    got = to_numpy(obj.tfkd_loss(y, s, a, T))
    assert got.shape == (6,) and got.dtype == np.float32
    np.testing.assert_allclose(got, np_tfkd(y, s, a, T), rtol=1e-4,
                               atol=1e-7)
    one_hot = np.eye(5, dtype="float32")[y]
    np.testing.assert_allclose(to_numpy(obj.tfkd_loss(one_hot, s, a, T)),
                               got, rtol=1e-6)


@pytest.mark.parametrize("temps,w", [
    ((2.0, 3.0, 4.0, 5.0, 6.0), (1.0, 1.0, 1.0)),
    ((1.0,), (0.5, 3.0, 0.0)),
    ((4.0, 2.0), (0.0, 0.0, 2.0)),
])
def test_mlkd_matches_numpy(temps, w):
    t, s, _ = logits(1)
    got = to_numpy(obj.mlkd_loss(t, s, temps, *w))
    assert got.shape == (6,)
    np.testing.assert_allclose(got, np_mlkd(t, s, temps, *w), rtol=1e-4,
                               atol=1e-6)


def test_mlkd_levels_are_distinct():
    # Each level alone is a different function of the predictions: the
    # batch term vanishes when each sample's probabilities keep their
    # pairwise dot products, the class term when each class's column does.
    t, s, _ = logits(2)
    only = [to_numpy(obj.mlkd_loss(t, s, (2.0,), *w)) for w in
            [(1, 0, 0), (0, 1, 0), (0, 0, 1)]]
    assert only[1].std() < 1e-6 and only[2].std() < 1e-6  # batch-level
    assert only[0].std() > 1e-3                            # per sample
    np.testing.assert_allclose(
        to_numpy(obj.mlkd_loss(t, s, (2.0,))), sum(only), rtol=1e-5)


def test_ctkd_value_is_kd_at_the_learned_temperature():
    t, s, _ = logits(3)
    ctkd = obj.CTKD(initial_parameter=-0.5, t_start=2.0, t_end=10.0)
    T = np_ctkd_temperature(-0.5, 2.0, 10.0)
    assert ctkd.temperature == pytest.approx(T, rel=1e-6)
    np.testing.assert_allclose(to_numpy(ctkd.compute(t, s, temperature=4.0)),
                               np_ctkd(t, s, -0.5, 2.0, 10.0), rtol=1e-4)


def test_ctkd_lambda_follows_the_cosine_ramp():
    got = [obj.ctkd_lambda(e, 10) for e in range(13)]
    np.testing.assert_allclose(got, [np_ctkd_lambda(e) for e in range(13)])
    assert got[0] == 0.0 and got[10] == got[12] == 1.0
    ctkd = obj.CTKD(decay_epochs=4, lambda_max=2.0)
    ctkd.on_epoch_begin(2)
    assert ctkd.reversal_strength == pytest.approx(1.0)


def test_multi_teacher_lists():
    t1, s, y = logits(4)
    t2 = logits(5)[0]
    w = [0.25, 0.75]
    mixed = np.log(0.25 * np.exp(t1) / np.exp(t1).sum(-1, keepdims=True)
                   + 0.75 * np.exp(t2) / np.exp(t2).sum(-1, keepdims=True))
    # At T=1 the mixture of the teachers' distributions is softmax(mixed).
    np.testing.assert_allclose(
        to_numpy(obj.mlkd_loss([t1, t2], s, (1.0,), teacher_weights=w)),
        np_mlkd(mixed, s, (1.0,)), rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------
# Gradients
# ----------------------------------------------------------------------
def test_reverse_gradient_flips_and_scales_the_gradient():
    x = np.array([0.3, -1.2, 2.0], "float32")
    for lam in (0.0, 0.5, 1.0):
        got = backend_grad(lambda v: ops.sum(ops.square(
            obj.reverse_gradient(v, lam))), x)
        np.testing.assert_allclose(got, -lam * 2.0 * x, rtol=1e-6)
        np.testing.assert_array_equal(
            to_numpy(obj.reverse_gradient(x, lam)), x)


def test_gradients_match_finite_differences():
    t, s, y = logits(6, batch=4, classes=4)
    cases = [
        (lambda v: ops.sum(obj.tfkd_loss(y, v, 0.9, 2.0)),
         lambda v: np.sum(np_tfkd(y, v, 0.9, 2.0))),
        (lambda v: ops.mean(obj.mlkd_loss(t, v, (1.0, 3.0))),
         lambda v: np.mean(np_mlkd(t, v, (1.0, 3.0)))),
    ]
    for fn, ref in cases:
        np.testing.assert_allclose(backend_grad(fn, s), numeric_grad(ref, s),
                                   rtol=1e-3, atol=1e-5)


# ----------------------------------------------------------------------
# In a Distiller: values, what trains, save and load
# ----------------------------------------------------------------------
ALPHA, LR = 0.25, 0.5


def batch():
    rng = np.random.default_rng(7)
    return (rng.normal(size=(16, 64)).astype("float32"),
            rng.integers(0, 10, 16).astype("int32"))


def make(objective, teacher=None):
    student = mlp(8, "student")
    teacher = teacher or mlp(16, "teacher")
    distiller = kd.Distiller(teacher=teacher, student=student)
    distiller.compile(
        optimizer=keras.optimizers.SGD(LR), alpha=ALPHA,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        distillation_loss=objective)
    return distiller


@pytest.mark.parametrize("name", ["tfkd", "mlkd", "ctkd"])
def test_distiller_evaluates_the_reference(name):
    distiller = make(name)
    x, y = batch()
    logs = distiller.evaluate(x, y, batch_size=16, verbose=0,
                              return_dict=True)
    t = to_numpy(distiller.teacher(x)).astype("float64")
    s = to_numpy(distiller.student(x)).astype("float64")
    soft = {"tfkd": lambda: np_tfkd(y, s).mean(),
            "mlkd": lambda: np_mlkd(t, s).mean(),
            "ctkd": lambda: np_ctkd(t, s, 1.0).mean()}[name]()
    hard = np_sparse_ce(y, s).mean()
    np.testing.assert_allclose(logs["distillation_loss"], soft, rtol=1e-4)
    np.testing.assert_allclose(logs["loss"], ALPHA * hard + (1 - ALPHA) * soft,
                               rtol=1e-4)


@pytest.mark.parametrize("name", ["tfkd", "mlkd"])
def test_a_step_trains_the_student_never_the_teacher(name):
    teacher = (obj.virtual_teacher(mlp(8, "s0")) if name == "tfkd"
               else mlp(16, "teacher"))
    distiller = make(name, teacher)
    before_t = [to_numpy(w).copy() for w in distiller.teacher.weights]
    before_s = [to_numpy(w).copy() for w in distiller.student.weights]
    x, y = batch()
    distiller.fit(x, y, epochs=1, batch_size=16, verbose=0)
    for a, w in zip(before_t, distiller.teacher.weights):
        np.testing.assert_array_equal(a, to_numpy(w))
    assert any(np.abs(a - to_numpy(w)).max() > 1e-6
               for a, w in zip(before_s, distiller.student.weights))


def test_ctkd_temperature_ascends_the_loss_and_round_trips(tmp_path):
    distiller = make(obj.CTKD(decay_epochs=1))
    ctkd = distiller.distillation_objective
    ctkd.on_epoch_begin(1)  # λ = 1 from the second epoch on
    x, y = batch()
    t = to_numpy(distiller.teacher(x)).astype("float64")
    s = to_numpy(distiller.student(x)).astype("float64")
    theta0 = 1.0
    h = 1e-5
    d_soft = (np_ctkd(t, s, theta0 + h).mean()
              - np_ctkd(t, s, theta0 - h).mean()) / (2 * h)
    before_t = [to_numpy(w).copy() for w in distiller.teacher.weights]
    distiller.fit(x, y, epochs=2, initial_epoch=1, batch_size=16,
                  shuffle=False, verbose=0)
    # One SGD step on θ with the reversed gradient: θ + lr·λ·(1−α)·dL/dθ.
    (theta,) = ctkd.trainable_weights
    theta1 = float(to_numpy(theta))
    assert theta1 == pytest.approx(theta0 + LR * (1 - ALPHA) * d_soft,
                                   rel=1e-3, abs=1e-6)
    assert abs(theta1 - theta0) > 1e-4
    for a, w in zip(before_t, distiller.teacher.weights):
        np.testing.assert_array_equal(a, to_numpy(w))
    assert ctkd.temperature == pytest.approx(np_ctkd_temperature(theta1),
                                             rel=1e-5)

    path = os.path.join(tmp_path, "d.keras")
    distiller.save(path)
    loaded = keras.models.load_model(path)
    restored = loaded.distillation_objective
    assert isinstance(restored, obj.CTKD)
    assert restored.get_config() == ctkd.get_config()
    assert restored.temperature == pytest.approx(ctkd.temperature, rel=1e-6)
    assert restored.reversal_strength == 1.0


@pytest.mark.parametrize("objective", [
    obj.TfKD(correct_prob=0.9, temperature=5.0, weight=2.0),
    obj.MLKD(temperatures=(1.0, 4.0), batch_weight=0.5, class_weight=2.0),
], ids=["tfkd", "mlkd"])
def test_save_and_load_restore_the_config(objective, tmp_path):
    teacher = (obj.virtual_teacher(mlp(8, "s0"))
               if isinstance(objective, obj.TfKD) else None)
    distiller = make(objective, teacher)
    x, y = batch()
    distiller.fit(x, y, epochs=1, batch_size=16, verbose=0)
    path = os.path.join(tmp_path, "d.keras")
    distiller.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded.distillation_objective) is type(objective)
    assert loaded.distillation_objective.get_config() == \
        objective.get_config()
    np.testing.assert_allclose(
        loaded.evaluate(x, y, verbose=0, return_dict=True)["loss"],
        distiller.evaluate(x, y, verbose=0, return_dict=True)["loss"],
        rtol=1e-5)


def test_registry_and_errors():
    for name, cls in [("tfkd", obj.TfKD), ("mlkd", obj.MLKD),
                      ("ctkd", obj.CTKD)]:
        assert type(obj.get(name)) is cls
    assert obj.get("tfkd").needs_labels
    with pytest.raises(ValueError, match="correct_prob"):
        obj.TfKD(correct_prob=1.5)
    with pytest.raises(ValueError, match="temperatures"):
        obj.MLKD(temperatures=[])
    with pytest.raises(ValueError, match="decay_epochs"):
        obj.CTKD(decay_epochs=-1)
    with pytest.raises(ValueError, match="labels"):
        obj.TfKD().compute(None, np.zeros((2, 3)), labels=None)
    with pytest.raises(ValueError, match="one output"):
        obj.virtual_teacher(keras.Sequential([keras.layers.Dense(3)]))


def test_the_virtual_teacher_is_not_reported_untrained():
    import warnings
    student = mlp(8, "student")
    distiller = kd.Distiller(teacher=obj.virtual_teacher(student),
                             student=student)
    distiller.compile(optimizer="sgd", distillation_loss="tfkd")
    x, y = batch()
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*untrained teacher")
        distiller.fit(x, y, epochs=1, batch_size=16, verbose=0)
