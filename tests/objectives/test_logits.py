"""Logit objectives (KD, DKD, LS, DIST, hard, multi-teacher) against NumPy."""

import keras
import numpy as np
import pytest
from keras import ops

import keras_kd as kd
from keras_kd import objectives as obj
from tests.helpers import backend_grad, mlp, numeric_grad, to_numpy
from tests.references import (dist as np_dist, dkd as np_dkd,
                              hard as np_hard, kd as np_kd, ls as np_ls,
                              softmax as np_softmax,
                              sparse_ce as np_sparse_ce)


def random_logits(seed, batch=6, classes=5, scale=2.0):
    rng = np.random.default_rng(seed)
    return [(scale * rng.normal(size=(batch, classes))).astype("float32")
            for _ in range(3)], rng.integers(0, classes, batch)


# ----------------------------------------------------------------------
# Values
# ----------------------------------------------------------------------
@pytest.mark.parametrize("T", [1.0, 4.0])
@pytest.mark.parametrize("alpha,beta", [(1.0, 8.0), (0.5, 0.0), (0.0, 2.0)])
def test_dkd_matches_numpy(T, alpha, beta):
    (t, s, _), y = random_logits(0)
    got = to_numpy(obj.dkd_loss(t, s, y, alpha, beta, T))
    np.testing.assert_allclose(got, np_dkd(t, s, y, alpha, beta, T),
                               rtol=1e-4, atol=1e-6)
    assert got.shape == (6,) and got.dtype == np.float32


def test_dkd_with_alpha_beta_one_equals_kd_split():
    # With alpha = beta = 1 DKD differs from KD only by the (1 − p_t,y)
    # factor on NCKD (Zhao et al. eq. 5): KD = TCKD + (1 − p_t,y) · NCKD.
    (t, s, _), y = random_logits(1)
    T = 2.0
    tckd = to_numpy(obj.dkd_loss(t, s, y, 1.0, 0.0, T))
    nckd = to_numpy(obj.dkd_loss(t, s, y, 0.0, 1.0, T))
    p_ty = np_softmax(t / T)[np.arange(len(y)), y]
    np.testing.assert_allclose(tckd + (1 - p_ty) * nckd, np_kd(t, s, T),
                               rtol=1e-4, atol=1e-6)


def test_dkd_accepts_one_hot_labels():
    (t, s, _), y = random_logits(2)
    one_hot = np.eye(5, dtype="float32")[y]
    np.testing.assert_allclose(to_numpy(obj.dkd_loss(t, s, one_hot)),
                               to_numpy(obj.dkd_loss(t, s, y)), rtol=1e-6)


