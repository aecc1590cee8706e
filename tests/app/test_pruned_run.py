"""`keras-kd run --prune`: the student is the run's teacher, pruned
(keras_kd.app.pruned), its options, its report rows and exports."""

import argparse
import json
import os

import keras
import numpy as np
import pytest

from keras_kd import pruning, saving
from keras_kd.app import launcher, options, parser, pruned, report
from keras_kd.app.models import build_model
from keras_kd.data import load_dataset


# The application's `run --prune`: no backend-specific path of its own (the Keras
# and keras-kd calls it makes are tested on every backend elsewhere), so CI runs
# this file under one backend (tests/conftest.py, `one_backend`; a test's own
# mark wins).
pytestmark = pytest.mark.one_backend("torch")


@pytest.mark.parametrize("argv, message", [
    (["--prune", "0"], "is not a share in (0, 1) of the teacher's parameters"),
    (["--prune", "1"], "e.g. --prune 0.25"),
    (["--prune", "1.5"], "e.g. --prune 0.25"),
    (["--prune", "quarter"], "e.g. --prune 0.25"),
    (["--prune", "0.25", "--student", "mlp"],
     "--prune makes the student from the teacher (the teacher pruned to 0.25 "
     "of its parameters), so --student mlp has nothing to choose: leave out "
     "--student"),
    # given explicitly, even at its default value
    (["--prune", "0.25", "--student", "small_cnn"], "leave out --student"),
    (["--prune", "0.25", "--teacher", "ResNet50"],
     "--prune cuts the built-in teachers (cnn, small_cnn, tiny_cnn, mlp, "
     "small_mlp), not --teacher ResNet50"),
    (["--prune-criterion", "l1"], "--prune-criterion ranks the channels that "
     "--prune removes: add --prune SHARE"),
    (["--task", "causal-lm", "--prune", "0.25"],
     "--prune applies to image classification, not --task causal-lm"),
    (["--prune", "0.25", "--prune-criterion", "random"], "invalid choice"),
])
def test_bad_prune_options_name_the_fix(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        launcher.main(["run", "--quick", "--no-export"] + argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_prune_options_parse():
    args = parser.build_parser().parse_args(
        ["run", "--prune", "0.25", "--prune-criterion", "l1"])
    assert args.prune == 0.25 and args.prune_criterion == "l1"
    assert parser.run_option_error(args) is None
    args = parser.build_parser().parse_args(["run"])
    assert args.prune is None and args.prune_criterion is None
    assert parser.run_option_error(args) is None
    # From Python (no argv): --student counts as given when not the default.
    args = parser.build_parser().parse_args(["run", "--prune", "0.5",
                                             "--student", "mlp"])
    assert "leave out --student" in parser.run_option_error(args)


def test_written_out_criteria_agree_with_the_library():
    assert options.PRUNE_CRITERIA == pruning.importance.CRITERIA
    assert options.PRUNE_CRITERION in options.PRUNE_CRITERIA


def test_budget_is_the_floor_of_the_share():
    assert pruned.budget(125_770, 0.25) == 31_442
    assert pruned.budget(100, 0.999) == 99
    assert pruned.budget(3, 0.5) == 1


def _data(n=96, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, 40, 1)).astype("float32"),
            rng.integers(0, 10, size=n))


