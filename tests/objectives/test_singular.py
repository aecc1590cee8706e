"""KD-SVD against its NumPy reference (tests/references_singular.py).

Its value equals the reference written from the paper (``np.linalg.svd``),
its gradient reaches the student, stays finite where singular values
coincide, and never reaches the teacher; a ``.keras`` save and load restores
it.
"""

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


def normal(rng, *shape):
    return rng.normal(size=shape).astype("float32")


def loss(teacher, student, **options):
    """``kdsvd_loss`` as NumPy; compiled whole on JAX (op by op, each new
    shape compiles anew, which takes far longer)."""
    fn = lambda t, s: obj.kdsvd_loss(t, s, **options)  # noqa: E731
    return to_numpy(jitted(fn)(teacher, student))


def grad(fn, x):
    return backend_grad(jitted(fn), x)


def jitted(fn):
    if keras.backend.backend() == "jax":
        import jax
        return jax.jit(fn)
    return fn


@pytest.mark.parametrize("vectors", ["channels", "positions"])
def test_kdsvd_matches_numpy(vectors):
    rng = np.random.default_rng(0)
    if vectors == "channels":   # equal channel counts stage by stage
        t = [normal(rng, 3, 4, 4, 5), normal(rng, 3, 4, 4, 6),
             normal(rng, 3, 2, 4, 7)]
    else:                       # equal positions, any widths
        t = [normal(rng, 3, 4, 2, 9), normal(rng, 3, 8, 12)]
    s = [normal(rng, *a.shape[:-1], a.shape[-1] - (vectors == "positions"))
         for a in t]
    for k in (1, 2):
        expected = ref.kdsvd(t, s, k=k, vectors=vectors)
        assert np.all(expected > 1e-3)
        got = loss(t, s, k=k, eps=0.0, vectors=vectors)
        np.testing.assert_allclose(got, expected, rtol=2e-5)
    # the regulariser moves the value by O(eps) only
    np.testing.assert_allclose(loss(t, s, k=2, vectors=vectors), expected,
                               rtol=5e-4)
    np.testing.assert_allclose(
        loss(t, s, sigma=2.0, candidates=1, eps=0.0, vectors=vectors),
        ref.kdsvd(t, s, candidates=1, sigma=2.0, vectors=vectors), rtol=2e-5)
    # the student equal to the teacher: nothing to learn
    np.testing.assert_allclose(loss(t, t, k=2, vectors=vectors), 0.0,
                               atol=1e-7)


def test_kdsvd_gradient_reaches_the_student_not_the_teacher():
    rng = np.random.default_rng(1)
    t = [normal(rng, 1, 3, 3, 3), normal(rng, 1, 3, 3, 4)]
    s = [normal(rng, 1, 3, 3, 3), normal(rng, 1, 3, 3, 4)]
    g = grad(lambda v: ops.sum(obj.kdsvd_loss(t, [s[0], v], k=2, eps=0.0)),
             s[1])
    expected = numeric_grad(lambda v: ref.kdsvd(t, [s[0], v], k=2).sum(),
                            s[1])
    assert np.abs(expected).max() > 1e-3
    np.testing.assert_allclose(g, expected, rtol=2e-3, atol=2e-5)
    g_t = grad(lambda v: ops.sum(obj.kdsvd_loss([t[0], v], s)), t[1])
    assert g_t is None or np.all(g_t == 0)


def test_kdsvd_gradient_is_finite_where_singular_values_coincide():
    """Dead channels and an all-zero map give equal (zero) singular values,
    whose plain SVD gradient is NaN on JAX and PyTorch; the regularised one
    stays finite and still reaches the student's map."""
    rng = np.random.default_rng(2)
    t = [normal(rng, 2, 4, 4, 6), normal(rng, 2, 4, 4, 6)]
    dead = normal(rng, 2, 4, 4, 6)
    dead[..., 2:] = 0.0                            # four dead channels
    s = [normal(rng, 2, 4, 4, 6), dead]
    g = grad(lambda v: ops.sum(obj.kdsvd_loss(t, [s[0], v])), dead)
    assert np.all(np.isfinite(g)) and np.abs(g).max() > 1e-4
    zero = np.zeros((2, 4, 4, 6), "float32")
    g = grad(lambda v: ops.sum(obj.kdsvd_loss(t, [v, s[1]])), zero)
    assert np.all(np.isfinite(g))
    # a map with fewer positions (2x2) than channels (6) on both sides
    small = [normal(rng, 2, 2, 2, 6), normal(rng, 2, 2, 2, 6)]
    g = grad(lambda v: ops.sum(obj.kdsvd_loss(small, [small[0], v])),
             normal(rng, 2, 2, 2, 6))
    assert np.all(np.isfinite(g))


def save_and_load(distiller, tmp_path):
    path = os.path.join(tmp_path, "distiller.keras")
    distiller.save(path)
    return keras.models.load_model(path)


