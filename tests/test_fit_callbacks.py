"""Keras's own fit() callbacks work with the Distiller unchanged."""

import os

import keras
import numpy as np
import pytest

import keras_kd as kd
from tests.helpers import mlp, to_numpy


def build():
    keras.utils.set_random_seed(3)
    distiller = kd.Distiller(mlp(32, "teacher"), mlp(8, "student"))
    distiller.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        feature_losses=[kd.FitNet("teacher_hidden", "student_hidden")])
    return distiller


def data():
    rng = np.random.default_rng(1)
    return (rng.random((32, 64)).astype("float32"),
            rng.integers(0, 10, 32).astype("int32"))


def test_model_checkpoint_saves_a_loadable_distiller(tmp_path):
    x, y = data()
    path = os.path.join(tmp_path, "best.keras")
    distiller = build()
    history = distiller.fit(
        x, y, validation_data=(x, y), epochs=3, verbose=0,
        callbacks=[keras.callbacks.ModelCheckpoint(
            path, monitor="val_loss", save_best_only=True)]).history
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, kd.Distiller)
    result = loaded.evaluate(x, y, verbose=0, return_dict=True)
    # The file holds the best epoch's Distiller (validation data = x, y):
    # evaluating it gives that epoch's validation figures, term by term.
    best = int(np.argmin(history["val_loss"]))
    assert set(result) == {"loss", "student_loss", "distillation_loss",
                           "fitnet_loss", "accuracy"}
    for key, value in result.items():
        np.testing.assert_allclose(value, history[f"val_{key}"][best],
                                   rtol=1e-5, err_msg=key)


class StopAt(keras.callbacks.Callback):
    """Simulates a crash: raises at the start of a given epoch."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise RuntimeError("interrupted")


def test_backup_and_restore_resumes_and_finishes(tmp_path):
    x, y = data()
    backup = os.path.join(tmp_path, "backup")
    reference = build().fit(x, y, epochs=4, batch_size=8, shuffle=False,
                            verbose=0)
    distiller = build()
    with pytest.raises(RuntimeError, match="interrupted"):
        distiller.fit(x, y, epochs=4, batch_size=8, shuffle=False, verbose=0,
                      callbacks=[keras.callbacks.BackupAndRestore(backup),
                                 StopAt(2)])
    resumed = build()
    history = resumed.fit(x, y, epochs=4, batch_size=8, shuffle=False,
                          verbose=0,
                          callbacks=[keras.callbacks.BackupAndRestore(backup)])
    assert len(history.history["loss"]) == 2  # epochs 3 and 4 only
    np.testing.assert_allclose(history.history["loss"],
                               reference.history["loss"][2:], rtol=1e-4)


def test_early_stopping_on_a_distillation_log(tmp_path):
    x, y = data()
    distiller = build()
    history = distiller.fit(
        x, y, validation_data=(x, y), epochs=50, verbose=0,
        callbacks=[keras.callbacks.EarlyStopping(
            monitor="val_distillation_loss", mode="min", patience=0,
            min_delta=10.0)])
    # epoch 1 sets the best value; epoch 2 cannot improve it by 10: stop.
    assert len(history.history["loss"]) == 2


def test_tensorboard_writes_event_files(tmp_path):
    x, y = data()
    logdir = os.path.join(tmp_path, "logs")
    build().fit(x, y, epochs=1, verbose=0,
                callbacks=[keras.callbacks.TensorBoard(logdir)])
    import tensorflow as tf

    # The Distiller's loss terms reach TensorBoard, one tag each.
    tags = set()
    for root, _, files in os.walk(logdir):
        for name in files:
            if "tfevents" in name:
                for event in tf.compat.v1.train.summary_iterator(
                        os.path.join(root, name)):
                    tags.update(v.tag for v in event.summary.value)
    assert {"epoch_loss", "epoch_student_loss", "epoch_distillation_loss",
            "epoch_fitnet_loss", "epoch_accuracy"} <= tags


def test_student_weights_change_and_teacher_does_not():
    x, y = data()
    distiller = build()
    s_before = [to_numpy(w).copy() for w in distiller.student.weights]
    t_before = [to_numpy(w).copy() for w in distiller.teacher.weights]
    distiller.fit(x, y, epochs=1, verbose=0)
    assert any(not np.array_equal(a, to_numpy(b))
               for a, b in zip(s_before, distiller.student.weights))
    for a, b in zip(t_before, distiller.teacher.weights):
        np.testing.assert_array_equal(a, to_numpy(b))
