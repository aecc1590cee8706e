"""The run report's plots draw what they claim: like-with-like losses, zoomed
accuracy, 95% intervals."""

import numpy as np
import pytest

from keras_kd.app import report


def test_wilson_interval_is_the_set_of_accuracies_the_test_cannot_reject():
    # Independent: the Wilson interval holds the p0 with
    # |p_hat - p0| <= z * sqrt(p0 (1 - p0) / n); found on a fine grid.
    grid = np.linspace(0, 1, 2_000_001)
    for correct, n in ((90, 100), (449, 450), (0, 20), (135, 135)):
        inside = grid[np.abs(correct / n - grid) <= 1.959964 * np.sqrt(
            grid * (1 - grid) / n)]
        lo, hi = report.wilson_interval(correct, n)
        assert lo == pytest.approx(inside.min(), abs=1e-6)
        assert hi == pytest.approx(inside.max(), abs=1e-6)
    with pytest.raises(ValueError, match="n >= 1"):
        report.wilson_interval(0, 0)


def test_loss_panel_compares_cross_entropy_on_the_labels():
    histories = {
        "teacher": {"loss": [0.5, 0.3], "val_loss": [0.6, 0.4],
                    "accuracy": [0.8, 0.9], "val_accuracy": [0.85, 0.93]},
        "distilled student": {
            "loss": [4.0, 3.0], "val_loss": [4.5, 3.5],        # with the KD term
            "student_loss": [0.9, 0.7], "val_student_loss": [1.0, 0.8],
            "accuracy": [0.7, 0.8], "val_accuracy": [0.75, 0.82]}}
    series = report.curve_series(histories)
    assert series["loss"] == [
        ("teacher", "train", [0.5, 0.3]), ("teacher", "val", [0.6, 0.4]),
        ("distilled student", "train", [0.9, 0.7]),
        ("distilled student", "val", [1.0, 0.8])]
    assert len(series["accuracy"]) == 4
    lo, hi = report.zoomed_limits(series["accuracy"])
    assert (lo, hi) == pytest.approx((0.7 - 0.023, 0.93 + 0.023))


def test_plots_are_written(tmp_path):
    pytest.importorskip("matplotlib")
    histories = {"student": {"val_accuracy": [0.5, 0.6], "val_loss": [1, 0.9]}}
    assert report.plot_learning_curves(histories, tmp_path / "c.png")
    models = [dict(label="student", size_bytes=2048, test_accuracy=0.9,
                   runtime="keras (jax)"),
              dict(label="tflite", size_bytes=1024, test_accuracy=0.9,
                   runtime="tflite")]
    report.plot_accuracy_vs_size(models, tmp_path / "s.png", test_examples=450)
    for name in ("c.png", "s.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
