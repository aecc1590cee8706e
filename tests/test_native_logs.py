"""TensorFlow's native log lines are hidden where keras-kd starts TensorFlow
(keras_kd.export.native_logs), and shown with KERAS_KD_VERBOSE=1 (issue 27)."""

import importlib.util
import os
import subprocess
import sys

import pytest

from keras_kd.export import native_logs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

NATIVE = (b"I0000 00:00:1796613578.541181   16299 reader.cc:83] Reading "
          b"SavedModel from: /tmp/x\n"
          b"fully_quantize: 0, inference_type: 6, input_inference_type: "
          b"FLOAT32, output_inference_type: FLOAT32\n")
OWN = b"UserWarning: a line of Python's own\n"


def test_block_hides_native_lines_and_passes_the_rest(capfd, monkeypatch):
    monkeypatch.delenv(native_logs.VERBOSE_VARIABLE, raising=False)
    with native_logs.quiet_native_stderr():
        os.write(2, NATIVE + OWN)
        os.write(1, b"stdout untouched\n")
    out, err = capfd.readouterr()
    assert err == OWN.decode()
    assert out == "stdout untouched\n"


def test_failed_block_shows_every_line(capfd, monkeypatch):
    monkeypatch.delenv(native_logs.VERBOSE_VARIABLE, raising=False)
    with pytest.raises(RuntimeError, match="conversion failed"):
        with native_logs.quiet_native_stderr():
            os.write(2, NATIVE + OWN)
            raise RuntimeError("conversion failed")
    assert capfd.readouterr().err == (NATIVE + OWN).decode()
    # Nested blocks: the inner one's lines reach the outer one's filter.
    with native_logs.quiet_native_stderr():
        with native_logs.quiet_native_stderr():
            os.write(2, NATIVE + OWN)
    assert capfd.readouterr().err == OWN.decode()


def test_verbose_switch_shows_everything(capfd, monkeypatch):
    monkeypatch.setenv(native_logs.VERBOSE_VARIABLE, "1")
    with native_logs.quiet_native_stderr():
        os.write(2, NATIVE + OWN)
    assert capfd.readouterr().err == (NATIVE + OWN).decode()


def test_worker_environment_keeps_the_users_settings():
    env = native_logs.worker_environment({"TF_CPP_MIN_LOG_LEVEL": "0",
                                          "PATH": "/bin"})
    assert env == {"TF_CPP_MIN_LOG_LEVEL": "0", "GLOG_minloglevel": "3",
                   "GRPC_VERBOSITY": "ERROR", "PATH": "/bin"}
    assert native_logs.worker_environment({"KERAS_KD_VERBOSE": "yes"}) == {
        "KERAS_KD_VERBOSE": "yes"}
    user = {"PATH": "/bin"}
    native_logs.worker_environment(user)
    assert user == {"PATH": "/bin"}  # a copy: the caller's dict unchanged


# A user's script: Keras and the model first (on the TensorFlow backend that
# loads TensorFlow, the user's own doing), then keras-kd's exports between
# two markers. Only the lines between the markers are keras-kd's.
SCRIPT = r"""
import sys
import keras
import numpy as np
import keras_kd as kd

inputs = keras.Input((8,))
model = keras.Model(inputs, keras.layers.Dense(3)(inputs))
x = np.random.default_rng(0).random((32, 8)).astype("float32")
model(x[:1])
sys.stderr.write("=== export starts\n"); sys.stderr.flush()
report = kd.export.to_tflite(model, sys.argv[1], quantize="int8",
                             representative_data=x, latency_runs=2)
kd.export.to_saved_model(model, sys.argv[2])
sys.stderr.write("=== export ends\n"); sys.stderr.flush()
print(report.quantize, report.max_abs_diff < 0.1)
"""


def export_stderr(backend, tmp_path, verbose):
    """The stderr lines a script's two exports print, on ``backend``, with
    the user's environment free of log settings."""
    env = {k: v for k, v in os.environ.items()
           if k not in native_logs.QUIET_ENVIRONMENT
           and k != native_logs.VERBOSE_VARIABLE}
    env.update(KERAS_BACKEND=backend, PYTHONPATH=ROOT)
    if verbose:
        env[native_logs.VERBOSE_VARIABLE] = "1"
    script = tmp_path / "export_script.py"
    script.write_text(SCRIPT)
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path / f"{backend}.tflite"),
         str(tmp_path / f"{backend}_saved")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["int8", "True"]
    lines = result.stderr.splitlines()
    start = lines.index("=== export starts")
    return lines[start + 1:lines.index("=== export ends")]


@pytest.mark.one_backend
@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None
                    or importlib.util.find_spec("jax") is None,
                    reason="needs TensorFlow and JAX")
@pytest.mark.parametrize("backend", ["jax", "tensorflow"])
def test_library_export_prints_no_native_lines(backend, tmp_path):
    """On JAX the export loads TensorFlow in this process (Keras serializes
    the model) and converts in the worker process; on TensorFlow it converts
    here. Either way the script's stderr shows nothing of TensorFlow's, and
    everything with KERAS_KD_VERBOSE=1 (which also proves the quiet run had
    lines to hide)."""
    loud = export_stderr(backend, tmp_path, verbose=True)
    native = [line for line in loud if native_logs.is_native_log_line(line)]
    assert len(native) >= 3, loud
    assert any("fully_quantize" in line or "XNNPACK" in line
               for line in native), loud
    quiet = export_stderr(backend, tmp_path, verbose=False)
    assert quiet == [], quiet
