"""Pruned teachers against random students of the same size, on MNIST-1D.

For each seed, `keras-kd run`'s default teacher (the ``cnn``, 125,770
parameters, 20 epochs) is trained once; then, at two parameter budgets (the
default student's count, 3,162, and a quarter of the teacher), every student
trains for the same number of steps (20 epochs of batches of 64, Adam at
1e-3, `keras-kd run`'s settings):

* **random, alone**: the pruned architecture with fresh random weights, on
  the labels (cross-entropy);
* **random, DIST**: the same initial weights, distilled with DIST (alpha
  0.1, tau 1: `keras-kd run`'s default objective);
* **pruned, fine-tuned on labels**: the teacher pruned to the budget
  (:func:`keras_kd.app.pruned.prune_teacher`: ``keras-kd run --prune``'s
  criterion and calibration), fine-tuned on the labels;
* **pruned, logit KD (Minitron)**: the same pruned model distilled with
  forward KL on the logits alone (Hinton KD at T = 1, alpha 0: Minitron's
  logit-only distillation);
* **pruned, DIST**: the same pruned model distilled with DIST;
* **pruned, DIST, post-training int8** and **pruned, DIST, QAD int8**: that
  distilled student exported as int8 after calibration, and after a
  quantization-aware fine-tune from the teacher
  (:func:`keras_kd.app.qat.fine_tune`: ``keras-kd run --qat``'s QAD, a
  quarter of the epochs at a third of the learning rate).

At the default student's budget the default student (``small_cnn``) is
also trained alone and with DIST. Every row gives the test accuracy (mean
± std over seeds, and the 95% Wilson interval of an accuracy measured on
the test signals, at that mean), parameters, FLOPs
(:func:`keras_kd.pruning.count_flops`), and the TFLite file's size and
median batch-1 latency (LiteRT interpreter, one thread), measured on the
file :func:`keras_kd.export.to_tflite` writes. Below each table, the
pruned, distilled student minus the random one distilled alike, per seed,
with the paired 95% interval over the test signals.

    KERAS_BACKEND=jax python benchmarks/pruning.py                # 3 seeds
    KERAS_BACKEND=jax python benchmarks/pruning.py --quick        # smoke run
    KERAS_BACKEND=jax python benchmarks/pruning.py --part lm      # the byte LM

``--part lm`` runs ``benchmarks/pruning_lm.py``'s ``main`` (the language
model part); ``--part all`` both.
"""

import argparse
import importlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_kd as kd  # noqa: E402
from keras_kd import pruning  # noqa: E402
from keras_kd.app import pruned as pruned_lib  # noqa: E402
from keras_kd.app.models import build_model  # noqa: E402
from keras_kd.app.options import DEFAULTS  # noqa: E402
from keras_kd.app.qat import fine_tune  # noqa: E402
from keras_kd.data import load_mnist1d  # noqa: E402
from keras_kd.search import (  # noqa: E402
    paired_difference_interval, wilson_interval)

# (key, label, how it trains, TFLite precision)
ROWS = (
    ("default_alone", "default student (small_cnn), alone", "float32"),
    ("default_dist", "default student (small_cnn), DIST", "float32"),
    ("random_alone", "random, alone", "float32"),
    ("random_dist", "random, DIST", "float32"),
    ("pruned_ft", "pruned, fine-tuned on labels", "float32"),
    ("pruned_kd", "pruned, logit KD (Minitron: KL, T=1, alpha 0)", "float32"),
    ("pruned_dist", "pruned, DIST", "float32"),
    ("pruned_dist_ptq", "pruned, DIST, post-training int8", "int8"),
    ("pruned_dist_qad", "pruned, DIST, QAD int8", "int8"),
)
LABELS = {key: label for key, label, _ in ROWS}
QUICK = dict(seeds=1, epochs=1, teacher_epochs=1, samples=500,
             latency_runs=5)
