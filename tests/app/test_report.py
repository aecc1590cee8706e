"""The run report's plots draw what they claim: like-with-like losses, zoomed
accuracy, 95% intervals."""

import numpy as np
import pytest

from keras_kd.app import report


# The application's report: no backend-specific path of its own (the Keras
# and keras-kd calls it makes are tested on every backend elsewhere), so CI runs
# this file under one backend (tests/conftest.py, `one_backend`; a test's own
# mark wins).
pytestmark = pytest.mark.one_backend("torch")


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


def _paired(both, only_a, only_b, neither):
    """Per-example correctness of two models from a paired 2x2 table."""
    a = [1] * both + [1] * only_a + [0] * only_b + [0] * neither
    b = [1] * both + [0] * only_a + [1] * only_b + [0] * neither
    return np.array(a, bool), np.array(b, bool)


def _newcombe_by_hand(both, only_a, only_b, neither, z=1.959963984540054):
    # Independent of keras_kd: each Wilson bound is a root of the score
    # test's quadratic (p_hat - p)^2 = z^2 p (1 - p) / n, found by np.roots;
    # then Newcombe's (1998) method 10 with his corrected phi.
    n = both + only_a + only_b + neither

    def wilson(k):
        p_hat = k / n
        roots = np.sort(np.roots([1 + z * z / n, -(2 * p_hat + z * z / n),
                                  p_hat * p_hat]).real)
        return max(roots[0], 0.0), min(roots[1], 1.0)

    p1, p2 = (both + only_a) / n, (both + only_b) / n
    (l1, u1), (l2, u2) = wilson(both + only_a), wilson(both + only_b)
    margins = (both + only_a) * (only_b + neither) * (both + only_b) * (
        only_a + neither)
    cross = both * neither - only_a * only_b
    phi = 0.0
    if margins and cross > n / 2:
        phi = (cross - n / 2) / margins ** 0.5
    elif margins and cross < 0:
        phi = cross / margins ** 0.5
    d = p1 - p2
    low = d - ((p1 - l1) ** 2 + (u2 - p2) ** 2
               - 2 * phi * (p1 - l1) * (u2 - p2)) ** 0.5
    high = d + ((p2 - l2) ** 2 + (u1 - p1) ** 2
                - 2 * phi * (p2 - l2) * (u1 - p1)) ** 0.5
    return d, low, high


def test_paired_interval_gives_the_published_example():
    # Fagerland, Lydersen & Laake (Stat. Med. 2014), Cavo et al.'s table
    # (59, 6, 16, 80): Newcombe square-and-add -0.0621 (-0.1186 to -0.0046).
    d, low, high = report.paired_difference_interval(*_paired(59, 6, 16, 80))
    assert (round(d, 4), round(low, 4), round(high, 4)) == (
        -0.0621, -0.1186, -0.0046)


@pytest.mark.parametrize("table", [
    (59, 6, 16, 80),        # ad - bc > n/2: phi > 0
    (1, 1, 7, 12),          # small, 0 <= ad - bc <= n/2: phi = 0
    (875, 75, 50, 0),       # ad - bc < 0: negative phi
    (904, 46, 21, 29),      # a keras-kd run: 1,000 test examples
    (500, 0, 0, 500),       # no discordant example
    (0, 10, 0, 0),          # model B never right: an empty margin
])
def test_paired_interval_equals_the_hand_computation(table):
    expected = _newcombe_by_hand(*table)
    got = report.paired_difference_interval(*_paired(*table))
    assert got == pytest.approx(expected, abs=1e-9)
    # Swapping the models negates the difference and mirrors the interval.
    a, b = _paired(*table)
    d, low, high = report.paired_difference_interval(b, a)
    assert (d, low, high) == pytest.approx((-got[0], -got[2], -got[1]))


def test_paired_interval_values():
    # A keras-kd run (seed 0): 46 right only when distilled, 21 only alone,
    # of 1,000: +2.5 points, [+0.90, +4.18]. The two accuracies' own Wilson
    # intervals overlap (95.0% [93.5, 96.2], 92.5% [90.7, 94.0]); the paired
    # interval excludes 0, since 933 examples agree.
    d, low, high = report.paired_difference_interval(*_paired(904, 46, 21, 29))
    assert (round(d, 4), round(low, 4), round(high, 4)) == (
        0.025, 0.009, 0.0418)
    assert report.wilson_interval(950, 1000)[0] < report.wilson_interval(
        925, 1000)[1]
    # No discordant example: the difference is 0, the interval symmetric.
    d, low, high = report.paired_difference_interval(*_paired(500, 0, 0, 500))
    assert d == 0 and low == pytest.approx(-high) and 0 < high < 0.05
    with pytest.raises(ValueError, match="equally long"):
        report.paired_difference_interval([1, 0], [1, 0, 1])
    with pytest.raises(ValueError, match="True/False or 1/0"):
        report.paired_difference_interval([2, 0], [1, 0])


