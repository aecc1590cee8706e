"""keras_kd.app.runs: each run's folder is its own, --run-name stays under
--output, temporary files live with the run (issue 28 #3, #7, #8)."""

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from keras_kd import ownership
from keras_kd.app import launcher, options, runs

ROOT = Path(__file__).parents[2]


# The application's run folders: no backend-specific path of its own (the Keras
# and keras-kd calls it makes are tested on every backend elsewhere), so CI runs
# this file under one backend (tests/conftest.py, `one_backend`; a test's own
# mark wins).
pytestmark = pytest.mark.one_backend("torch")


def _claim(args):
    output, default_name = args
    return runs.make_run_dir(output, None, default_name)[0]


def test_runs_started_together_never_share_a_folder(tmp_path):
    # Four processes with the same default name (a timestamp to the second):
    # four folders, each marked as one run's.
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        names = pool.map(_claim, [(str(tmp_path), "digits-cnn-20260101")] * 4)
    assert sorted(names) == ["digits-cnn-20260101", "digits-cnn-20260101-2",
                             "digits-cnn-20260101-3", "digits-cnn-20260101-4"]
    for name in names:
        assert ownership.read_marker(tmp_path / name)["kind"] == "run"
        assert os.listdir(tmp_path / name) == [ownership.MARKER]


def test_a_rerun_under_an_existing_run_name_is_refused(tmp_path):
    name, path = runs.make_run_dir(str(tmp_path), "mine", "unused")
    assert (name, path) == ("mine", str(tmp_path / "mine"))
    Path(path, "report.json").write_text("{}")  # the first run's results
    with pytest.raises(SystemExit, match="already in use by another keras-kd "
                       "run.*Pass a new --run-name"):
        runs.make_run_dir(str(tmp_path), "mine", "unused")
    # A folder keras-kd did not make is refused too, and left as it was.
    Path(tmp_path, "theirs").mkdir()
    Path(tmp_path, "theirs", "notes.txt").write_text("keep")
    with pytest.raises(SystemExit, match="did not write"):
        runs.make_run_dir(str(tmp_path), "theirs", "unused")
    assert sorted(os.listdir(tmp_path / "mine")) == [ownership.MARKER,
                                                     "report.json"]
    assert os.listdir(tmp_path / "theirs") == ["notes.txt"]
    # An empty folder made by hand is taken.
    Path(tmp_path, "empty").mkdir()
    assert runs.make_run_dir(str(tmp_path), "empty", "unused")[0] == "empty"


@pytest.mark.parametrize("name", ["../../escaped", "/abs/path", "a/b", "..",
                                  ".", "", "sub/../x"])
def test_run_name_is_one_folder_name(name):
    with pytest.raises(argparse.ArgumentTypeError, match="not a folder name"):
        options.run_name(name)