BUDGETS = ("student", "quarter")


def _loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _fit(model, data, epochs, lr, batch_size):
    model.compile(keras.optimizers.Adam(lr), _loss())
    model.fit(*data, epochs=epochs, batch_size=batch_size, verbose=0)
    return model


def _distil(teacher, student, data, epochs, lr, batch_size, **options):
    distiller = kd.Distiller(teacher, student)
    distiller.compile(keras.optimizers.Adam(lr), _loss(), **options)
    distiller.fit(*data, epochs=epochs, batch_size=batch_size, verbose=0)
    return student


def _copy(model, fresh=False):
    """A copy with the same weights, or (``fresh``) new random ones."""
    copy = keras.models.clone_model(model)
    if not fresh:
        copy.set_weights(model.get_weights())
    return copy


def load_data(samples):
    """``keras-kd run``'s MNIST-1D split: the first 90% of the training
    signals (the run holds the last 10% for validation), and the test
    signals."""
    (x, y), test = load_mnist1d(num_samples=samples)
    n = int(round(0.9 * len(x)))
    return (x[:n], y[:n]), test


def run_seed(seed, args, data, out_dir):
    """Trains the teacher and every row's student at both budgets."""
    train, (x_test, y_test) = data
    bs, lr, epochs = args.batch_size, args.learning_rate, args.epochs
    dist = dict(alpha=DEFAULTS["alpha"], temperature=1.0,
                distillation_loss="dist")
    minitron = dict(alpha=0.0, temperature=1.0, distillation_loss="kd")
    calibration = train[0][:256]

    def measure(model, key, quantize="float32", keras_model=True,
                file_of=None):
        """The row of ``model``: its accuracy (Keras, or the TFLite file's
        for int8), parameters, FLOPs, and its TFLite file's size and
        latency; ``file_of``: a row of the same architecture whose float32
        file stands for this one's (the same shapes give the same file)."""
        row = dict(parameters=int(model.count_params()),
                   flops=pruning.count_flops(model), quantize=quantize)
        if file_of is not None:
            row.update({k: file_of[k] for k in ("size_bytes", "latency_ms")},
                       file_shared=True)
        else:
            path = os.path.join(out_dir, f"seed{seed}_{key}_{quantize}"
                                ".tflite")
            report = kd.export.to_tflite(
                model, path, quantize=quantize,
                representative_data=calibration if quantize == "int8"
                else None, eval_data=(x_test, y_test),
                latency_runs=args.latency_runs)
            row.update(size_bytes=int(report.size_bytes),
                       latency_ms=report.latency_ms_median,
                       tflite_accuracy=float(report.tflite_accuracy))
        if keras_model:
            logits = model.predict(x_test, batch_size=500, verbose=0)
            correct = np.argmax(logits, -1) == y_test
            row.update(accuracy=float(correct.mean()),
                       correct=correct.astype(int).tolist())
        else:
            row["accuracy"] = row["tflite_accuracy"]
        return row

    keras.utils.set_random_seed(seed)
    teacher = build_model("cnn", train[0].shape[1:], 10, model_name="teacher")
    _fit(teacher, train, args.teacher_epochs, lr, bs)
    teacher_acc = float(np.mean(np.argmax(teacher.predict(
        x_test, batch_size=500, verbose=0), -1) == y_test))
    default = build_model("small_cnn", train[0].shape[1:], 10,
                          model_name="student")
    budgets = {"student": default.count_params(),
               "quarter": pruned_lib.budget(teacher.count_params(), 0.25)}
    budgets = {name: budgets[name] for name in args.budgets}
    out = {"seed": seed, "teacher_accuracy": teacher_acc,
           "teacher_parameters": int(teacher.count_params()),
           "teacher_flops": pruning.count_flops(teacher), "budgets": {}}
    for name, limit in budgets.items():
        share = limit / teacher.count_params()
        pruned, report = pruned_lib.prune_teacher(
            teacher, share, *train, criterion=args.criterion)
        assert report["params_after"] <= limit, (report["params_after"],
                                                 limit)
        before = np.argmax(pruned.predict(x_test, batch_size=500, verbose=0),
                           -1) == y_test
        rows = {}
        if name == "student":
            keras.utils.set_random_seed(1000 + seed)
            init = _copy(default)
            keras.utils.set_random_seed(2000 + seed)
            rows["default_dist"] = measure(_distil(
                teacher, _copy(init), train, epochs, lr, bs, **dist),
                "default_dist")
            keras.utils.set_random_seed(2000 + seed)
            rows["default_alone"] = measure(
                _fit(_copy(init), train, epochs, lr, bs), "default_alone",
                file_of=rows["default_dist"])
        keras.utils.set_random_seed(2000 + seed)
        student = _distil(teacher, _copy(pruned), train, epochs, lr, bs,
                          **dist)
        rows["pruned_dist"] = measure(student, f"{name}_pruned_dist")
        shared = rows["pruned_dist"]
        keras.utils.set_random_seed(1000 + seed)
        random_init = _copy(pruned, fresh=True)
        keras.utils.set_random_seed(2000 + seed)
        rows["random_alone"] = measure(
            _fit(_copy(random_init), train, epochs, lr, bs),
            f"{name}_random_alone", file_of=shared)
        keras.utils.set_random_seed(2000 + seed)
        rows["random_dist"] = measure(_distil(
            teacher, _copy(random_init), train, epochs, lr, bs, **dist),
            f"{name}_random_dist", file_of=shared)
        keras.utils.set_random_seed(2000 + seed)
        rows["pruned_ft"] = measure(
            _fit(_copy(pruned), train, epochs, lr, bs), f"{name}_pruned_ft",
            file_of=shared)
        keras.utils.set_random_seed(2000 + seed)
        rows["pruned_kd"] = measure(_distil(
            teacher, _copy(pruned), train, epochs, lr, bs, **minitron),
            f"{name}_pruned_kd", file_of=shared)
        rows["pruned_dist_ptq"] = measure(
            student, f"{name}_pruned_dist", "int8", keras_model=False)
        keras.utils.set_random_seed(2000 + seed)
        qad, _ = fine_tune(student, *train, calibration_data=calibration,
                           teacher=teacher, epochs=max(1, epochs // 4),
                           learning_rate=lr / 3, batch_size=bs, **dist)
        rows["pruned_dist_qad"] = measure(qad, f"{name}_pruned_dist_qad",
                                          "int8", keras_model=False)
        rows["pruned_dist_qad"]["parameters"] = rows["pruned_dist"][
            "parameters"]
        rows["pruned_dist_qad"]["flops"] = rows["pruned_dist"]["flops"]
        out["budgets"][name] = dict(
            budget=limit, criterion=args.criterion, ratio=report["ratio"],
            channels=[g["channels_after"] for g in report["groups"]],
            pruned_accuracy_before=float(before.mean()), rows=rows)
        print(f"seed {seed}, budget {name} ({limit:,}): " + ", ".join(
            f"{k} {100 * r['accuracy']:.1f}" for k, r in rows.items()),
            flush=True)
    return out


def _mean_std(values, digits=1):
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def summary(runs, name, n_test):
    """The table of one budget (rows of :data:`ROWS` present), as dicts."""
    out = []
    for key, label, _ in ROWS:
        got = [r["budgets"][name]["rows"][key] for r in runs
               if key in r["budgets"][name]["rows"]]
        if not got:
            continue
        accuracy = [g["accuracy"] for g in got]
        mean = statistics.fmean(accuracy)
        low, high = wilson_interval(int(round(mean * n_test)), n_test)
        latency = [g["latency_ms"] * 1000 for g in got
                   if g["latency_ms"] is not None]
        out.append(dict(
            key=key, label=label, quantize=got[0]["quantize"],
            accuracy=accuracy, accuracy_mean=mean, interval=(low, high),
            parameters=got[0]["parameters"], flops=got[0]["flops"],
            file_shared=bool(got[0].get("file_shared")),
            size_bytes=statistics.fmean(g["size_bytes"] for g in got),
            latency_us=latency))
    return out


def gains(runs, name, a="pruned_dist", b="random_dist"):
    """Per seed: row ``a`` minus row ``b`` with the paired 95% interval."""
    out = []
    for r in runs:
        rows = r["budgets"][name]["rows"]
        d, low, high = paired_difference_interval(
            np.asarray(rows[a]["correct"], bool),
            np.asarray(rows[b]["correct"], bool))
        out.append(dict(seed=r["seed"], difference=d, low=low, high=high))
    return out


def markdown(runs, args, n_test):
    first = runs[0]
    lines = [
        f"MNIST-1D ({args.samples:,} signals; {n_test:,} test), teacher "
        f"`cnn` ({first['teacher_parameters']:,} parameters, "
        f"{first['teacher_flops']:,} FLOPs, {args.teacher_epochs} epochs, "
        f"test accuracy "
        f"{_mean_std([100 * r['teacher_accuracy'] for r in runs])}%), "
        f"students {args.epochs} epochs (batch {args.batch_size}, Adam "
        f"{args.learning_rate:g}); pruning criterion {args.criterion}; "
        f"seeds {', '.join(str(r['seed']) for r in runs)}; backend "
        f"{keras.backend.backend()}, "
        f"{platform.processor() or platform.machine()}.", ""]
    for name in first["budgets"]:
        b = first["budgets"][name]
        before = [100 * r["budgets"][name]["pruned_accuracy_before"]
                  for r in runs]
        lines += [
            f"Budget {b['budget']:,} parameters ("
            + ("the default student's" if name == "student"
               else "a quarter of the teacher")
            + f"): pruned channels {b['channels']}, test accuracy right "
            f"after pruning {_mean_std(before)}%.", "",
            "| student | test accuracy (%) | 95% interval | parameters "
            "| FLOPs | TFLite | size | latency (µs) |",
            "|---|---:|---|---:|---:|---|---:|---:|"]
        for row in summary(runs, name, n_test):
            low, high = row["interval"]
            lines.append(
                f"| {row['label']} "
                f"| {_mean_std([100 * a for a in row['accuracy']])} "
                f"| {100 * low:.1f} to {100 * high:.1f} "
                f"| {row['parameters']:,} | {row['flops']:,} "
                f"| {row['quantize']} | {row['size_bytes'] / 1024:.1f} KiB"
                + ("ᵃ " if row["file_shared"] else " ") +
                f"| {_mean_std(row['latency_us']) if row['latency_us'] else '-'} |")
        lines += ["", "ᵃ Measured on the float32 file of the unmarked row "
                  "of the same architecture (pruned, DIST; default student, "
                  "DIST): the same shapes give the same file, so it is "
                  "exported once per architecture and seed.", "",
                  "Pruned, DIST minus random, DIST (points, paired 95% "
                  "interval): " + "; ".join(
                      f"seed {g['seed']} {100 * g['difference']:+.1f} "
                      f"({100 * g['low']:+.1f} to {100 * g['high']:+.1f})"
                      for g in gains(runs, name)), ""]
    return "\n".join(lines)


def mnist1d(args):
    """The MNIST-1D part: trains, prints the tables, returns the runs."""
    start = time.perf_counter()
    data = load_data(args.samples)
    out_dir = args.output_dir or tempfile.mkdtemp(prefix="keras_kd_prune_")
    runs = []
    for seed in range(args.seeds):
        runs.append(run_seed(seed, args, data, out_dir))
        if args.json:  # after every seed: a long run keeps what it measured
            from keras_kd import ownership

            ownership.write_json(args.json, {
                "backend": keras.backend.backend(), "args": vars(args),
                "wall_s": time.perf_counter() - start,
                "test_examples": len(data[1][1]), "runs": runs})
    wall = time.perf_counter() - start
    print(markdown(runs, args, len(data[1][1])))
    print(f"wall time {wall:.0f} s")
    return runs


def from_json(path):
    """Prints the tables of a ``--json`` file again; returns its runs."""
    with open(path) as f:
        saved = json.load(f)
    args = argparse.Namespace(**saved["args"])
    print(markdown(saved["runs"], args, saved["test_examples"]))
    return saved["runs"]


def language_model(argv):
    """The language-model part: ``benchmarks/pruning_lm.py``'s ``main``."""
    try:
        module = importlib.import_module("benchmarks.pruning_lm")
    except ModuleNotFoundError as error:
        if error.name not in ("benchmarks", "benchmarks.pruning_lm"):
            raise
        raise SystemExit(
            "benchmarks/pruning.py --part lm: benchmarks/pruning_lm.py is not "
            "in this checkout, so the language-model part cannot run; use "
            "--part mnist1d") from None
    return module.main(argv)


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("mnist1d", "lm", "all"),
                        default="mnist1d")
    parser.add_argument("--seeds", type=int, default=3,
                        help="seeds 0 .. SEEDS-1 (MNIST-1D)")
    parser.add_argument("--epochs", type=int, default=DEFAULTS["epochs"],
                        help="epochs of every student")
    parser.add_argument("--teacher-epochs", type=int,
                        default=DEFAULTS["epochs"])
    parser.add_argument("--batch-size", type=int,
                        default=DEFAULTS["batch_size"])
    parser.add_argument("--learning-rate", type=float,
                        default=DEFAULTS["learning_rate"])
    parser.add_argument("--criterion", default=pruned_lib.CRITERION,
                        choices=pruning.importance.CRITERIA)
    parser.add_argument("--samples", type=int, default=5000,
                        help="MNIST-1D signals generated (a fifth for "
                        "testing): keras-kd run's 5,000")
    parser.add_argument("--latency-runs", type=int, default=100)
    parser.add_argument("--budgets", nargs="+", choices=BUDGETS,
                        default=None,
                        help="student: the default student's parameter "
                        "count; quarter: a quarter of the teacher's (default: "
                        "both; --quick: student)")
    parser.add_argument("--quick", action="store_true",
                        help="1 seed, 1 epoch, 500 signals, the student "
                        "budget: checks that the benchmark runs, measures "
                        "nothing")
    parser.add_argument("--json", default=None,
                        help="also write the per-seed results here (a new "
                        "file)")
    parser.add_argument("--tables-from", default=None, metavar="JSON",
                        help="print the tables of an earlier run's --json "
                        "file, without training")
    parser.add_argument("--output-dir", default=None,
                        help="where the .tflite files go (default: a new "
                        "temporary directory)")
    args, rest = parser.parse_known_args(argv)
    if args.part == "mnist1d" and rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.quick:
        for name, value in QUICK.items():
            setattr(args, name, value)
    if args.budgets is None:
        args.budgets = BUDGETS[:1] if args.quick else BUDGETS
    for name in ("seeds", "epochs", "teacher_epochs", "batch_size",
                 "latency_runs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, "
                         f"got {getattr(args, name)}")
    return args, rest


def main(argv=None):
    args, rest = parse(argv)
    result = {}
    if args.tables_from:
        return {"mnist1d": from_json(args.tables_from)}
    if args.part in ("mnist1d", "all"):
        result["mnist1d"] = mnist1d(args)
    if args.part in ("lm", "all"):
        lm_argv = rest + (["--quick"] if args.quick else [])
        result["lm"] = language_model(lm_argv)
    return result


if __name__ == "__main__":
    main()
