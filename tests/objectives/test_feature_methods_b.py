"""Multi-stage feature methods (FSP, ReviewKD, FT) and CRD against NumPy.

Each method: its value equals the NumPy reference written from the paper
(tests/references_features_b.py), its gradient reaches the student and its
own layers and never the teacher, and a ``.keras`` save and load restores it.
"""

import os

import keras
import numpy as np
import pytest
from keras import ops

import keras_kd as kd
from keras_kd import objectives as obj
from tests import references_features_b as ref
from tests.helpers import (backend_grad, cnn, layer_features as features,
                           numeric_grad, to_numpy)


def images(n=8, seed=0, shape=(8, 8, 1)):
    rng = np.random.default_rng(seed)
    return (rng.random((n,) + shape).astype("float32"),
            rng.integers(0, 10, n).astype("int32"))


def save_and_load(distiller, tmp_path):
    path = os.path.join(tmp_path, "distiller.keras")
    distiller.save(path)
    return keras.models.load_model(path)


def trainable_ids(model):
    return {id(v) for v in model.trainable_weights}


# ----------------------------------------------------------------------
# FSP
# ----------------------------------------------------------------------
def test_fsp_matches_numpy_with_pooling():
    rng = np.random.default_rng(0)
    t = [(rng.normal(size=(3, 4, 4, 2)), rng.normal(size=(3, 2, 2, 3))),
         (rng.normal(size=(3, 2, 2, 3)), rng.normal(size=(3, 2, 2, 4)))]
    s = [(rng.normal(size=(3, 4, 4, 2)), rng.normal(size=(3, 2, 2, 3))),
         (rng.normal(size=(3, 2, 2, 3)), rng.normal(size=(3, 2, 2, 4)))]
    t = [tuple(a.astype("float32") for a in p) for p in t]
    s = [tuple(a.astype("float32") for a in p) for p in s]
    np.testing.assert_allclose(to_numpy(obj.fsp_matrix(*t[0])),
                               ref.fsp_matrix(*t[0]), rtol=1e-5, atol=1e-6)
    got = to_numpy(obj.fsp_loss(t, s, weights=[1.0, 0.5]))
    np.testing.assert_allclose(got, ref.fsp(t, s, [1.0, 0.5]), rtol=1e-5)
    # gradient: finite differences on the student's first map; none to t
    s1 = s[0][0]
    g = backend_grad(lambda v: ops.sum(obj.fsp_loss(t[:1], [(v, s[0][1])])),
                     s1)
    expected = numeric_grad(lambda v: ref.fsp(t[:1], [(v, s[0][1])]).sum(),
                            s1)
    np.testing.assert_allclose(g, expected, rtol=1e-3, atol=1e-5)
    g_t = backend_grad(lambda v: ops.sum(obj.fsp_loss([(v, t[0][1])], s[:1])),
                       t[0][0])
    assert g_t is None or np.all(g_t == 0)


def test_fsp_in_distiller_matches_numpy_and_saves(sparse_ce, tmp_path):
    teacher, student = cnn(6, "teacher"), cnn(6, "student")
    fsp = obj.FSP([("teacher_conv1", "teacher_conv2")],
                  [("student_conv1", "student_conv2")], weight=2.0)
    distiller = kd.Distiller(teacher=teacher, student=student)
    distiller.compile(optimizer="sgd", loss=sparse_ce, alpha=1.0,
                      distillation_loss=None, feature_losses=[fsp])
    x, y = images()
    logs = distiller.evaluate(x, y, batch_size=8, verbose=0, return_dict=True)
    expected = ref.fsp(
        [(features(teacher, "teacher_conv1", x),
          features(teacher, "teacher_conv2", x))],
        [(features(student, "student_conv1", x),
          features(student, "student_conv2", x))]).mean()
    np.testing.assert_allclose(logs["fsp_loss"], expected, rtol=1e-4)
    loaded = save_and_load(distiller, tmp_path)
    assert loaded.feature_objectives[0].get_config() == fsp.get_config()
    again = loaded.evaluate(x, y, batch_size=8, verbose=0, return_dict=True)
    np.testing.assert_allclose(again["fsp_loss"], logs["fsp_loss"], rtol=1e-6)
    with pytest.raises(ValueError, match="same channel counts"):
        kd.Distiller(teacher=cnn(8, "teacher"), student=cnn(4, "student")
                     ).compile(loss=sparse_ce, feature_losses=[obj.FSP(
                         [("teacher_conv1", "teacher_conv2")],
                         [("student_conv1", "student_conv2")])])
    with pytest.raises(ValueError, match="name pairs"):
        obj.FSP(["teacher_conv1"], [("a", "b")])