def test_run_name_cannot_escape_output(tmp_path, capsys):
    # --output o/inner --run-name ../../escaped wrote to tmp_path/escaped.
    output = tmp_path / "o" / "inner"
    with pytest.raises(SystemExit) as stop:
        launcher.main(["run", "--quick", "--output", str(output),
                       "--run-name", "../../escaped"])
    assert stop.value.code == 2
    assert "--run-name: '../../escaped' is not a folder name" in \
        capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_temporary_files_go_into_the_run_folder(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    before = tempfile.gettempdir()
    environment = dict(os.environ)
    with runs.temporary_files_in(str(run_dir)) as folder:
        assert folder == str(run_dir / ".tmp")
        made = tempfile.mkdtemp(prefix="keras_kd_export_")
        log = tempfile.NamedTemporaryFile(prefix="keras_kd_tf_worker_",
                                          suffix=".log", delete=False)
        assert os.path.dirname(made) == os.path.dirname(log.name) == folder
        log.close()
    assert tempfile.gettempdir() == before
    # The environment is left alone: the export's worker process outlives
    # the run (the next export in this process reuses it).
    assert dict(os.environ) == environment
    assert os.listdir(run_dir) == []  # removed with what was in it


def test_a_killed_run_leaves_its_temporary_files_in_its_folder(tmp_path):
    # The run is killed (os._exit) while its export worker's files exist:
    # they stay inside the run's folder, not in the system's temp folder.
    code = (
        "import os, sys, tempfile\n"
        "from keras_kd.app import runs\n"
        f"with runs.temporary_files_in({str(tmp_path)!r}):\n"
        "    d = tempfile.mkdtemp(prefix='keras_kd_export_')\n"
        "    fd, log = tempfile.mkstemp(prefix='keras_kd_tf_worker_', suffix='.log')\n"
        "    print(d, log, flush=True)\n"
        "    os._exit(9)\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT,
                            capture_output=True, text=True, timeout=60,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert result.returncode == 9, result.stderr
    folder, log = result.stdout.split()
    assert os.path.dirname(folder) == os.path.dirname(log) == str(
        tmp_path / ".tmp")
    assert os.path.isdir(folder) and os.path.isfile(log)


def test_search_refuses_one_trial_and_names_the_fix(capsys):
    with pytest.raises(SystemExit) as stop:
        launcher.main(["search", "--max-trials", "1"])
    assert stop.value.code == 2
    assert ("'1' is not at least 2 (the student alone and one distilled "
            "setting); e.g. --max-trials 10") in capsys.readouterr().err


def test_search_checks_its_packages_before_training(monkeypatch, tmp_path):
    # keras-kd search on TensorFlow without tensorboard failed after the
    # teacher had trained; now it stops before, naming the extra.
    import keras_kd.extras
    from keras_kd.app import search_command

    real = keras_kd.extras.require

    def require(module):
        if module.startswith("tensorboard"):
            raise ImportError(
                'tensorboard is needed here but is not installed. Install '
                'it with: pip install "keras-kd[search]"')
        return real(module)

    monkeypatch.setattr(keras_kd.extras, "require", require)
    with pytest.raises(ImportError, match=r'keras-kd\[search\]'):
        search_command.require_search_packages("tensorflow")
    search_command.require_search_packages("jax")  # tensorboard not needed
    assert keras_kd.extras.EXTRAS["tensorboard"] == "search"

    trained = []
    monkeypatch.setattr("keras_kd.app.image_run.train_teacher",
                        lambda run: trained.append(run))
    monkeypatch.setattr(search_command, "NEEDS",
                        search_command.NEEDS + ("tensorboard",))
    args = launcher.build_parser().parse_args(
        ["search", "--quick", "--output", str(tmp_path)])
    with pytest.raises(SystemExit, match=r'keras-kd search: .*keras-kd\[search\]'):
        search_command.run_search(args)
    assert trained == [] and os.listdir(tmp_path) == []


def test_the_run_folder_is_marked_and_named_in_the_report(tmp_path):
    # The marker says the folder is keras-kd's run (what remove_owned and a
    # rerun check).
    name, path = runs.make_run_dir(str(tmp_path), None, "x")
    with open(os.path.join(path, ownership.MARKER)) as f:
        assert json.load(f) == {"created_by": "keras-kd", "kind": "run"}


def test_exports_of_two_runs_in_one_process_share_the_worker(tmp_path):
    # On JAX and PyTorch the export converts in a TensorFlow process that
    # outlives one run: the second run's export must not find that process
    # pointed at the first run's removed .tmp folder.
    import importlib.util

    import keras
    import numpy as np

    if keras.backend.backend() == "tensorflow" or importlib.util.find_spec(
            "tensorflow") is None:
        pytest.skip("the worker process converts on JAX and PyTorch only")
    from keras_kd import export

    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(3)(inputs))
    x = np.ones((2, 4), "float32")
    for name in ("first", "second"):
        run_dir = tmp_path / name
        run_dir.mkdir()
        with runs.temporary_files_in(str(run_dir)):
            result = export.to_tflite(model, str(run_dir / "m.tflite"),
                                      eval_data=(x, np.zeros(2, "int64")),
                                      latency_runs=1)
        assert result.path and os.listdir(run_dir) == ["m.tflite"]
