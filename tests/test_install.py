"""The core install: ``import keras_kd`` needs keras and numpy only.

scripts/test.sh also runs this file (with the core library tests) in a
virtual environment holding only the oldest supported Keras, JAX, NumPy and
pytest, where no extra is installed.
"""

import importlib.util
import json
import subprocess
import sys

import keras
import pytest

EXTRA_MODULES = ("tensorflow", "tensorflow_datasets", "sklearn",
                 "matplotlib", "keras_hub", "ai_edge_litert")
BACKEND_MODULES = {"jax": "jax", "tensorflow": "tensorflow", "torch": "torch"}


# In the suite, the import check runs under every backend (with every extra
# installed, none may load); the other tests run under one backend each
# (`one_backend`, tests/conftest.py). scripts/test.sh runs this whole file
# again under each backend in venvs holding that backend alone (the core
# install with JAX, the bare PyTorch and TensorFlow installs), with
# KERAS_KD_ONE_BACKEND=0.


def _run(code):
    result = subprocess.run([sys.executable, "-c", code], capture_output=True,
                            text=True, timeout=300,
                            env={"KERAS_BACKEND": keras.backend.backend(),
                                 "PATH": "/usr/bin:/bin",
                                 "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def _modules_after(imports):
    """Which of the extras' and backends' modules a fresh interpreter holds
    after ``imports``."""
    watched = (*EXTRA_MODULES, *BACKEND_MODULES.values())
    out = _run(f"import json, sys\n{imports}\n"
               f"print(json.dumps([m for m in {watched!r} if m in sys.modules]))")
    return set(json.loads(out.strip().splitlines()[-1]))


def test_import_loads_no_extra_and_no_other_backend():
    # What Keras itself loads with this backend is the baseline (with
    # TensorFlow 2.21, `import tensorflow` also loads jax, sklearn and
    # matplotlib when they are installed): keras_kd must add nothing to it.
    baseline = _modules_after("import keras")
    loaded = _modules_after(
        "import keras_kd, keras_kd.export, keras_kd.soft_labels, "
        "keras_kd.hub, keras_kd.data, keras_kd.pruning")
    assert loaded - baseline == set(), (loaded, baseline)
    assert BACKEND_MODULES[keras.backend.backend()] in baseline


@pytest.mark.one_backend
def test_distilling_a_sequence_model_needs_no_extra():
    out = _run(
        "import sys, keras, numpy as np, keras_kd as kd\n"
        "def lm(width, name):\n"
        "    i = keras.Input((5,), dtype='int32')\n"
        "    h = keras.layers.Embedding(11, width)(i)\n"
        "    return keras.Model(i, keras.layers.Dense(11)(h), name=name)\n"
        "d = kd.Distiller(lm(16, 't'), lm(4, 's'))\n"
        "d.compile('adam', keras.losses.SparseCategoricalCrossentropy("
        "from_logits=True), temperature=1.0, distillation_loss='gkd')\n"
        "x = np.random.randint(0, 11, (8, 5)).astype('int32')\n"
        "h = d.fit(x, x, sample_weight=np.ones((8, 5)), epochs=2, "
        "verbose=0).history\n"
        "print(sorted(h), h['loss'][1] < h['loss'][0], "
        "'tensorflow' in sys.modules)\n")
    names, decreased, tensorflow = out.strip().splitlines()[-1].rsplit(" ", 2)
    assert names == "['distillation_loss', 'loss', 'student_loss']"
    assert decreased == "True"
    assert tensorflow == str(keras.backend.backend() == "tensorflow")


@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is not None,
                    reason="TensorFlow is installed: the error cannot show")
def test_a_missing_extra_names_its_install_line():
    from keras_kd.extras import require

    with pytest.raises(ImportError, match=r'pip install "keras-kd\[export\]"'):
        require("tensorflow")


def test_the_extras_table_names_real_extras():
    import re
    from pathlib import Path

    from keras_kd.extras import EXTRAS

    text = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    declared = set(re.findall(r"^(\w+) = \[", text.split(
        "[project.optional-dependencies]")[1].split("[project.scripts]")[0],
        re.M))
    assert set(EXTRAS.values()) <= declared, (set(EXTRAS.values()), declared)


# ----------------------------------------------------------------------
# `import keras_kd` is lazy (PEP 562), yet registers keras-kd with Keras
# ----------------------------------------------------------------------
def test_import_keras_kd_imports_no_keras():
    # What the keras-kd command's --help needs: the package and its parser
    # load with the standard library alone.
    loaded = _modules_after("import keras_kd, keras_kd.app.launcher\n"
                            "assert 'keras' not in sys.modules")
    assert loaded == set()


@pytest.mark.one_backend
def test_public_names_load_on_first_use():
    out = _run(
        "import sys, keras_kd as kd\n"
        "assert 'keras' not in sys.modules\n"
        "from keras_kd import Distiller, KD\n"
        "import keras_kd.search\n"  # the submodule: kd.search stays the function
        "print(Distiller.__module__, KD.__name__, kd.DIST.__name__,\n"
        "      kd.callbacks.StudentCheckpoint.__name__, callable(kd.search),\n"
        "      kd.search is sys.modules['keras_kd.search'].search,\n"
        "      'OnPolicy' in dir(kd))\n")
    assert out.split() == ["keras_kd.distiller", "KD", "DIST",
                           "StudentCheckpoint", "True", "True", "True"]


@pytest.mark.one_backend
@pytest.mark.parametrize("imports", [
    "import keras_kd\nimport keras",  # keras-kd first: registered when Keras loads
    "import keras\nimport keras_kd",  # Keras first: registered at once
])
def test_a_saved_distiller_loads_in_a_fresh_process(tmp_path, imports):
    import numpy as np

    import keras_kd as kd

    def model(width, name):
        inputs = keras.Input((4,))
        return keras.Model(inputs, keras.layers.Dense(3)(
            keras.layers.Dense(width, activation="relu")(inputs)), name=name)

    distiller = kd.Distiller(model(8, "teacher"), model(2, "student"))
    distiller.compile("adam", keras.losses.SparseCategoricalCrossentropy(
        from_logits=True), alpha=0.3, temperature=2.0,
        distillation_loss=kd.DKD(beta=4.0))
    x = np.random.default_rng(0).normal(size=(8, 4)).astype("float32")
    distiller.fit(x, np.arange(8) % 3, epochs=1, verbose=0)
    path = tmp_path / "distiller.keras"
    distiller.save(path)
    expected = distiller.student.predict(x, verbose=0)
    np.save(tmp_path / "x.npy", x)
    out = _run(
        f"{imports}\nimport numpy as np\n"
        f"m = keras.models.load_model({str(path)!r})\n"
        f"y = m.student.predict(np.load({str(tmp_path / 'x.npy')!r}), "
        "verbose=0)\n"
        f"np.save({str(tmp_path / 'y.npy')!r}, y)\n"
        "print(type(m).__name__, round(float(m.alpha), 4), "
        "float(m.temperature))\n")
    assert out.split()[-3:] == ["Distiller", "0.3", "2.0"]
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected,
                               rtol=1e-5, atol=1e-6)
