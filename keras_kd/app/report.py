"""Measurements and the run report of ``keras-kd run``: table, JSON, Markdown, plots.

The report compares the teacher, the student trained alone, the distilled
student and its TFLite export on parameters, file size, test accuracy,
calibration (test NLL and 15-bin expected calibration error, Guo et al., ICML
2017; see :mod:`keras_kd.calibration`) and single-example latency. Plots are
drawn with matplotlib's Agg backend (no display needed).
"""

import json
import os
import time

import numpy as np

from keras_kd import calibration
from keras_kd.extras import require
from keras_kd.search import paired_difference_interval, wilson_interval


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


def gain_sentence(gain):
    """One sentence on the distillation gain and its 95% interval, in points.

    >>> print(gain_sentence(dict(difference=0.025, low=0.009, high=0.041,
    ...     test_examples=1000, only_distilled_right=62,
    ...     only_alone_right=37, beyond_interval=True)))
    distillation changed the student's test accuracy by +2.50 points (95% interval +0.90 to +4.10, paired over 1000 test examples: 62 right only when distilled, 37 only alone): the interval excludes 0, a gain beyond the test set's noise
    """
    verdict = ("the interval holds 0: not told apart from no change on this "
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
    """Table rows from the per-model records of a report."""
    rows = []
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
    return rows


def markdown_table(models):
    """The comparison table as GitHub Markdown."""
    return aligned_table(TABLE_COLUMNS, rows_of(models))


def aligned_table(columns, rows):
    """A GitHub Markdown table whose columns are padded to line up as text."""
    widths = [max(len(str(c)) for c in col) for col in zip(columns, *rows)]
    def line(cells):
        return "| " + " | ".join(str(c).ljust(w) for c, w in
                                 zip(cells, widths)) + " |"
    out = [line(columns), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in rows]
    return "\n".join(out)


def curve_series(histories):
    """What :func:`plot_learning_curves` draws, like with like.

    ``{"accuracy": [...], "loss": [...]}``, each a list of
    ``(label, split, values)`` with ``split`` ``"train"`` or ``"val"``. The
    loss panel shows every model's cross-entropy on the labels: a
    distilled student's ``student_loss`` / ``val_student_loss`` (its hard
    term, without the distillation term), the other models' ``loss`` /
    ``val_loss``.

    Example:

    >>> curve_series({"d": {"loss": [9.0], "student_loss": [1.0]}})["loss"]
    [('d', 'train', [1.0])]
    """
    out = {"accuracy": [], "loss": []}
    for label, hist in histories.items():
        for split, prefix in (("train", ""), ("val", "val_")):
            if hist.get(prefix + "accuracy"):
                out["accuracy"].append((label, split,
                                        list(hist[prefix + "accuracy"])))
            key = (prefix + "student_loss" if hist.get(prefix + "student_loss")
                   else prefix + "loss")
            if hist.get(key):
                out["loss"].append((label, split, list(hist[key])))
    return out


def zoomed_limits(series, margin=0.1, floor=0.0, ceiling=1.0):
    """y-limits around every value of ``series`` (``curve_series`` rows),
    padded by ``margin`` of their range and kept inside [floor, ceiling].

    Example:

    >>> zoomed_limits([("a", "val", [0.9, 0.95]), ("b", "val", [0.97])])
    (0.893, 0.977)
    """
    values = [v for _, _, vs in series for v in vs if np.isfinite(v)]
    if not values:
        return floor, ceiling
    lo, hi = min(values), max(values)
    pad = max(hi - lo, 1e-3) * margin
    return (round(max(floor, lo - pad), 6), round(min(ceiling, hi + pad), 6))


def plot_learning_curves(histories, path):
    """Accuracy and cross-entropy per epoch for each model (training dashed,
    validation solid).

    The accuracy panel is zoomed to the models' range; the loss panel shows
    the cross-entropy on the labels for every model (the distilled
    student's hard term, not its total loss), so the curves compare like
    with like (:func:`curve_series`).

    Args:
        histories: ``{label: history_dict}`` (``keras.callbacks.History
            .history``).
        path: the PNG to write.
    """
    matplotlib = require("matplotlib")

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = curve_series(histories)
    colors = {label: f"C{i}" for i, label in enumerate(histories)}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key in zip(axes, ("accuracy", "loss")):
        for label, split, values in series[key]:
            ax.plot(np.arange(1, len(values) + 1), values,
                    "-" if split == "val" else "--", color=colors[label],
                    label=f"{label} ({split})")
    axes[0].set_ylim(*zoomed_limits(series["accuracy"]))
    axes[0].set(title="Accuracy (zoomed to the models' range)",
                xlabel="epoch", ylabel="accuracy")
    axes[1].set(title="Cross-entropy on the labels (every model)",
                xlabel="epoch", ylabel="cross-entropy")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_accuracy_vs_size(models, path, test_examples=None):
    """Test accuracy against file size (log scale), one labelled point each.

    Keras files are circles, TFLite files squares. With ``test_examples``
    (the size of the test set) each point carries its 95% Wilson interval
    (:func:`wilson_interval`): points whose bars overlap are not told apart
    by this test set.
    """
    matplotlib = require("matplotlib")

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    shown = set()
    for i, record in enumerate(models):
        if record.get("size_bytes") is None or record.get("test_accuracy") is None:
            continue
        size_kb = record["size_bytes"] / 1024.0
        accuracy = record["test_accuracy"]
        tflite = str(record.get("runtime", "")).startswith("tflite")
        kind = "TFLite file" if tflite else "Keras file"
        yerr = None
        if test_examples:
            lo, hi = wilson_interval(round(accuracy * test_examples),
                                     test_examples)
            yerr = [[100 * (accuracy - lo)], [100 * (hi - accuracy)]]
        ax.errorbar(size_kb, 100 * accuracy, yerr=yerr, fmt="s" if tflite
                    else "o", color=f"C{i}", markersize=7, capsize=3,
                    zorder=3, label=None if kind in shown else kind)
        shown.add(kind)
        ax.annotate(record["label"], (size_kb, 100 * accuracy),
                    textcoords="offset points", fontsize=8,
                    xytext=(6, 6) if i % 2 == 0 else (6, -13))
    ax.set_xscale("log")
    ax.margins(x=0.35, y=0.15)
    interval = (f"; bars: 95% interval over {test_examples} test examples"
                if test_examples else "")
    ax.set(xlabel="file size (KB, log scale)", ylabel="test accuracy (%)",
           title="Accuracy against size" + interval)
    ax.title.set_fontsize(9)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_reliability(models, path):
    """Reliability diagrams: accuracy against confidence, one panel per model.

    Each panel draws the accuracy of the examples in each of the 15
    confidence bins (bars) against the diagonal a calibrated model follows,
    and gives the model's ECE. ``models`` are report records with a
    ``reliability`` entry (see :func:`classification_metrics`); the others
    are left out. Returns ``path``, or None when no record has bins.
    """
    records = [r for r in models if r.get("reliability")]
    if not records:
        return None
    matplotlib = require("matplotlib")

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(records), figsize=(3.2 * len(records),
                                                       3.4), squeeze=False)
    for i, (ax, record) in enumerate(zip(axes[0], records)):
        bins = record["reliability"]
        m = len(bins["count"])
        centres = (np.arange(m) + 0.5) / m
        acc = np.array([np.nan if a is None else a for a in bins["accuracy"]])
        ax.bar(centres, np.nan_to_num(acc), width=1.0 / m, color=f"C{i}",
               edgecolor="black", linewidth=0.4, label="accuracy")
        ax.plot([0, 1], [0, 1], "--", color="gray", label="calibrated")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence",
               title=f"{record['label']}\nECE {100 * record['test_ece']:.2f}%")
        ax.title.set_fontsize(8)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy")
    axes[0][0].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
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
    json_path = _write_json(run_dir, report)
    cfg = report.get("config", {})
    lines = [
        f"# keras-kd run `{os.path.basename(os.path.abspath(run_dir))}`",
        "",
        f"Dataset **{cfg.get('dataset')}**, teacher **{cfg.get('teacher')}**, "
        f"student **{cfg.get('student')}**, objective **{cfg.get('objective')}** "
        f"(alpha={cfg.get('alpha')}, T={cfg.get('temperature')}), "
        f"{cfg.get('epochs')} epochs, Keras backend "
        f"**{report.get('backend')}**.",
        "",
        markdown_table(report["models"]),
        "",
    ]
    if report.get("gain"):
        sentence = gain_sentence(report["gain"])
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
        lines += ["", "![reliability diagrams](reliability.png)", ""]
    md_path = os.path.join(run_dir, "report.md")
    with open(md_path, "w") as f:
        f.write("\n".join(lines))
    return {"json": json_path, "markdown": md_path, "plots": plots}


