"""``keras-kd export`` (keras_kd.app.export_command): the data it reads and
the students it exports, language models included (issue 27, issue 28 #23).

The digits classifier and the quantization-aware student are covered in
tests/test_export.py.
"""

import os

import keras
import numpy as np
import pytest

pytest.importorskip("ai_edge_litert")
pytest.importorskip("tensorflow")

from keras_kd import export, saving  # noqa: E402
from keras_kd.app import export_command  # noqa: E402
from keras_kd.data import load_digits, load_mnist1d  # noqa: E402
from tests.helpers import to_numpy  # noqa: E402


def dense_model(shape, name="student"):
    keras.utils.set_random_seed(0)
    inputs = keras.Input(shape)
    hidden = keras.layers.Dense(16, activation="relu")(
        keras.layers.Flatten()(inputs))
    return keras.Model(inputs, keras.layers.Dense(10)(hidden), name=name)


def calibration(path):
    """The file's int8 tensors with their quantization (scale, zero point),
    and its outputs on fixed inputs: what the calibration data decides."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    ranges = sorted((tuple(d["shape"]), str(d["dtype"]),
                     tuple(np.round(d["quantization_parameters"]["scales"],
                                    9)),
                     tuple(d["quantization_parameters"]["zero_points"]))
                    for d in interpreter.get_tensor_details()
                    if d["dtype"] == np.int8)
    return ranges


def test_npy_and_npz_representative_data(tmp_path, capsys):
    """#23: an .npy file failed with "'numpy.ndarray' object does not support
    the context manager protocol". Each file calibrates the int8 file exactly
    as the same array passed to to_tflite does."""
    (x_train, _), (x_test, y_test) = load_digits()
    x = x_train[:120]
    model = dense_model((64,))
    model_path = tmp_path / "student.keras"
    model.save(model_path)
    np.save(tmp_path / "inputs.npy", x)
    np.savez(tmp_path / "data.npz", x=x, y=np.zeros(len(x), "int32"))
    np.savez(tmp_path / "eval.npz", x=x_test, y=y_test)
    export.to_tflite(model, tmp_path / "direct.tflite",
                              quantize="int8", representative_data=x,
                              latency_runs=0)
    expected = calibration(tmp_path / "direct.tflite")
    assert expected  # int8 tensors with their ranges
    export.to_tflite(model, tmp_path / "other.tflite",
                             quantize="int8", latency_runs=0,
                             representative_data=x_train[120:240] * 3)
    assert calibration(tmp_path / "other.tflite") != expected
    for name in ("inputs.npy", "data.npz"):
        out = tmp_path / f"from_{name.replace('.', '_')}.tflite"
        assert export_command.main([
            str(model_path), "-q", "int8", "--representative-data",
            str(tmp_path / name), "--eval-data", str(tmp_path / "eval.npz"),
            "-o", str(out), "--latency-runs", "0"]) == 0
        assert calibration(out) == expected
    printed = capsys.readouterr().out
    # The accuracy it prints is the model's on eval.npz, computed here.
    keras_accuracy = np.mean(
        np.argmax(to_numpy(model(x_test)), -1) == y_test)
    assert f"accuracy keras {keras_accuracy:.4f}" in printed
    # An .npy file holds no labels: --eval-data says how to add them.
    assert export_command.main([
        str(model_path), "--eval-data", str(tmp_path / "inputs.npy"),
        "-o", str(tmp_path / "e.tflite")]) == 1
    assert "np.savez(path, x=x, y=y)" in capsys.readouterr().err
    assert export_command.main([
        str(model_path), "-q", "int8", "--representative-data",
        str(tmp_path / "missing.npy")]) == 1
    assert "No data file at" in capsys.readouterr().err
    assert not (tmp_path / "e.tflite").exists()


@pytest.mark.one_backend
def test_mnist1d_data_as_keras_kd_run_generates_it(tmp_path, capsys):
    """keras-kd run's default data set: --representative-data mnist1d takes
    its training signals, --eval-data mnist1d its test split."""
    (x_train, _), (x_test, y_test) = load_mnist1d()
    model = dense_model((40, 1))
    model_path = tmp_path / "student_distilled.keras"
    saving.save_model_only(model, str(model_path))
    assert export_command.main([
        str(model_path), "-q", "int8", "--representative-data", "mnist1d",
        "--eval-data", "mnist1d", "--latency-runs", "0"]) == 0
    printed = capsys.readouterr().out
    path = tmp_path / "student_distilled_int8.tflite"
    assert f"{path.name} [int8]" in printed
    keras_accuracy = np.mean(
        np.argmax(to_numpy(model(x_test)), -1) == y_test)
    assert f"accuracy keras {keras_accuracy:.4f}" in printed
    # Calibrated on the training signals: the same file as from the array.
    export.to_tflite(model, tmp_path / "direct.tflite", quantize="int8",
                     representative_data=x_train, latency_runs=0)
    assert calibration(path) == calibration(tmp_path / "direct.tflite")
    # A model of another input size gets the shapes and the fix.
    other = tmp_path / "other.keras"
    dense_model((64,)).save(other)
    assert export_command.main([str(other), "--eval-data", "mnist1d"]) == 1
    assert "samples of shape (40, 1), but the model takes inputs of shape " \
        "(64,)" in capsys.readouterr().err


def test_unknown_data_set_name_lists_the_choices(tmp_path, capsys):
    pytest.importorskip("tensorflow_datasets")
    model_path = tmp_path / "student.keras"
    dense_model((64,)).save(model_path)
    assert export_command.main([str(model_path), "-q", "int8",
                                "--representative-data", "mnist_1d"]) == 1
    err = capsys.readouterr().err
    assert "'mnist_1d' is not an existing file, nor a data set name" in err
    assert "digits or mnist1d" in err
    assert sorted(os.listdir(tmp_path)) == ["student.keras"]


@pytest.mark.one_backend
def test_language_model_student_exports(tmp_path, capsys):
    """What keras-kd run --task causal-lm saves exported with lm_to_tflite:
    it was refused ("exactly one input tensor")."""
    pytest.importorskip("keras_hub")
    from keras_kd.app.language_models import build_causal_lm

    lm = build_causal_lm("tiny", sequence_length=16, seed=0)
    model_path = tmp_path / "student_distilled.keras"
    saving.save_model_only(lm, str(model_path))  # as causal_lm_run does
    assert export_command.main([str(model_path), "-q", "float32,dynamic",
                                "--latency-runs", "2"]) == 0
    printed = capsys.readouterr().out
    assert "student_distilled_float32.tflite [float32]" in printed
    assert "student_distilled_dynamic.tflite [dynamic]" in printed
    assert printed.count("sequence_length 16") == 2
    ids = [72, 101, 108, 108, 111]
    expected = to_numpy(lm({"token_ids": np.asarray([ids], "int32"),
                            "padding_mask": np.ones((1, 5), "int32")}))[0]
    f32 = export.LiteRTCausalLM(tmp_path / "student_distilled_float32.tflite")
    assert f32.sequence_length == 16 and f32.vocabulary_size == 256
    np.testing.assert_allclose(f32.logits(ids), expected, atol=1e-4)
    dynamic = export.LiteRTCausalLM(
        tmp_path / "student_distilled_dynamic.tflite")
    assert 0 < np.abs(dynamic.logits(ids) - expected).max() < 1.0
    # --sequence-length: a shorter file.
    short = tmp_path / "short.tflite"
    assert export_command.main([str(model_path), "--sequence-length", "8",
                                "-o", str(short), "--latency-runs", "0"]) == 0
    assert export.LiteRTCausalLM(short).sequence_length == 8
    capsys.readouterr()
    # What does not apply to a language model is refused, naming the fix.
    for options, message in (
            (["-q", "int8"], "--quantize int8 is not offered for a language "
             "model"),
            (["--eval-data", "digits"], "--eval-data applies to classifiers"),
            (["--sequence-length", "17"], "sequence_length <= 16")):
        assert export_command.main([str(model_path), "-o",
                                    str(tmp_path / "x.tflite"),
                                    *options]) == 1
        assert message in capsys.readouterr().err
    # --kv-cache-length: the prefill/decode file; its greedy continuation is
    # the fixed-length file's (itself checked against Keras above).
    cached_path = tmp_path / "kv.tflite"
    assert export_command.main([str(model_path), "--kv-cache-length", "16",
                                "-o", str(cached_path), "--latency-runs",
                                "0"]) == 0
    assert "kv_cache_length 16" in capsys.readouterr().out
    cached = export.LiteRTCausalLM(cached_path)
    assert cached.has_cache and cached.kv_cache_length == 16
    np.testing.assert_array_equal(cached.generate(ids, 6),
                                  f32.generate(ids, 6))
    for options, message in (
            (["--kv-cache-length", "16", "-q", "int8"],
             "--quantize int8 is not offered for a KV-cache file"),
            (["--kv-cache-length", "16", "--sequence-length", "8"],
             "with --kv-cache-length leave it out")):
        assert export_command.main([str(model_path), "-o",
                                    str(tmp_path / "x.tflite"),
                                    *options]) == 1
        assert message in capsys.readouterr().err
    mlp_path = tmp_path / "mlp.keras"
    dense_model((64,)).save(mlp_path)
    for option in ("--sequence-length", "--kv-cache-length"):
        assert export_command.main([str(mlp_path), option, "8"]) == 1
        assert f"{option} applies to a language model" in \
            capsys.readouterr().err
    assert not (tmp_path / "x.tflite").exists()
