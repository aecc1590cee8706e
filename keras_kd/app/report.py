"""Measurements and the run report of ``keras-kd run``: table, JSON, Markdown.

The report compares the teacher, the student trained alone, the distilled
student and its TFLite export on parameters, file size, test accuracy,
calibration (test NLL and 15-bin expected calibration error, Guo et al., ICML
2017; see :mod:`keras_kd.calibration`) and single-example latency. The plots
are drawn by :mod:`keras_kd.app.plots`; the language-model run's report is
:mod:`keras_kd.app.lm_report`.
"""

import json
import os
import time

import numpy as np

from keras_kd import calibration
# The plots moved to keras_kd.app.plots; these names stay importable here.
from keras_kd.app.plots import (  # noqa: F401
    curve_series, plot_accuracy_vs_size, plot_learning_curves,
    plot_reliability, zoomed_limits)
from keras_kd.search import (  # noqa: F401  (wilson_interval: re-exported)
    paired_difference_interval, wilson_interval)


def count_params(model):
    """The number of weights of a Keras model (trainable and not)."""
    return int(sum(int(np.prod(w.shape)) for w in model.weights))


def labels_of(dataset):
    """The labels of a batched ``(x, y)`` dataset as one int NumPy array."""
    return np.concatenate([np.asarray(y) for _, y in dataset.as_numpy_iterator()])


def inputs_of(x, y):
    """The inputs of an ``(x, y)`` element: ``dataset.map(inputs_of)``.

    A named function, not a lambda: tf.data's AutoGraph cannot read the
    source of lambdas repeated in a file and warns about each one.
    """
    del y
    return x


def accuracy(model, dataset, labels=None):
    """Top-1 accuracy of a logits model on a batched ``(x, y)`` dataset.

    ``mean(argmax(model.predict(x)) == y)``; ``labels`` may be given when
    already gathered (the dataset must keep its order).
    """
    labels = labels_of(dataset) if labels is None else labels
    logits = model.predict(dataset.map(inputs_of), verbose=0)
    return float(np.mean(np.argmax(np.asarray(logits), axis=-1) == labels))


def logits_of(model, dataset):
    """A Keras model's outputs on the inputs of a batched ``(x, y)`` dataset."""
    return np.asarray(model.predict(dataset.map(inputs_of), verbose=0))


def classification_metrics(logits, labels, validation=None):
    """Accuracy and calibration of logits: what the report records per model.

    ``test_accuracy`` is ``mean(argmax(z) == y)``; ``test_nll`` the mean
    negative log-likelihood of ``softmax(z)`` (nats); ``test_ece`` the
    expected calibration error over 15 equal-width confidence bins (Guo et
    al., "On Calibration of Modern Neural Networks", ICML 2017);
    ``reliability`` the bins' counts, accuracies and mean confidences (the
    reliability diagram; ``None`` for empty bins).

    With ``validation=(val_logits, val_labels)`` a temperature ``T`` is
    fitted on them (:func:`keras_kd.calibration.fit_temperature`) and the
    test NLL and ECE of ``softmax(z / T)`` are added as ``temperature``,
    ``test_nll_scaled`` and ``test_ece_scaled`` (accuracy does not change).

    Example:

    >>> m = classification_metrics(np.log([[0.9, 0.1], [0.6, 0.4]]), [0, 1])
    >>> m["test_accuracy"], round(m["test_ece"], 4), m["reliability"]["count"][8:]
    (0.5, 0.35, [1, 0, 0, 0, 0, 1, 0])
    """
    labels = np.asarray(labels).reshape(-1)
    logits = np.asarray(logits)
    bins = calibration.reliability(logits, labels)
    out = dict(
        test_accuracy=float(np.mean(np.argmax(logits, axis=-1) == labels)),
        test_nll=calibration.nll(logits, labels),
        test_ece=calibration.ece(logits, labels),
        reliability=dict(
            count=[int(c) for c in bins["count"]],
            accuracy=[None if np.isnan(a) else float(a)
                      for a in bins["accuracy"]],
            confidence=[None if np.isnan(c) else float(c)
                        for c in bins["confidence"]]))
    if validation is not None:
        t = calibration.fit_temperature(*validation)
        out.update(temperature=t,
                   test_nll_scaled=calibration.nll(logits, labels, t),
                   test_ece_scaled=calibration.ece(logits, labels,
                                                   temperature=t))
    return out


