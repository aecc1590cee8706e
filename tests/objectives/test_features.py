"""Attention transfer (and the feature-objective plumbing) against NumPy."""

import keras
import numpy as np
import pytest
from keras import ops

import keras_kd as kd
from keras_kd import objectives as obj
from tests.helpers import (backend_grad, cnn, layer_features as features,
                           mlp, numeric_grad, to_numpy)
from tests.references import (at as np_at,
                              attention_map as np_attention_map,
                              resize_bilinear as np_resize_bilinear,
                              sparse_ce as np_sparse_ce)


@pytest.mark.parametrize("p", [1, 2, 3])
def test_at_matches_numpy(p):
    rng = np.random.default_rng(0)
    t = rng.normal(size=(4, 5, 5, 8)).astype("float32")
    s = rng.normal(size=(4, 5, 5, 3)).astype("float32")
    got = to_numpy(obj.attention_transfer_loss(t, s, p))
    assert got.shape == (4,)
    np.testing.assert_allclose(got, np_at(t, s, p), rtol=1e-4, atol=1e-8)
    a = to_numpy(obj.attention_map(s, p))
    np.testing.assert_allclose(a, np_attention_map(s, p), rtol=1e-5,
                               atol=1e-7)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-5)


def test_at_on_sequences_matches_numpy():
    rng = np.random.default_rng(1)
    t = rng.normal(size=(3, 7, 6)).astype("float32")
    s = rng.normal(size=(3, 7, 2)).astype("float32")
    np.testing.assert_allclose(to_numpy(obj.attention_transfer_loss(t, s)),
                               np_at(t, s), rtol=1e-4, atol=1e-8)


def test_at_gradient_matches_finite_differences():
    rng = np.random.default_rng(2)
    t = rng.normal(size=(2, 3, 3, 4)).astype("float32")
    s = rng.normal(size=(2, 3, 3, 2)).astype("float32")
    w = np.array([1.0, 2.0])
    w_t = ops.convert_to_tensor(w, "float32")
    got = backend_grad(
        lambda v: ops.sum(obj.attention_transfer_loss(t, v) * w_t), s)
    expected = numeric_grad(lambda v: np.sum(np_at(t, v) * w), s)
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-6)


def test_at_gives_no_gradient_to_the_teacher():
    rng = np.random.default_rng(3)
    t = rng.normal(size=(2, 3, 3, 4)).astype("float32")
    s = rng.normal(size=(2, 3, 3, 2)).astype("float32")
    g = backend_grad(lambda v: ops.sum(obj.attention_transfer_loss(v, s)), t)
    assert g is None or np.all(np.asarray(g) == 0)


def test_two_stage_attention_transfer_in_distiller(sparse_ce):
    teacher, student = cnn(16, "teacher"), cnn(4, "student")
    stages = [
        obj.AttentionTransfer("teacher_conv1", "student_conv1",
                              weight=1000.0, name="at1"),
        obj.AttentionTransfer("teacher_conv2", "student_conv2",
                              weight=500.0, name="at2"),
    ]
    distiller = kd.Distiller(teacher=teacher, student=student)
    distiller.compile(optimizer="sgd", loss=sparse_ce, alpha=1.0,
                      distillation_loss=None, feature_losses=stages)
    rng = np.random.default_rng(4)
    x = rng.random((12, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 10, 12)
    logs = distiller.evaluate(x, y, batch_size=12, verbose=0, return_dict=True)
    at1 = np_at(features(teacher, "teacher_conv1", x),
                features(student, "student_conv1", x)).mean()
    at2 = np_at(features(teacher, "teacher_conv2", x),
                features(student, "student_conv2", x)).mean()
    np.testing.assert_allclose(logs["at1_loss"], at1, rtol=1e-4)
    np.testing.assert_allclose(logs["at2_loss"], at2, rtol=1e-4)
    hard = np_sparse_ce(y, to_numpy(student(x)))
    np.testing.assert_allclose(logs["loss"],
                               hard.mean() + 1000.0 * at1 + 500.0 * at2,
                               rtol=1e-4)


def strided_student():
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(4, 3, strides=2, padding="same",
                            name="student_conv")(inputs)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inputs, keras.layers.Dense(10)(h), name="student")


def test_at_spatial_mismatch_needs_resize(sparse_ce):
    teacher = cnn(8, "teacher")
    distiller = kd.Distiller(teacher=teacher, student=strided_student())
    with pytest.raises(ValueError, match="resize=True"):
        distiller.compile(optimizer="sgd", loss=sparse_ce, feature_losses=[
            obj.AttentionTransfer("teacher_conv2", "student_conv")])
    with pytest.raises(ValueError, match="resize=True"):
        obj.attention_transfer_loss(np.ones((2, 8, 8, 3)),
                                    np.ones((2, 4, 4, 3)))
    # With resize=True the student's 4×4 map is resized to 8×8.
    at = obj.AttentionTransfer("teacher_conv2", "student_conv", resize=True)
    distiller.compile(optimizer="sgd", loss=sparse_ce, feature_losses=[at])
    x = np.random.default_rng(5).random((8, 8, 8, 1)).astype("float32")
    s_map = features(distiller.student, "student_conv", x)
    resized = np_resize_bilinear(s_map, (8, 8))
    logs = distiller.evaluate(x, np.zeros(8, "int32"), batch_size=8,
                              verbose=0, return_dict=True)
    np.testing.assert_allclose(
        logs["at_loss"],
        np_at(features(teacher, "teacher_conv2", x), resized).mean(),
        rtol=1e-4)


def test_at_on_vectors_raises(sparse_ce):
    distiller = kd.Distiller(teacher=mlp(16, "teacher"),
                             student=mlp(8, "student"))
    with pytest.raises(ValueError, match="feature maps"):
        distiller.compile(optimizer="sgd", loss=sparse_ce, feature_losses=[
            obj.AttentionTransfer("teacher_hidden", "student_hidden")])
    with pytest.raises(ValueError, match="feature maps"):
        obj.attention_map(np.ones((2, 5)))


@pytest.mark.parametrize("p", [0, -1, "2", True])
def test_at_bad_p_raises(p):
    with pytest.raises(ValueError, match="p must be a number > 0"):
        obj.AttentionTransfer("a", "b", p=p)


def test_at_config_round_trip():
    at = obj.AttentionTransfer("t", "s", weight=1000.0, p=3, resize=True,
                               name="at_stage2")
    config = at.get_config()
    assert config == {"name": "at_stage2", "weight": 1000.0,
                      "teacher_layer": "t", "student_layer": "s",
                      "resize": True, "p": 3.0}
    clone = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(at))
    assert type(clone) is obj.AttentionTransfer
    assert clone.get_config() == config
