"""The ``keras-kd`` launcher (keras_kd.app.launcher, parser, options): --help
and bad options without Keras, a missing backend in one line, quiet logs."""

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from keras_kd.app import launcher, options, parser
from tests.conftest import BACKEND

ROOT = Path(__file__).parents[1]
HEAVY = ("keras", "tensorflow", "tensorflow_datasets", "jax", "torch",
         "numpy")
# What TensorFlow prints while it loads, when nothing silences it.
NOISE = ("cuInit", "oneDNN", "TF_ENABLE_ONEDNN_OPTS",
         "This TensorFlow binary is optimized", "Could not find cuda drivers",
         "absl::InitializeLog")


def _launch(argv, env=None):
    """Runs the launcher in a fresh interpreter: exit status, stdout, stderr
    and which of HEAVY it imported."""
    code = (
        "import json, sys\n"
        "from keras_kd.app.launcher import main\n"
        "try:\n"
        f"    status = main({argv!r})\n"
        "except SystemExit as exit:\n"
        "    status = exit.code\n"
        "sys.stdout.flush()\n"
        f"print(json.dumps([status, [m for m in {HEAVY!r} "
        "if m in sys.modules]]))\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT,
                            capture_output=True, text=True, timeout=120,
                            env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    *out, last = result.stdout.strip().splitlines()
    status, imported = json.loads(last)
    return status, "\n".join(out), result.stderr, imported


@pytest.mark.parametrize("argv, status, shown", [
    (["--help"], 0, "export a trained student to TFLite"),
    (["run", "--help"], 0, "--objective"),
    (["export", "--help"], 0, "--representative-data"),
    (["search", "--help"], 0, "--max-trials"),
    (["--version"], 0, "keras-kd 0."),
    ([], 2, "usage: keras-kd"),
    (["run", "--seed", "-1"], 2, "e.g. --seed 0"),
    (["run", "--objective", "nope"], 2, "choose one of ctkd, dist"),
    # Model and data set names: answered from the parser's own lists.
    (["run", "--dataset", "cifar11"], 2, "Did you mean: cifar10"),
    (["run", "--teacher", "ResNet5O"], 2, "Did you mean: ResNet50"),
    (["run", "--student", "nope"], 2, "small_cnn"),
    (["search", "--max-trials", "1"], 2,
     "'1' is not at least 2 (the student alone and one distilled setting)"),
    (["run", "--run-name", "../../escaped"], 2, "is not a folder name"),
    (["run", "--run-name", "/abs/path"], 2, "choose the parent folder with "
     "--output"),
    # Refused by the parser, not by Distiller.compile after the teacher trained.
    (["run", "--temperature", "1e-30"], 2, "a temperature in [0.01, 100]"),
    (["search", "--temperatures", "1,500"], 2, "a temperature in [0.01, 100]"),
])
def test_answers_without_importing_keras(argv, status, shown):
    got, out, err, imported = _launch(argv)
    assert got == status, err
    assert shown in out + err
    assert imported == []
    if status == 2 and argv:  # the usage, then one error line, last
        errors = [line for line in err.splitlines() if ": error: " in line]
        assert errors == [err.strip().splitlines()[-1]]


def test_the_command_is_the_launcher_inside_the_package():
    text = (ROOT / "pyproject.toml").read_text()
    assert 'keras-kd = "keras_kd.app.launcher:main"' in text
    # The former launcher module beside the package is gone: nothing
    # imports it, and the wheel ships the package alone.
    assert not (ROOT / "keras_kd_cli.py").exists()
    assert "py-modules" not in text


def test_app_modules_do_not_import_each_other_in_a_loop():
    # Each app module's keras_kd.app imports, at module level or in its
    # functions; the graph has no cycle.
    app = ROOT / "keras_kd" / "app"
    graph = {}
    for path in app.glob("*.py"):
        text = path.read_text()
        found = set(re.findall(r"from keras_kd\.app\.(\w+) import", text))
        for names in re.findall(r"from keras_kd\.app import ([\w, ]+)", text):
            found |= {n.strip() for n in names.split(",")}
        found |= set(re.findall(r'f?"keras_kd\.app\.\{?(\w+)', text))
        graph[path.stem] = {m for m in found if m != path.stem
                            and (app / f"{m}.py").exists()}
    graph["launcher"] |= {"image_run", "causal_lm_run", "search_command",
                          "export_command"}  # imported by name

    def reaches(start, goal, seen=()):
        return any(m == goal or (m not in seen and reaches(
            m, goal, (*seen, m))) for m in graph.get(start, ()))

    loops = [m for m in graph if reaches(m, m)]
    assert loops == [], {m: graph[m] for m in loops}
    assert "launcher" not in set().union(*graph.values())
    for path in app.glob("*.py"):
        assert len(path.read_text().splitlines()) <= 600, path.name


def test_written_out_names_match_keras_kd():
    from keras_kd import objectives
    from keras_kd.app import models
    from keras_kd.export.api import QUANTIZE_MODES

    assert options.OBJECTIVES == tuple(sorted(objectives.LOGIT_OBJECTIVES))
    assert options.QUANTIZE_MODES == tuple(QUANTIZE_MODES)
    assert options.BUILTIN_MODELS == tuple(models.BUILTIN_MODELS)
    # models.APPLICATIONS: the names this Keras has, of those it builds.
    assert set(models.APPLICATIONS) <= set(options.APPLICATIONS)
    for name in options.APPLICATIONS:
        assert models.resolve_name(name.lower()) == name
    import keras_kd

    assert parser.version() == keras_kd.__version__
    from keras_kd import checks

    assert options.TEMPERATURE_RANGE == (checks.MIN_TEMPERATURE,
                                         checks.MAX_TEMPERATURE)


def test_own_temperature_names_the_objectives_that_ignore_it():
    # The progress line says "<objective>'s own temperature" for these:
    # their value must not change with the Distiller's temperature, and
    # every other logit objective's must (so the list is complete).
    import numpy as np

    from keras_kd import objectives
    from tests.helpers import to_numpy

    rng = np.random.default_rng(0)
    teacher = rng.normal(size=(4, 5)).astype("float32") * 3
    student = rng.normal(size=(4, 5)).astype("float32")
    labels = np.array([0, 1, 2, 3])
    own = set()
    for name in ("ctkd", "dist", "dkd", "kd", "ls", "mlkd", "tfkd"):
        objective = objectives.get(name)
        values = [float(np.sum(to_numpy(objective.compute(
            teacher, student, labels=labels, temperature=t))))
            for t in (1.0, 8.0)]
        if np.isclose(values[0], values[1], rtol=1e-6):
            own.add(name)
    assert own == set(options.OWN_TEMPERATURE)


@pytest.mark.skipif(importlib.util.find_spec("tensorflow_datasets") is None,
                    reason="tensorflow-datasets is not installed")
def test_written_out_dataset_names_are_tensorflow_datasets():
    if BACKEND != "tensorflow":
        pytest.skip("imports tensorflow-datasets: once, under tensorflow")
    import tensorflow_datasets as tfds

    from keras_kd.app import dataset_names

    assert set(dataset_names.TFDS_BUILDERS) == set(tfds.list_builders()), (
        "regenerate keras_kd/app/dataset_names.py: "
        "print(keras_kd.app.dataset_names.generate())")


def test_a_rare_dataset_name_is_asked_of_tensorflow_datasets(monkeypatch):
    # Neither known nor close to a known name: tensorflow-datasets decides.
    asked = []

    class FakeTfds:
        @staticmethod
        def list_builders():
            asked.append(True)
            return ["zz_brand_new_images"]

    import keras_kd.extras

    monkeypatch.setattr(keras_kd.extras, "require", lambda name: FakeTfds)
    assert options.dataset_name("zz_brand_new_images") == "zz_brand_new_images"
    assert asked == [True]
    with pytest.raises(Exception, match="unknown dataset 'cifar11'"):
        options.dataset_name("cifar11")
    assert asked == [True]  # a close name: answered from the list


@pytest.mark.parametrize("backend, installs", [
    ("jax", 'pip install "keras-kd[jax]"'),
    ("torch", "pip install torch==2.13.0"),
])
def test_a_missing_backend_is_one_line_naming_the_install(tmp_path, backend,
                                                         installs):
    # A real launch (python -m keras_kd.app.launcher) in an interpreter where
    # the backend's package cannot be found: a sitecustomize on PYTHONPATH
    # blocks it, as if it were not installed.
    (tmp_path / "sitecustomize.py").write_text(
        f"import sys\nsys.modules[{backend!r}] = None\n")
    env = dict(os.environ, KERAS_BACKEND=backend,
               PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]))
    result = subprocess.run(
        [sys.executable, "-m", "keras_kd.app.launcher", "run", "--quick",
         "--output", str(tmp_path / "runs")], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith(f"keras-kd: error: the Keras backend is "
                               f"{backend}")
    assert installs in lines[0]
    assert not (tmp_path / "runs").exists()


def test_a_missing_extra_is_one_line_naming_the_install(tmp_path):
    # The backend is there but the command's extra is not (a JAX user who
    # installed keras-kd[jax] only): one line naming the extra, no traceback.
    (tmp_path / "sitecustomize.py").write_text(
        "import sys\nsys.modules['mnist1d'] = None\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path),
                                                       str(ROOT)]))
    result = subprocess.run(
        [sys.executable, "-m", "keras_kd.app.launcher", "run", "--quick",
         "--output", str(tmp_path / "runs"), "--verbose", "0"], cwd=ROOT,
        env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert lines[-1] == ('keras-kd: error: mnist1d is needed here but is not '
                         'installed. Install it with: pip install '
                         '"keras-kd[data]"'), result.stderr[-3000:]
    assert "Traceback" not in result.stderr


def test_the_backend_is_found_as_keras_finds_it(tmp_path):
    (tmp_path / "keras.json").write_text('{"backend": "torch"}')
    assert launcher.keras_backend({"KERAS_HOME": str(tmp_path)}) == "torch"
    assert launcher.keras_backend({"KERAS_HOME": str(tmp_path),
                                   "KERAS_BACKEND": "jax"}) == "jax"
    assert launcher.keras_backend({"KERAS_HOME": str(tmp_path / "no")}) == \
        "tensorflow"
    assert launcher.missing_backend({"KERAS_BACKEND": BACKEND}) is None


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
    assert bool(launcher.NATIVE_LOG_LINE.match(line)) == noise


@pytest.mark.parametrize("verbose", [False, True])
def test_verbose_leaves_the_log_settings_alone(verbose, monkeypatch,
                                              tmp_path, capsys):
    for name in launcher.QUIET_ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    argv = ["--verbose"] * verbose + ["export", str(tmp_path / "m.keras")]
    assert launcher.main(argv) == 1
    assert "No model file" in capsys.readouterr().err
    got = {name: os.environ.get(name) for name in launcher.QUIET_ENVIRONMENT}
    if verbose:
        assert got == dict.fromkeys(launcher.QUIET_ENVIRONMENT)
    else:
        assert got == launcher.QUIET_ENVIRONMENT


@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None,
                    reason="TensorFlow is not installed")