def distillation_gain(correct_distilled, correct_alone):
    """The distilled student's accuracy minus the student alone's, with the
    95% interval of that difference (what the report states).

    Both students are scored on the same test examples, so the interval is
    the paired one, :func:`keras_kd.search.paired_difference_interval`
    (Newcombe's hybrid score interval, method 10 of Newcombe, Statistics in
    Medicine 1998): an interval over the test examples for these two trained
    students, not over seeds. ``beyond_interval`` says whether it excludes 0.

    Args:
        correct_distilled: per-test-example correctness of the distilled
            student (``argmax(logits, -1) == labels``).
        correct_alone: the same for the student alone, same order.

    Returns:
        A dict: ``difference``, ``low``, ``high`` (fractions),
        ``test_examples``, ``only_distilled_right`` and ``only_alone_right``
        (the discordant examples, which alone move the difference),
        ``beyond_interval`` (``low > 0`` or ``high < 0``) and ``method``.

    >>> gain = distillation_gain([1, 1, 1, 0], [1, 0, 0, 0])
    >>> gain["difference"], gain["only_distilled_right"], gain["beyond_interval"]
    (0.5, 2, False)
    """
    right_d = np.asarray(correct_distilled).astype(bool).reshape(-1)
    right_a = np.asarray(correct_alone).astype(bool).reshape(-1)
    difference, low, high = paired_difference_interval(right_d, right_a)
    return dict(
        difference=difference, low=low, high=high,
        test_examples=int(right_d.size),
        only_distilled_right=int(np.sum(right_d & ~right_a)),
        only_alone_right=int(np.sum(~right_d & right_a)),
        beyond_interval=bool(low > 0 or high < 0),
        method="95% Newcombe hybrid score interval for paired proportions "
        "(Newcombe 1998, method 10), over the test examples")


# What a --quick (smoke) run says instead of a verdict on the gain.
SMOKE_VERDICT = ("a smoke run (--quick): sizes that check that the pipeline "
                 "works, too small to say anything about distillation; run "
                 "without --quick to measure it")


def gain_sentence(gain, smoke=False):
    """One sentence on the distillation gain and its 95% interval, in points.

    The verdict says whether the interval excludes 0; for a smoke run
    (``smoke=True``: ``keras-kd run --quick``) it says that no conclusion is
    drawn (:data:`SMOKE_VERDICT`), whatever the interval.

    >>> gain = dict(difference=0.025, low=0.009, high=0.041,
    ...     test_examples=1000, only_distilled_right=62, only_alone_right=37,
    ...     beyond_interval=True)
    >>> print(gain_sentence(gain))
    distillation changed the student's test accuracy by +2.50 points (95% interval +0.90 to +4.10, paired over 1000 test examples: 62 right only when distilled, 37 only alone): the interval excludes 0, a gain beyond the test set's noise
    >>> gain_sentence(gain, smoke=True).endswith(SMOKE_VERDICT)
    True
    """
    verdict = (SMOKE_VERDICT if smoke else
               "the interval holds 0: not told apart from no change on this "
               "test set" if not gain["beyond_interval"] else
               "the interval excludes 0, a gain beyond the test set's noise"
               if gain["low"] > 0 else
               "the interval excludes 0, a loss beyond the test set's noise")
    return (f"distillation changed the student's test accuracy by "
            f"{100 * gain['difference']:+.2f} points (95% interval "
            f"{100 * gain['low']:+.2f} to {100 * gain['high']:+.2f}, paired "
            f"over {gain['test_examples']} test examples: "
            f"{gain['only_distilled_right']} right only when distilled, "
            f"{gain['only_alone_right']} only alone): {verdict}")


def smoke_note(config, counts=None):
    """The Markdown paragraph that opens a smoke run's report (``--quick``,
    ``config["quick"]``), or ``[]`` for a full run.

    >>> smoke_note({"quick": True, "epochs": 2}, {"train": 230})[0][:30]
    '**Smoke run (`--quick`)**: 2 e'
    """
    if not config.get("quick"):
        return []
    size = (f" on {counts['train']} training examples"
            if counts and counts.get("train") else "")
    return [f"**Smoke run (`--quick`)**: {config.get('epochs')} epochs{size} "
            "check that every stage works (training, saving, export, "
            "report). Its accuracies say nothing about distillation: no "
            "conclusion is drawn about the gain. Run without `--quick` to "
            "measure it.", ""]


