"""The step-time benchmark runs (tiny settings) and reports sane figures."""

import argparse
import json
import os
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from tests.helpers import benchmark_module

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.one_backend("torch")
def test_step_time_benchmark_reports_every_configuration():
    backend = keras.backend.backend()
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "step_time.py"),
           "--backend", backend, "--teacher", "cnn", "--size", "8",
           "--batch", "8", "--steps", "2", "--skip", "1", "--repeats", "1"]
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run(cmd, env=env, capture_output=True, text=True,
                         timeout=600, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["backend"] == backend and result["teacher"] == "cnn"
    names = {"student", "teacher", "kd_live", "kd_cached", "keras_live",
             "kd_live_feat", "kd_cached_feat", "keras_live_feat"}
    assert set(result["ms"]) == names
    assert all(0 < ms < 10_000 for ms in result["ms"].values())
    ms, ratio = result["ms"], result["ratio"]
    assert abs(ratio["cached"] - ms["kd_cached"] / ms["student"]) < 1e-9
    assert abs(ratio["live"] - ms["kd_live"] / (ms["student"] + ms["teacher"])
               ) < 1e-9
    assert result["student_params"] < result["teacher_params"]


@pytest.mark.parametrize("argv, message", [
    (["--teachers", "cnn,vgg"], "--teachers takes cnn, resnet50, "
     "resnet50-mobilenetv2, got "
     "['vgg']"),
    (["--skip", "0"], "--skip and --steps take at least 1 step each"),
])
def test_step_time_benchmark_refuses_bad_arguments(argv, message):
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "step_time.py")]
    out = subprocess.run(cmd + argv, capture_output=True, text=True,
                         timeout=120, check=False)
    assert out.returncode == 2
    assert message in out.stderr


def test_step_timer_starts_once_the_last_untimed_step_has_run():
    step_time = benchmark_module("step_time")
    timer = step_time.StepTimer(keras, skip=2)
    callback = timer.callback
    # Keras may keep dispatching steps asynchronously around it (JAX).
    assert callback.async_safe
    callback.on_train_batch_end(0, {"loss": 1.0})
    assert timer.start is None
    before = time.perf_counter()
    callback.on_train_batch_end(1, {"loss": 1.0})
    assert before <= timer.start <= time.perf_counter()
    start = timer.start
    callback.on_train_batch_end(2, {"loss": 1.0})
    assert timer.start == start
    # Inside fit(): the clock starts at the end of step skip - 1, before the
    # call returns.
    timer.start = None
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
    x = np.zeros((10, 4), "float32")
    model.fit(x, np.zeros((10, 2), "float32"), batch_size=2, verbose=0,
              callbacks=[callback])
    assert timer.start is not None and timer.start <= time.perf_counter()
    with pytest.raises(ValueError, match="skip >= 1"):
        step_time.StepTimer(keras, skip=0)



