"""benchmarks/objectives.py on MNIST-1D: its data and its 1-D conv nets."""

import numpy as np
import pytest

from tests.helpers import benchmark_module

# The objectives benchmark's driver: no backend-specific path of its own (the Keras
# and keras-kd calls it makes are tested on every backend elsewhere), so CI runs
# this file under one backend (tests/conftest.py, `one_backend`; a test's own
# mark wins).
pytestmark = pytest.mark.one_backend("torch")


def test_mnist1d_benchmark_data_and_nets():
    objectives = benchmark_module("objectives")
    ((x, y), (xt, yt)), described = objectives.load("mnist1d", 200)
    assert x.shape == (160, 40, 1) and xt.shape == (40, 40, 1)
    assert "160 training / 40 test" in described
    student = objectives.conv_net("student", (4, 8), 16, input_shape=(40, 1))
    assert type(student.get_layer("student_conv2")).__name__ == "Conv1D"
    # conv 1->4 and 4->8 (kernel 5, bias), pool 40->20, dense 160->16->10
    expected = (5 * 1 * 4 + 4) + (5 * 4 * 8 + 8) + (20 * 8 * 16 + 16) + (
        16 * 10 + 10)
    assert student.count_params() == expected
    assert student.predict(x[:3], verbose=0).shape == (3, 10)


def test_kd_grid_leaves_out_the_kd_row():
    objectives = benchmark_module("objectives")
    grid = [(kw["alpha"], kw["temperature"]) for _, _, kw in
            objectives.kd_grid()]
    assert sorted(grid) == [(0.1, 1.0), (0.1, 2.0), (0.5, 1.0), (0.5, 2.0),
                            (0.5, 4.0)]
    kd = [kw for name, _, kw in objectives.configs(15) if name == "KD"][0]
    assert (kd["alpha"], kd["temperature"]) == (0.1, 4.0)
    assert np.isclose(kd["temperature"], 4.0)


def test_student_width_sizes_the_student(tmp_path, capsys):
    objectives = benchmark_module("objectives")
    out = tmp_path / "r.json"
    objectives.main(["--dataset", "mnist1d", "--num-samples", "200",
                     "--quick", "--only", "KD", "--student-width", "8", "16",
                     "32", "--json", str(out)])
    printed = capsys.readouterr().out
    assert "| student alone | conv 8-16, dense 32; CE only |" in printed
    import json

    result = json.loads(out.read_text())
    assert sorted(result["accuracy"]) == ["KD", "student alone", "teacher"]
    assert all(0.0 <= a <= 1.0 for a in result["accuracy"]["KD"])
    # conv 1->8 and 8->16 (kernel 5), pool 40->20, dense 320->32->10
    wide = objectives.conv_net("student", (8, 16), 32, input_shape=(40, 1))
    assert wide.count_params() == (5 * 8 + 8) + (5 * 8 * 16 + 16) + (
        320 * 32 + 32) + (32 * 10 + 10) == 11_306
