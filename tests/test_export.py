"""Exports of the student: .keras, SavedModel, TFLite at each precision, CLI.

On JAX and PyTorch the conversions run in one TensorFlow worker process
(started by the first export, reused by the rest), so each conversion after
the first costs about a second.
"""

import itertools
import os

import keras
import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter

import keras_kd as kd
from keras_kd import export
from keras_kd.app import export_command
from keras_kd.export import api, convert, litert, worker
from keras_kd.data import load_digits
from keras_kd.ownership import is_owned
from tests.conftest import BACKEND
from tests.helpers import mlp, to_numpy


@pytest.fixture(scope="module")
def digits():
    return load_digits()


@pytest.fixture(scope="module")
def student(digits):
    """A small MLP trained a few epochs on the digits (about 95% accuracy)."""
    keras.utils.set_random_seed(0)
    (x_train, y_train), _ = digits
    model = mlp(32, "student")
    model.compile(keras.optimizers.Adam(0.01),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x_train, y_train, epochs=5, batch_size=64, verbose=0)
    return model


@pytest.fixture(scope="module")
def float32_export(student, tmp_path_factory):
    """The student's float32 export (path, report), shared by two tests."""
    path = tmp_path_factory.mktemp("float32") / "student.tflite"
    return path, export.to_tflite(student, path, latency_runs=5)


def run_file(path, x):
    """Independent LiteRT run of a .tflite file, one sample at a time."""
    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    (inp,), (out,) = (interpreter.get_input_details(),
                      interpreter.get_output_details())
    outputs = []
    for sample in x:
        interpreter.set_tensor(inp["index"], sample[None].astype(inp["dtype"]))
        interpreter.invoke()
        outputs.append(interpreter.get_tensor(out["index"])[0])
    return np.stack(outputs).astype("float32"), interpreter


def weight_dtypes(interpreter, shape):
    return {t["dtype"] for t in interpreter.get_tensor_details()
            if tuple(t["shape"]) == shape}


def keras_outputs(model, x):
    return to_numpy(model(x, training=False))


def test_float32_matches_keras(student, digits, float32_export):
    _, (x_test, _) = digits
    path, report = float32_export
    tflite, interpreter = run_file(path, x_test[:100])
    expected = keras_outputs(student, x_test[:100])
    np.testing.assert_allclose(tflite, expected, atol=1e-4, rtol=0)
    assert report.max_abs_diff <= 1e-4
    assert report.quantize == "float32"
    assert report.size_bytes == os.path.getsize(path)
    # float32 weights: the file holds at least 4 bytes per parameter.
    assert report.size_bytes >= 4 * student.count_params()
    assert report.latency_ms_median > 0
    assert interpreter.get_input_details()[0]["dtype"] == np.float32
    assert report.converted_in == ("process" if BACKEND == "tensorflow"
                                   else "subprocess")


def test_float16_close_to_keras_and_smaller(student, digits, tmp_path):
    _, (x_test, _) = digits
    report = export.to_tflite(student, tmp_path / "f16.tflite",
                              quantize="float16", latency_runs=0)
    tflite, interpreter = run_file(tmp_path / "f16.tflite", x_test[:100])
    diff = np.max(np.abs(tflite - keras_outputs(student, x_test[:100])))
    assert diff <= 1e-2
    assert report.max_abs_diff <= 1e-2
    assert report.latency_ms_median is None
    # The hidden kernel (stored as [out, in]) is kept in float16 in the file
    # and dequantized to float32 at load.
    assert weight_dtypes(interpreter, (32, 64)) == {np.float16, np.float32}