@pytest.mark.parametrize("T", [1.0, 2.0, 5.0])
def test_ls_matches_numpy(T):
    (t, s, _), _ = random_logits(3)
    got = to_numpy(obj.ls_loss(t, s, T))
    np.testing.assert_allclose(got, np_ls(t, s, T), rtol=1e-4, atol=1e-6)
    # Invariant to a per-row affine change of the student's logits.
    shifted = to_numpy(obj.ls_loss(t, 3.0 * s + 7.0, T))
    np.testing.assert_allclose(shifted, got, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("T,beta,gamma", [(1.0, 1.0, 1.0), (4.0, 2.0, 0.5)])
def test_dist_matches_numpy(T, beta, gamma):
    (t, s, _), _ = random_logits(4, batch=8)
    got = to_numpy(obj.dist_loss(t, s, T, beta, gamma))
    assert got.shape == (8,)
    np.testing.assert_allclose(got.mean(), np_dist(t, s, T, beta, gamma),
                               rtol=1e-4, atol=1e-6)


def test_hard_matches_numpy():
    (t, s, _), _ = random_logits(5)
    np.testing.assert_allclose(to_numpy(obj.hard_loss(t, s)), np_hard(t, s),
                               rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------
# Multi-teacher: every logit objective takes a list of teacher logits
# ----------------------------------------------------------------------
def test_every_objective_accepts_a_list_of_teachers():
    (t1, t2, s), y = random_logits(6)
    w = [0.25, 0.75]
    T = 3.0
    np.testing.assert_allclose(to_numpy(obj.kd_loss([t1, t2], s, T, w)),
                               np_kd([t1, t2], s, T, w), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(to_numpy(obj.dkd_loss([t1, t2], s, y, 1.0, 8.0,
                                                     T, w)),
                               np_dkd([t1, t2], s, y, 1.0, 8.0, T, w),
                               rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(to_numpy(obj.ls_loss([t1, t2], s, T, w)),
                               np_ls([t1, t2], s, T, w), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(
        to_numpy(obj.dist_loss([t1, t2], s, T, teacher_weights=w)).mean(),
        np_dist([t1, t2], s, T, weights=w), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(to_numpy(obj.hard_loss([t1, t2], s, w)),
                               np_hard([t1, t2], s, w), rtol=1e-5, atol=1e-6)


def test_two_teacher_distiller_matches_numpy(sparse_ce):
    teachers = [mlp(16, "t1"), mlp(24, "t2")]
    student = mlp(8, "student")
    distiller = kd.Distiller(teacher=teachers, student=student,
                             teacher_weights=[1.0, 3.0])
    alpha, T = 0.3, 2.0
    distiller.compile(optimizer="sgd", loss=sparse_ce, alpha=alpha,
                      temperature=T, distillation_loss="kd")
    rng = np.random.default_rng(7)
    x = rng.normal(size=(16, 64)).astype("float32")
    y = rng.integers(0, 10, 16)
    logs = distiller.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)
    t = [to_numpy(m(x)).astype("float64") for m in teachers]
    s = to_numpy(student(x)).astype("float64")
    soft = np_kd(t, s, T, [0.25, 0.75]).mean()
    hard = np_sparse_ce(y, s).mean()
    np.testing.assert_allclose(logs["distillation_loss"], soft, rtol=1e-4)
    np.testing.assert_allclose(logs["student_loss"], hard, rtol=1e-4)
    np.testing.assert_allclose(logs["loss"], alpha * hard + (1 - alpha) * soft,
                               rtol=1e-4)


@pytest.mark.parametrize("name", ["dkd", "ls", "dist", "hard"])
def test_two_teacher_distiller_by_name(name, sparse_ce):
    teachers = [mlp(16, "t1"), mlp(24, "t2")]
    student = mlp(8, "student")
    distiller = kd.Distiller(teacher=teachers, student=student)
    T = 2.0
    distiller.compile(optimizer="sgd", loss=sparse_ce, temperature=T,
                      distillation_loss=name)
    if name == "dkd":
        distiller.distillation_objective.on_epoch_begin(100)
    rng = np.random.default_rng(8)
    x = rng.normal(size=(12, 64)).astype("float32")
    y = rng.integers(0, 10, 12)
    logs = distiller.evaluate(x, y, batch_size=12, verbose=0, return_dict=True)
    t = [to_numpy(m(x)).astype("float64") for m in teachers]
    s = to_numpy(student(x)).astype("float64")
    expected = {
        "dkd": lambda: np_dkd(t, s, y, 1.0, 8.0, T).mean(),
        "ls": lambda: np_ls(t, s, T).mean(),
        "dist": lambda: np_dist(t, s, T),
        "hard": lambda: np_hard(t, s).mean(),
    }[name]()
    np.testing.assert_allclose(logs["distillation_loss"], expected, rtol=1e-4,
                               atol=1e-6)


# ----------------------------------------------------------------------
# Gradients w.r.t. the student
# ----------------------------------------------------------------------
def test_kd_gradient_matches_finite_differences():
    (t, s, _), _ = random_logits(9, batch=4, classes=4)
    w = np.linspace(0.5, 1.5, 4)
    w_t = ops.convert_to_tensor(w, "float32")
    T = 3.0
    got = backend_grad(lambda v: ops.sum(obj.kd_loss(t, v, T) * w_t), s)
    expected = numeric_grad(lambda v: np.sum(np_kd(t, v, T) * w), s)
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("alpha,beta,T", [(1.0, 8.0, 4.0), (2.0, 0.5, 1.0)])
def test_dkd_gradient_matches_finite_differences(alpha, beta, T):
    (t, s, _), y = random_logits(10, batch=4, classes=4)
    w = np.linspace(0.5, 1.5, 4)
    w_t = ops.convert_to_tensor(w, "float32")
    got = backend_grad(
        lambda v: ops.sum(obj.dkd_loss(t, v, y, alpha, beta, T) * w_t), s)
    expected = numeric_grad(
        lambda v: np.sum(np_dkd(t, v, y, alpha, beta, T) * w), s)
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-5)


def test_ls_and_dist_gradients_match_finite_differences():
    (t, s, _), _ = random_logits(11, batch=4, classes=4)
    got = backend_grad(lambda v: ops.sum(obj.ls_loss(t, v, 2.0)), s)
    expected = numeric_grad(lambda v: np.sum(np_ls(t, v, 2.0)), s)
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-5)
    got = backend_grad(lambda v: ops.mean(obj.dist_loss(t, v, 1.0)), s)
    expected = numeric_grad(lambda v: np_dist(t, v, 1.0), s)
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-5)


# ----------------------------------------------------------------------
# Classes: compute, config, registry, DKD warm-up
# ----------------------------------------------------------------------
@pytest.mark.parametrize("cls,kwargs", [
    (obj.DKD, dict(alpha=0.5, beta=2.0, temperature=3.0, warmup_epochs=5,
                   teacher_weights=[1.0, 2.0], weight=2.0)),
    (obj.LS, dict(temperature=2.0, teacher_weights=None, weight=9.0)),
    (obj.DIST, dict(beta=2.0, gamma=0.5, temperature=1.0,
                    teacher_weights=[0.5, 0.5], weight=1.0)),
    (obj.HardDistillation, dict(teacher_weights=[1.0, 1.0], weight=0.5)),
])
def test_config_round_trip(cls, kwargs):
    instance = cls(**kwargs)
    config = instance.get_config()
    assert set(config) == set(kwargs) | {"name"}
    for key, value in kwargs.items():
        assert config[key] == value
    clone = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(instance))
    assert type(clone) is cls and clone.get_config() == config


def test_registry_names():
    for name, cls in [("dkd", obj.DKD), ("ls", obj.LS), ("dist", obj.DIST),
                      ("hard", obj.HardDistillation), ("KD", obj.KD)]:
        assert type(obj.get(name)) is cls
    assert obj.get("dkd").needs_labels and not obj.get("ls").needs_labels


# Configs as keras-kd wrote them when every logit objective lived in
# keras_kd.objectives.logits (copied from serialize_keras_object's output):
# `.keras` files holding them must still load after the module split.
SAVED_BEFORE_SPLIT = [
    ("KD", {"name": "kd", "weight": 1.0, "temperature": 2.0,
            "teacher_weights": None}),
    ("DKD", {"name": "dkd", "weight": 1.0, "alpha": 1.0, "beta": 2.0,
             "temperature": None, "warmup_epochs": 3,
             "teacher_weights": None}),
    ("LS", {"name": "ls", "weight": 1.0, "temperature": None,
            "teacher_weights": None}),
    ("DIST", {"name": "dist", "weight": 1.0, "beta": 1.0, "gamma": 2.0,
              "temperature": None, "teacher_weights": None}),
    ("HardDistillation", {"name": "hard", "weight": 1.0,
                          "teacher_weights": [1.0, 3.0]}),
]


@pytest.mark.parametrize("class_name,config", SAVED_BEFORE_SPLIT,
                         ids=[c for c, _ in SAVED_BEFORE_SPLIT])
def test_configs_saved_before_the_split_still_load(class_name, config):
    saved = {"module": "keras_kd.objectives.logits", "class_name": class_name,
             "config": dict(config), "registered_name": f"keras_kd>{class_name}"}
    loaded = keras.saving.deserialize_keras_object(saved)
    assert type(loaded) is getattr(obj, class_name)
    assert loaded.get_config() == config
    # Registered names did not change: what is saved now loads the same way.
    again = keras.saving.serialize_keras_object(loaded)
    assert again["registered_name"] == f"keras_kd>{class_name}"
    # The old import path still names the same classes and functions.
    from keras_kd.objectives import logits
    assert getattr(logits, class_name) is getattr(obj, class_name)
    assert logits.dist_loss is obj.dist_loss
    assert logits.hard_loss is obj.hard_loss


def test_class_compute_uses_its_options():
    (t, s, _), y = random_logits(12)
    dkd = obj.DKD(alpha=2.0, beta=3.0, temperature=2.0, warmup_epochs=0)
    np.testing.assert_allclose(to_numpy(dkd.compute(t, s, y, temperature=9.0)),
                               np_dkd(t, s, y, 2.0, 3.0, 2.0), rtol=1e-4)
    ls = obj.LS()
    np.testing.assert_allclose(to_numpy(ls.compute(t, s, temperature=3.0)),
                               np_ls(t, s, 3.0), rtol=1e-4)


def test_dkd_warmup_factor_schedule():
    dkd = obj.DKD(warmup_epochs=4)
    factors = []
    for epoch in range(6):
        dkd.on_epoch_begin(epoch)
        factors.append(dkd.warmup_factor)
    np.testing.assert_allclose(factors, [0.25, 0.5, 0.75, 1.0, 1.0, 1.0])
    (t, s, _), y = random_logits(13)
    dkd.on_epoch_begin(1)
    np.testing.assert_allclose(to_numpy(dkd.compute(t, s, y, 4.0)),
                               0.5 * np_dkd(t, s, y, 1.0, 8.0, 4.0), rtol=1e-4)
    no_warmup = obj.DKD(warmup_epochs=0)
    assert no_warmup.warmup_factor == 1.0


def test_dkd_warmup_is_read_by_the_compiled_step(sparse_ce):
    """fit() advances the warm-up; the compiled steps see the new factor."""
    distiller = kd.Distiller(teacher=mlp(16, "teacher"),
                             student=mlp(8, "student"))
    distiller.compile(optimizer="sgd", loss=sparse_ce,
                      distillation_loss=obj.DKD(warmup_epochs=4))
    rng = np.random.default_rng(14)
    x = rng.normal(size=(16, 64)).astype("float32")
    y = rng.integers(0, 10, 16)
    seen = []
    record = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: seen.append(
            distiller.distillation_objective.warmup_factor))
    distiller.fit(x, y, epochs=2, batch_size=16, verbose=0,
                  callbacks=[record])
    assert seen == [0.25, 0.5]
    first = distiller.evaluate(x, y, batch_size=16, verbose=0,
                               return_dict=True)["distillation_loss"]
    distiller.distillation_objective.on_epoch_begin(3)
    full = distiller.evaluate(x, y, batch_size=16, verbose=0,
                              return_dict=True)["distillation_loss"]
    np.testing.assert_allclose(full, 2.0 * first, rtol=1e-5)