def bin_counts_table(models):
    """Markdown rows of each model's examples per confidence bin: what each
    bar of the reliability diagrams rests on.

    >>> print("\\n".join(bin_counts_table([{"label": "s",
    ...     "reliability": {"count": [0, 2, 5]}}])))
    | Model | Examples per confidence bin (low to high) |
    |---|---|
    | s | 0, 2, 5 |
    """
    rows = [(r["label"], ", ".join(str(c) for c in r["reliability"]["count"]))
            for r in models if r.get("reliability")]
    if not rows:
        return []
    return (["| Model | Examples per confidence bin (low to high) |",
             "|---|---|"] + [f"| {label} | {counts} |"
                             for label, counts in rows])


def keras_latency_ms(model, example, runs=50, warmup=3):
    """Median milliseconds of ``model.predict_on_batch`` on one example.

    Args:
        model: a Keras model.
        example: one input with its batch axis, e.g. shape ``(1, 8, 8, 1)``.
        runs: timed calls (the median is returned).
        warmup: untimed calls first (compilation, tracing).
    """
    for _ in range(warmup):
        model.predict_on_batch(example)
    times = []
    for _ in range(max(1, runs)):
        start = time.perf_counter()
        model.predict_on_batch(example)
        times.append((time.perf_counter() - start) * 1000.0)
    return float(np.median(times))


def format_bytes(n):
    """``1234567`` -> ``'1.18 MB'`` (binary units)."""
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024.0
    return str(n)


TABLE_COLUMNS = ("Model", "Parameters", "File", "Size", "Test accuracy",
                 "Test NLL", "ECE", "Latency (ms)")


def rows_of(models):
    """Table rows from the per-model records of a report; with a
    ``"FLOPs"`` column (:data:`FLOPS_COLUMN`) after the parameters when a
    record carries ``flops`` (``keras-kd run --prune``)."""
    rows = []
    flops = any("flops" in record for record in models)
    for record in models:
        acc = record.get("test_accuracy")
        lat = record.get("latency_ms")
        nll, ece = record.get("test_nll"), record.get("test_ece")
        rows.append((
            record["label"],
            f"{record['parameters']:,}" if record.get("parameters") else "-",
            os.path.basename(record["path"]) if record.get("path") else "-",
            format_bytes(record.get("size_bytes")),
            "-" if acc is None else f"{100 * acc:.2f}%",
            "-" if nll is None else f"{nll:.4f}",
            "-" if ece is None else f"{100 * ece:.2f}%",
            "-" if lat is None else f"{lat:.3f}",
        ))
        if flops:
            count = record.get("flops")
            rows[-1] = rows[-1][:2] + (
                "-" if count is None else f"{count:,}",) + rows[-1][2:]
    return rows


FLOPS_COLUMN = "FLOPs"


def markdown_table(models):
    """The comparison table as GitHub Markdown (:data:`TABLE_COLUMNS`, and
    :data:`FLOPS_COLUMN` when a record has ``flops``).

    >>> print(markdown_table([dict(label="s", parameters=10, flops=40)]))
    | Model | Parameters | FLOPs | File | Size | Test accuracy | Test NLL | ECE | Latency (ms) |
    |-------|------------|-------|------|------|---------------|----------|-----|--------------|
    | s     | 10         | 40    | -    | -    | -             | -        | -   | -            |
    """
    columns = TABLE_COLUMNS
    if any("flops" in record for record in models):
        columns = columns[:2] + (FLOPS_COLUMN,) + columns[2:]
    return aligned_table(columns, rows_of(models))


def aligned_table(columns, rows):
    """A GitHub Markdown table whose columns are padded to line up as text."""
    widths = [max(len(str(c)) for c in col) for col in zip(columns, *rows)]
    def line(cells):
        return "| " + " | ".join(str(c).ljust(w) for c, w in
                                 zip(cells, widths)) + " |"
    out = [line(columns), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in rows]
    return "\n".join(out)


