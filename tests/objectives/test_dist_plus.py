"""DIST+'s feature relations against the NumPy reference
(tests/references_singular.py): value, gradient to the student only,
``.keras`` save and load, next to DIST in a Distiller."""

import os

import keras
import numpy as np
import pytest
from keras import ops

import keras_kd as kd
from keras_kd import objectives as obj
from tests import references_singular as ref
from tests.helpers import (backend_grad, cnn, layer_features as features,
                           numeric_grad, to_numpy)


def grad(fn, x):
    """The backend's gradient; compiled whole on JAX (faster than op by op)."""
    if keras.backend.backend() == "jax":
        import jax
        fn = jax.jit(fn)
    return backend_grad(fn, x)


def test_dist_plus_matches_numpy_and_gradients():
    rng = np.random.default_rng(0)
    t = rng.normal(size=(4, 3, 3, 5)).astype("float32")
    s = rng.normal(size=(4, 3, 3, 5)).astype("float32")
    for iota, kappa in ((1.0, 1.0), (0.5, 0.0), (0.0, 2.0)):
        got = to_numpy(obj.dist_plus_loss(t, s, iota, kappa))
        np.testing.assert_allclose(got, ref.dist_plus(t, s, iota, kappa),
                                   rtol=1e-5, atol=1e-6)
    seq_t, seq_s = t.reshape(4, 9, 5), s.reshape(4, 9, 5)[..., :3]
    np.testing.assert_allclose(   # sequences; other widths with iota=0
        to_numpy(obj.dist_plus_loss(seq_t, seq_s, iota=0.0)),
        ref.dist_plus(seq_t, seq_s, iota=0.0), rtol=1e-5)
    # the spatial term is the same for every sample, the channel one not
    assert np.ptp(to_numpy(obj.dist_plus_loss(t, s))) > 1e-3
    g = grad(lambda v: ops.sum(obj.dist_plus_loss(t, v)), s)
    expected = numeric_grad(lambda v: ref.dist_plus(t, v).sum(), s)
    np.testing.assert_allclose(g, expected, rtol=1e-3, atol=1e-6)
    g_t = grad(lambda v: ops.sum(obj.dist_plus_loss(v, s)), t)
    assert g_t is None or np.all(g_t == 0)
    with pytest.raises(ValueError, match="iota=0"):
        obj.dist_plus_loss(seq_t, seq_s)


@pytest.mark.one_backend
def test_dist_plus_next_to_dist_in_distiller_and_saves(sparse_ce, tmp_path):
    """End to end (taps, one step, save and load), on one backend: DIST+'s
    value and gradient are checked on every backend above."""
    teacher, student = cnn(6, "teacher"), cnn(6, "student")
    term = obj.DISTPlus("teacher_conv2", "student_conv2", weight=2.0)
    distiller = kd.Distiller(teacher=teacher, student=student)
    distiller.compile(optimizer="sgd", loss=sparse_ce, alpha=1.0,
                      distillation_loss=obj.DIST(2.0, 2.0, temperature=1.0,
                                                 weight=2.0),
                      feature_losses=[term])
    rng = np.random.default_rng(1)
    x = rng.random((8, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 10, 8).astype("int32")
    logs = distiller.evaluate(x, y, batch_size=8, verbose=0, return_dict=True)
    expected = ref.dist_plus(features(teacher, "teacher_conv2", x),
                             features(student, "student_conv2", x)).mean()
    np.testing.assert_allclose(logs["dist_plus_loss"], expected, rtol=1e-4)
    teacher_before = [to_numpy(w) for w in teacher.weights]
    student_before = to_numpy(student.get_layer("student_conv1").kernel)
    distiller.fit(x, y, batch_size=8, epochs=1, verbose=0)
    for a, w in zip(teacher_before, teacher.weights):
        np.testing.assert_array_equal(a, to_numpy(w))
    assert not np.allclose(
        student_before, to_numpy(student.get_layer("student_conv1").kernel))
    logs = distiller.evaluate(x, y, batch_size=8, verbose=0, return_dict=True)
    path = os.path.join(tmp_path, "distiller.keras")
    distiller.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.feature_objectives[0].get_config() == term.get_config()
    again = loaded.evaluate(x, y, batch_size=8, verbose=0, return_dict=True)
    np.testing.assert_allclose(again["dist_plus_loss"],
                               logs["dist_plus_loss"], rtol=1e-5)


def test_dist_plus_errors_name_the_fix():
    term = obj.DISTPlus("t", "s")
    with pytest.raises(ValueError, match="iota=0"):
        term.build_for((None, 4, 4, 8), (None, 4, 4, 4))
    obj.DISTPlus("t", "s", iota=0.0).build_for((None, 4, 4, 8),
                                               (None, 4, 4, 4))
    with pytest.raises(ValueError, match="same spatial size"):
        term.build_for((None, 4, 4, 8), (None, 2, 2, 8))
    with pytest.raises(ValueError, match="kappa"):
        obj.DISTPlus("t", "s", kappa=-1.0)


def test_dist_plus_benchmark_row():
    """torchdistill's setting halved: 0.5·CE + 0.5·2·DIST(β=γ=2, τ=1) and
    the spatial relation (the student is narrower than the teacher)."""
    from tests.helpers import benchmark_module

    objectives = benchmark_module("objectives")
    row = {name: kwargs for name, _, kwargs in objectives.configs(15)}["DIST+"]
    first, second = row(None), row(None)   # (this row needs no teacher)
    (term,), (other,) = first["feature_losses"], second["feature_losses"]
    assert term is not other
    dist = first["distillation_loss"]
    assert (first["alpha"], first["temperature"]) == (0.5, 1.0)
    assert (dist.beta, dist.gamma, dist.weight) == (2.0, 2.0, 2.0)
    assert (term.iota, term.kappa, term.weight) == (0.0, 1.0, 1.0)
    term.build_for((None, 40, 32), (None, 40, 8))