@pytest.mark.parametrize("criterion", ["taylor", "l1"])
def test_prune_teacher_meets_the_budget_from_the_teachers_weights(criterion):
    keras.utils.set_random_seed(0)
    teacher = build_model("cnn", (40, 1), 10, model_name="teacher")
    x, y = _data()
    # As after distillation: a Distiller freezes its teacher.
    teacher.trainable = False
    before = [w.copy() for w in teacher.get_weights()]
    student, info = pruned.prune_teacher(teacher, 0.25, x, y,
                                         criterion=criterion)
    limit = int(np.floor(0.25 * teacher.count_params()))
    assert info["budget"] == limit
    assert student.count_params() == info["params_after"] <= limit
    assert info["params_after"] > 0.8 * limit  # the smallest share that fits
    assert info["share"] == 0.25 and info["criterion"] == criterion
    assert info["calibration_examples"] == (len(x) if criterion == "taylor"
                                            else 0)
    # The teacher is left as it was: weights and frozen; the student trains.
    assert not teacher.trainable
    assert all(np.array_equal(a, b) for a, b in zip(before,
                                                     teacher.get_weights()))
    assert student.trainable and all(layer.trainable
                                     for layer in student.layers)
    assert len(student.trainable_weights) == len(teacher.weights) - 2 * 3
    # The first convolution's filters are some of the teacher's, in order.
    t_kernel = keras.ops.convert_to_numpy(
        teacher.get_layer("teacher_conv1").kernel)
    s_kernel = keras.ops.convert_to_numpy(
        student.get_layer("teacher_conv1").kernel)
    kept = [next(k for k in range(t_kernel.shape[-1])
                 if np.array_equal(s_kernel[..., j], t_kernel[..., k]))
            for j in range(s_kernel.shape[-1])]
    assert kept == sorted(set(kept))
    assert [g["channels_after"] for g in info["groups"]] == [
        student.get_layer(f"teacher_conv{i}").filters for i in (1, 2, 3)]
    assert "layers" not in info and "kept" not in info["groups"][0]


def test_prune_teacher_reads_at_most_the_calibration_examples(monkeypatch):
    seen = []
    real = pruning.prune

    def spy(model, **kwargs):
        seen.append(len(kwargs["calibration_data"][0]))
        return real(model, **kwargs)

    monkeypatch.setattr(pruning, "prune", spy)
    teacher = build_model("small_cnn", (40, 1), 10)
    x, y = _data(50)
    pruned.prune_teacher(teacher, 0.5, x, y, calibration=32)
    pruned.prune_teacher(teacher, 0.5, x, y)
    assert seen == [32, 50]


@pytest.mark.parametrize("share", [0.0, 1.0, -0.5])
def test_prune_teacher_refuses_a_share_outside_the_unit_interval(share):
    teacher = build_model("small_cnn", (40, 1), 10)
    with pytest.raises(ValueError, match=r"must be in \(0, 1\).*e.g. 0.25"):
        pruned.prune_teacher(teacher, share, *_data(8))


def test_prune_stage_names_an_unreachable_budget():
    import tensorflow as tf

    teacher = build_model("small_cnn", (40, 1), 10, model_name="teacher")
    x, y = _data(64)
    run = argparse.Namespace(
        args=argparse.Namespace(prune=0.001, prune_criterion="l1"),
        teacher=teacher,
        splits=argparse.Namespace(
            train=tf.data.Dataset.from_tensor_slices((x, y)).batch(16)))
    with pytest.raises(SystemExit, match=r"--prune 0.001: params=3 cannot be "
                       r"reached.*Raise the budget.*raise --prune"):
        pruned.prune_stage(run)


def test_markdown_table_gets_a_flops_column_only_when_measured():
    rows = [dict(label="teacher", parameters=1000, flops=123456),
            dict(label="file", parameters=None)]
    table = report.markdown_table(rows).splitlines()
    assert table[0].split("|")[3].strip() == "FLOPs"
    assert table[2].split("|")[3].strip() == "123,456"
    assert table[3].split("|")[3].strip() == "-"
    plain = report.markdown_table([dict(label="teacher", parameters=10)])
    assert "FLOPs" not in plain


