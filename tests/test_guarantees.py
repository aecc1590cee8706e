"""The two rules of docs/guarantees.md, checked on every writer and reader.

1. Nothing keras-kd writes replaces or deletes a file it did not create: each
   writer is pointed at a folder or file of the user's, must refuse, and the
   user's files must be byte for byte as they were.
2. Every data-set read is bounded: each reader is given ``ds.repeat()`` and
   must refuse it or end (a SIGALRM turns a hang into a failure).
"""

import hashlib
import os
import signal
from pathlib import Path

import numpy as np
import pytest

import keras_kd as kd
from keras_kd import ownership
from tests.helpers import mlp

tf = pytest.importorskip("tensorflow")


def _snapshot(folder):
    """Every file under ``folder`` with the SHA-256 of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def _user_folder(path, names=("notes.txt", "inputs.bin", "logits.bin",
                              "manifest.json", "saved_model.pb")):
    """A folder of the user's, holding files named as keras-kd's own."""
    path.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        (path / name).write_bytes(f"the user's file {i}\n".encode())
    return path


@pytest.fixture(scope="module")
def models():
    teacher = mlp(16, "teacher", inputs=8, classes=3)
    student = mlp(4, "student", inputs=8, classes=3)
    x = np.random.default_rng(0).normal(size=(32, 8)).astype("float32")
    y = np.arange(32) % 3
    return teacher, student, x, y


def _soft_labels(folder, models):
    teacher, _, x, _ = models
    kd.compute_soft_labels(teacher, x, path=folder)


def _soft_labels_overwrite(folder, models):
    teacher, _, x, _ = models
    kd.compute_soft_labels(teacher, x, path=folder, overwrite=True)


def _saved_model(folder, models):
    kd.export.to_saved_model(models[1], str(folder))


def _search(folder, models):
    pytest.importorskip("keras_tuner")
    teacher, student, x, y = models
    kd.search(teacher, lambda: mlp(4, "student", inputs=8, classes=3), x, y,
              validation_data=(x, y), objectives=("kd",), temperatures=(4.0,),
              alphas=(0.1,), epochs=1, directory=str(folder))


def _tflite_export_report(folder, models):
    teacher, student, x, y = models
    distiller = kd.Distiller(teacher, student)
    distiller.compile("adam", "sparse_categorical_crossentropy")
    distiller.fit(x, y, epochs=1, verbose=0, callbacks=[
        kd.callbacks.TFLiteExport(str(folder / "student.tflite"))])


def _keras_kd_run(folder, models):
    from keras_kd.app.launcher import main

    try:
        status = main(["run", "--quick", "--output", str(folder.parent),
                       "--run-name", folder.name, "--verbose", "0"])
    except SystemExit as exit:  # the command's refusal: its message
        raise FileExistsError(str(exit.code)) from None
    raise AssertionError(f"keras-kd run went on (exit status {status})")


WRITERS = {
    "compute_soft_labels": _soft_labels,
    "compute_soft_labels(overwrite=True)": _soft_labels_overwrite,
    "to_saved_model": _saved_model,
    "search(directory=)": _search,
    "TFLiteExport report": _tflite_export_report,
    "keras-kd run --run-name": _keras_kd_run,
}


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_no_writer_replaces_or_deletes_a_users_file(writer, models, tmp_path,
                                                    capsys):
    folder = _user_folder(tmp_path / "mine")
    # A user's search/ folder, and a user's JSON where TFLiteExport would
    # write its report.
    if writer == "search(directory=)":
        (folder / "search").mkdir()
        (folder / "search" / "trial.json").write_text("the user's trial\n")
    if writer == "TFLiteExport report":
        (folder / "student.json").write_text('{"mine": true}\n')
    before = _snapshot(folder)
    with pytest.raises((FileExistsError, ValueError, PermissionError)) as info:
        WRITERS[writer](folder, models)
    # The refusal names the path and says what to do (the command says it
    # on stderr).
    message = str(info.value) + capsys.readouterr().err
    assert "keras-kd" in message and ("folder" in message or "file" in message)
    assert _snapshot(folder) == before
    assert not ownership.is_owned(folder)


def test_folders_keras_kd_creates_carry_its_marker(models, tmp_path):
    teacher, student, x, _ = models
    kd.compute_soft_labels(teacher, x, path=tmp_path / "cache")
    kd.export.to_saved_model(student, str(tmp_path / "savedmodel"))
    assert ownership.is_owned(tmp_path / "cache", "soft_labels")
    assert ownership.is_owned(tmp_path / "savedmodel", "saved_model")
    # Its own folders it may replace: the same calls again succeed.
    kd.compute_soft_labels(teacher, x, path=tmp_path / "cache", overwrite=True)
    kd.export.to_saved_model(student, str(tmp_path / "savedmodel"))


class _Hang(Exception):
    pass


def _alarm(signum, frame):
    raise _Hang("the read did not end")


def _endless(x, y=None, batch=8):
    data = (x, y) if y is not None else x
    return tf.data.Dataset.from_tensor_slices(data).batch(batch).repeat()


def _read_soft_labels(models):
    teacher, _, x, _ = models
    kd.compute_soft_labels(teacher, _endless(x))


def _read_eval_data(models, tmp_path):
    _, student, x, y = models
    kd.export.to_tflite(student, str(tmp_path / "s.tflite"),
                        eval_data=_endless(x, y), latency_runs=0)


def _read_calibrate(models):
    q = kd.quantization.quantize_model(mlp(4, "q", inputs=8, classes=3))
    kd.quantization.calibrate(q, _endless(models[2]))


def _read_tflite_export_eval(models, tmp_path):
    _, _, x, y = models
    kd.callbacks.TFLiteExport(str(tmp_path / "s.tflite"),
                              eval_data=_endless(x, y))


def _read_search_validation(models, tmp_path):
    pytest.importorskip("keras_tuner")
    teacher, _, x, y = models
    kd.search(teacher, lambda: mlp(4, "student", inputs=8, classes=3), x, y,
              validation_data=_endless(x, y), objectives=("kd",),
              temperatures=(4.0,), alphas=(0.1,), epochs=1)


def _read_representative(models, tmp_path):
    # Read up to a stated number of samples: it ends and writes a file.
    _, student, x, _ = models
    report = kd.export.to_tflite(student, str(tmp_path / "s8.tflite"),
                                 quantize="int8",
                                 representative_data=_endless(x),
                                 latency_runs=0)
    assert report.quantize == "int8"
    return "ended"


READERS = {
    "compute_soft_labels": lambda m, p: _read_soft_labels(m),
    "to_tflite(eval_data=)": _read_eval_data,
    "quantization.calibrate": lambda m, p: _read_calibrate(m),
    "TFLiteExport(eval_data=)": _read_tflite_export_eval,
    "search(validation_data=)": _read_search_validation,
    "to_tflite(representative_data=)": _read_representative,
}


@pytest.mark.parametrize("reader", sorted(READERS))
def test_every_read_of_an_endless_data_set_is_refused_or_ends(
        reader, models, tmp_path):
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(240)
    try:
        try:
            outcome = READERS[reader](models, tmp_path)
        except ValueError as error:
            # Refused: the message names the endless data set and the fix.
            assert "infinite" in str(error) or "endless" in str(error)
            outcome = "refused"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    expected = "ended" if reader == "to_tflite(representative_data=)" else (
        "refused")
    assert outcome == expected


def test_the_nan_diagnosis_of_an_endless_data_set_ends(tmp_path):
    # A student that diverges on a repeated pipeline: fit must end with the
    # diagnosis, reading at most the epoch's steps.
    teacher = mlp(8, "teacher", inputs=8, classes=3)
    student = mlp(4, "student", inputs=8, classes=3)
    x = np.random.default_rng(1).normal(size=(32, 8)).astype("float32")
    y = np.arange(32) % 3
    distiller = kd.Distiller(teacher, student)
    import keras

    distiller.compile(keras.optimizers.SGD(1e30),
                      keras.losses.SparseCategoricalCrossentropy(
                          from_logits=True))
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(240)
    try:
        with pytest.raises(FloatingPointError):
            distiller.fit(_endless(x, y), steps_per_epoch=4, epochs=2,
                          verbose=0)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
