"""Exact resumption of distillation: BackupAndRestore after a kill, save/load.

The killed run is a real process: this file doubles as the training script
(``python tests/test_resume.py ...``), run in a subprocess with the current
``KERAS_BACKEND``, which SIGKILLs itself at the start of epoch ``KILL_AT``;
a second process restarts it with the same ``BackupAndRestore`` directory.
Its final weights and metrics must equal an uninterrupted run's.
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import keras_kd as kd  # noqa: E402
from keras_kd import callbacks as kd_callbacks  # noqa: E402
from keras_kd.data import load_digits  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPOCHS = 4
KILL_AT = 2
# Same process-independent computation on the same CPU: results agree to
# float32 round-off at worst; in practice they are bit-identical.
RTOL, ATOL = 1e-5, 1e-6


def _mlp(width, name, dropout=0.0):
    inputs = keras.Input((64,), name=f"{name}_input")
    h = keras.layers.Dense(width, activation="relu", name=f"{name}_hidden")(
        inputs)
    if dropout:
        h = keras.layers.Dropout(dropout, name=f"{name}_dropout")(h)
    return keras.Model(inputs, keras.layers.Dense(10, name=f"{name}_logits")(h),
                       name=name)


def _data():
    (x, y), (xt, yt) = load_digits()
    return (x[:384], y[:384]), (xt[:128], yt[:128])


def train_teacher(path):
    keras.utils.set_random_seed(0)
    (x, y), _ = _data()
    teacher = _mlp(64, "teacher")
    teacher.compile(optimizer=keras.optimizers.Adam(1e-2),
                    loss=keras.losses.SparseCategoricalCrossentropy(
                        from_logits=True))
    teacher.fit(x, y, epochs=3, batch_size=64, shuffle=False, verbose=0)
    # Saved uncompiled: a teacher needs no optimizer.
    frozen = _mlp(64, "teacher")
    frozen.set_weights(teacher.get_weights())
    frozen.save(path)


def build_distiller(teacher_path):
    """A FitNet hint through a Dense adapter, schedules, Adam.

    No dropout: Keras does not save a layer's SeedGenerator state in its
    weights, so after a restore the dropout masks would differ from the
    uninterrupted run's (the comparison could then not be exact).
    """
    keras.utils.set_random_seed(1)
    teacher = keras.models.load_model(teacher_path)
    distiller = kd.Distiller(teacher=teacher,
                             student=_mlp(16, "student"))
    distiller.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"], alpha=0.1, temperature=4.0,
        feature_losses=[kd.FitNet("teacher_hidden", "student_hidden",
                                  weight=0.1)])
    return distiller


def schedules():
    return [kd_callbacks.TemperatureSchedule(8.0, 2.0, epochs=EPOCHS - 1),
            kd_callbacks.AlphaSchedule(0.0, 0.5, epochs=EPOCHS - 1,
                                       kind="cosine")]


class _KillAt(keras.callbacks.Callback):
    """SIGKILLs this process at the start of an epoch (no cleanup runs)."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            os.kill(os.getpid(), signal.SIGKILL)


def distill(teacher_path, backup_dir=None, kill_at=None):
    """Runs the distillation; returns its history and final state."""
    (x, y), (xt, yt) = _data()
    distiller = build_distiller(teacher_path)
    callbacks = schedules()
    if backup_dir is not None:
        callbacks.append(keras.callbacks.BackupAndRestore(backup_dir))
    if kill_at is not None:
        callbacks.append(_KillAt(kill_at))
    history = distiller.fit(x, y, batch_size=64, epochs=EPOCHS, shuffle=False,
                            validation_data=(xt, yt), callbacks=callbacks,
                            verbose=0)
    adapter = distiller.feature_objectives[0].adapter
    return {
        "epochs": [int(e) for e in history.epoch],
        "history": {k: [float(v) for v in vs]
                    for k, vs in history.history.items()},
        "evaluate": {k: float(v) for k, v in distiller.evaluate(
            xt, yt, verbose=0, return_dict=True).items()},
        "student": [np.asarray(keras.ops.convert_to_numpy(w)).tolist()
                    for w in distiller.student.weights],
        "adapter": [np.asarray(keras.ops.convert_to_numpy(w)).tolist()
                    for w in adapter.weights],
        "optimizer": [np.asarray(keras.ops.convert_to_numpy(v)).tolist()
                      for v in distiller.optimizer.variables],
        "temperature": distiller.temperature,
        "alpha": distiller.alpha,
    }


