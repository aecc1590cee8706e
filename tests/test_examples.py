"""The examples (examples/*.py --smoke) and the notebooks, run end to end.

To keep CI time down, each example and notebook runs under one backend only
(ASSIGNED below); under the other backends its test is reported as skipped,
not passed. Together the three backend runs cover every example once.
"""

import importlib.util
import os
import pathlib

import numpy as np
import pytest

from tests.conftest import BACKEND

ROOT = pathlib.Path(__file__).resolve().parents[1]

ASSIGNED = {
    "resnet50_mobilenetv2_cifar10": "tensorflow",
    "keras_io_mnist": "jax",
    "text_transformer": "jax",
    "recommender_wide_deep_fm": "torch",
    "transfer_learning": "torch",
    "quickstart.ipynb": "jax",
    "flagship.ipynb": "tensorflow",
}


def _only_on(name):
    backend = ASSIGNED[name]
    if BACKEND != backend:
        pytest.skip(f"{name} runs under KERAS_BACKEND={backend} in CI "
                    "(one backend per example)")


def _load(name):
    spec = importlib.util.spec_from_file_location(
        f"example_{name}", ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _check_accuracies(results, expected_keys):
    assert list(results) == expected_keys
    for value in results.values():
        assert 0.0 <= value <= 1.0


def test_every_example_and_notebook_is_assigned():
    names = {p.stem for p in (ROOT / "examples").glob("*.py")}
    names |= {p.name for p in (ROOT / "notebooks").glob("*.ipynb")}
    assert names == set(ASSIGNED)


def test_flagship_resnet50_mobilenetv2_smoke(tmp_path):
    _only_on("resnet50_mobilenetv2_cifar10")
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


def test_keras_io_mnist_smoke():
    _only_on("keras_io_mnist")
    module = _load("keras_io_mnist")
    results = module.main(["--smoke"])
    _check_accuracies(results, ["teacher", "distilled student",
                                "student from scratch"])
    # the recipe's architectures: a 256/512-filter teacher, 16/32 student
    assert module.teacher_model((8, 8, 1)).count_params() > 20 * \
        module.student_model((8, 8, 1)).count_params()


def test_text_transformer_smoke_and_task():
    _only_on("text_transformer")
    module = _load("text_transformer")
    x, y = module.synthetic_task(50, length=16, vocab=100, seed=3)
    # independent recount: the label is the most frequent keyword group
    groups = np.where((x >= 1) & (x <= 32), (x - 1) // 8, -1)
    counts = np.stack([(groups == g).sum(1) for g in range(4)], 1)
    np.testing.assert_array_equal(y, np.argmax(counts, 1))
    _check_accuracies(module.main(["--smoke"]),
                      ["teacher", "distilled student", "student from scratch"])


def test_recommender_smoke_and_fm_math():
    _only_on("recommender_wide_deep_fm")
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
    _check_accuracies(module.main(["--smoke"]),
                      ["teacher (Wide & Deep)", "distilled FM",
                       "FM from scratch"])


def test_transfer_learning_smoke():
    _only_on("transfer_learning")
    module = _load("transfer_learning")
    source, (xt, yt), (xs, ys), pool = module.digits_tasks(40)
    assert source[1].max() == 4 and len(xt) == 40
    np.testing.assert_array_equal(pool[:40], xt)  # labelled ones come first
    assert set(yt) <= set(range(5)) and set(ys) <= set(range(5))
    _check_accuracies(module.main(["--smoke"]), [
        "teacher, feature extraction", "teacher, fine-tuning",
        "teacher, from scratch", "student (tiny_cnn), distilled",
        "student (tiny_cnn), alone"])


@pytest.mark.parametrize("name", ["quickstart.ipynb", "flagship.ipynb"])
def test_notebook_runs_top_to_bottom(name, tmp_path):
    _only_on(name)
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    notebook = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=600, kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    outputs = "".join(o.get("text", "") for c in notebook.cells
                      if c.cell_type == "code" for o in c.get("outputs", []))
    assert f"backend {BACKEND}" in outputs
    assert "| Model" in outputs and "TFLite" in outputs
    assert list(tmp_path.glob("saved_models/*/*.tflite"))