def test_tensorflow_load_lines_are_silenced(tmp_path):
    if BACKEND != "tensorflow":
        pytest.skip("runs TensorFlow in subprocesses: once, under the "
                    "tensorflow backend")
    env = {k: v for k, v in os.environ.items()
           if k not in launcher.QUIET_ENVIRONMENT}
    env["KERAS_BACKEND"] = "tensorflow"

    def stderr_of(*options):
        # `export` of a missing file: TensorFlow and Keras load, then a
        # one-line error; cheap.
        result = subprocess.run(
            [sys.executable, "-m", "keras_kd.app.launcher", *options,
             "export", str(tmp_path / "m.keras")], cwd=ROOT, env=env,
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


def test_export_command_loads_a_saved_distiller_in_a_fresh_process(tmp_path):
    # `import keras_kd` is lazy: the command registers keras-kd's classes
    # before it reads a .keras file holding a Distiller.
    if BACKEND != "tensorflow" or importlib.util.find_spec(
            "tensorflow") is None:
        pytest.skip("converts with TensorFlow in a subprocess: once, under "
                    "the tensorflow backend")
    import keras
    import numpy as np

    import keras_kd as kd

    def model(width, name):
        inputs = keras.Input((4,))
        return keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Dense(
            width, activation="relu")(inputs)), name=name)

    distiller = kd.Distiller(model(8, "teacher"), model(2, "student"))
    distiller.compile("adam", keras.losses.SparseCategoricalCrossentropy(
        from_logits=True), distillation_loss="dkd")
    distiller.fit(np.ones((4, 4), "float32"), np.arange(4) % 3, epochs=1,
                  verbose=0)
    distiller.save(tmp_path / "distiller.keras")
    result = subprocess.run(
        [sys.executable, "-m", "keras_kd.app.launcher", "export",
         str(tmp_path / "distiller.keras"), "--output",
         str(tmp_path / "student.tflite"), "--latency-runs", "1"], cwd=ROOT,
        env=dict(os.environ, KERAS_BACKEND="tensorflow"),
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "student.tflite").read_bytes()[4:8] == b"TFL3"
