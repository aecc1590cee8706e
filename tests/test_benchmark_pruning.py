"""benchmarks/pruning.py: pruned teachers against random students (MNIST-1D)."""

import json

import numpy as np
import pytest

from keras_kd.search import paired_difference_interval, wilson_interval
from tests.helpers import benchmark_module


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    bench = benchmark_module("pruning")
    out = tmp_path_factory.mktemp("pruning")
    bench.main(["--quick", "--json", str(out / "r.json"),
                "--output-dir", str(out)])
    return bench, json.loads((out / "r.json").read_text()), out


@pytest.mark.one_backend("tensorflow")
def test_quick_run_measures_every_row_within_its_budget(quick, capsys):
    bench, saved, out = quick
    assert saved["created_by"] == "keras-kd"
    (run,) = saved["runs"]
    assert saved["test_examples"] == 100  # a fifth of the 500 signals
    teacher_params = run["teacher_parameters"]
    assert teacher_params == 125_770
    budgets = run["budgets"]
    assert list(budgets) == ["student"]  # --quick: one budget
    assert budgets["student"]["budget"] == 3_162  # small_cnn's count
    assert set(budgets["student"]["rows"]) == {key for key, _, _ in bench.ROWS}
    for name, b in budgets.items():
        rows = b["rows"]
        assert 0.0 <= b["pruned_accuracy_before"] <= 1.0
        for key, row in rows.items():
            assert 0.0 <= row["accuracy"] <= 1.0, (name, key)
            assert row["size_bytes"] > 0 and row["latency_ms"] > 0
            assert 0 < row["flops"] < run["teacher_flops"]
            if not key.startswith("default"):
                assert row["parameters"] <= b["budget"], (name, key)
                assert row["parameters"] == rows["pruned_dist"]["parameters"]
                assert row["flops"] == rows["pruned_dist"]["flops"]
        # the budget is nearly used up, and the quarter is wider
        assert rows["pruned_dist"]["parameters"] > 0.8 * b["budget"]
        for key in ("pruned_dist_ptq", "pruned_dist_qad"):
            assert rows[key]["quantize"] == "int8"
            assert rows[key]["size_bytes"] < rows["pruned_dist"]["size_bytes"]
            assert rows[key]["accuracy"] == rows[key]["tflite_accuracy"]
        # float32 TFLite agrees with Keras on the test signals
        assert abs(rows["pruned_dist"]["tflite_accuracy"]
                   - rows["pruned_dist"]["accuracy"]) <= 1 / 100
        assert np.mean(rows["pruned_dist"]["correct"]) == pytest.approx(
            rows["pruned_dist"]["accuracy"])
    # the default student, and the pruned one as float32, int8, QAD int8
    assert len(list(out.glob("*.tflite"))) == 1 + 3
    # The tables print again from the JSON.
    capsys.readouterr()
    bench.main(["--tables-from", str(out / "r.json")])
    printed = capsys.readouterr().out
    assert printed.count("| student | test accuracy (%) |") == 1
    assert "| pruned, DIST, QAD int8 |" in printed
    assert "Pruned, DIST minus random, DIST" in printed


def _run(accuracies, correct_a, correct_b):
    rows = {key: dict(accuracy=a, quantize="float32", parameters=10, flops=20,
                      size_bytes=2048, latency_ms=0.001)
            for key, a in accuracies.items()}
    rows["pruned_dist"]["correct"] = correct_a
    rows["random_dist"]["correct"] = correct_b
    return {"seed": 0, "budgets": {"b": {"rows": rows}}}


def test_summary_and_gains_against_independent_intervals():
    bench = benchmark_module("pruning")
    a = [1, 1, 1, 0, 1, 0, 1, 1, 1, 1]
    b = [1, 0, 1, 0, 0, 0, 1, 1, 0, 1]
    runs = [_run({"pruned_dist": 0.8, "random_dist": 0.5}, a, b),
            _run({"pruned_dist": 0.6, "random_dist": 0.7}, b, a)]
    runs[1]["seed"] = 1
    table = {row["key"]: row for row in bench.summary(runs, "b", 10)}
    assert list(table) == ["random_dist", "pruned_dist"]  # in ROWS order
    row = table["pruned_dist"]
    assert row["accuracy_mean"] == pytest.approx(0.7)
    assert row["interval"] == pytest.approx(wilson_interval(7, 10))
    assert row["latency_us"] == pytest.approx([1.0, 1.0])
    gains = bench.gains(runs, "b")
    expected = paired_difference_interval(np.array(a, bool), np.array(b, bool))
    assert (gains[0]["difference"], gains[0]["low"], gains[0]["high"]) == \
        pytest.approx(expected)
    assert gains[0]["difference"] == pytest.approx(0.3)
    assert gains[1]["difference"] == pytest.approx(-0.3)


def test_budgets_choose_the_tables(monkeypatch):
    bench = benchmark_module("pruning")
    assert bench.parse([])[0].budgets == ("student", "quarter")
    assert bench.parse(["--quick"])[0].budgets == ("student",)
    assert bench.parse(["--quick", "--budgets", "quarter"])[0].budgets == [
        "quarter"]


def test_lm_part_without_its_module_says_so(monkeypatch):
    bench = benchmark_module("pruning")

    def missing(name):
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)

    monkeypatch.setattr(bench.importlib, "import_module", missing)
    with pytest.raises(SystemExit, match="benchmarks/pruning_lm.py is not in "
                       "this checkout.*use --part mnist1d"):
        bench.main(["--part", "lm"])


def test_lm_part_gets_the_arguments_it_does_not_share(monkeypatch):
    bench = benchmark_module("pruning")
    seen = []

    class Module:
        @staticmethod
        def main(argv):
            seen.append(argv)
            return "lm"

    monkeypatch.setattr(bench.importlib, "import_module", lambda name: Module)
    assert bench.main(["--part", "lm", "--steps", "3", "--quick"]) == {
        "lm": "lm"}
    assert seen == [["--steps", "3", "--quick"]]


@pytest.mark.parametrize("argv, message", [
    (["--seeds", "0"], "--seeds must be at least 1"),
    (["--epochs", "0"], "--epochs must be at least 1"),
    (["--steps", "3"], "unrecognized arguments: --steps 3"),
    (["--criterion", "random"], "invalid choice"),
])
def test_bad_arguments_name_the_fix(argv, message, capsys):
    bench = benchmark_module("pruning")
    with pytest.raises(SystemExit):
        bench.main(argv)
    assert message in capsys.readouterr().err
