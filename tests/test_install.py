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
        "keras_kd.hub, keras_kd.data")
    assert loaded - baseline == set(), (loaded, baseline)
    assert BACKEND_MODULES[keras.backend.backend()] in baseline


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
