"""The ``keras-kd`` launcher (keras_kd_cli): --help without Keras, quiet logs."""

import doctest
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import keras_kd_cli
from tests.conftest import BACKEND

ROOT = Path(__file__).parents[1]
HEAVY = ("keras", "keras_kd", "tensorflow", "jax", "torch", "numpy")
# What TensorFlow prints while it loads, when nothing silences it.
NOISE = ("cuInit", "oneDNN", "TF_ENABLE_ONEDNN_OPTS",
         "This TensorFlow binary is optimized", "Could not find cuda drivers",
         "absl::InitializeLog")


def _launch(argv):
    """Runs the launcher in a fresh interpreter: exit status, stdout, and
    which of HEAVY it imported."""
    code = (
        "import json, sys\n"
        "import keras_kd_cli\n"
        "try:\n"
        f"    status = keras_kd_cli.main({argv!r})\n"
        "except SystemExit as exit:\n"
        "    status = exit.code\n"
        "sys.stdout.flush()\n"
        f"print(json.dumps([status, [m for m in {HEAVY!r} "
        "if m in sys.modules]]))\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    *out, last = result.stdout.strip().splitlines()
    status, imported = json.loads(last)
    return status, "\n".join(out), result.stderr, imported


@pytest.mark.parametrize("argv, status, shown", [
    (["--help"], 0, "export a trained student to TFLite"),
    (["run", "--help"], 0, "--objective"),
    (["export", "--help"], 0, "--representative-data"),
    (["--version"], 0, "keras-kd 0."),
    ([], 2, "usage: keras-kd"),
    (["run", "--seed", "-1"], 2, "e.g. --seed 0"),
    (["run", "--objective", "nope"], 2, "choose one of dist"),
])
def test_answers_without_importing_keras(argv, status, shown):
    got, out, err, imported = _launch(argv)
    assert got == status, err
    assert shown in out + err
    assert imported == []


def test_the_command_is_the_launcher():
    text = (ROOT / "pyproject.toml").read_text()
    assert 'keras-kd = "keras_kd_cli:main"' in text
    assert 'py-modules = ["keras_kd_cli"]' in text


def test_written_out_names_match_keras_kd():
    from keras_kd import objectives
    from keras_kd.export.api import QUANTIZE_MODES

    assert keras_kd_cli.OBJECTIVES == tuple(sorted(
        objectives.LOGIT_OBJECTIVES))
    assert keras_kd_cli.QUANTIZE_MODES == tuple(QUANTIZE_MODES)
    import keras_kd

    assert keras_kd_cli.version() == keras_kd.__version__


def test_docstring_examples():
    # pytest's --doctest-modules collects keras_kd/ only; the launcher's
    # examples run here.
    result = doctest.testmod(keras_kd_cli)
    assert result.attempted >= 5
    assert result.failed == 0


@pytest.mark.parametrize("line, noise", [
    (b"WARNING: All log messages before absl::InitializeLog() is called are "
     b"written to STDERR\n", True),
    (b"I0000 00:00:1796021334.841705   20438 port.cc:153] oneDNN custom "
     b"operations are on.\n", True),
    (b"E0000 00:00:1796021185.844710   18625 cuda_platform.cc:52] failed call "
     b"to cuInit\n", True),
    (b"2025-09-17 14:44:05.157831: I external/local_xla/xla/tsl/cuda/"
     b"cudart_stub.cc:32] Could not find cuda drivers\n", True),
    (b"F0000 00:00:1796021185.844710   18625 a.cc:52] Check failed\n", False),
    (b"/x/cli.py:248: UserWarning: The teacher scores 0.19\n", False),
    (b"keras-kd export: error: No model file at 'm.keras'\n", False),
])
def test_native_log_line_pattern(line, noise):
    assert bool(keras_kd_cli._NATIVE_LOG_LINE.match(line)) == noise


@pytest.mark.parametrize("verbose", [False, True])
def test_verbose_leaves_the_log_settings_alone(verbose, monkeypatch,
                                              tmp_path, capsys):
    for name in keras_kd_cli.QUIET_ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    argv = ["--verbose"] * verbose + ["export", str(tmp_path / "m.keras")]
    assert keras_kd_cli.main(argv) == 1
    assert "No model file" in capsys.readouterr().err
    got = {name: os.environ.get(name)
           for name in keras_kd_cli.QUIET_ENVIRONMENT}
    if verbose:
        assert got == dict.fromkeys(keras_kd_cli.QUIET_ENVIRONMENT)
    else:
        assert got == keras_kd_cli.QUIET_ENVIRONMENT


@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None,
                    reason="TensorFlow is not installed")
def test_tensorflow_load_lines_are_silenced(tmp_path):
    if BACKEND != "tensorflow":
        pytest.skip("runs TensorFlow in subprocesses: once, under the "
                    "tensorflow backend")
    env = {k: v for k, v in os.environ.items()
           if k not in keras_kd_cli.QUIET_ENVIRONMENT}
    env["KERAS_BACKEND"] = "tensorflow"

    def stderr_of(*options):
        # `export` of a missing file: TensorFlow and Keras load, then a
        # one-line error; cheap.
        result = subprocess.run(
            [sys.executable, "-m", "keras_kd_cli", *options, "export",
             str(tmp_path / "m.keras")], cwd=ROOT, env=env,
            capture_output=True, text=True, timeout=300)
        assert result.returncode == 1, result.stderr[-3000:]
        assert "keras-kd export: error: No model file" in result.stderr
        return result.stderr

    loud = stderr_of("--verbose")
    if not any(n in loud for n in NOISE):
        pytest.skip("TensorFlow printed nothing to silence on this machine")
    quiet = stderr_of()
    assert [n for n in NOISE if n in quiet] == [], quiet
    # What is left is what keras-kd (and Python) said, the error last.
    assert set(quiet.splitlines()) <= set(loud.splitlines()), quiet
    assert quiet.strip().splitlines()[-1].startswith(
        "keras-kd export: error: No model file")
