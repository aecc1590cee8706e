"""The examples (examples/*.py --smoke) and the notebooks, run end to end.

To keep CI time down, each example and notebook runs under one backend only
(ASSIGNED below, through the ``one_backend`` mark of tests/conftest.py); under
the other backends its test is reported as skipped, not passed. Together the
three backend runs cover every example once.
"""

import importlib.util
import os
import pathlib
import re

import numpy as np
import pytest

from tests.conftest import BACKEND

ROOT = pathlib.Path(__file__).resolve().parents[1]

ASSIGNED = {
    "resnet50_mobilenetv2_cifar10": "tensorflow",
    "keras_io_mnist": "torch",
    "text_transformer": "tensorflow",
    "recommender_wide_deep_fm": "torch",
    "transfer_learning": "torch",
    "language_model": "torch",
    "quickstart.ipynb": "jax",
    "flagship.ipynb": "tensorflow",
    "language_model.ipynb": "jax",
}


def only_on(name):
    """The `one_backend` mark (tests/conftest.py) naming ``name``'s backend."""
    return pytest.mark.one_backend(ASSIGNED[name])


def _load(name):
    spec = importlib.util.spec_from_file_location(
        f"example_{name}", ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _check_keys(results, expected_keys):
    assert list(results) == expected_keys
    for value in results.values():
        assert 0.0 <= value <= 1.0


def test_every_example_and_notebook_is_assigned():
    names = {p.stem for p in (ROOT / "examples").glob("*.py")}
    names |= {p.name for p in (ROOT / "notebooks").glob("*.ipynb")}
    assert names == set(ASSIGNED)


@only_on("resnet50_mobilenetv2_cifar10")
def test_flagship_resnet50_mobilenetv2_smoke(tmp_path):
    # --smoke runs on tfds.testing.mock_data (random images and labels) with
    # random weights for a few steps: no accuracy can show learning there,
    # so this test checks the pipeline: models, files, the TFLite export.
    records = _load("resnet50_mobilenetv2_cifar10").main(
        ["--smoke", "--output", str(tmp_path)])
    labels = [r["label"] for r in records]
    assert labels == ["teacher (ResNet50)", "student alone (MobileNetV2)",
                      "distilled student (MobileNetV2)",
                      "distilled student, TFLite float32"]
    assert records[0]["parameters"] > 10 * records[2]["parameters"]
    tflite = records[3]
    assert os.path.getsize(tflite["path"]) == tflite["size_bytes"]
    # float32 export predicts as the Keras student does
    assert tflite["test_accuracy"] == pytest.approx(
        records[2]["test_accuracy"], abs=1.0 / 16 + 1e-9)


@only_on("keras_io_mnist")
def test_keras_io_mnist_smoke():
    module = _load("keras_io_mnist")
    results = module.main(["--smoke"])
    _check_keys(results, ["teacher", "distilled student",
                          "student from scratch"])
    # 10 digits: chance is 0.1. Measured (seeds 0-3, JAX): teacher
    # 0.90-0.94, distilled 0.86-0.88, from scratch 0.89-0.93. On these 1,212
    # 8x8 images the recipe's distillation (alpha=0.1, T=10) does not beat
    # the scratch student (3-5 points behind, the teacher being itself only
    # 3 epochs old), so the test asserts that both students learn and that
    # distillation costs at most 10 points, not a gain.
    assert results["teacher"] >= 0.85
    assert results["distilled student"] >= 0.75
    assert results["distilled student"] >= \
        results["student from scratch"] - 0.10
    # the recipe's architectures: a 256/512-filter teacher, 16/32 student
    assert module.teacher_model((8, 8, 1)).count_params() > 20 * \
        module.student_model((8, 8, 1)).count_params()


@only_on("text_transformer")
def test_text_transformer_smoke_and_task():
    module = _load("text_transformer")
    x, y = module.synthetic_task(50, length=16, vocab=100, seed=3)
    # independent recount: the label is the most frequent keyword group
    groups = np.where((x >= 1) & (x <= 32), (x - 1) // 8, -1)
    counts = np.stack([(groups == g).sum(1) for g in range(4)], 1)
    np.testing.assert_array_equal(y, np.argmax(counts, 1))
    results = module.main(["--smoke"])
    _check_keys(results,
                ["teacher", "distilled student", "student from scratch"])
    # Ties go to the lowest group, so always answering group 0 is right
    # about 45% of the time (length 16): the baseline to beat.
    n = module.SMOKE["examples"]
    _, y = module.synthetic_task(n + n // 4, module.SMOKE["length"], 200)
    majority = np.bincount(y[n:]).max() / len(y[n:])
    assert 0.35 < majority < 0.55
    # Measured (seeds 0-3, JAX): teacher 0.88-0.91, distilled student
    # 0.91-0.94, student from scratch 0.92-0.95. The 2-block student learns
    # this task alone as well as with the FitNet + KD terms (0-3 points
    # behind), so: both far above the baseline, distillation within 8 points.
    assert results["teacher"] >= majority + 0.30
    assert results["distilled student"] >= majority + 0.30
    assert results["distilled student"] >= \
        results["student from scratch"] - 0.08


@only_on("recommender_wide_deep_fm")
def test_recommender_smoke_and_fm_math():
    import keras

    module = _load("recommender_wide_deep_fm")
    x, y, vocab = module.synthetic_interactions(200, users=20, items=30)
    assert x.shape == (200, 4) and x.max() < vocab and 0.3 < y.mean() < 0.7
    fm = module.factorization_machine(vocab)
    inter = keras.Model(fm.inputs, fm.get_layer("student_interactions").output)
    v = keras.ops.convert_to_numpy(fm.get_layer("student_factors").embeddings)
    want = np.stack([
        sum(v[r[i]] * v[r[j]] for i in range(4) for j in range(i + 1, 4))
        for r in x[:5]])
    np.testing.assert_allclose(inter.predict(x[:5], verbose=0), want,
                               rtol=1e-4, atol=1e-6)
    results = module.main(["--smoke"])
    _check_keys(results, ["teacher (Wide & Deep)", "distilled FM",
                          "FM from scratch"])
    # Clicks are balanced (chance 0.5) and mostly decided by the age bucket x
    # item category interaction: a model without interactions (a logistic
    # regression on the one-hot fields, fitted here on the same split) gets
    # about 0.6, so beating it by 0.1 means the FM learnt the interactions.
    n = module.SMOKE["examples"]
    x, y, vocab = module.synthetic_interactions(n + n // 5)
    first_order = _first_order_accuracy(x[:n], y[:n], x[n:], y[n:], vocab)
    assert 0.5 < first_order < 0.7
    # Measured (seeds 0-4, PyTorch): teacher 0.74-0.82, distilled FM
    # 0.78-0.89, FM from scratch 0.79-0.88; the no-interaction model
    # 0.58-0.63. The FM suits this data better than Wide & Deep (which
    # overfits 4,096 examples): distillation does not beat the scratch FM
    # (4 points behind to 1 ahead), so it is held to within 8 points.
    assert results["teacher (Wide & Deep)"] >= 0.68
    assert results["distilled FM"] >= max(0.72, first_order + 0.10)
    assert results["FM from scratch"] >= max(0.72, first_order + 0.10)
    assert results["distilled FM"] >= results["FM from scratch"] - 0.08


def _first_order_accuracy(x_train, y_train, x_test, y_test, vocab):
    """Test accuracy of a logistic regression on one-hot fields (no pairs)."""
    from sklearn.linear_model import LogisticRegression

    def one_hot(x):
        out = np.zeros((len(x), vocab), "float32")
        np.put_along_axis(out, x, 1.0, axis=1)
        return out

    model = LogisticRegression(max_iter=2000).fit(one_hot(x_train), y_train)
    return float(model.score(one_hot(x_test), y_test))


@only_on("transfer_learning")
def test_transfer_learning_smoke():
    module = _load("transfer_learning")
    source, (xt, yt), (xs, ys), pool = module.digits_tasks(40)
    assert source[1].max() == 4 and len(xt) == 40
    np.testing.assert_array_equal(pool[:40], xt)  # labelled ones come first
    assert set(yt) <= set(range(5)) and set(ys) <= set(range(5))
    results = module.main(["--smoke"])
    _check_keys(results, [
        "teacher, feature extraction", "teacher, fine-tuning",
        "teacher, from scratch", "student (tiny_cnn), distilled",
        "student (tiny_cnn), alone"])
    # 5 classes: chance is 0.2. Measured (seeds 0-4, PyTorch): feature
    # extraction 0.71-0.87, fine-tuning 0.94-0.97, from scratch 0.95-0.97,
    # distilled student 0.93-0.98, student alone 0.80-0.90 (distilled ahead
    # by 3-18 points). With 100 labelled 8x8 digits the CNN from scratch
    # does as well as the transferred ones, so transfer is not asserted to
    # win; fine-tuning improves on feature extraction, and distilling on
    # the unlabelled images beats the student trained on the labelled ones.
    fe = results["teacher, feature extraction"]
    ft = results["teacher, fine-tuning"]
    assert fe >= 0.6
    assert ft >= fe + 0.05
    assert max(fe, ft, results["teacher, from scratch"]) >= 0.9
    distilled = results["student (tiny_cnn), distilled"]
    assert distilled >= 0.85
    assert distilled >= results["student (tiny_cnn), alone"]


@only_on("language_model")
def test_language_model_smoke():
    result = _load("language_model").main(["--smoke"])
    bits = {name: row["mean"] for name, row in result["table"].items()}
    assert list(bits) == ["teacher", "student alone", "forward_kl",
                          "reverse_kl", "gkd"]
    # Bytes: a model that learns nothing scores 8 bits per byte. Measured
    # (--smoke: 120 teacher steps, 60 student steps, seed 0): JAX teacher
    # 4.96, student alone 5.53, forward KL 5.49, reverse KL 5.52, GKD 5.51;
    # PyTorch 4.93, 5.49, 5.47, 5.52, 5.48. At this size distillation is
    # level with the student alone (its gains show in the full run, see
    # docs/benchmarks.md), so: everyone learns, the teacher learns more, and
    # no objective costs more than 0.15 bits per byte. (--smoke builds
    # teacher and student at one size, "tiny": the teacher's lead comes from
    # its twice as many steps.)
    assert all(value < 6.0 for value in bits.values()), bits
    assert bits["teacher"] <= bits["student alone"] - 0.3, bits
    for name in ("forward_kl", "reverse_kl", "gkd"):
        assert abs(bits[name] - bits["student alone"]) < 0.15, bits
    assert result["parameters"]["teacher"] == result["parameters"]["student"]


def _run_notebook(name, tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    notebook = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=600, kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    return "".join(o.get("text", "") for c in notebook.cells
                   if c.cell_type == "code" for o in c.get("outputs", []))


@only_on("language_model.ipynb")
def test_language_model_notebook(tmp_path):
    outputs = _run_notebook("language_model.ipynb", tmp_path)
    assert f"backend {BACKEND}" in outputs
    rows = dict(line.strip("|").split("|")[:2] for line in outputs.splitlines()
                if line.startswith("| ") and "model" not in line)
    bits = {k.strip(): float(v) for k, v in rows.items()}
    assert list(bits) == ["teacher", "student alone", "forward_kl",
                          "reverse_kl", "gkd"]
    # 8 bits per byte is a model that learnt nothing; the notebook's small
    # setting (60 teacher steps, 40 student steps) gets all of them below 7,
    # the larger teacher ahead of the student alone.
    assert all(value < 7.0 for value in bits.values()), bits
    assert bits["teacher"] < bits["student alone"], bits


# What the notebooks print after the two students: "distilled - alone: +5.1
# points, 95% interval +2.7 to +7.7 (...)".
GAIN_LINE = re.compile(r"^distilled - alone: ([+-][\d.]+) points, 95% interval "
                       r"([+-][\d.]+) to ([+-][\d.]+) ", re.M)


@pytest.mark.parametrize("name", [
    pytest.param(name, marks=only_on(name))
    for name in ("quickstart.ipynb", "flagship.ipynb")])
def test_notebook_runs_top_to_bottom(name, tmp_path):
    outputs = _run_notebook(name, tmp_path)
    assert f"backend {BACKEND}" in outputs
    assert "| Model" in outputs and "TFLite" in outputs
    assert list(tmp_path.glob("saved_models/*/*.tflite"))
    gain, low, high = map(float, GAIN_LINE.search(outputs).groups())
    assert low <= gain <= high
    if name == "quickstart.ipynb":
        # At its default size the quickstart shows distillation winning beyond
        # the interval. Measured (JAX, seeds 0-2): +5.1, +5.3, +3.3 points,
        # the interval's lower ends +2.7, +3.0, +1.4; the student alone 88.7 to
        # 91.8%, the teacher 96.4 to 98.2%. With Hinton KD at T = 4 the same
        # pair lost 4.9 to 10.9 points (docs/benchmarks.md).
        accuracy = {label: float(value) for label, value in re.findall(
            r"^(teacher|student alone|distilled student) +([\d.]+)%", outputs, re.M)}
        assert low > 0, outputs
        assert accuracy["teacher"] > accuracy["distilled student"] > \
            accuracy["student alone"] >= 80, accuracy
        assert gain == pytest.approx(
            accuracy["distilled student"] - accuracy["student alone"], abs=0.11)


NOTEBOOKS = ["quickstart.ipynb", "flagship.ipynb", "language_model.ipynb"]


def _code(name):
    nbformat = pytest.importorskip("nbformat")
    notebook = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    return [c.source for c in notebook.cells if c.cell_type == "code"]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebooks_use_only_the_public_api(name):
    # keras_kd.app is the command's implementation, not an API: a notebook
    # that imports it breaks when the command changes.
    code = "\n".join(_code(name))
    modules = set(re.findall(r"^\s*(?:from|import) (keras_kd[\w.]*)", code, re.M))
    assert modules, code
    assert modules <= {"keras_kd", "keras_kd.data", "keras_kd.export",
                       "keras_kd.search"}, modules
    assert "keras_kd.app" not in code and "kd.app" not in code


class _Shell:
    """What a notebook's ``%pip`` reaches: records the line magics."""

    def __init__(self):
        self.magics = []

    def run_line_magic(self, name, line):
        # IPython expands {expressions} from the caller's namespace
        import string
        import sys

        namespace = sys._getframe(1).f_globals
        self.magics.append((name, string.Formatter().vformat(line, (), namespace)))


def _run_install_cell(name, tmp_path, monkeypatch, installed, uploads=()):
    """Runs the first code cell as IPython would (magics transformed), with
    ``/content`` mapped to ``tmp_path`` and ``find_spec`` answering
    ``installed``; returns the %pip lines it ran."""
    import importlib.util

    from IPython.core.inputtransformer2 import TransformerManager

    for upload in uploads:
        (tmp_path / upload).write_bytes(b"")
    source = TransformerManager().transform_cell(_code(name)[0])
    source = source.replace('"/content/', f'"{tmp_path}/')
    shell = _Shell()
    calls = iter([installed])   # then True: as if pip had installed it
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda module, *a: next(calls, True) or None)
    exec(compile(source, name, "exec"), {"get_ipython": lambda: shell})
    return [line for magic, line in shell.magics if magic == "pip"]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_install_cell_installs_an_uploaded_wheel(name, tmp_path,
                                                          monkeypatch):
    # keras-kd is not on PyPI: the Colab cell installs the wheel the user
    # built in a clone and uploaded to /content, with the notebook's extras,
    # and names no placeholder (<owner>) nor the unpublished PyPI name.
    cell = _code(name)[0]
    assert "<" not in cell and "keras-kd[" not in cell
    extras = re.search(r'^EXTRAS = "([a-z,]+)"$', cell, re.M).group(1)
    # installed already (as in CI): nothing to do
    assert _run_install_cell(name, tmp_path, monkeypatch, installed=True) == []
    # the newest uploaded wheel, with its extras
    wheels = ["keras_kd-0.1.0-py3-none-any.whl", "keras_kd-0.2.0-py3-none-any.whl"]
    pip = _run_install_cell(name, tmp_path, monkeypatch, installed=False,
                            uploads=wheels)
    assert len(pip) == 1 and pip[0].startswith("install -q ")
    assert pip[0].endswith(f'"{tmp_path}/keras_kd-0.2.0-py3-none-any.whl[{extras}]"')


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_install_cell_without_a_wheel_says_how(name, tmp_path,
                                                       monkeypatch):
    with pytest.raises(FileNotFoundError, match=r"pip wheel --no-deps -w dist \."):
        _run_install_cell(name, tmp_path, monkeypatch, installed=False)