def test_int8_keeps_accuracy(student, digits, tmp_path):
    (x_train, _), (x_test, y_test) = digits
    path = tmp_path / "int8.tflite"
    report = export.to_tflite(student, path, quantize="int8",
                              representative_data=x_train,
                              eval_data=(x_test, y_test), latency_runs=5)
    tflite, interpreter = run_file(path, x_test)
    keras_acc = np.mean(np.argmax(keras_outputs(student, x_test), -1) == y_test)
    tflite_acc = np.mean(np.argmax(tflite, -1) == y_test)
    assert keras_acc > 0.85  # the student learned something
    assert abs(tflite_acc - keras_acc) <= 0.02
    assert report.keras_accuracy == pytest.approx(keras_acc)
    assert report.tflite_accuracy == pytest.approx(tflite_acc)
    assert report.accuracy_change == pytest.approx(tflite_acc - keras_acc)
    # Float inputs and outputs, int8 weights and activations inside.
    assert interpreter.get_input_details()[0]["dtype"] == np.float32
    assert interpreter.get_output_details()[0]["dtype"] == np.float32
    assert weight_dtypes(interpreter, (32, 64)) == {np.int8}
    assert weight_dtypes(interpreter, (10, 32)) == {np.int8}
    assert "accuracy keras" in report.summary()
    assert report.as_dict()["quantize"] == "int8"
    # A fully int8 file: the export read its op list and found no float op.
    assert report.float_ops == []
    assert report.float_model_accuracy is None  # not quantization-aware
    # The parity figure is measured on the held-out eval_data (its first 64
    # samples), not on the calibration samples the file fits best.
    held_out = np.max(np.abs(tflite[:64] - keras_outputs(student, x_test[:64])))
    assert report.max_abs_diff == pytest.approx(held_out, rel=1e-3, abs=1e-5)
    # Labels shaped (n, 1), as keras.datasets gives them, score the same.
    again = export.to_tflite(student, tmp_path / "int8_b.tflite",
                             quantize="int8", representative_data=x_train,
                             eval_data=(x_test, y_test[:, None]),
                             latency_runs=0)
    assert again.tflite_accuracy == pytest.approx(tflite_acc)
    assert again.keras_accuracy == pytest.approx(keras_acc)


def test_accuracy_reads_sparse_column_and_one_hot_labels():
    logits = np.array([[0.1, 2.0, 0.3], [3.0, 0.0, 0.0], [0.0, 0.0, 1.0],
                       [0.0, 5.0, 0.0]])
    y = np.array([1, 0, 1, 1])  # 3 of 4 right
    assert litert.accuracy(logits, y) == 0.75
    assert litert.accuracy(logits, y[:, None]) == 0.75
    assert litert.accuracy(logits, np.eye(3)[y]) == 0.75
    with pytest.raises(ValueError, match="do not match"):
        litert.accuracy(logits, y[:3])


def test_non_finite_data_is_refused_and_nothing_is_written(student, digits,
                                                           tmp_path):
    (x_train, _), (x_test, y_test) = digits
    path = tmp_path / "int8.tflite"
    path.write_bytes(b"the last good file")
    bad = x_train[:100].copy()
    bad[3, 5] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite values .1 of 100"):
        export.to_tflite(student, path, quantize="int8",
                         representative_data=bad)
    x_bad = x_test[:50].copy()
    x_bad[0, 0] = np.inf
    with pytest.raises(ValueError, match="eval_data holds NaN"):
        export.to_tflite(student, path, eval_data=(x_bad, y_test[:50]))
    assert path.read_bytes() == b"the last good file"


def test_dynamic_range_export(student, digits, tmp_path):
    _, (x_test, _) = digits
    report = export.to_tflite(student, tmp_path / "dyn.tflite",
                              quantize="dynamic", latency_runs=0)
    tflite, _ = run_file(tmp_path / "dyn.tflite", x_test[:50])
    expected = keras_outputs(student, x_test[:50])
    assert report.max_abs_diff < 0.25
    assert np.mean(np.argmax(tflite, -1) == np.argmax(expected, -1)) >= 0.95


@keras.saving.register_keras_serializable(package="keras_kd_tests")
class Erf(keras.layers.Layer):
    """keras.ops.erf: TensorFlow's Erf has no TFLite builtin (a Flex op).

    Defined in an importable module, so the TensorFlow worker used on JAX and
    PyTorch imports it to load the model.
    """

    def call(self, x):
        return keras.ops.erf(x)