# ----------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------
def test_dkd_without_labels_raises():
    (t, s, _), _ = random_logits(15)
    with pytest.raises(ValueError, match="needs the labels"):
        obj.DKD().compute(t, s, labels=None)
    with pytest.raises(ValueError, match="labels"):
        obj.dkd_loss(t, s, None)


def test_dkd_in_distiller_without_labels_raises():
    distiller = kd.Distiller(teacher=mlp(16, "teacher"),
                             student=mlp(8, "student"))
    distiller.compile(optimizer="sgd", distillation_loss="dkd")
    x = np.random.default_rng(16).normal(size=(8, 64)).astype("float32")
    with pytest.raises(ValueError, match="needs labels"):
        distiller.fit(x, epochs=1, batch_size=8, verbose=0)


@pytest.mark.parametrize("make,match", [
    (lambda: obj.DKD(alpha=-1.0), "alpha must be a number >= 0"),
    (lambda: obj.DKD(beta="8"), "beta must be a number >= 0"),
    (lambda: obj.DKD(temperature=0.0), "temperature must be > 0"),
    (lambda: obj.DKD(warmup_epochs=-2), "warmup_epochs"),
    (lambda: obj.LS(temperature=-1.0), "temperature must be > 0"),
    (lambda: obj.DIST(gamma=-0.5), "gamma must be a number >= 0"),
    (lambda: obj.DIST(temperature=0), "temperature must be > 0"),
    (lambda: obj.HardDistillation(teacher_weights=[-1.0, 1.0]),
     "teacher_weights"),
    (lambda: obj.dkd_loss(np.zeros((2, 3)), np.zeros((2, 3)), [0, 1],
                          temperature=-4.0), "temperature must be > 0"),
    (lambda: obj.get("dkdd"), "Unknown distillation_loss"),
])
def test_bad_options_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make()