def _write_json(run_dir, report):
    path = os.path.join(run_dir, "report.json")
    with open(path, "w") as f:
        json.dump(_jsonable(report), f, indent=2)
    return path


# ----------------------------------------------------------------------
# keras-kd run --task causal-lm
# ----------------------------------------------------------------------
LM_TABLE_COLUMNS = ("Model", "Parameters", "File", "Size",
                    "Held-out bits per byte", "Greedy agreement",
                    "Latency (ms)")


def lm_markdown_table(models):
    """The language-model comparison table as GitHub Markdown.

    ``models`` are records with ``label``, ``parameters``, ``path``,
    ``size_bytes``, ``bits_per_byte``, ``greedy_agreement`` (None for the
    teacher) and ``latency_ms``; missing figures show as ``-``.
    """
    def figure(value, spec):
        return "-" if value is None else format(value, spec)

    rows = [(
        r["label"],
        f"{r['parameters']:,}" if r.get("parameters") else "-",
        os.path.basename(r["path"]) if r.get("path") else "-",
        format_bytes(r.get("size_bytes")),
        figure(r.get("bits_per_byte"), ".4f"),
        figure(r.get("greedy_agreement"), ".3f"),
        figure(r.get("latency_ms"), ".3f"),
    ) for r in models]
    return aligned_table(LM_TABLE_COLUMNS, rows)


