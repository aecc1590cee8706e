"""kd.callbacks.TFLiteExport: a verified TFLite file and its report, written
only on improvement (or once at the end), never partially.

On JAX and PyTorch each export runs in the TensorFlow worker process, so the
tests keep to a handful of exports of a tiny MLP.
"""

import hashlib
import json
import os

import keras
import numpy as np
import pytest

pytest.importorskip("ai_edge_litert")
from ai_edge_litert.interpreter import Interpreter  # noqa: E402

import keras_kd as kd  # noqa: E402
from keras_kd import callbacks as kdc  # noqa: E402
from keras_kd.callbacks import tflite_export  # noqa: E402
from keras_kd.export import ExportError, convert  # noqa: E402
from tests.helpers import (  # noqa: E402
    ScriptedScores, StudentWeightLog, mlp, to_numpy)

N = 16


def _data(n=N, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, 64)).astype("float32"),
            rng.integers(0, 10, n).astype("int32"))


def _distiller(lr=0.1):
    distiller = kd.Distiller(teacher=mlp(32, "teacher"),
                             student=mlp(8, "student"))
    distiller.compile(
        optimizer=keras.optimizers.SGD(lr), alpha=0.5, temperature=2.0,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return distiller


def numpy_mlp(weights, x):
    """tests.helpers.mlp's forward pass in NumPy (float64)."""
    w1, b1, w2, b2 = (np.asarray(w, "float64") for w in weights)
    return np.maximum(x @ w1 + b1, 0.0) @ w2 + b2


def run_file(path, x):
    """The .tflite file run in LiteRT on a batch ``x``."""
    interpreter = Interpreter(model_path=str(path))
    (inp,) = interpreter.get_input_details()
    interpreter.resize_tensor_input(inp["index"], list(x.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], x.astype(inp["dtype"]))
    interpreter.invoke()
    (out,) = interpreter.get_output_details()
    return interpreter.get_tensor(out["index"]).astype("float64")


def read_report(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def test_exports_a_verified_file_only_on_improvement(tmp_path):
    x, y = _data()
    scores = [2.0, 3.0, 1.0]            # epochs 1 and 3 improve (mode="min")
    weights = StudentWeightLog()
    export = kdc.TFLiteExport(str(tmp_path / "out" / "student_{epoch}.tflite"),
                              monitor="score", mode="min")
    _distiller().fit(x, y, epochs=3, batch_size=8, verbose=0,
                     callbacks=[ScriptedScores(scores), weights, export])
    folder = tmp_path / "out"
    assert sorted(os.listdir(folder)) == [
        "student_1.json", "student_1.tflite",
        "student_3.json", "student_3.tflite"]   # no epoch 2, no temp files
    assert export.best == 1.0 and export.best_epoch == 2
    assert export.report_path == str(folder / "student_3.json")
    # Training moved the student: each file holds its own epoch's student.
    assert np.max(np.abs(numpy_mlp(weights.weights[0], x)
                         - numpy_mlp(weights.weights[2], x))) > 1e-2
    for epoch in (1, 3):
        path = folder / f"student_{epoch}.tflite"
        report = read_report(folder / f"student_{epoch}.json")
        expected = numpy_mlp(weights.weights[epoch - 1], x)
        np.testing.assert_allclose(run_file(path, x), expected,
                                   rtol=1e-4, atol=1e-4)
        assert report["epoch"] == epoch and report["monitor"] == "score"
        assert report["logs"]["score"] == scores[epoch - 1]
        assert report["path"] == str(path) and report["quantize"] == "float32"
        assert report["size_bytes"] == os.path.getsize(path)
        assert report["sha256"] == hashlib.sha256(
            path.read_bytes()).hexdigest()
        assert 0.0 <= report["max_abs_diff"] < 1e-4   # the file was verified
        assert report["latency_ms_median"] is None    # latency_runs=0


def test_without_monitor_exports_once_at_the_end(tmp_path):
    """A plain model, int8: one file after the last epoch, with its report."""
    x, y = _data(64)
    model = mlp(8, "plain")
    model.compile(keras.optimizers.SGD(0.1),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    weights = StudentWeightLog()
    export = kdc.TFLiteExport(tmp_path / "plain_{epoch}.tflite",
                              quantize="int8", representative_data=x,
                              eval_data=(x[:32], y[:32]))
    model.fit(x, y, epochs=2, verbose=0, callbacks=[weights, export])
    assert sorted(os.listdir(tmp_path)) == ["plain_2.json", "plain_2.tflite"]
    report = read_report(tmp_path / "plain_2.json")
    assert report["epoch"] == 2 and report["monitor"] is None
    assert report["quantize"] == "int8" and report["sha256"] == hashlib.sha256(
        (tmp_path / "plain_2.tflite").read_bytes()).hexdigest()
    assert export.report.as_dict().items() <= report.items()
    # The reported difference is the file's on the verification samples
    # (eval_data's first 64 inputs) against the final student.
    expected = numpy_mlp(weights.weights[-1], x[:32])
    np.testing.assert_allclose(expected, to_numpy(model(x[:32])), rtol=1e-4,
                               atol=1e-4)
    actual = run_file(tmp_path / "plain_2.tflite", x[:32])
    diff = np.max(np.abs(actual - expected))
    assert report["max_abs_diff"] == pytest.approx(diff, rel=1e-3, abs=1e-5)
    # int8: close to the student, but quantized.
    scale = np.max(np.abs(expected))
    assert 0 < report["max_abs_diff"] < 0.1 * scale
    assert report["keras_accuracy"] == np.mean(
        np.argmax(expected, -1) == y[:32])
    assert report["tflite_accuracy"] == np.mean(
        np.argmax(actual, -1) == y[:32])


def test_a_failed_export_leaves_the_previous_file_and_report(tmp_path,
                                                              monkeypatch):
    x, y = _data()
    distiller = _distiller()
    path = tmp_path / "student.tflite"
    export = kdc.TFLiteExport(path, monitor="score", mode="min")
    distiller.fit(x, y, epochs=1, verbose=0,
                  callbacks=[ScriptedScores([1.0]), export])
    good_file, good_report = path.read_bytes(), (
        tmp_path / "student.json").read_bytes()

    def unchanged():
        assert path.read_bytes() == good_file
        assert (tmp_path / "student.json").read_bytes() == good_report
        assert sorted(os.listdir(tmp_path)) == ["student.json",
                                                "student.tflite"]
        assert export.best == 1.0 and export.best_epoch == 0

    # 1. The conversion fails.
    def failing(*args, **kwargs):
        raise RuntimeError("converter crashed")

    monkeypatch.setattr(convert, "tflite_bytes", failing)
    with pytest.raises(RuntimeError, match="converter crashed"):
        distiller.fit(x, y, epochs=1, verbose=0,
                      callbacks=[ScriptedScores([0.5]), export])
    unchanged()

    # 2. The converted file does not compute the student (the previous
    # epoch's file for a changed student): verification refuses it.
    for w in distiller.student.weights[-1:]:
        w.assign(w + 1.0)       # every logit moves by 1
    monkeypatch.setattr(convert, "tflite_bytes",
                        lambda *args, **kwargs: (good_file, "process"))
    with pytest.raises(ExportError, match="differs from the Keras") as error:
        distiller.fit(x, y, epochs=1, verbose=0,
                      callbacks=[ScriptedScores([0.5]), export])
    assert repr(str(path)) in str(error.value)   # names the target
    unchanged()
    monkeypatch.undo()

    # 3. The export is converted and verified, but the report cannot be
    # written.
    records = []

    def half_written(record, report_path):
        records.append(record)
        with open(report_path, "w") as f:
            f.write('{"path": ')
        raise OSError("disk full")

    monkeypatch.setattr(tflite_export, "_write_report", half_written)
    with pytest.raises(OSError, match="disk full"):
        distiller.fit(x, y, epochs=1, verbose=0,
                      callbacks=[ScriptedScores([0.5]), export])
    assert len(records) == 1 and records[0]["max_abs_diff"] < 1e-4
    assert records[0]["sha256"] != hashlib.sha256(good_file).hexdigest()
    unchanged()


def test_monitor_missing_from_the_logs_raises_and_writes_nothing(tmp_path):
    x, y = _data()
    export = kdc.TFLiteExport(tmp_path / "s.tflite", monitor="val_loss")
    with pytest.raises(ValueError, match=r"'val_loss'.*validation_data.*"
                       r"monitor=None") as error:
        _distiller().fit(x, y, epochs=2, verbose=0, callbacks=[export])
    assert "'distillation_loss'" in str(error.value)
    assert os.listdir(tmp_path) == []


def test_a_student_with_two_inputs_fails_before_training(tmp_path):
    a, b = keras.Input((4,)), keras.Input((4,))
    model = keras.Model([a, b], keras.layers.Dense(2)(
        keras.layers.Concatenate()([a, b])))
    model.compile("sgd", "mse")
    epochs = []
    record = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda e, logs: epochs.append(e))
    x = np.zeros((8, 4), "float32")
    with pytest.raises(ValueError, match="exactly one input"):
        model.fit([x, x], np.zeros((8, 2)), epochs=1, verbose=0, callbacks=[
            kdc.TFLiteExport(tmp_path / "s.tflite"), record])
    assert epochs == [] and os.listdir(tmp_path) == []


@pytest.mark.parametrize("kwargs, message", [
    (dict(filepath="student.keras"), "must end in '.tflite'"),
    (dict(filepath="s.tflite", quantize="int4"), "quantize must be one of"),
    (dict(filepath="s.tflite", latency_runs=-1), "latency_runs must be"),
    (dict(filepath="s.tflite", monitor=""), "monitor must be None"),
    (dict(filepath="s.tflite", monitor="val_kl"), "Pass mode='max'"),
    (dict(filepath="s.tflite", monitor="val_loss", mode="best"),
     "mode must be"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        kdc.TFLiteExport(**kwargs)


def test_int8_needs_data_or_a_quantization_aware_student(tmp_path):
    x, y = _data()
    export = kdc.TFLiteExport(tmp_path / "s.tflite", quantize="int8")
    with pytest.raises(ValueError, match="pass representative_data"):
        _distiller().fit(x, y, epochs=1, verbose=0, callbacks=[export])
    assert os.listdir(tmp_path) == []


def test_quantization_aware_distillation_exports_a_fully_int8_file(
        tmp_path):
    """QAD: the quantization-aware student is exported from its learned
    ranges (no representative data), as to_tflite exports it."""
    x, y = _data()
    qat = kd.quantization.quantize_model(mlp(8, "student"),
                                         calibration_data=x)
    distiller = kd.Distiller(teacher=mlp(32, "teacher"), student=qat)
    distiller.compile(
        optimizer=keras.optimizers.SGD(0.05), alpha=0.5,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    export = kdc.TFLiteExport(tmp_path / "qad.tflite", quantize="int8",
                              eval_data=(x, y))
    distiller.fit(x, y, epochs=2, verbose=0, callbacks=[export])
    assert sorted(os.listdir(tmp_path)) == ["qad.json", "qad.tflite"]
    report = read_report(tmp_path / "qad.json")
    assert report["quantize"] == "int8" and report["epoch"] == 2
    interpreter = Interpreter(model_path=str(tmp_path / "qad.tflite"))
    kernels = {tuple(t["shape"]): t["dtype"]
               for t in interpreter.get_tensor_details()
               if tuple(t["shape"]) in ((8, 64), (10, 8))}
    assert kernels == {(8, 64): np.int8, (10, 8): np.int8}  # Dense kernels
    # The file computes the fake-quantized student: within a few output
    # quantization steps (the logits' range / 255) on every logit.
    expected = to_numpy(qat(x, training=False)).astype("float64")
    step = (expected.max() - min(expected.min(), 0.0)) / 255
    assert report["max_abs_diff"] <= 3 * step
    np.testing.assert_allclose(run_file(tmp_path / "qad.tflite", x),
                               expected, atol=3 * step)


def test_an_int8_file_with_float_ops_fails_the_export_unless_allowed(
        tmp_path):
    """Issue 28 #12 through the callback: to_tflite reads its own file's op
    list; a float op in an "int8" file fails the export (nothing written,
    the previous file kept) unless allow_float_ops=True."""
    inputs = keras.Input((64,))
    h = keras.layers.Dense(8, name="hidden")(inputs)
    h = keras.layers.LayerNormalization(name="norm")(h)
    student = keras.Model(inputs, keras.layers.Dense(10)(h))
    student.compile("sgd", keras.losses.SparseCategoricalCrossentropy(
        from_logits=True))
    x, y = _data()
    path = tmp_path / "s.tflite"
    path.write_bytes(b"the last good file")
    export = kdc.TFLiteExport(path, quantize="int8", representative_data=x)
    with pytest.raises(kd.export.FloatOpsError, match=r"NEG\(FLOAT32"):
        student.fit(x, y, epochs=1, verbose=0, callbacks=[export])
    assert path.read_bytes() == b"the last good file"
    assert os.listdir(tmp_path) == ["s.tflite"]
    export = kdc.TFLiteExport(path, quantize="int8", representative_data=x,
                              allow_float_ops=True)
    with pytest.warns(UserWarning, match="in float"):
        student.fit(x, y, epochs=1, verbose=0, callbacks=[export])
    report = read_report(tmp_path / "s.json")
    assert report["float_ops"] == ["NEG(FLOAT32 -> FLOAT32)"]
    ops = kd.export.litert.operators(path.read_bytes())
    assert ("NEG", ["FLOAT32"], ["FLOAT32"]) in ops


def test_an_infinite_eval_data_is_refused_before_training(tmp_path):
    """Issue #11: eval_data=ds.repeat() would grow without end at the first
    export; it is refused when the callback is made."""
    tf = pytest.importorskip("tensorflow")
    x, y = _data()
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(4).repeat()
    with pytest.raises(ValueError, match="eval_data is an infinite"):
        kdc.TFLiteExport(tmp_path / "s.tflite", eval_data=ds)
    assert os.listdir(tmp_path) == []


def test_modes_and_report_paths():
    assert kdc.TFLiteExport("s.tflite").mode is None
    assert kdc.TFLiteExport("s.tflite", monitor="val_loss").mode == "min"
    assert kdc.TFLiteExport("s.tflite", monitor="val_accuracy").mode == "max"
    assert kdc.TFLiteExport.report_path_of(
        os.path.join("a.b", "student_int8.tflite")) == os.path.join(
            "a.b", "student_int8.json")
    assert "TFLiteExport" in kd.callbacks.__all__