@pytest.mark.one_backend("tensorflow")
@pytest.mark.parametrize("dataset", ["mnist1d"])
def test_qat_benchmark_compares_float_ptq_qat_and_qad_files(dataset, tmp_path):
    # The script's own logic, once: tests/test_quantization.py covers
    # quantization-aware training and its export on every backend.
    backend = keras.backend.backend()
    path = tmp_path / "qat.json"
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "qat.py"),
           "--smoke", "--no-kd", "--dataset", dataset, "--samples", "1000",
           "--json", str(path), "--output-dir", str(tmp_path)]
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run(cmd, env=env, capture_output=True, text=True,
                         timeout=900, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(path.read_text())
    assert result["backend"] == backend
    assert [r["seed"] for r in result["runs"]] == [0]
    run = result["runs"][0]
    rows = run["rows"]
    # --no-kd leaves out the distilled-float rows (the same code paths).
    assert list(rows) == ["float", "float_ft", "ptq", "qat", "qad"]
    assert result["args"]["dataset"] == dataset
    assert result["args"]["samples"] == 1000  # the preset's 10,000 overridden
    assert 0.0 <= run["teacher_accuracy"] <= 1.0
    for name, row in rows.items():
        assert row["quantize"] == ("float32" if name.startswith("float")
                                   else "int8"), name
        assert 0.0 <= row["keras_accuracy"] <= 1.0, name
        assert 0.0 <= row["tflite_accuracy"] <= 1.0, name
        assert row["size_bytes"] > 0 and row["latency_ms"] > 0, name
        assert (tmp_path / f"seed0_{name}.tflite").stat().st_size \
            == row["size_bytes"], name
        # The quantization-aware files follow their Keras models.
        if name != "ptq":
            assert abs(row["tflite_accuracy"] - row["keras_accuracy"]) \
                <= 0.02, (name, row)
    if dataset == "digits":
        # 7,074 parameters: int8 weights make the file smaller. The 2,026-
        # parameter MNIST-1D student has ~300 output channels, each with its
        # own scale and zero point, and a quantized tensor between every
        # two kernels: its int8 file is larger (the docs say so).
        for name in ("ptq", "qat", "qad"):
            assert rows[name]["size_bytes"] < 0.8 * rows["float"]["size_bytes"], (
                name, rows[name], rows["float"])
    # Post-training int8 rounds the same Keras model.
    assert rows["ptq"]["keras_accuracy"] == rows["float"]["keras_accuracy"]
    table = [line for line in out.stdout.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + 5
    assert "| float, fine-tuned as long (control) | float32 |" in table[2]
    assert "| post-training int8 of it | int8 |" in table[3]
    assert "| QAD fine-tune, float teacher | int8 |" in table[5]


def test_qat_benchmark_students_have_the_documented_sizes():
    # The smoke run above takes the default data set (MNIST-1D); the digits
    # path differs only in its models, whose sizes docs/quantization.md gives.
    qat = benchmark_module("qat")
    student_1d = qat.DATASETS["mnist1d"]["student"](
        argparse.Namespace(**qat.DATASETS["mnist1d"]["defaults"]))
    assert student_1d.input_shape == (None, 40, 1)
    assert student_1d.output_shape == (None, 10)
    assert student_1d.count_params() == 2026
    assert sum(isinstance(layer, keras.layers.DepthwiseConv2D)
               for layer in student_1d.layers) == 8
    # --stem-kernel 1 (docs/quantization.md's "tried and not kept"): 4 x 4
    # stem weights fewer.
    assert qat.student_model_1d(stem_kernel=1).count_params() == 2026 - 16
    assert not any(isinstance(layer, keras.layers.BatchNormalization)
                   for layer in student_1d.layers)
    # Hard-swish after the stem and after each block's expansion and
    # depthwise layers (17); --activation relu swaps them for ReLU layers.
    activations = [layer.get_config()["activation"]
                   for layer in student_1d.layers
                   if isinstance(layer, keras.layers.Activation)]
    assert activations == ["hard_silu"] * 17
    relu_1d = qat.student_model_1d(activation="relu")
    assert relu_1d.count_params() == 2026
    assert sum(isinstance(layer, keras.layers.ReLU)
               for layer in relu_1d.layers) == 17
    assert not any(isinstance(layer, keras.layers.Activation)
                   for layer in relu_1d.layers)
    assert {layer.max_value for layer in qat.student_model_1d(
        activation="relu6").layers
        if isinstance(layer, keras.layers.ReLU)} == {6.0}
    with pytest.raises(ValueError, match="activation must be one of"):
        qat.student_model_1d(activation="swish")
    digits_student = qat.DATASETS["digits"]["student"](
        argparse.Namespace(width=8, expansion=6))
    assert digits_student.input_shape == (None, 8, 8, 1)
    assert digits_student.count_params() == 7074
    assert qat.DATASETS["digits"]["teacher"]().output_shape == (None, 10)


@pytest.mark.parametrize("option, value, message", [
    ("--qat-epochs", "0", "--qat-epochs must be at least 1, got 0"),
    ("--stem-kernel", "0", "--stem-kernel must be at least 1, got 0"),
    ("--samples", "15", "--samples: num_samples must be a multiple of 10"),
    ("--activation", "swish", "argument --activation: invalid choice"),
])
def test_qat_benchmark_refuses_bad_options(option, value, message, capsys):
    # In process: the options are refused before any training, as argparse
    # refuses them (exit status 2, the message on stderr).
    qat = benchmark_module("qat")
    with pytest.raises(SystemExit) as exit_:
        qat.main([option, value])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