def erf_model():
    inputs = keras.Input((8,))
    hidden = Erf()(keras.layers.Dense(4)(inputs))
    return keras.Model(inputs, keras.layers.Dense(2)(hidden))


def test_flex_ops_raise_and_leave_existing_file(tmp_path):
    path = tmp_path / "model.tflite"
    path.write_bytes(b"a good export")
    with pytest.raises(export.FlexOpsError, match=r"Erf.*allow_flex=True"):
        export.to_tflite(erf_model(), path, latency_runs=0)
    assert path.read_bytes() == b"a good export"
    assert os.listdir(tmp_path) == ["model.tflite"]  # no temporary left
    report = export.to_tflite(erf_model(), path, allow_flex=True,
                              verify=False, latency_runs=0)
    assert report.flex_ops == ["Erf"]
    assert litert.flex_ops(path.read_bytes()) == ["Erf"]


def test_layer_defined_in_main_gets_a_clear_error():
    class Local(keras.layers.Layer):
        def call(self, x):
            return x

    Local.__module__ = "__main__"
    inputs = keras.Input((4,))
    model = keras.Model(inputs, Local()(inputs))
    with pytest.raises(ValueError, match="move the class into an importable"):
        worker._custom_modules(model)
    assert worker._custom_modules(erf_model()) == [__name__]


def test_failed_verification_leaves_existing_file(student, tmp_path,
                                                  monkeypatch):
    # A valid TFLite file of *another* model must fail the float32 check.
    other = tmp_path / "other.tflite"
    export.to_tflite(mlp(32, "other"), other, latency_runs=0)
    wrong = other.read_bytes()
    path = tmp_path / "student.tflite"
    path.write_bytes(b"previous export")
    monkeypatch.setattr(convert, "tflite_bytes",
                        lambda *args: (wrong, "process"))
    with pytest.raises(export.ExportError, match="differs from the Keras"):
        export.to_tflite(student, path, latency_runs=0)
    assert path.read_bytes() == b"previous export"
    assert sorted(os.listdir(tmp_path)) == ["other.tflite", "student.tflite"]


def test_distiller_exports_only_the_student(student, digits, float32_export,
                                            tmp_path):
    _, (x_test, _) = digits
    teacher = mlp(256, "teacher")
    distiller = kd.Distiller(teacher=teacher, student=student)
    report = export.to_tflite(distiller, tmp_path / "d.tflite",
                              latency_runs=0)
    _, alone = float32_export
    assert abs(report.size_bytes - alone.size_bytes) < 256
    assert report.size_bytes < 4 * teacher.count_params()
    tflite, interpreter = run_file(tmp_path / "d.tflite", x_test[:20])
    assert list(interpreter.get_input_details()[0]["shape_signature"]) == [
        -1, 64]
    assert list(interpreter.get_output_details()[0]["shape"]) == [1, 10]
    np.testing.assert_allclose(tflite, keras_outputs(student, x_test[:20]),
                               atol=1e-4, rtol=0)
    # .keras: a plain student model, not a Distiller.
    saved = export.to_keras(distiller, tmp_path / "student.keras")
    loaded = keras.models.load_model(saved)
    assert not isinstance(loaded, kd.Distiller)
    assert loaded.count_params() == student.count_params()
    np.testing.assert_allclose(to_numpy(loaded(x_test[:5])),
                               keras_outputs(student, x_test[:5]), atol=1e-6)


def test_saved_model_export(student, tmp_path):
    path = tmp_path / "saved"
    assert export.to_saved_model(student, path) == str(path)
    assert os.path.isfile(path / "saved_model.pb")
    assert os.path.isdir(path / "variables")
    assert is_owned(path, "saved_model")
    if BACKEND == "tensorflow":
        import tensorflow as tf

        x = np.random.default_rng(0).random((4, 64), dtype="float32")
        loaded = tf.saved_model.load(str(path))
        served = loaded.serve(x).numpy()
        np.testing.assert_allclose(served, keras_outputs(student, x),
                                   atol=1e-5)
    # keras-kd's own SavedModel is replaced as a whole (a file left in it
    # goes with it), through a temporary sibling: nothing else is left.
    (path / "stale.txt").write_text("replaced")
    export.to_saved_model(student, path)
    assert not (path / "stale.txt").exists()
    assert os.path.isfile(path / "saved_model.pb")
    assert os.listdir(tmp_path) == ["saved"]