def _run_script(tmp_path, name, *args):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get(
        "PYTHONPATH", ""), KERAS_BACKEND=keras.backend.backend())
    out = tmp_path / f"{name}.json"
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--teacher",
         str(tmp_path / "teacher.keras"), "--backup", str(tmp_path / "backup"),
         "--out", str(out), *args],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    return proc, out


def _assert_close(a, b, what):
    for i, (x, y) in enumerate(zip(a, b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=RTOL,
                                   atol=ATOL, err_msg=f"{what}[{i}]")
    assert len(a) == len(b), what


@pytest.fixture(scope="module")
def teacher_path(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("teacher") / "teacher.keras")
    train_teacher(path)
    return path


def test_killed_run_resumes_to_the_same_result(tmp_path, teacher_path):
    shutil.copy(teacher_path, tmp_path / "teacher.keras")

    # 1. A real process killed with SIGKILL at the start of epoch KILL_AT.
    proc, out = _run_script(tmp_path, "killed", "--kill-at", str(KILL_AT))
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert not out.exists()
    with open(tmp_path / "backup" / "training_metadata.json") as f:
        assert json.load(f)["epoch"] == KILL_AT

    # 2. A fresh process restarts with the same backup directory.
    proc, out = _run_script(tmp_path, "resumed")
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out) as f:
        resumed = json.load(f)
    assert resumed["epochs"] == list(range(KILL_AT, EPOCHS))

    # 3. The uninterrupted run, with the same seeds and data order.
    full = distill(str(tmp_path / "teacher.keras"))
    assert full["epochs"] == list(range(EPOCHS))

    for key in resumed["history"]:
        np.testing.assert_allclose(resumed["history"][key],
                                   full["history"][key][KILL_AT:], rtol=RTOL,
                                   atol=ATOL, err_msg=key)
    assert set(resumed["history"]) == set(full["history"])
    assert "fitnet_loss" in full["history"]
    for key, value in full["evaluate"].items():
        np.testing.assert_allclose(resumed["evaluate"][key], value, rtol=RTOL,
                                   atol=ATOL, err_msg=key)
    _assert_close(resumed["student"], full["student"], "student weights")
    _assert_close(resumed["adapter"], full["adapter"], "adapter weights")
    _assert_close(resumed["optimizer"], full["optimizer"], "optimizer state")
    # Schedules: the last epoch ran at T=2, alpha=0.5 in both runs.
    assert resumed["temperature"] == full["temperature"] == 2.0
    assert resumed["alpha"] == full["alpha"] == 0.5
    # The training really moved: a stale restore would not match these.
    assert full["history"]["loss"][-1] < full["history"]["loss"][0]


def test_save_and_load_model_continue_identically(tmp_path, teacher_path):
    """distiller.save() + load_model keep the optimizer state and adapters."""
    (x, y), _ = _data()
    original = build_distiller(teacher_path)
    fit = dict(batch_size=64, shuffle=False, verbose=0)
    original.fit(x, y, epochs=2, callbacks=schedules(), **fit)
    path = str(tmp_path / "distiller.keras")
    original.save(path)
    loaded = keras.models.load_model(path)

    assert isinstance(loaded, kd.Distiller)
    assert int(keras.ops.convert_to_numpy(loaded.optimizer.iterations)) == \
        2 * len(x) // 64
    _assert_close([keras.ops.convert_to_numpy(v)
                   for v in loaded.optimizer.variables],
                  [keras.ops.convert_to_numpy(v)
                   for v in original.optimizer.variables], "optimizer")
    _assert_close([keras.ops.convert_to_numpy(w) for w in loaded.weights],
                  [keras.ops.convert_to_numpy(w) for w in original.weights],
                  "weights")
    assert loaded.temperature == original.temperature
    assert loaded.alpha == original.alpha

    # Both continue for two epochs: same losses, epoch by epoch. With the
    # optimizer state lost, Adam's first steps would differ.
    cont = dict(epochs=4, initial_epoch=2, **fit)
    h_loaded = loaded.fit(x, y, callbacks=schedules(), **cont).history
    h_original = original.fit(x, y, callbacks=schedules(), **cont).history
    assert set(h_loaded) == set(h_original)
    for key in h_original:
        np.testing.assert_allclose(h_loaded[key], h_original[key], rtol=RTOL,
                                   atol=ATOL, err_msg=key)
    _assert_close([keras.ops.convert_to_numpy(w)
                   for w in loaded.student.weights],
                  [keras.ops.convert_to_numpy(w)
                   for w in original.student.weights], "student weights")


def _main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--backup", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--kill-at", type=int, default=None)
    args = parser.parse_args()
    result = distill(args.teacher, backup_dir=args.backup,
                     kill_at=args.kill_at)
    with open(args.out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    _main()