def test_kdsvd_in_distiller_matches_numpy_trains_and_saves(sparse_ce,
                                                           tmp_path):
    """The plain SVD (eps=0) on full-rank maps, so that the logged value
    equals the reference's to float32 precision."""
    teacher, student = cnn(6, "teacher"), cnn(6, "student")
    layers = ("conv1", "conv2")
    svd = obj.KDSVD([f"teacher_{n}" for n in layers],
                    [f"student_{n}" for n in layers], k=2, eps=0.0,
                    weight=2.0)
    distiller = kd.Distiller(teacher=teacher, student=student)
    distiller.compile(optimizer="sgd", loss=sparse_ce, alpha=1.0,
                      distillation_loss=None, feature_losses=[svd])
    rng = np.random.default_rng(3)
    x = rng.random((8, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 10, 8).astype("int32")
    logs = distiller.evaluate(x, y, batch_size=8, verbose=0, return_dict=True)
    expected = ref.kdsvd(
        [features(teacher, f"teacher_{n}", x) for n in layers],
        [features(student, f"student_{n}", x) for n in layers], k=2).mean()
    np.testing.assert_allclose(logs["kdsvd_loss"], expected, rtol=1e-4)

    # one step: the student moves and stays finite, the teacher does not
    teacher_before = [to_numpy(w) for w in teacher.weights]
    student_before = [to_numpy(w) for w in student.weights]
    history = distiller.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert np.isfinite(history.history["kdsvd_loss"][0])
    for a, w in zip(teacher_before, teacher.weights):
        np.testing.assert_array_equal(a, to_numpy(w))
    after = [to_numpy(w) for w in student.weights]
    assert all(np.all(np.isfinite(w)) for w in after)
    assert not np.allclose(student_before[0], after[0])   # conv1's kernel

    logs = distiller.evaluate(x, y, batch_size=8, verbose=0, return_dict=True)
    loaded = save_and_load(distiller, tmp_path)
    assert loaded.feature_objectives[0].get_config() == svd.get_config()
    again = loaded.evaluate(x, y, batch_size=8, verbose=0, return_dict=True)
    np.testing.assert_allclose(again["kdsvd_loss"], logs["kdsvd_loss"],
                               rtol=1e-5)


def test_kdsvd_errors_name_the_fix():
    """(``Distiller.compile`` calls ``build_for`` with the tapped shapes.)"""
    with pytest.raises(ValueError, match="vectors='positions'"):
        obj.KDSVD(["t1", "t2"], ["s1", "s2"]).build_for(
            [(None, 8, 8, 8)] * 2, [(None, 8, 8, 4)] * 2)
    with pytest.raises(ValueError, match="two or more"):
        obj.KDSVD(["teacher_conv2"], ["student_conv2"])
    with pytest.raises(ValueError, match="vectors must be one of"):
        obj.KDSVD(["a", "b"], ["c", "d"], vectors="rows")
    with pytest.raises(ValueError, match="k must be a whole number"):
        obj.KDSVD(["a", "b"], ["c", "d"], k=0)
    with pytest.raises(ValueError, match="sigma"):
        obj.KDSVD(["a", "b"], ["c", "d"], sigma=0.0)
    svd = obj.KDSVD(["a", "b"], ["c", "d"], k=5)
    with pytest.raises(ValueError, match="lower k"):
        svd.build_for([(None, 2, 2, 8)] * 2, [(None, 2, 2, 8)] * 2)
    with pytest.raises(ValueError, match="before pooling"):
        svd.build_for([(None, 8)] * 2, [(None, 8)] * 2)


def test_kdsvd_benchmark_row_fits_the_narrower_student():
    """The MNIST-1D row: conv1 and conv2 (40 positions) of a teacher 32-32
    wide and a student 4-8 wide; vectors along the positions, fresh per
    teacher. Along the channels the widths would not match."""
    from tests.helpers import benchmark_module

    objectives = benchmark_module("objectives")
    rows = {name: kwargs for name, _, kwargs in objectives.configs(15)}
    row = rows["KD-SVD"]
    first, second = row(None), row(None)   # (this row needs no teacher)
    (svd,), (other,) = first["feature_losses"], second["feature_losses"]
    assert svd is not other and first["alpha"] == 1.0
    assert (svd.k, svd.sigma, svd.weight, svd.vectors) == (1, 8.0, 1.0,
                                                           "positions")
    teacher_shapes = [(None, 40, 32), (None, 40, 32)]
    student_shapes = [(None, 40, 4), (None, 40, 8)]
    svd.build_for(teacher_shapes, student_shapes)
    with pytest.raises(ValueError, match="equal channel counts"):
        obj.KDSVD(svd.teacher_layers, svd.student_layers).build_for(
            teacher_shapes, student_shapes)
