"""Relation objectives (RKD, SP, PKT) against NumPy, and batches of one."""

import keras
import numpy as np
import pytest

import keras_kd as kd
from keras_kd import objectives as obj
from tests.helpers import backend_grad, mlp, numeric_grad, to_numpy
from tests.references import (pkt as np_pkt, rkd as np_rkd,
                              rkd_angle as np_rkd_angle,
                              rkd_distance as np_rkd_distance, sp as np_sp)

BACKEND = keras.backend.backend()


def embeddings(seed, batch=6, t_width=10, s_width=4):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(batch, t_width)).astype("float32"),
            rng.normal(size=(batch, s_width)).astype("float32"))


FUNCTIONS = {
    "rkd_distance": (obj.rkd_distance_loss, np_rkd_distance),
    "rkd_angle": (obj.rkd_angle_loss, np_rkd_angle),
    "rkd": (obj.rkd_loss, np_rkd),
    "sp": (obj.sp_loss, np_sp),
    "pkt": (obj.pkt_loss, np_pkt),
}


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_relation_matches_numpy(name):
    fn, ref = FUNCTIONS[name]
    t, s = embeddings(0)
    got = to_numpy(fn(t, s))
    assert got.shape == ()
    np.testing.assert_allclose(got, ref(t, s), rtol=1e-4, atol=1e-7)
    # Feature maps are flattened per sample.
    rng = np.random.default_rng(1)
    t4 = rng.normal(size=(5, 3, 3, 4)).astype("float32")
    s4 = rng.normal(size=(5, 2, 2, 3)).astype("float32")
    np.testing.assert_allclose(to_numpy(fn(t4, s4)), ref(t4, s4), rtol=1e-4,
                               atol=1e-7)


@pytest.mark.parametrize("name", ["rkd", "sp", "pkt"])
def test_relation_gradient_matches_finite_differences(name):
    fn, ref = FUNCTIONS[name]
    t, s = embeddings(2, batch=4, t_width=5, s_width=3)
    got = backend_grad(lambda v: fn(t, v), s)
    expected = numeric_grad(lambda v: ref(t, v), s)
    scale = np.abs(expected).max()
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4 * scale)


def test_rkd_gives_no_gradient_to_the_teacher():
    t, s = embeddings(3, batch=4, t_width=5, s_width=3)
    g = backend_grad(lambda v: obj.rkd_loss(v, s), t)
    assert g is None or np.all(np.asarray(g) == 0)


def test_rkd_weights_combine_terms():
    t, s = embeddings(4)
    rkd = obj.RKD("t", "s", distance_weight=2.0, angle_weight=0.0)
    np.testing.assert_allclose(to_numpy(rkd.compute(t, s)),
                               2.0 * np_rkd_distance(t, s), rtol=1e-4)
    assert rkd.per_sample is False


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_batch_of_one_raises(name):
    fn, _ = FUNCTIONS[name]
    t, s = embeddings(5, batch=1)
    with pytest.raises(ValueError, match="at least 2 samples"):
        fn(t, s)


def test_batch_of_one_in_fit(sparse_ce):
    """JAX and PyTorch know the batch size when tracing: a clear error.

    TensorFlow traces fit() with an unknown batch size, where the check
    cannot run: the documented behaviour is then a loss of 0 (a single
    sample has no relation to another), checked on a traced function.
    """
    if BACKEND == "tensorflow":
        import tensorflow as tf
        spec = tf.TensorSpec((None, 4), tf.float32)
        for fn in (obj.rkd_loss, obj.sp_loss, obj.pkt_loss):
            traced = tf.function(fn, input_signature=[spec, spec])
            t, s = embeddings(7, batch=1, t_width=4, s_width=4)
            assert abs(float(traced(t, s))) < 1e-6
            t, s = embeddings(7, batch=5, t_width=4, s_width=4)
            np.testing.assert_allclose(float(traced(t, s)), float(fn(t, s)),
                                       rtol=1e-5)
        return
    distiller = kd.Distiller(teacher=mlp(16, "teacher"),
                             student=mlp(8, "student"))
    distiller.compile(optimizer="sgd", loss=sparse_ce, feature_losses=[
        obj.RKD("teacher_hidden", "student_hidden")])
    x = np.random.default_rng(6).normal(size=(3, 64)).astype("float32")
    with pytest.raises(ValueError, match="at least 2 samples"):
        distiller.fit(x, np.zeros(3, "int32"), batch_size=2, epochs=1,
                      verbose=0)


@pytest.mark.parametrize("make,match", [
    (lambda: obj.RKD("t", "s", distance_weight=-1.0), "distance_weight"),
    (lambda: obj.RKD("t", "s", distance_weight=0, angle_weight=0),
     "distance_weight > 0 or angle_weight > 0"),
    (lambda: obj.SimilarityPreserving("t", ""), "layer name"),
    (lambda: obj.PKT("t", "s", weight=-3.0), "weight must be a number"),
])
def test_bad_options_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("cls,kwargs", [
    (obj.RKD, dict(distance_weight=25.0, angle_weight=50.0, weight=2.0)),
    (obj.SimilarityPreserving, dict(weight=3000.0)),
    (obj.PKT, dict(weight=30000.0)),
])
def test_config_round_trip(cls, kwargs):
    instance = cls("t_pool", "s_pool", name="rel", **kwargs)
    config = instance.get_config()
    assert config == dict(kwargs, name="rel", teacher_layer="t_pool",
                          student_layer="s_pool")
    clone = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(instance))
    assert type(clone) is cls and clone.get_config() == config
