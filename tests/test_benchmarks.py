"""The step-time benchmark runs (tiny settings) and reports sane figures."""

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

