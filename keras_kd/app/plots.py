"""The plots of the ``keras-kd run`` report, drawn with matplotlib's Agg
backend (no display needed).

Learning curves (accuracy and cross-entropy per epoch, integer epoch ticks),
accuracy against file size (with each point's 95% interval), reliability
diagrams (accuracy per confidence bin, each bar labelled with its count of
examples) and, for ``--task causal-lm``, held-out bits per byte against the
training step. Each ``*_figure`` function returns the matplotlib figure (what
the tests read); each ``plot_*`` function writes it as a PNG.
"""

import numpy as np

from keras_kd.extras import require
from keras_kd.search import wilson_interval


def pyplot():
    """matplotlib's pyplot on the Agg backend (no display needed)."""
    require("matplotlib").use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path):
    """Writes ``fig`` to ``path`` (PNG), closes it and returns ``path``."""
    plt = pyplot()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def integer_ticks(ax):
    """Ticks at whole numbers only on ``ax``'s x axis (epochs, steps):
    ``matplotlib.ticker.MaxNLocator(integer=True)``."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


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


def learning_curves_figure(histories):
    """The figure of :func:`plot_learning_curves`: two panels, epochs on
    integer ticks."""
    plt = pyplot()
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
        integer_ticks(ax)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return fig


def plot_learning_curves(histories, path):
    """Accuracy and cross-entropy per epoch for each model (training dashed,
    validation solid; epochs on integer ticks).

    The accuracy panel is zoomed to the models' range; the loss panel shows
    the cross-entropy on the labels for every model (the distilled
    student's hard term, not its total loss), so the curves compare like
    with like (:func:`curve_series`).

    Args:
        histories: ``{label: history_dict}`` (``keras.callbacks.History
            .history``).
        path: the PNG to write.
    """
    return save_figure(learning_curves_figure(histories), path)


def plot_accuracy_vs_size(models, path, test_examples=None):
    """Test accuracy against file size (log scale), one labelled point each.

    Keras files are circles, TFLite files squares. With ``test_examples``
    (the size of the test set) each point carries its 95% Wilson interval
    (:func:`keras_kd.search.wilson_interval`): points whose bars overlap are not told apart
    by this test set.
    """
    plt = pyplot()
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
    return save_figure(fig, path)


def reliability_figure(records):
    """The figure of :func:`plot_reliability`: one panel per record, each
    bar labelled with its bin's count of examples."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(records), figsize=(3.2 * len(records),
                                                       3.4), squeeze=False)
    for i, (ax, record) in enumerate(zip(axes[0], records)):
        bins = record["reliability"]
        m = len(bins["count"])
        centres = (np.arange(m) + 0.5) / m
        acc = np.array([np.nan if a is None else a for a in bins["accuracy"]])
        ax.bar(centres, np.nan_to_num(acc), width=1.0 / m, color=f"C{i}",
               edgecolor="black", linewidth=0.4, label="accuracy")
        for centre, height, count in zip(centres, np.nan_to_num(acc),
                                         bins["count"]):
            if count:  # the examples behind the bar
                ax.text(centre, min(height, 0.9) + 0.02, str(count),
                        ha="center", va="bottom", fontsize=5, rotation=90)
        ax.plot([0, 1], [0, 1], "--", color="gray", label="calibrated")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence",
               title=f"{record['label']}\nECE {100 * record['test_ece']:.2f}%"
               f" ({sum(bins['count'])} examples)")
        ax.title.set_fontsize(8)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy (number: examples in the bin)")
    axes[0][0].legend(fontsize=7, loc="upper left")
    return fig


def plot_reliability(models, path):
    """Reliability diagrams: accuracy against confidence, one panel per model.

    Each panel draws the accuracy of the examples in each of the 15
    confidence bins (bars, each labelled with its count of examples: a bar
    of 2 examples says little) against the diagonal a calibrated model
    follows, and gives the model's ECE. ``models`` are report records with a
    ``reliability`` entry (see
    :func:`keras_kd.app.report.classification_metrics`); the others are
    left out. Returns ``path``, or None when no record has bins.
    """
    records = [r for r in models if r.get("reliability")]
    if not records:
        return None
    return save_figure(reliability_figure(records), path)


def plot_bits_per_byte_curves(curves, path):
    """Held-out bits per byte against training step, one line per model
    (steps on integer ticks).

    Args:
        curves: ``{label: {"steps": [...], "bits_per_byte": [...]}}``.
        path: the PNG to write.
    """
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for i, (label, curve) in enumerate(curves.items()):
        ax.plot(curve["steps"], curve["bits_per_byte"], "o-", markersize=3,
                color=f"C{i}", label=label)
    ax.set(xlabel="training step", ylabel="bits per byte (held-out windows)",
           title="Learning curves")
    integer_ticks(ax)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)