def _flops(model):
    """2 x multiply-accumulates of the convolutions and Dense layers,
    counted here from the kernels' shapes and the output lengths."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, (keras.layers.Conv1D, keras.layers.Dense)):
            k = layer.kernel.shape
            positions = layer.output.shape[1] if len(k) == 3 else 1
            total += 2 * int(np.prod(k)) * positions
    return total


@pytest.mark.one_backend("tensorflow")
def test_run_prune_reports_the_pruned_student_before_and_after(tmp_path):
    keras.utils.set_random_seed(0)
    code = launcher.main(["run", "--quick", "--prune", "0.25", "--quantize",
                          "int8", "--qat", "--output", str(tmp_path),
                          "--run-name", "p", "--verbose", "0"])
    assert code == 0
    run_dir = tmp_path / "p"
    rep = json.loads((run_dir / "report.json").read_text())
    records = {m["key"]: m for m in rep["models"]}
    assert [m["key"] for m in rep["models"]] == [
        "teacher", "student_pruned", "student_alone", "student_distilled",
        "student_tflite", "student_tflite_float32", "student_qat_tflite",
        "student_qad_tflite"]
    info = rep["pruning"]
    teacher = saving.load_model(run_dir / "teacher.keras", compile=False)
    limit = int(np.floor(0.25 * teacher.count_params()))
    assert info["budget"] == limit and info["criterion"] == "taylor"
    assert rep["config"]["prune_criterion"] == "taylor"
    assert info["calibration_examples"] == options.QUICK["max_train"]
    for key in ("student_pruned", "student_alone", "student_distilled"):
        model = saving.load_model(run_dir / f"{key}.keras", compile=False)
        assert records[key]["parameters"] == model.count_params() \
            == info["params_after"] <= limit
        assert records[key]["flops"] == _flops(model) == info["flops_after"]
        assert [layer.filters for layer in model.layers
                if hasattr(layer, "filters")] == [
                    g["channels_after"] for g in info["groups"]]
    assert records["teacher"]["flops"] == _flops(teacher) \
        == info["flops_before"] > 2 * info["flops_after"]
    # The "before" row is the pruned teacher itself, untrained since.
    splits = load_dataset("mnist1d", max_train=options.QUICK["max_train"],
                          max_test=options.QUICK["max_test"])
    x = np.concatenate([b[0] for b in splits.test.as_numpy_iterator()])
    y = np.concatenate([b[1] for b in splits.test.as_numpy_iterator()])
    initial = saving.load_model(run_dir / "student_pruned.keras",
                                compile=False)
    t_kernel = keras.ops.convert_to_numpy(
        teacher.get_layer("teacher_conv1").kernel)
    s_kernel = keras.ops.convert_to_numpy(
        initial.get_layer("teacher_conv1").kernel)
    assert all(any(np.array_equal(s_kernel[..., j], t_kernel[..., k])
                   for k in range(t_kernel.shape[-1]))
               for j in range(s_kernel.shape[-1]))
    accuracy = np.mean(np.argmax(keras.ops.convert_to_numpy(
        initial(x, training=False)), -1) == y)
    assert records["student_pruned"]["test_accuracy"] == pytest.approx(
        accuracy, abs=1e-9)
    # Both TFLite precisions of the pruned, distilled student, and QAD.
    distilled = records["student_distilled"]["test_accuracy"]
    assert records["student_tflite"]["label"].endswith("TFLite int8")
    assert records["student_tflite_float32"]["label"].endswith(
        "TFLite float32")
    assert abs(records["student_tflite_float32"]["test_accuracy"]
               - distilled) <= 1 / len(y)
    for key in ("student_tflite", "student_tflite_float32",
                "student_qad_tflite"):
        record = records[key]
        assert record["size_bytes"] == os.path.getsize(record["path"]) > 0
        assert record["latency_ms"] > 0
        assert 0.0 <= record["test_accuracy"] <= 1.0
    assert records["student_tflite"]["size_bytes"] < records[
        "student_tflite_float32"]["size_bytes"]
    assert info["exports"]["float32"]["quantize"] == "float32"
    md = (run_dir / "report.md").read_text()
    assert "student **cnn pruned to 0.25 of its parameters**" in md
    assert "| Model " in md and "| FLOPs " in md
    assert f"{info['params_before']:,} -> {info['params_after']:,} " \
        "parameters" in md
    assert "pruned student, before training (cnn-pruned-0.25)" in md