def jsonable(value):
    """``value`` with NumPy numbers and arrays as Python ones, tuples as
    lists and anything else unknown as its ``str``: what ``json.dump``
    takes."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def write_report(run_dir, report):
    """Writes ``report.json``, ``report.md`` and the plots into ``run_dir``.

    The plots: ``learning_curves.png``, ``accuracy_vs_size.png`` and, when
    the records carry calibration bins, ``reliability.png``.

    Args:
        run_dir: the run's output directory.
        report: a dict with ``models`` (list of per-model records: label,
            parameters, path, size_bytes, test_accuracy, latency_ms),
            ``histories`` (``{label: history}``), ``config`` and anything
            else worth keeping (saved as JSON).

    Returns:
        ``{"json": path, "markdown": path, "plots": [paths]}``.
    """
    os.makedirs(run_dir, exist_ok=True)
    curves = plot_learning_curves(
        report.get("histories", {}), os.path.join(run_dir, "learning_curves.png"))
    sizes = plot_accuracy_vs_size(
        report["models"], os.path.join(run_dir, "accuracy_vs_size.png"),
        report.get("dataset", {}).get("counts", {}).get("test"))
    diagrams = plot_reliability(
        report["models"], os.path.join(run_dir, "reliability.png"))
    plots = [p for p in (curves, sizes, diagrams) if p]
    report = dict(report, plots=[os.path.basename(p) for p in plots])
    json_path = write_json(run_dir, report)
    cfg = report.get("config", {})
    student = cfg.get("student")
    if cfg.get("prune") is not None:
        student = (f"{cfg.get('teacher')} pruned to {cfg['prune']:g} of its "
                   "parameters")
    lines = [
        f"# keras-kd run `{os.path.basename(os.path.abspath(run_dir))}`",
        "",
        f"Dataset **{cfg.get('dataset')}**, teacher **{cfg.get('teacher')}**, "
        f"student **{student}**, objective **{cfg.get('objective')}** "
        f"(alpha={cfg.get('alpha')}, T={cfg.get('temperature')}), "
        f"{cfg.get('epochs')} epochs, Keras backend "
        f"**{report.get('backend')}**.",
        "",
        *smoke_note(cfg, report.get("dataset", {}).get("counts")),
        markdown_table(report["models"]),
        "",
    ]
    if report.get("pruning"):
        from keras_kd.app import pruned

        lines += [pruned.markdown(report["pruning"]) + " FLOPs: 2 x the "
                  "multiply-accumulates of the Dense and convolution layers "
                  "per example (`keras_kd.pruning.count_flops`).", ""]
    if report.get("gain"):
        sentence = gain_sentence(report["gain"], bool(cfg.get("quick")))
        lines += [sentence[0].upper() + sentence[1:] + ". The interval is "
                  "Newcombe's hybrid score interval for paired proportions "
                  "(both students scored on the same test examples; "
                  "Newcombe, 1998, method 10): it measures the test set's "
                  "noise, not the spread over seeds.", ""]
    lines += [
        "Latency: median milliseconds for one example on this machine's CPU "
        "(Keras `predict_on_batch` for .keras models, the LiteRT interpreter "
        "for .tflite).",
        "",
        "![learning curves](learning_curves.png)",
        "",
        "![accuracy against size](accuracy_vs_size.png)",
        "",
    ]
    if diagrams:
        lines += [
            "Calibration: test NLL (nats) and expected calibration error "
            "(15 equal-width confidence bins, Guo et al., 2017). With a "
            "temperature T fitted on the validation split (NLL minimised; "
            "accuracy unchanged):",
            "",
            "| Model | T | Test NLL at T | ECE at T |",
            "|---|---:|---:|---:|",
        ]
        lines += [f"| {r['label']} | {r['temperature']:.3f} | "
                  f"{r['test_nll_scaled']:.4f} | "
                  f"{100 * r['test_ece_scaled']:.2f}% |"
                  for r in report["models"] if "temperature" in r]
        lines += ["", "The reliability diagrams: the accuracy of the examples "
                  "in each of 15 equal-width confidence bins, each bar "
                  "labelled with its count of examples (a bar of a few "
                  "examples says little):", "",
                  *bin_counts_table(report["models"]), "",
                  "![reliability diagrams](reliability.png)", ""]
    md_path = os.path.join(run_dir, "report.md")
    with open(md_path, "w") as f:
        f.write("\n".join(lines))
    return {"json": json_path, "markdown": md_path, "plots": plots}


def write_json(run_dir, report):
    """Writes ``report`` (:func:`jsonable`) as ``run_dir/report.json``;
    returns the path."""
    path = os.path.join(run_dir, "report.json")
    with open(path, "w") as f:
        json.dump(jsonable(report), f, indent=2)
    return path
