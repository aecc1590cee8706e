"""The step-time benchmark runs (tiny settings) and reports sane figures."""

import json
import os
import subprocess
import sys

import keras

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


def test_step_time_benchmark_refuses_an_unknown_teacher():
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "step_time.py"),
           "--teachers", "cnn,vgg"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                         check=False)
    assert out.returncode == 2
    assert "--teachers takes cnn and/or resnet50" in out.stderr
    assert "vgg" in out.stderr
