"""StudentCheckpoint and the temperature / alpha schedules."""

import csv
import json
import os

import keras
import numpy as np
import pytest

import keras_kd as kd
from keras_kd import callbacks as kdc
from tests.helpers import ScriptedScores, StudentWeightLog, mlp, to_numpy
from tests.references import kd as np_kd
from tests.references import sparse_ce as np_sparse_ce

N = 16  # below the Distiller's 20-sample teacher check: no warning for
        # the untrained test teachers.


def _data(n=N, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, 64)).astype("float32"),
            rng.integers(0, 10, n).astype("int32"))


def _distiller(lr=1e-2, **compile_kwargs):
    distiller = kd.Distiller(teacher=mlp(32, "teacher"),
                             student=mlp(8, "student"))
    options = dict(alpha=0.1, temperature=4.0)
    options.update(compile_kwargs)
    distiller.compile(
        optimizer=keras.optimizers.SGD(lr),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"], **options)
    return distiller


# ----------------------------------------------------------------------
# StudentCheckpoint
# ----------------------------------------------------------------------
@pytest.mark.parametrize("mode, best", [("min", 3), ("max", 2)])
def test_checkpoint_keeps_the_best_epoch_student_alone(tmp_path, mode, best):
    x, y = _data()
    distiller = _distiller()
    scores = [3.0, 1.0, 4.0, 0.5, 2.0]
    weights = StudentWeightLog()
    path = str(tmp_path / "ckpt" / "student.keras")
    checkpoint = kdc.StudentCheckpoint(path, monitor="score", mode=mode)
    distiller.fit(x, y, epochs=5, verbose=0,
                  callbacks=[ScriptedScores(scores), weights, checkpoint])
    expected = int(np.argmin(scores) if mode == "min" else np.argmax(scores))
    assert expected == best
    assert checkpoint.best_epoch == best and checkpoint.best == scores[best]
    loaded = keras.models.load_model(path)
    assert loaded.name == "student"  # the student alone, no teacher inside
    assert [w.path for w in loaded.weights] == [
        w.path for w in distiller.student.weights]
    for saved, kept in zip(loaded.weights, weights.weights[best]):
        np.testing.assert_array_equal(to_numpy(saved), kept)
    # The kept epoch is not the last one: later epochs did not overwrite it.
    assert not np.array_equal(weights.weights[best][0], weights.weights[-1][0])
    assert os.listdir(tmp_path / "ckpt") == ["student.keras"]  # no temp left


def test_checkpoint_val_loss_on_a_plain_model(tmp_path):
    x, y = _data(64)
    model = mlp(8, "plain")
    model.compile(optimizer=keras.optimizers.SGD(0.5),
                  loss=keras.losses.SparseCategoricalCrossentropy(
                      from_logits=True))
    weights = []
    record = keras.callbacks.LambdaCallback(on_epoch_end=lambda e, l: (
        weights.append([to_numpy(w) for w in model.weights])))
    path = str(tmp_path / "plain.keras")
    history = model.fit(x, y, validation_data=(x[:32], y[:32]), epochs=4,
                        verbose=0, callbacks=[
                            record, kdc.StudentCheckpoint(path)])
    best = int(np.argmin(history.history["val_loss"]))
    loaded = keras.models.load_model(path)
    for saved, kept in zip(loaded.weights, weights[best]):
        np.testing.assert_array_equal(to_numpy(saved), kept)


def test_checkpoint_every_epoch_with_formatted_names(tmp_path):
    x, y = _data()
    distiller = _distiller()
    pattern = str(tmp_path / "student_{epoch:02d}_{loss:.2f}.keras")
    history = distiller.fit(x, y, epochs=2, verbose=0, callbacks=[
        kdc.StudentCheckpoint(pattern, save_best_only=False)])
    expected = sorted(
        f"student_{e + 1:02d}_{loss:.2f}.keras"
        for e, loss in enumerate(history.history["loss"]))
    assert sorted(os.listdir(tmp_path)) == expected


def test_checkpoint_names_braces_in_the_directory_and_missing_fields(
        tmp_path):
    x, y = _data()
    directory = tmp_path / "runs{a}" / "{b}"  # braces in folders are literal
    directory.mkdir(parents=True)
    _distiller().fit(x, y, epochs=1, verbose=0, callbacks=[
        kdc.StudentCheckpoint(str(directory / "s_{epoch}.keras"),
                              monitor="loss")])
    assert os.listdir(directory) == ["s_1.keras"]
    with pytest.raises(ValueError, match=r"uses \{val_loss\}, which epoch 1 "
                       r"did not log.*validation_data="):
        _distiller().fit(x, y, epochs=1, verbose=0, callbacks=[
            kdc.StudentCheckpoint(str(tmp_path / "ck_{val_loss:.3f}.keras"),
                                  monitor="loss")])
    with pytest.raises(ValueError, match="not a valid format string"):
        _distiller().fit(x, y, epochs=1, verbose=0, callbacks=[
            kdc.StudentCheckpoint(str(tmp_path / "ck_{.keras"),
                                  monitor="loss")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs{a}"]


def test_checkpoint_initial_value_threshold(tmp_path):
    x, y = _data()
    path = str(tmp_path / "student.keras")
    checkpoint = kdc.StudentCheckpoint(path, monitor="score", mode="min",
                                       initial_value_threshold=0.75)
    _distiller().fit(x, y, epochs=4, verbose=0,
                     callbacks=[ScriptedScores([3.0, 1.0, 0.8, 0.9]),
                                checkpoint])
    assert not os.path.exists(path) and checkpoint.best == 0.75
    _distiller().fit(x, y, epochs=2, verbose=0,
                     callbacks=[ScriptedScores([0.9, 0.7]), checkpoint])
    assert os.path.exists(path) and checkpoint.best == 0.7


@pytest.mark.parametrize("mode", ["min", "max"])
def test_checkpoint_after_a_nan_epoch_saves_the_next_good_one(tmp_path, mode):
    x, y = _data()
    path = str(tmp_path / "student.keras")
    checkpoint = kdc.StudentCheckpoint(path, monitor="score", mode=mode)
    _distiller().fit(x, y, epochs=3, verbose=0, callbacks=[
        ScriptedScores([float("nan"), float("inf"), 0.8]), checkpoint])
    assert os.path.exists(path)
    assert checkpoint.best == 0.8 and checkpoint.best_epoch == 2


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    """A crash mid-write leaves the previous checkpoint intact."""
    x, y = _data()
    path = str(tmp_path / "student.keras")
    distiller = _distiller()
    checkpoint = kdc.StudentCheckpoint(path, monitor="score", mode="min")
    distiller.fit(x, y, epochs=1, verbose=0,
                  callbacks=[ScriptedScores([1.0]), checkpoint])
    with open(path, "rb") as f:
        good = f.read()

    def crashing_save(model, filepath, **kwargs):
        with open(filepath, "wb") as f:
            f.write(b"PK\x03\x04 half-written")
        raise OSError("disk full")

    monkeypatch.setattr(keras.saving, "save_model", crashing_save)
    with pytest.raises(OSError, match="disk full"):
        distiller.fit(x, y, epochs=1, verbose=0,
                      callbacks=[ScriptedScores([0.5]), checkpoint])
    monkeypatch.undo()
    with open(path, "rb") as f:
        assert f.read() == good
    assert os.listdir(tmp_path) == ["student.keras"]
    assert keras.models.load_model(path).name == "student"


def test_checkpoint_missing_monitor_raises_with_the_logged_names(tmp_path):
    x, y = _data()
    checkpoint = kdc.StudentCheckpoint(str(tmp_path / "s.keras"))
    with pytest.raises(ValueError, match=r"'val_loss'.*validation_data") as e:
        _distiller().fit(x, y, epochs=2, verbose=0, callbacks=[checkpoint])
    assert "'distillation_loss'" in str(e.value)
    assert not os.path.exists(tmp_path / "s.keras")


@pytest.mark.parametrize("kwargs, message", [
    (dict(filepath="student.h5"), "must end in '.keras'"),
    (dict(filepath="student"), "must end in '.keras'"),
    (dict(filepath="s.keras", mode="best"), "mode must be"),
    (dict(filepath="s.keras", monitor="val_kl"), "Pass mode='max'"),
    (dict(filepath="s.keras", monitor=""), "monitor must be"),
])
def test_checkpoint_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        kdc.StudentCheckpoint(**kwargs)


def test_checkpoint_auto_mode():
    assert kdc.StudentCheckpoint("s.keras", "val_loss").mode == "min"
    assert kdc.StudentCheckpoint("s.keras", "distillation_loss").mode == "min"
    assert kdc.StudentCheckpoint("s.keras", "val_accuracy").mode == "max"


def _weights(model):
    return [np.array(to_numpy(w)) for w in model.weights]


def test_two_checkpoints_of_one_path_are_refused_before_training(tmp_path):
    # Issue 28 #20: two StudentCheckpoints on one file each kept their own
    # best (best_epoch 1 and 3), while the file held the last writer's.
    x, y = _data()
    distiller = _distiller()
    path = str(tmp_path / "student.keras")
    by_score = kdc.StudentCheckpoint(path, monitor="score", mode="min")
    by_loss = kdc.StudentCheckpoint(str(tmp_path / "." / "student.keras"),
                                    monitor="loss")
    distiller.fit(x[:1], y[:1], epochs=1, verbose=0)  # builds the weights
    before = _weights(distiller.student)
    with pytest.raises(ValueError, match=r"both write .*student\.keras.*own "
                       r"filepath"):
        distiller.fit(x, y, epochs=2, verbose=0, callbacks=[
            ScriptedScores([3.0, 1.0]), by_score, by_loss])
    assert os.listdir(tmp_path) == []  # refused at train begin: no save
    for a, b in zip(before, _weights(distiller.student)):
        np.testing.assert_array_equal(a, b)  # and no step ran
    # Later fits are unaffected by the refused one: the same callback alone,
    # and two callbacks of different paths, train and save.
    distiller.fit(x, y, epochs=2, verbose=0,
                  callbacks=[ScriptedScores([3.0, 1.0]), by_score])
    assert by_score.best_epoch == 1 and os.path.exists(path)
    other = kdc.StudentCheckpoint(str(tmp_path / "by_loss.keras"),
                                  monitor="loss")
    distiller.fit(x, y, epochs=1, verbose=0,
                  callbacks=[ScriptedScores([0.5]), by_score, other])
    assert sorted(os.listdir(tmp_path)) == ["by_loss.keras", "student.keras"]


def test_tflite_export_refuses_to_replace_a_users_json(tmp_path):
    # Issue 28 #4: TFLiteExport("model.tflite") replaced the user's
    # model.json by its report. It now fails when fit() begins.
    x, y = _data()
    distiller = _distiller()
    users = tmp_path / "model.json"
    users.write_text('{"mine": true}')
    distiller.fit(x[:1], y[:1], epochs=1, verbose=0)
    before = _weights(distiller.student)
    export = kdc.TFLiteExport(str(tmp_path / "model.tflite"))
    with pytest.raises(FileExistsError, match=r"model\.json.*did not write"):
        distiller.fit(x, y, epochs=1, verbose=0, callbacks=[export])
    assert users.read_text() == '{"mine": true}'
    assert sorted(os.listdir(tmp_path)) == ["model.json"]
    for a, b in zip(before, _weights(distiller.student)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.one_backend("tensorflow")
def test_tflite_export_replaces_its_own_report_never_a_users(tmp_path):
    pytest.importorskip("ai_edge_litert")
    x, y = _data()
    distiller = _distiller()
    path = tmp_path / "student.tflite"
    distiller.fit(x, y, epochs=1, verbose=0,
                  callbacks=[kdc.TFLiteExport(str(path))])
    first = json.loads((tmp_path / "student.json").read_text())
    assert first["created_by"] == "keras-kd" and first["epoch"] == 1
    distiller.fit(x, y, epochs=2, verbose=0,
                  callbacks=[kdc.TFLiteExport(str(path))])
    assert json.loads((tmp_path / "student.json").read_text())["epoch"] == 2
    # A name with format fields is checked before each export: the user's
    # s_2.json stops fit() at epoch 2, before that export, and stays.
    users = tmp_path / "s_2.json"
    users.write_text("{}")
    export = kdc.TFLiteExport(str(tmp_path / "s_{epoch}.tflite"),
                              monitor="score", mode="max")
    with pytest.raises(FileExistsError, match=r"s_2\.json"):
        distiller.fit(x, y, epochs=3, verbose=0, callbacks=[
            ScriptedScores([1.0, 2.0, 3.0]), export])
    assert users.read_text() == "{}"
    assert not os.path.exists(tmp_path / "s_2.tflite")
    assert export.best_epoch == 0 and os.path.exists(tmp_path / "s_1.tflite")


def test_two_tflite_exports_of_one_file_are_refused(tmp_path):
    x, y = _data()
    first = kdc.TFLiteExport(str(tmp_path / "s.tflite"), monitor="loss")
    second = kdc.TFLiteExport(str(tmp_path / "s.tflite"), quantize="float16")
    with pytest.raises(ValueError, match="both write"):
        _distiller().fit(x, y, epochs=1, verbose=0,
                         callbacks=[first, second])
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------
# Schedules
# ----------------------------------------------------------------------
def test_schedule_values_match_the_formulas():
    e = np.arange(7.0)
    p = np.minimum(e / 4, 1.0)
    cases = {
        "linear": 8.0 + (2.0 - 8.0) * p,
        "cosine": 8.0 + (2.0 - 8.0) * (1 - np.cos(np.pi * p)) / 2,
        "exponential": 8.0 * (2.0 / 8.0) ** p,
        "constant": np.full_like(e, 8.0),
    }
    for kind, expected in cases.items():
        schedule = kdc.TemperatureSchedule(8.0, 2.0, epochs=4, kind=kind)
        np.testing.assert_allclose([schedule.value_at(i) for i in e], expected,
                                   rtol=1e-12, err_msg=kind)
    alpha = kdc.AlphaSchedule(0.0, 1.0, epochs=3)
    np.testing.assert_allclose([alpha.value_at(i) for i in range(5)],
                               [0, 1 / 3, 2 / 3, 1, 1], rtol=1e-12)


@pytest.mark.parametrize("make, message", [
    (lambda: kdc.TemperatureSchedule(0.0, 2.0, 3), "start must be > 0"),
    (lambda: kdc.TemperatureSchedule(4.0, -1.0, 3), "end must be > 0"),
    (lambda: kdc.TemperatureSchedule(4.0, "2", 3), "end must be > 0"),
    (lambda: kdc.AlphaSchedule(-0.1, 0.5, 3), r"start must be in \[0, 1\]"),
    (lambda: kdc.AlphaSchedule(0.1, 1.5, 3), r"end must be in \[0, 1\]"),
    (lambda: kdc.AlphaSchedule(0.1, 0.5, 0), "epochs must be an integer"),
    (lambda: kdc.AlphaSchedule(0.1, 0.5, 2.5), "epochs must be an integer"),
    (lambda: kdc.AlphaSchedule(0.1, 0.5, 3, kind="step"), "kind must be"),
    (lambda: kdc.AlphaSchedule(0.0, 0.5, 3, kind="exponential"),
     "use kind='linear'|needs start and end > 0"),
])
def test_schedule_bad_arguments(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_schedule_needs_a_distiller():
    x, y = _data()
    model = mlp(8, "plain")
    model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(ValueError, match="kd.Distiller"):
        model.fit(x, keras.ops.one_hot(y, 10), epochs=1, verbose=0,
                  callbacks=[kdc.TemperatureSchedule(4.0, 2.0, 2)])


def test_temperature_schedule_refuses_an_objective_with_its_own_t():
    x, y = _data()
    distiller = _distiller(
        distillation_loss=kd.objectives.KD(temperature=3.0))
    with pytest.raises(ValueError, match="without temperature="):
        distiller.fit(x, y, epochs=1, verbose=0,
                      callbacks=[kdc.TemperatureSchedule(4.0, 2.0, 2)])


def test_schedules_change_the_loss_and_are_logged(tmp_path):
    """Each epoch's losses equal NumPy's at the scheduled T and alpha.

    With a zero learning rate the models are fixed, so the logged terms of
    epoch e are exactly KD(T_e), CE and alpha_e·CE + (1 − alpha_e)·KD(T_e).
    """
    x, y = _data()
    distiller = _distiller(lr=0.0)
    temperature = kdc.TemperatureSchedule(8.0, 1.0, epochs=3, kind="cosine")
    alpha = kdc.AlphaSchedule(0.0, 0.9, epochs=3)
    csv_path = str(tmp_path / "log.csv")
    history = distiller.fit(
        x, y, batch_size=N, epochs=4, verbose=0,
        callbacks=[temperature, alpha, keras.callbacks.CSVLogger(csv_path)])
    t_logits = to_numpy(distiller.teacher(x)).astype("float64")
    s_logits = to_numpy(distiller.student(x)).astype("float64")
    ce = np_sparse_ce(y, s_logits).mean()
    temps = [temperature.value_at(e) for e in range(4)]
    alphas = [alpha.value_at(e) for e in range(4)]
    assert len(set(temps)) == 4 and len(set(alphas)) == 4
    kd_values = [np_kd(t_logits, s_logits, t).mean() for t in temps]
    h = history.history
    np.testing.assert_allclose(h["temperature"], temps, rtol=1e-6)
    np.testing.assert_allclose(h["alpha"], alphas, rtol=1e-6)
    np.testing.assert_allclose(h["distillation_loss"], kd_values, rtol=1e-4)
    np.testing.assert_allclose(h["student_loss"], [ce] * 4, rtol=1e-4)
    np.testing.assert_allclose(
        h["loss"], [a * ce + (1 - a) * k for a, k in zip(alphas, kd_values)],
        rtol=1e-4)
    assert distiller.temperature == pytest.approx(temps[-1])
    assert distiller.alpha == pytest.approx(alphas[-1])
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    np.testing.assert_allclose([float(r["temperature"]) for r in rows], temps,
                               rtol=1e-6)
    np.testing.assert_allclose([float(r["alpha"]) for r in rows], alphas,
                               rtol=1e-6)


def test_schedule_resumes_at_initial_epoch():
    """fit(initial_epoch=k) uses the schedule's value for epoch k."""
    x, y = _data()
    distiller = _distiller(lr=0.0)
    schedule = kdc.TemperatureSchedule(8.0, 2.0, epochs=4)
    history = distiller.fit(x, y, epochs=4, initial_epoch=2, verbose=0,
                            callbacks=[schedule])
    np.testing.assert_allclose(history.history["temperature"], [5.0, 3.5])