def test_saved_model_refuses_a_folder_keras_kd_did_not_write(student,
                                                            tmp_path):
    """Issue #2: to_saved_model(m, "saved_models") on the user's folder
    deleted the whole tree."""
    folder = tmp_path / "saved_models"
    (folder / "older").mkdir(parents=True)
    (folder / "older" / "model.keras").write_bytes(b"the user's model")
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="did not write"):
        export.to_saved_model(student, folder)
    assert (folder / "older" / "model.keras").read_bytes() == \
        b"the user's model"
    assert sorted(os.listdir(folder)) == ["notes.txt", "older"]
    assert os.listdir(tmp_path) == ["saved_models"]  # no temporary left
    # An empty folder is taken.
    (tmp_path / "empty").mkdir()
    export.to_saved_model(student, tmp_path / "empty")
    assert os.path.isfile(tmp_path / "empty" / "saved_model.pb")


def test_a_failed_saved_model_export_leaves_the_previous_one(
        student, tmp_path, monkeypatch):
    path = tmp_path / "saved"
    export.to_saved_model(student, path)
    before = sorted(os.listdir(path))
    pb = (path / "saved_model.pb").read_bytes()

    def fail(*args, **kwargs):
        raise RuntimeError("killed halfway")

    monkeypatch.setattr(api.ownership, "claim_folder", fail)
    with pytest.raises(RuntimeError, match="killed halfway"):
        export.to_saved_model(student, path)
    assert sorted(os.listdir(path)) == before
    assert (path / "saved_model.pb").read_bytes() == pb
    assert os.listdir(tmp_path) == ["saved"]