def test_the_report_states_the_gain_with_its_interval(tmp_path):
    pytest.importorskip("matplotlib")
    beyond = report.distillation_gain(*_paired(904, 46, 21, 29))
    assert beyond["beyond_interval"] and beyond["only_distilled_right"] == 46
    assert (beyond["low"], beyond["high"]) == pytest.approx((0.009, 0.0418),
                                                            abs=5e-5)
    noise = report.distillation_gain(*_paired(400, 8, 3, 39))
    assert not noise["beyond_interval"] and noise["low"] < 0 < noise["high"]
    assert "the interval holds 0" in report.gain_sentence(noise)
    models = [dict(label="student alone", parameters=10, path="a.keras",
                   size_bytes=2048, test_accuracy=0.921, latency_ms=0.1,
                   runtime="keras (jax)"),
              dict(label="distilled student", parameters=10, path="d.keras",
                   size_bytes=2048, test_accuracy=0.946, latency_ms=0.1,
                   runtime="keras (jax)")]
    paths = report.write_report(tmp_path, dict(
        models=models, gain=beyond, dataset={"counts": {"test": 1000}}))
    markdown = open(paths["markdown"]).read()
    assert ("Distillation changed the student's test accuracy by +2.50 "
            "points (95% interval +0.90 to +4.18, paired over 1000 test "
            "examples") in markdown
    assert "the interval excludes 0" in markdown
    import json

    saved = json.load(open(paths["json"]))["gain"]
    assert saved["beyond_interval"] is True
    assert saved["difference"] == pytest.approx(0.025)


# ----------------------------------------------------------------------
# The plots: integer epoch ticks, counts on the reliability bars
# ----------------------------------------------------------------------
@pytest.mark.parametrize("epochs", [2, 8, 10])
def test_epoch_axes_have_integer_ticks(epochs):
    pytest.importorskip("matplotlib")
    from keras_kd.app import plots

    curve = list(np.linspace(0.5, 0.9, epochs))
    fig = plots.learning_curves_figure({"student": {
        "accuracy": curve, "val_accuracy": curve, "loss": curve,
        "val_loss": curve}})
    for ax in fig.axes:
        low, high = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if low <= t <= high]
        # Without MaxNLocator(integer=True), 2 epochs drew 1.2, 1.4, ...
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
    plots.pyplot().close(fig)


def test_lm_step_axis_has_integer_ticks():
    pytest.importorskip("matplotlib")
    from keras_kd.app import plots

    fig = plots.pyplot().figure()
    ax = fig.add_subplot()
    ax.plot([1, 2, 3], [3.0, 2.5, 2.2])
    plots.integer_ticks(ax)
    low, high = ax.get_xlim()
    assert all(float(t).is_integer() for t in ax.get_xticks()
               if low <= t <= high)
    plots.pyplot().close(fig)


def _record(label, counts):
    m = len(counts)
    return dict(label=label, test_ece=0.05, reliability=dict(
        count=counts, accuracy=[None if c == 0 else 0.5 for c in counts],
        confidence=[None if c == 0 else (i + 0.5) / m
                    for i, c in enumerate(counts)]))


def test_reliability_bars_carry_their_counts():
    pytest.importorskip("matplotlib")
    from keras_kd.app import plots

    counts = [0, 0, 3, 0, 12, 40, 0, 0, 1, 0, 0, 0, 0, 7, 65]
    fig = plots.reliability_figure([_record("student", counts),
                                    _record("teacher", counts[::-1])])
    for ax, expected in zip(fig.axes, (counts, counts[::-1])):
        shown = [int(t.get_text()) for t in ax.texts]
        assert shown == [c for c in expected if c]  # every non-empty bin
        assert f"({sum(expected)} examples)" in ax.get_title()
    plots.pyplot().close(fig)


def _report(quick, gain_low):
    counts = [0] * 13 + [3, 125]
    models = [dict(_record("distilled student (small_cnn)", counts),
                   key="student_distilled", parameters=10, path="s.keras",
                   size_bytes=100, test_accuracy=0.1484, test_nll=2.2,
                   latency_ms=1.0, temperature=1.5, test_nll_scaled=2.1,
                   test_ece_scaled=0.02)]
    gain = dict(difference=-0.078, low=gain_low, high=-0.02,
                test_examples=128, only_distilled_right=2,
                only_alone_right=12, beyond_interval=True)
    return dict(models=models, gain=gain, histories={},
                config=dict(dataset="mnist1d", quick=quick, epochs=2),
                dataset=dict(counts=dict(train=230, test=128)),
                backend="jax")


def test_a_smoke_run_report_draws_no_conclusion(tmp_path):
    pytest.importorskip("matplotlib")
    # keras-kd run --quick with a teacher at 12.5% said "a loss beyond the
    # test set's noise".
    paths = report.write_report(str(tmp_path / "quick"), _report(True, -0.14))
    md = open(paths["markdown"]).read()
    assert "**Smoke run (`--quick`)**: 2 epochs on 230 training examples" in md
    assert "no conclusion is drawn about the gain" in md
    assert "beyond the test set's noise" not in md
    assert report.SMOKE_VERDICT in md
    # The full run keeps its verdict.
    paths = report.write_report(str(tmp_path / "full"), _report(False, -0.14))
    md = open(paths["markdown"]).read()
    assert "Smoke run" not in md and report.SMOKE_VERDICT not in md
    assert "a loss beyond the test set's noise" in md


def test_the_report_lists_the_examples_per_confidence_bin(tmp_path):
    pytest.importorskip("matplotlib")
    paths = report.write_report(str(tmp_path), _report(False, -0.14))
    md = open(paths["markdown"]).read()
    assert ("| distilled student (small_cnn) | "
            "0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 125 |") in md
    assert "reliability.png" in paths["plots"][-1]


def test_a_smoke_language_model_report_draws_no_conclusion():
    from keras_kd.app import lm_report

    note = lm_report.lm_smoke_note({"quick": True, "teacher_steps": 30,
                                    "steps": 20})
    assert note[0].startswith("**Smoke run (`--quick`)**: a teacher of 30 "
                              "steps and students of 20 steps")
    assert "no conclusion is drawn" in note[0]
    assert lm_report.lm_smoke_note({"quick": False}) == []
