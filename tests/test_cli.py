"""The `keras-kd` command, its report, and the model builders (keras_kd.app.models)."""

import json
import os

import keras
import numpy as np
import pytest

from keras_kd import saving
from keras_kd.app import image_run, launcher, models, options, parser, report
from keras_kd.data import load_dataset
from tests.conftest import BACKEND


# The application's options, models and runs: no backend-specific path of its
# own (the Keras and keras-kd calls it makes are tested on every backend
# elsewhere), so CI runs this file under one backend (tests/conftest.py,
# `one_backend`; a test's own mark wins).
pytestmark = pytest.mark.one_backend("torch")


def _n_weights(model):
    return sum(int(np.prod(w.shape)) for w in model.weights)


# The tests of one `keras-kd run --quick` share its run: one backend runs them
# all (scripts/test.sh runs the installed wheel's quick run on JAX).
QUICK_RUN_BACKEND = "torch"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    keras.utils.set_random_seed(0)
    code = launcher.main(["run", "--quick", "--output", str(out), "--run-name", "q",
                     "--verbose", "0"])
    return code, out / "q"


@pytest.mark.one_backend(QUICK_RUN_BACKEND)
def test_run_quick_writes_models_report_and_plots(quick_run, capsys):
    code, run_dir = quick_run
    assert code == 0
    for name in ("teacher.keras", "student_alone.keras",
                 "student_distilled.keras", "student_distilled_float32.tflite",
                 "report.json", "report.md", "learning_curves.png",
                 "accuracy_vs_size.png"):
        assert (run_dir / name).is_file(), name
    for png in ("learning_curves.png", "accuracy_vs_size.png"):
        assert (run_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rep = json.loads((run_dir / "report.json").read_text())
    assert rep["backend"] == BACKEND
    assert [m["key"] for m in rep["models"]] == [
        "teacher", "student_alone", "student_distilled", "student_tflite"]
    assert rep["config"]["epochs"] == options.QUICK["epochs"]
    for label in ("teacher", "student alone", "distilled student"):
        assert len(rep["histories"][label]["accuracy"]) == options.QUICK["epochs"]
    md = (run_dir / "report.md").read_text()
    for m in rep["models"]:
        assert m["label"] in md
        assert m["size_bytes"] == os.path.getsize(m["path"])
        assert 0.0 <= m["test_accuracy"] <= 1.0
        assert m["latency_ms"] > 0


@pytest.mark.parametrize("argv, objective, temperature", [
    ([], "dist", 1.0),  # the default: DIST at its paper's tau = 1
    (["--objective", "ls"], "ls", 2.0),
    (["--objective", "kd"], "kd", 4.0),
    (["--objective", "dkd"], "dkd", 4.0),
    (["--objective", "dist", "--temperature", "3"], "dist", 3.0),
])
def test_run_temperature_defaults_to_the_objectives_usual(argv, objective,
                                                          temperature):
    args = parser.build_parser().parse_args(["run"] + argv)
    image_run.apply_objective_defaults(args)
    assert (args.objective, args.temperature) == (objective, temperature)


def test_run_defaults_are_the_measured_mnist1d_run():
    # docs/benchmarks.md, "keras-kd run": MNIST-1D, cnn -> small_cnn, DIST
    # at tau = 1, alpha 0.1, 20 epochs, the package's 5,000 signals.
    args = parser.build_parser().parse_args(["run"])
    image_run.apply_objective_defaults(args)
    assert (args.dataset, args.teacher, args.student, args.objective,
            args.alpha, args.temperature, args.epochs, args.mnist1d_samples,
            args.batch_size, args.learning_rate) == (
        "mnist1d", "cnn", "small_cnn", "dist", 0.1, 1.0, 20, None, 64, 1e-3)
    # --quick stays smoke-sized; keras-kd search keeps the digits.
    quick = parser.build_parser().parse_args(["run", "--quick"])
    image_run.apply_objective_defaults(quick)
    image_run.apply_quick(quick)
    assert (quick.dataset, quick.epochs, quick.max_train, quick.max_test) == (
        "mnist1d", 2, 256, 128)
    assert parser.build_parser().parse_args(["search"]).dataset == "digits"


@pytest.mark.one_backend("torch")
def test_run_compares_students_trained_on_the_same_batches(tmp_path):
    # With alpha = 1 the distilled student's loss is the hard loss alone: fed
    # the same batches in the same order as the student alone, from the same
    # start, it must train the same way.
    keras.utils.set_random_seed(0)
    code = launcher.main(["run", "--quick", "--alpha", "1.0", "--no-export",
                     "--output", str(tmp_path), "--run-name", "a1",
                     "--verbose", "0"])
    assert code == 0
    report = json.loads((tmp_path / "a1" / "report.json").read_text())
    alone = report["histories"]["student alone"]
    distilled = report["histories"]["distilled student"]
    np.testing.assert_allclose(distilled["student_loss"], alone["loss"],
                               rtol=1e-4)
    np.testing.assert_allclose(distilled["val_accuracy"],
                               alone["val_accuracy"], atol=1e-6)
    accuracy = {m["key"]: m["test_accuracy"] for m in report["models"]}
    assert abs(accuracy["student_distilled"] - accuracy["student_alone"]) <= (
        1.0 / 128 + 1e-9)  # --quick tests on 128 examples: one at most


@pytest.mark.one_backend(QUICK_RUN_BACKEND)
def test_run_report_values_match_independent_measurements(quick_run):
    _, run_dir = quick_run
    rep = json.loads((run_dir / "report.json").read_text())
    splits = load_dataset(rep["config"]["dataset"],
                          max_train=options.QUICK["max_train"],
                          max_test=options.QUICK["max_test"],
                          seed=rep["config"]["seed"])
    x = np.concatenate([b[0] for b in splits.test.as_numpy_iterator()])
    y = np.concatenate([b[1] for b in splits.test.as_numpy_iterator()])
    assert len(y) == options.QUICK["max_test"]
    by_key = {m["key"]: m for m in rep["models"]}
    right = {}
    for key in ("teacher", "student_alone", "student_distilled"):
        model = keras.models.load_model(run_dir / f"{key}.keras")
        assert by_key[key]["parameters"] == _n_weights(model)
        right[key] = np.argmax(model.predict(x, verbose=0), -1) == y
        expected = np.mean(right[key])
        assert by_key[key]["test_accuracy"] == pytest.approx(expected, abs=1e-9)
    # The gain and its paired interval come from these examples' correctness.
    gain = rep["gain"]
    only_d = int(np.sum(right["student_distilled"] & ~right["student_alone"]))
    only_a = int(np.sum(~right["student_distilled"] & right["student_alone"]))
    assert (gain["only_distilled_right"], gain["only_alone_right"],
            gain["test_examples"]) == (only_d, only_a, len(y))
    assert gain["difference"] == pytest.approx((only_d - only_a) / len(y))
    assert gain["low"] <= gain["difference"] <= gain["high"]
    assert gain["beyond_interval"] == (gain["low"] > 0 or gain["high"] < 0)
    assert "95% interval" in (run_dir / "report.md").read_text()
    # student alone and distilled student share the architecture
    assert by_key["student_alone"]["parameters"] == by_key[
        "student_distilled"]["parameters"] < by_key["teacher"]["parameters"]
    # the float32 TFLite file predicts like the distilled Keras student
    assert by_key["student_tflite"]["test_accuracy"] == pytest.approx(
        by_key["student_distilled"]["test_accuracy"], abs=1.0 / len(y) + 1e-9)


@pytest.mark.parametrize("argv, message", [
    (["--alpha", "1.5"], "--alpha 0.1"),
    (["--temperature", "0"], "--temperature 4"),
    (["--temperature", "inf"], "is not a temperature in [0.01, 100]"),
    (["--temperature", "0.001"], "is not a temperature in [0.01, 100]"),
    (["--learning-rate", "inf"], "not a positive finite number"),
    (["--learning-rate", "nan"], "not a positive finite number"),
    (["--epochs", "0"], "--epochs 20"),
    (["--image-size", "big"], "--image-size 32"),
    (["--teacher", "ResNet5O"], "ResNet50"),
    (["--student", "nope"], "small_cnn"),
    (["--dataset", "cifar11"], "Did you mean: cifar10"),
    (["--objective", "nope"], "kd"),
    (["--quantize", "int4"], "int8"),
    (["--qat"], "--qat compares quantization-aware students with the "
     "post-training int8 export: add --quantize int8"),
    (["--qat", "--quantize", "int8"], "leave out --no-export"),
    (["--seed", "-1"], "e.g. --seed 0"),
    (["--seed", str(2**32)], "e.g. --seed 0"),
    (["--output", "{file}"], "is a file, not a directory"),
    (["--output", "{file}/runs"], "is a file, so"),
    (["--output", "{read_only}"], "pass a directory you can write to"),
    (["--output", "{read_only}/runs"], "pass a directory you can write to"),
])
def test_bad_options_name_the_fix(argv, message, capsys, tmp_path):
    (tmp_path / "file").write_text("not a directory")
    read_only = tmp_path / "read_only"
    read_only.mkdir(mode=0o500)
    if "{read_only}" in " ".join(argv) and os.access(read_only, os.W_OK):
        pytest.skip("this user (root?) can write into a mode-0o500 directory")
    argv = [a.format(file=tmp_path / "file", read_only=read_only)
            for a in argv]
    # Checked while parsing, before any training: the error is one line.
    with pytest.raises(SystemExit) as info:
        launcher.main(["run", "--quick", "--no-export"] + argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert len([line for line in err.splitlines()
                if line.startswith("keras-kd run: error:")]) == 1
    assert "Traceback" not in err


def test_application_too_small_for_digits_message(tmp_path):
    with pytest.raises(SystemExit, match="--image-size 32"):
        launcher.main(["run", "--quick", "--dataset", "digits", "--teacher",
                  "MobileNetV2", "--image-size", "16", "--output",
                  str(tmp_path)])


def test_no_command_prints_help(capsys):
    assert launcher.main([]) == 2
    out = capsys.readouterr().out
    assert "run" in out and "export" in out


# The tfds path is backend-independent (tf.data), so each data set runs
# under one backend, the training after it under two.
@pytest.mark.parametrize("dataset, shape", [
    pytest.param("mnist", (28, 28, 1), marks=pytest.mark.one_backend("torch")),
    pytest.param("cifar10", (32, 32, 3),
                 marks=pytest.mark.one_backend("tensorflow"))])
def test_run_tfds_dataset_end_to_end_with_mock_data(dataset, shape, tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=24):
        code = launcher.main(["run", "--quick", "--dataset", dataset,
                         "--teacher", "small_cnn", "--student", "tiny_cnn",
                         "--epochs", "1", "--max-train", "16", "--max-test",
                         "16", "--no-export", "--latency-runs", "1",
                         "--output", str(tmp_path), "--run-name", "m",
                         "--verbose", "0"])
    assert code == 0
    rep = json.loads((tmp_path / "m" / "report.json").read_text())
    assert tuple(rep["dataset"]["input_shape"]) == shape
    assert rep["dataset"]["num_classes"] == 10
    assert len(rep["models"]) == 3


# ----------------------------------------------------------------------
# keras_kd.models
# ----------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(models.BUILTIN_MODELS))
def test_builtin_models_output_logits(name):
    model = models.build_model(name, (8, 8, 1), 7, model_name="m")
    x = np.random.default_rng(0).random((3, 8, 8, 1)).astype("float32")
    assert model.predict(x, verbose=0).shape == (3, 7)
    assert model.get_layer("m_logits").units == 7


def test_unknown_model_lists_choices():
    with pytest.raises(ValueError, match="ResNet50.*MobileNetV2|MobileNetV2.*ResNet50"):
        models.build_model("ResNet5", (32, 32, 3), 10)
    assert models.build_model("mobilenetv2", (32, 32, 1), 4).output_shape == (
        None, 4)


def test_builtin_has_no_imagenet_weights():
    with pytest.raises(ValueError, match="--weights none"):
        models.build_model("cnn", (8, 8, 1), 10, weights="imagenet")


def test_freeze_backbone_leaves_only_the_head_trainable():
    model = models.build_model("MobileNetV2", (32, 32, 3), 5, model_name="t")
    head = model.get_layer("t_logits")
    models.freeze_backbone(model)
    assert [id(w) for w in model.trainable_weights] == [
        id(head.kernel), id(head.bias)]
    models.unfreeze_backbone(model)
    assert len(model.trainable_weights) > 100


@pytest.mark.parametrize("mode", ["caffe", "tf", "torch", "raw255"])
def test_image_preprocessing_matches_numpy(mode):
    x = np.random.default_rng(1).random((2, 4, 4, 3)).astype("float32")
    got = np.asarray(keras.ops.convert_to_numpy(
        models.ImagePreprocessing(mode)(x)))
    if mode == "caffe":
        want = x[..., ::-1] * 255.0 - np.array([103.939, 116.779, 123.68])
    elif mode == "tf":
        want = 2 * x - 1
    elif mode == "torch":
        want = (x - [0.485, 0.456, 0.406]) / np.array([0.229, 0.224, 0.225])
    else:
        want = 255 * x
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    grey = models.ImagePreprocessing(mode)(x[..., :1])
    assert tuple(grey.shape) == (2, 4, 4, 3)


# ----------------------------------------------------------------------
# keras_kd.report
# ----------------------------------------------------------------------
def test_markdown_table_and_sizes():
    records = [dict(label="teacher (cnn)", parameters=1234567, path="a/t.keras",
                    size_bytes=2048, test_accuracy=0.98765, latency_ms=1.5),
               dict(label="tflite", parameters=None, path="s.tflite",
                    size_bytes=3 * 1024 * 1024, test_accuracy=None,
                    latency_ms=None)]
    table = report.markdown_table(records).splitlines()
    assert table[0].startswith("| Model")
    assert "1,234,567" in table[2] and "t.keras" in table[2]
    assert "2.0 KB" in table[2] and "98.77%" in table[2] and "1.500" in table[2]
    assert "3.0 MB" in table[3] and table[3].count(" - ") >= 3
    assert report.format_bytes(512) == "512 B"


def test_accuracy_and_count_params_against_numpy():
    import tensorflow as tf

    model = models.build_model("small_mlp", (8, 8, 1), 10)
    x = np.random.default_rng(0).random((20, 8, 8, 1)).astype("float32")
    y = np.random.default_rng(1).integers(0, 10, 20).astype("int32")
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(6)
    want = np.mean(np.argmax(model.predict(x, verbose=0), -1) == y)
    assert report.accuracy(model, ds) == pytest.approx(want)
    assert report.count_params(model) == 64 * 32 + 32 + 32 * 10 + 10


def test_save_model_only_drops_optimizer_state(tmp_path):
    model = models.build_model("small_cnn", (8, 8, 1), 10)
    model.compile("adam", "mse")
    model.fit(np.zeros((4, 8, 8, 1)), np.zeros((4, 10)), verbose=0)
    model.save(tmp_path / "full.keras")
    size = saving.save_model_only(model, tmp_path / "model.keras")
    assert size == os.path.getsize(tmp_path / "model.keras")
    assert size < os.path.getsize(tmp_path / "full.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    for a, b in zip(loaded.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_imagenet_download_failure_names_the_fix(monkeypatch, tmp_path):
    import keras

    def offline(**kwargs):
        raise OSError("URL fetch failure: network unreachable")

    monkeypatch.setattr(keras.applications, "MobileNetV2", offline)
    with pytest.raises(RuntimeError, match="pass --weights none"):
        models.build_model("MobileNetV2", (32, 32, 3), 10, weights="imagenet")
    with pytest.raises(SystemExit, match="pass --weights none"):
        launcher.main(["run", "--quick", "--dataset", "digits", "--teacher",
                  "MobileNetV2", "--weights", "imagenet", "--output",
                  str(tmp_path)])


# ----------------------------------------------------------------------
# MNIST-1D: 1-D CNNs and `keras-kd run --dataset mnist1d`
# ----------------------------------------------------------------------
@pytest.mark.parametrize("name", ["cnn", "small_cnn", "tiny_cnn"])
def test_builtin_cnns_use_conv1d_on_signals(name):
    model = models.build_model(name, (40, 1), 10, model_name="m")
    _, widths = models.BUILTIN_MODELS[name]
    convs = [layer for layer in model.layers if layer.name.startswith("m_conv")]
    assert [type(c).__name__ for c in convs] == ["Conv1D"] * len(widths)
    assert [c.kernel_size for c in convs] == [(5,)] * len(widths)
    # conv kernels (no bias), BatchNorm (4 per channel), the Dense head
    channels = (1,) + widths
    expected = sum(5 * a * b + 4 * b for a, b in zip(channels, widths))
    expected += widths[-1] * 10 + 10
    assert model.count_params() == expected
    x = np.random.default_rng(0).standard_normal((3, 40, 1)).astype("float32")
    assert model.predict(x, verbose=0).shape == (3, 10)


def test_builtin_cnn_refuses_vectors_naming_the_fix():
    with pytest.raises(ValueError, match=r"x\[\.\.\., None\]"):
        models.build_model("small_cnn", (40,), 10)


@pytest.mark.one_backend("tensorflow")
def test_run_mnist1d_end_to_end(tmp_path):
    keras.utils.set_random_seed(0)
    code = launcher.main(["run", "--dataset", "mnist1d", "--teacher", "small_cnn",
                     "--student", "tiny_cnn", "--epochs", "1", "--max-train",
                     "64", "--max-test", "32", "--batch-size", "32",
                     "--calibrate", "--latency-runs", "1", "--output",
                     str(tmp_path), "--run-name", "m1", "--verbose", "0"])
    assert code == 0
    run_dir = tmp_path / "m1"
    rep = json.loads((run_dir / "report.json").read_text())
    assert rep["dataset"]["name"] == "mnist1d"
    assert rep["dataset"]["input_shape"] == [40, 1]
    splits = load_dataset("mnist1d", max_train=64, max_test=32)
    x = np.concatenate([b[0] for b in splits.test.as_numpy_iterator()])
    y = np.concatenate([b[1] for b in splits.test.as_numpy_iterator()])
    by_key = {m["key"]: m for m in rep["models"]}
    for key in ("teacher", "student_alone", "student_distilled"):
        model = keras.models.load_model(run_dir / f"{key}.keras")
        assert type(model.layers[1]).__name__ == "Conv1D"
        expected = np.mean(np.argmax(model.predict(x, verbose=0), -1) == y)
        assert by_key[key]["test_accuracy"] == pytest.approx(expected,
                                                             abs=1e-9)
    # --calibrate: the TFLite file ships the distilled student's logits
    # divided by the temperature fitted on the validation split: the same
    # predictions, the scaled NLL.
    distilled, tflite = by_key["student_distilled"], by_key["student_tflite"]
    assert "temperature-scaled" in tflite["label"]
    assert tflite["test_accuracy"] == pytest.approx(
        distilled["test_accuracy"], abs=1e-9)
    assert tflite["test_nll"] == pytest.approx(distilled["test_nll_scaled"],
                                               rel=1e-4)
    assert distilled["temperature"] != pytest.approx(1.0, abs=1e-3)


def test_run_parser_accepts_mnist1d_without_tensorflow_datasets(monkeypatch):
    import keras_kd.extras

    def no_tfds(module):
        raise AssertionError(f"imported {module} for an offline dataset")

    monkeypatch.setattr(keras_kd.extras, "require", no_tfds)
    args = parser.build_parser().parse_args(["run", "--dataset", "mnist1d"])
    assert args.dataset == "mnist1d"


@pytest.mark.parametrize("argv, message", [
    (["--dataset", "mnist1d", "--mnist1d-samples", "25"],
     "'25' is not a multiple of 10 (one tenth per digit) of at least 20; "
     "e.g. --mnist1d-samples 5000"),
    (["--dataset", "mnist1d", "--mnist1d-samples", "10"],
     "'10' is not a multiple of 10"),
    (["--dataset", "digits", "--mnist1d-samples", "200"],
     "--mnist1d-samples sizes the generated MNIST-1D, not --dataset digits: "
     "add --dataset mnist1d"),
    (["--task", "causal-lm", "--mnist1d-samples", "200"],
     "--mnist1d-samples applies to image classification, not --task "
     "causal-lm"),
    # Given explicitly, even at its default value.
    (["--task", "causal-lm", "--dataset", "mnist1d"],
     "--dataset applies to image classification, not --task causal-lm"),
])
def test_run_refuses_bad_mnist1d_samples_in_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as raised:
        launcher.main(["run", *argv])
    assert raised.value.code == 2
    err = capsys.readouterr().err
    assert message in err


def test_mnist1d_samples_reaches_the_loader_and_sizes_the_splits():
    args = parser.build_parser().parse_args(
        ["run", "--dataset", "mnist1d", "--mnist1d-samples", "200"])
    assert args.mnist1d_samples == 200
    assert parser.run_option_error(args) is None
    assert parser.build_parser().parse_args(
        ["run", "--dataset", "mnist1d"]).mnist1d_samples is None
    parser.apply_task_defaults(args)
    run = image_run.Run(args)
    image_run.load_data(run)
    # 200 signals: 160 for training (16 of them, the last 10%, held out for
    # validation) and 40 for testing.
    assert run.splits.counts == {"train": 144, "validation": 16, "test": 40}
    assert len(run.test_labels) == 40
    again = load_dataset("mnist1d", num_samples=200)
    assert again.counts == run.splits.counts
    x = np.concatenate([b[0] for b in again.train.as_numpy_iterator()])
    assert x.shape == (144, 40, 1)
    with pytest.raises(ValueError, match="leave it out"):
        load_dataset("digits", num_samples=200)


# ----------------------------------------------------------------------
# Calibration in the report: test NLL, 15-bin ECE, fitted temperature
# ----------------------------------------------------------------------
def _numpy_nll_ece(logits, y, t=1.0, bins=15):
    z = logits.astype("float64") / t
    z = z - z.max(1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    nll = -np.mean(np.log(p[np.arange(len(y)), y]))
    conf, pred = p.max(1), p.argmax(1)
    ece = 0.0
    for m in range(1, bins + 1):
        b = (conf > (m - 1) / bins) & (conf <= m / bins)
        if b.any():
            ece += b.mean() * abs((pred[b] == y[b]).mean() - conf[b].mean())
    return nll, ece


@pytest.mark.one_backend(QUICK_RUN_BACKEND)
def test_run_report_calibration_matches_numpy(quick_run):
    _, run_dir = quick_run
    rep = json.loads((run_dir / "report.json").read_text())
    assert "reliability.png" in rep["plots"]
    assert (run_dir / "reliability.png").read_bytes()[:4] == b"\x89PNG"
    assert "ECE" in (run_dir / "report.md").read_text()
    splits = load_dataset(rep["config"]["dataset"],
                          max_train=options.QUICK["max_train"],
                          max_test=options.QUICK["max_test"],
                          seed=rep["config"]["seed"])
    x, y = (np.concatenate(a) for a in zip(*splits.test.as_numpy_iterator()))
    xv, yv = (np.concatenate(a)
              for a in zip(*splits.validation.as_numpy_iterator()))
    by_key = {m["key"]: m for m in rep["models"]}
    for key in ("teacher", "student_alone", "student_distilled"):
        model = keras.models.load_model(run_dir / f"{key}.keras")
        logits = model.predict(x, verbose=0)
        nll, ece = _numpy_nll_ece(logits, y)
        record = by_key[key]
        assert record["test_nll"] == pytest.approx(nll, rel=1e-5)
        assert record["test_ece"] == pytest.approx(ece, abs=1e-6)
        assert sum(record["reliability"]["count"]) == len(y)
        # the fitted T does not raise the validation NLL (T = 1 is a choice)
        val_logits = model.predict(xv, verbose=0)
        t = record["temperature"]
        assert _numpy_nll_ece(val_logits, yv, t)[0] <= (
            _numpy_nll_ece(val_logits, yv)[0] + 1e-9)
        assert record["test_nll_scaled"] == pytest.approx(
            _numpy_nll_ece(logits, y, t)[0], rel=1e-5)
    # the float32 TFLite file is calibrated like the Keras student it holds
    tflite, keras_student = by_key["student_tflite"], by_key[
        "student_distilled"]
    assert tflite["test_nll"] == pytest.approx(keras_student["test_nll"],
                                               rel=1e-3)
    assert tflite["test_ece"] == pytest.approx(keras_student["test_ece"],
                                               abs=1.0 / len(y))


def test_markdown_table_shows_nll_and_ece():
    records = [dict(label="s", parameters=10, path="s.keras", size_bytes=10,
                    test_accuracy=0.5, test_nll=0.693147, test_ece=0.0123,
                    latency_ms=1.0)]
    table = report.markdown_table(records).splitlines()
    assert "Test NLL" in table[0] and "ECE" in table[0]
    assert "0.6931" in table[2] and "1.23%" in table[2]


@pytest.mark.one_backend("tensorflow")
def test_run_qat_reports_qat_and_qad_int8_rows(tmp_path):
    """--quantize int8 --qat: beside the post-training int8 file, a QAT
    (labels only) and a QAD (from the teacher) fine-tune of the distilled
    student, each exported as a fully int8 file with its own report row."""
    from keras_kd.quantization import is_quantization_aware
    from tests.test_quantization import ops_and_types

    keras.utils.set_random_seed(0)
    code = launcher.main(["run", "--quick", "--quantize", "int8", "--qat",
                     "--output", str(tmp_path), "--run-name", "qat",
                     "--verbose", "0"])
    assert code == 0
    run_dir = tmp_path / "qat"
    rep = json.loads((run_dir / "report.json").read_text())
    assert [m["key"] for m in rep["models"]] == [
        "teacher", "student_alone", "student_distilled", "student_tflite",
        "student_qat_tflite", "student_qad_tflite"]
    md = (run_dir / "report.md").read_text()
    splits = load_dataset("mnist1d", max_train=options.QUICK["max_train"],
                          max_test=options.QUICK["max_test"])
    x = np.concatenate([b[0] for b in splits.test.as_numpy_iterator()])
    y = np.concatenate([b[1] for b in splits.test.as_numpy_iterator()])
    for record in rep["models"][3:]:
        assert record["label"] in md and "int8" in record["label"]
        assert 0.0 <= record["test_accuracy"] <= 1.0
        assert record["latency_ms"] > 0
        assert record["size_bytes"] == os.path.getsize(record["path"])
        # Fully int8: every convolution and dense kernel takes and gives
        # int8 tensors (int8 weights), no float fallback.
        with open(record["path"], "rb") as f:
            kernels = [op for op in ops_and_types(f.read())
                       if op[0] in ("CONV_2D", "FULLY_CONNECTED")]
        assert len(kernels) == 3, record["key"]  # small_cnn: 2 conv, 1 dense
        for name, inputs_types, outputs_types in kernels:
            assert inputs_types[:2] == ["INT8", "INT8"], (record["key"], name)
            assert outputs_types == ["INT8"], (record["key"], name)
    for key in ("student_qat", "student_qad"):
        assert (run_dir / f"{key}.keras").is_file()
        assert (run_dir / f"{key}_int8.tflite").is_file()
        model = saving.load_model(run_dir / f"{key}.keras", compile=False)
        assert is_quantization_aware(model)
        exported = rep["quantization_aware"][key]["export"]
        assert exported["quantize"] == "int8"
        # The file's accuracy is that of the quantization-aware Keras model
        # (one rounding boundary may flip a prediction or two).
        keras_accuracy = np.mean(np.argmax(
            keras.ops.convert_to_numpy(model(x, training=False)), -1) == y)
        assert exported["keras_accuracy"] == pytest.approx(keras_accuracy,
                                                           abs=1e-9)
        assert abs(exported["tflite_accuracy"] - keras_accuracy) <= 2 / len(y)
    assert rep["quantization_aware"]["epochs"] == 1
    assert len(rep["quantization_aware"]["student_qad"]["history"][
        "loss"]) == 1