def test_a_truncated_tflite_file_gets_an_error_naming_it(float32_export,
                                                         tmp_path):
    """Issue #25: a cut-off file gave struct.error."""
    good, _ = float32_export
    data = good.read_bytes()
    cut = tmp_path / "cut.tflite"
    for size in (len(data) // 2, 64, 6):
        cut.write_bytes(data[:size])
        for read in (lambda: litert.flex_ops(cut.read_bytes(), cut),
                     lambda: litert.operators(cut.read_bytes(), cut),
                     lambda: litert.interpreter(str(cut), False),
                     lambda: export.LiteRTCausalLM(cut)):
            with pytest.raises(export.ExportError,
                               match="cut.tflite' is not a complete TFLite"):
                read()
    # The whole file reads.
    assert litert.operators(data)[0][0] == "FULLY_CONNECTED"


def test_eval_labels_outside_the_classes_or_fractional_are_refused(
        student, digits, tmp_path):
    """Issue #20: such labels scored 0.0 without an error."""
    logits = np.array([[0.1, 2.0, 0.3], [3.0, 0.0, 0.0]])
    assert litert.accuracy(logits, np.array([1.0, 0.0])) == 1.0  # whole
    for bad, message in ((np.array([1, 3]), r"in \[0, 3\)"),
                         (np.array([1, -1]), r"in \[0, 3\)"),
                         (np.array([0.5, 1.0]), "fractional")):
        with pytest.raises(ValueError, match=message):
            litert.accuracy(logits, bad)
    _, (x_test, y_test) = digits
    path = tmp_path / "student.tflite"
    with pytest.raises(ValueError, match=r"in \[0, 10\)"):
        export.to_tflite(student, path, eval_data=(x_test, y_test + 1),
                         latency_runs=0)
    assert not path.exists()


def test_data_reads_are_bounded(student, digits, tmp_path):
    """Issue #11: eval_data=ds.repeat() grew past 1.4 GB."""
    (x_train, y_train), _ = digits
    endless = itertools.repeat((x_train[:10], y_train[:10]))
    x, y = api._collect(endless, (64,), "float32", limit=100)
    assert len(x) == 100 and len(y) == 100
    empty_forever = itertools.repeat(x_train[:0])
    with pytest.raises(ValueError, match="empty"):
        api._collect(empty_forever, (64,), "float32", limit=100)
    if BACKEND == "tensorflow":
        import tensorflow as tf

        ds = tf.data.Dataset.from_tensor_slices(
            (x_train[:64], y_train[:64])).batch(16).repeat()
        with pytest.raises(ValueError, match="eval_data is an infinite"):
            export.to_tflite(student, tmp_path / "a.tflite", eval_data=ds)
        assert not (tmp_path / "a.tflite").exists()
        # Representative data is read up to its stated bound (2000).
        x, _ = api._collect(ds, (64,), "float32",
                            limit=10 * api.REPRESENTATIVE_SAMPLES)
        assert len(x) == 2000


def layer_norm_student():
    inputs = keras.Input((8,), name="features")
    h = keras.layers.Dense(6, name="hidden")(inputs)
    h = keras.layers.LayerNormalization(name="norm")(h)
    return keras.Model(inputs, keras.layers.Dense(3, name="logits")(h))


def test_int8_file_with_float_ops_is_refused_unless_allowed(tmp_path):
    """Issue 28 #12: an int8 file computing a layer in float was reported
    as int8. TFLite's LayerNormalization keeps a float NEG after post-
    training int8 quantization; the export reads its own op list."""
    model = layer_norm_student()
    x = np.random.default_rng(0).normal(size=(64, 8)).astype("float32")
    path = tmp_path / "norm_int8.tflite"
    with pytest.raises(export.FloatOpsError, match=r"NEG\(FLOAT32 -> "
                       r"FLOAT32\).*allow_float_ops=True"):
        export.to_tflite(model, path, quantize="int8", representative_data=x,
                         latency_runs=0)
    assert not path.exists()
    with pytest.warns(UserWarning, match="computes 1 op.s. in float"):
        report = export.to_tflite(model, path, quantize="int8",
                                  representative_data=x, latency_runs=0,
                                  allow_float_ops=True)
    ops = litert.operators(path.read_bytes())
    floats = [(name, ins, outs) for name, ins, outs in ops
              if name not in ("QUANTIZE", "DEQUANTIZE")
              and "FLOAT32" in ins + outs]
    assert floats == [("NEG", ["FLOAT32"], ["FLOAT32"])]
    assert report.float_ops == ["NEG(FLOAT32 -> FLOAT32)"]
    assert "FLOAT OPS" in report.summary()
    assert report.as_dict()["float_ops"] == report.float_ops
    # The other kernels are int8.
    for name, ins, outs in ops:
        if name == "FULLY_CONNECTED":
            assert ins[:2] == ["INT8", "INT8"] and outs == ["INT8"]


def test_representative_data_from_batches(student, digits):
    (x_train, y_train), _ = digits
    batches = [(x_train[i:i + 50], y_train[i:i + 50]) for i in range(0, 200, 50)]
    x, y = api._collect(iter(batches), (64,), "float32")
    np.testing.assert_array_equal(x, x_train[:200])
    np.testing.assert_array_equal(y, y_train[:200])
    single = api._collect(iter(list(x_train[:3])), (64,), "float32")[0]
    np.testing.assert_array_equal(single, x_train[:3])
    if BACKEND == "tensorflow":
        import tensorflow as tf

        ds = tf.data.Dataset.from_tensor_slices((x_train, y_train)).batch(64)
        x, _ = api._collect(ds, (64,), "float32", limit=100)
        np.testing.assert_array_equal(x, x_train[:128])


def test_bad_arguments_name_the_fix(student, tmp_path):
    with pytest.raises(ValueError, match="representative_data"):
        export.to_tflite(student, tmp_path / "a.tflite", quantize="int8")
    with pytest.raises(ValueError, match="quantize must be one of"):
        export.to_tflite(student, tmp_path / "a.tflite", quantize="int4")
    with pytest.raises(ValueError, match="must end with '.tflite'"):
        export.to_tflite(student, tmp_path / "a.keras")
    with pytest.raises(TypeError, match="distiller.student"):
        export.to_tflite("student.keras", tmp_path / "a.tflite")
    with pytest.raises(ValueError, match=r"reshape the data"):
        export.to_tflite(student, tmp_path / "a.tflite", quantize="int8",
                         representative_data=np.zeros((10, 8, 8)))
    with pytest.raises(ValueError, match="eval_data must hold labels"):
        export.to_tflite(student, tmp_path / "a.tflite",
                         eval_data=np.zeros((10, 64)))
    with pytest.raises(ValueError, match=r"representative_data is empty"):
        export.to_tflite(student, tmp_path / "a.tflite", quantize="int8",
                         representative_data=np.zeros((0, 64), "float32"))
    with pytest.raises(ValueError, match=r"eval_data is empty"):
        export.to_tflite(student, tmp_path / "a.tflite",
                         eval_data=(np.zeros((0, 64)), np.zeros(0, int)))
    with pytest.raises(ValueError, match="must end with '.keras'"):
        export.to_keras(student, tmp_path / "a.h5")
    assert os.listdir(tmp_path) == []


def test_command_line_exports_a_distiller_file(student, tmp_path, capsys):
    distiller = kd.Distiller(teacher=mlp(64, "teacher"), student=student)
    model_path = tmp_path / "distiller.keras"
    distiller.save(model_path)
    out = tmp_path / "out" / "student.tflite"
    assert export_command.main([str(model_path), "--output", str(out),
                        "--quantize", "float32,int8",
                        "--representative-data", "digits",
                        "--eval-data", "digits", "--latency-runs", "3"]) == 0
    printed = capsys.readouterr().out
    assert "student_float32.tflite [float32]" in printed
    assert "student_int8.tflite [int8]" in printed
    f32 = tmp_path / "out" / "student_float32.tflite"
    tflite, _ = run_file(f32, np.ones((2, 64), "float32"))
    np.testing.assert_allclose(
        tflite, keras_outputs(student, np.ones((2, 64), "float32")),
        atol=1e-4)
    with pytest.raises(SystemExit, match="needs --representative-data"):
        export_command.main([str(model_path), "--quantize", "int8"])
    assert export_command.main([str(tmp_path / "missing.keras")]) == 1
    assert "No model file at" in capsys.readouterr().err
    truncated = tmp_path / "truncated.keras"
    truncated.write_bytes(model_path.read_bytes()[:1000])
    assert export_command.main([str(truncated)]) == 1
    assert "is not a readable .keras archive" in capsys.readouterr().err


def test_command_line_exports_a_quantization_aware_file_as_int8(
        digits, tmp_path, capsys):
    """keras-kd export -q int8 converts a quantization-aware .keras file
    from its learned ranges: no --representative-data."""
    (x_train, _), (x_test, _) = digits
    qat = kd.quantization.quantize_model(mlp(8, "student"),
                                         calibration_data=x_train[:256])
    model_path = tmp_path / "student_qat.keras"
    qat.save(model_path)
    assert export_command.main([str(model_path), "-q", "int8",
                                "--latency-runs", "0"]) == 0
    assert "student_qat_int8.tflite [int8]" in capsys.readouterr().out
    path = tmp_path / "student_qat_int8.tflite"
    tflite, interpreter = run_file(path, x_test[:64])
    kernels = {tuple(t["shape"]): t["dtype"]
               for t in interpreter.get_tensor_details()
               if tuple(t["shape"]) in ((8, 64), (10, 8))}
    assert kernels == {(8, 64): np.int8, (10, 8): np.int8}  # Dense kernels
    # The file computes the fake-quantized model: within a few output
    # quantization steps (the logits' range / 255).
    expected = keras_outputs(qat, x_test[:64]).astype("float64")
    step = (expected.max() - min(expected.min(), 0.0)) / 255
    np.testing.assert_allclose(tflite, expected, atol=3 * step)
    # A float model still needs calibration inputs for int8.
    float_path = tmp_path / "float.keras"
    mlp(8, "student").save(float_path)
    with pytest.raises(SystemExit, match="needs --representative-data"):
        export_command.main([str(float_path), "-q", "int8"])