def plot_bits_per_byte_curves(curves, path):
    """Held-out bits per byte against training step, one line per model.

    Args:
        curves: ``{label: {"steps": [...], "bits_per_byte": [...]}}``.
        path: the PNG to write.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for i, (label, curve) in enumerate(curves.items()):
        ax.plot(curve["steps"], curve["bits_per_byte"], "o-", markersize=3,
                color=f"C{i}", label=label)
    ax.set(xlabel="training step", ylabel="bits per byte (held-out windows)",
           title="Learning curves")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save_figure(plt, fig, path)


def _pyplot():
    """matplotlib's pyplot on the Agg backend (no display needed)."""
    require("matplotlib").use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_figure(plt, fig, path):
    """Writes ``fig`` to ``path`` (PNG), closes it and returns ``path``."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_lm_report(run_dir, report):
    """Writes the language-model run's ``report.json``, ``report.md`` and
    ``learning_curves.png`` into ``run_dir``.

    Args:
        run_dir: the run's output directory.
        report: a dict with ``models`` (records for
            :func:`lm_markdown_table`, each with its ``sample`` text),
            ``prompt`` (the text the samples continue), ``curves`` (for
            :func:`plot_bits_per_byte_curves`), ``config`` and anything else
            worth keeping (saved as JSON).

    Returns:
        ``{"json": path, "markdown": path, "plots": [paths]}``.
    """
    os.makedirs(run_dir, exist_ok=True)
    curves = os.path.join(run_dir, "learning_curves.png")
    plots = [plot_bits_per_byte_curves(report.get("curves", {}), curves)]
    json_path = _write_json(run_dir, dict(
        report, plots=[os.path.basename(p) for p in plots]))
    cfg = report.get("config", {})
    title = os.path.basename(os.path.abspath(run_dir))
    lines = [
        f"# keras-kd run `{title}`", "",
        f"Causal language models on the Python standard library's source "
        f"(byte tokens, windows of {cfg.get('sequence_length')}): teacher "
        f"**{cfg.get('lm_teacher')}** ({cfg.get('teacher_steps')} steps), "
        f"student **{cfg.get('lm_student')}** ({cfg.get('steps')} steps, "
        f"batches of {cfg.get('batch_size')}), objective "
        f"**{cfg.get('objective')}** (alpha={cfg.get('alpha')}, "
        f"T={cfg.get('temperature')}"
        + (f", on-policy λ={cfg['on_policy']}" if cfg.get("on_policy")
           is not None else "")
        + f"), Keras backend **{report.get('backend')}**.",
        "",
        lm_markdown_table(report["models"]),
        "",
        "Bits per byte: the mean of -log2 p(next byte) over the held-out "
        "files (lower is better; 8 is a uniform guess). Greedy agreement: "
        "the share of greedily generated bytes equal to the teacher's, "
        "continuing the same held-out prompts. Latency: median milliseconds "
        "on this machine's CPU, for one sequence (Keras `predict_on_batch`) "
        "or for one generated token (the LiteRT interpreter; the file has "
        "no KV cache, so a token costs a full forward pass).",
        "",
        "Greedy samples: each model continues the same held-out prompt.",
        "",
        "Prompt:",
        "",
        "```text",
        report.get("prompt", ""),
        "```",
        "",
    ]
    for record in report["models"]:
        if record.get("sample") is not None:
            lines += [f"{record['label']}:", "", "```text", record["sample"],
                      "```", ""]
    lines += ["![learning curves](learning_curves.png)", ""]
    md_path = os.path.join(run_dir, "report.md")
    with open(md_path, "w") as f:
        f.write("\n".join(lines))
    return {"json": json_path, "markdown": md_path, "plots": plots}
