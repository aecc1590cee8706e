"""One logit objective plus several feature / relation objectives; labels < 0."""

import keras
import numpy as np

import keras_kd as kd
from keras_kd import objectives as obj
from tests.helpers import cnn, layer_features as features, to_numpy
from tests.references import (at as np_at, dkd as np_dkd, hard as np_hard,
                              kd as np_kd, pkt as np_pkt, reduce_term,
                              rkd as np_rkd, sp as np_sp,
                              sparse_ce as np_sparse_ce)


def make(distillation_loss, alpha=0.2, temperature=2.0):
    teacher = cnn(12, "teacher", batchnorm=False)
    student = cnn(4, "student", batchnorm=False)
    feature_losses = [
        obj.AttentionTransfer("teacher_conv2", "student_conv2", weight=100.0),
        obj.RKD("teacher_pool", "student_pool", weight=0.5),
        obj.SimilarityPreserving("teacher_pool", "student_pool", weight=30.0),
        obj.PKT("teacher_pool", "student_pool", weight=300.0),
    ]
    distiller = kd.Distiller(teacher=teacher, student=student)
    distiller.compile(
        optimizer=keras.optimizers.SGD(0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"], alpha=alpha, temperature=temperature,
        distillation_loss=distillation_loss, feature_losses=feature_losses)
    return distiller, teacher, student


def numpy_terms(teacher, student, x):
    t_logits = to_numpy(teacher(x)).astype("float64")
    s_logits = to_numpy(student(x)).astype("float64")
    t_pool = features(teacher, "teacher_pool", x)
    s_pool = features(student, "student_pool", x)
    per_feature = {
        "at_loss": np_at(features(teacher, "teacher_conv2", x),
                         features(student, "student_conv2", x)).mean(),
        "rkd_loss": np_rkd(t_pool, s_pool),
        "sp_loss": np_sp(t_pool, s_pool),
        "pkt_loss": np_pkt(t_pool, s_pool),
    }
    return t_logits, s_logits, per_feature


WEIGHTS = {"at_loss": 100.0, "rkd_loss": 0.5, "sp_loss": 30.0,
           "pkt_loss": 300.0}


def test_kd_plus_four_feature_objectives_logged_apart():
    alpha, T = 0.2, 2.0
    distiller, teacher, student = make("kd", alpha, T)
    rng = np.random.default_rng(0)
    x = rng.random((10, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 10, 10)
    logs = distiller.evaluate(x, y, batch_size=10, verbose=0, return_dict=True)
    assert set(logs) == {"loss", "student_loss", "distillation_loss",
                         "at_loss", "rkd_loss", "sp_loss", "pkt_loss",
                         "accuracy"}
    t, s, per_feature = numpy_terms(teacher, student, x)
    hard = np_sparse_ce(y, s).mean()
    soft = np_kd(t, s, T).mean()
    np.testing.assert_allclose(logs["student_loss"], hard, rtol=1e-4)
    np.testing.assert_allclose(logs["distillation_loss"], soft, rtol=1e-4)
    for key, value in per_feature.items():
        np.testing.assert_allclose(logs[key], value, rtol=1e-3, atol=1e-7,
                                   err_msg=key)
    total = alpha * hard + (1 - alpha) * soft + sum(
        WEIGHTS[k] * v for k, v in per_feature.items())
    np.testing.assert_allclose(logs["loss"], total, rtol=1e-4)
    np.testing.assert_allclose(logs["accuracy"],
                               (s.argmax(1) == y).mean(), rtol=1e-6)


def test_semi_supervised_batch_end_to_end():
    """Labels < 0 are unlabeled: hard and DKD terms average over the labeled
    samples, the feature and relation terms over the whole batch. Checked on
    the first fit() step (no BatchNorm, no dropout: the step's forward pass
    equals the inference pass before the update)."""
    alpha, T = 0.3, 4.0
    distiller, teacher, student = make(
        obj.DKD(alpha=1.0, beta=8.0, warmup_epochs=0), alpha, T)
    rng = np.random.default_rng(1)
    x = rng.random((12, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 10, 12).astype("int32")
    y[[0, 3, 4, 7, 11]] = -1
    labeled = y >= 0
    t, s, per_feature = numpy_terms(teacher, student, x)
    history = distiller.fit(x, y, batch_size=12, epochs=1, shuffle=False,
                            verbose=0)
    logs = {k: v[0] for k, v in history.history.items()}
    # Σ l·m / Σ m with m the labeled samples (keras_kd/composition.py).
    y0 = np.maximum(y, 0)
    hard = reduce_term(np_sparse_ce(y0, s), mask=labeled)
    soft = reduce_term(np_dkd(t, s, y0, 1.0, 8.0, T), mask=labeled)
    np.testing.assert_allclose(
        hard, np_sparse_ce(y[labeled], s[labeled]).mean(), rtol=1e-12)
    # float32 training step against float64 NumPy: a looser tolerance.
    np.testing.assert_allclose(logs["student_loss"], hard, rtol=1e-3)
    np.testing.assert_allclose(logs["distillation_loss"], soft, rtol=1e-3)
    for key, value in per_feature.items():
        np.testing.assert_allclose(logs[key], value, rtol=1e-3, atol=1e-7,
                                   err_msg=key)
    total = alpha * hard + (1 - alpha) * soft + sum(
        WEIGHTS[k] * v for k, v in per_feature.items())
    np.testing.assert_allclose(logs["loss"], total, rtol=1e-3)
    # The student moved, the teacher did not.
    np.testing.assert_allclose(to_numpy(teacher(x)), t, rtol=1e-6)
    assert not np.allclose(to_numpy(student(x)), s)


def test_semi_supervised_accuracy_counts_labeled_samples_only():
    distiller, _, student = make("kd")
    # The student predicts class 0 everywhere; no labeled sample is a 0, so
    # the accuracy over labeled samples is 0 (unlabeled ones must not count
    # as class-0 hits).
    head = student.get_layer("student_logits")
    kernel, bias = head.get_weights()
    head.set_weights([np.zeros_like(kernel), np.eye(10, dtype="float32")[0]])
    rng = np.random.default_rng(1)
    x = rng.random((12, 8, 8, 1)).astype("float32")
    y = rng.integers(1, 10, 12).astype("int32")
    y[[0, 3, 4, 7, 11]] = -1
    logs = distiller.evaluate(x, y, batch_size=12, verbose=0, return_dict=True)
    assert logs["accuracy"] == 0.0


def test_semi_supervised_hard_objective_uses_every_sample():
    """The hard-distillation term needs no labels: all samples count."""
    alpha, T = 0.5, 2.0
    distiller, teacher, student = make("hard", alpha, T)
    rng = np.random.default_rng(2)
    x = rng.random((8, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 10, 8).astype("int32")
    y[:4] = -1
    logs = distiller.evaluate(x, y, batch_size=8, verbose=0, return_dict=True)
    t = to_numpy(teacher(x)).astype("float64")
    s = to_numpy(student(x)).astype("float64")
    np.testing.assert_allclose(logs["distillation_loss"],
                               np_hard(t, s).mean(), rtol=1e-4)
    np.testing.assert_allclose(
        logs["student_loss"],
        reduce_term(np_sparse_ce(np.maximum(y, 0), s), mask=y >= 0),
        rtol=1e-4)


def test_save_and_load_with_dkd_and_relations(tmp_path):
    distiller, _, _ = make(obj.DKD(warmup_epochs=5))
    distiller.distillation_objective.on_epoch_begin(2)
    path = str(tmp_path / "distiller.keras")
    distiller.save(path)
    loaded = keras.models.load_model(path)
    objective = loaded.distillation_objective
    assert isinstance(objective, obj.DKD)
    assert objective.get_config() == distiller.distillation_objective.get_config()
    np.testing.assert_allclose(objective.warmup_factor, 0.6, rtol=1e-6)
    assert [type(f).__name__ for f in loaded.feature_objectives] == [
        "AttentionTransfer", "RKD", "SimilarityPreserving", "PKT"]
