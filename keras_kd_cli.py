"""The ``keras-kd`` command's launcher: answers at once, then hands over.

The command is installed as ``keras-kd = "keras_kd_cli:main"``. This module
sits outside the ``keras_kd`` package on purpose: importing ``keras_kd`` imports
Keras (and TensorFlow on that backend), which takes seconds. Here the argument
parser is built with argparse alone, so ``keras-kd --help``,
``keras-kd run --help``, ``keras-kd --version`` and bad options answer without
importing Keras. Only a command that runs imports :mod:`keras_kd.app.cli`.

Before that import, TensorFlow's native (C++ and absl) log lines are silenced:
``TF_CPP_MIN_LOG_LEVEL=3``, ``GLOG_minloglevel=3`` and ``GRPC_VERBOSITY=ERROR``
unless already set, and the lines TensorFlow's libraries print while they load
(before their logging is set up: ``oneDNN custom operations are on``, ``Could
not find cuda drivers``) are left out of stderr. ``keras-kd --verbose COMMAND``
leaves all of it alone, and sets ``KERAS_KD_VERBOSE=1`` for the command (unless
set), which shows the lines of the export too (:mod:`keras_kd.export.native_logs`).

The argument types that need keras-kd itself (model names, dataset names)
import it when they run, which is after ``--help`` has answered.
"""

import argparse
import contextlib
import difflib
import math
import os
import re
import sys
import threading

PROG = "keras-kd"

# The offline default, chosen on measurements (docs/benchmarks.md, "keras-kd
# run"): MNIST-1D (5,000 generated signals, 1,000 for testing), a 126k-
# parameter 1-D CNN teacher, a 3.2k-parameter student, DIST at tau = 1, 20
# epochs. Over seeds 0-2 the distilled student gained +3.1 to +5.6 points,
# each beyond its 95% paired interval, in about 2 minutes on a 2-core CPU.
# On the digits (the former default) DIST gained 1-2 points over 30 epochs,
# from about a dozen of 450 test images (the interval's lower end near 0);
# KD at T=4 trails the student alone on both.
DEFAULTS = dict(dataset="mnist1d", teacher="cnn", student="small_cnn",
                objective="dist", alpha=0.1, temperature=None, epochs=20,
                batch_size=64, learning_rate=1e-3, quantize="float32",
                latency_runs=50)
# The papers' temperatures: DIST (Huang et al., 2022) tau=1; logit
# standardization (Sun et al., 2024) T=2; Hinton KD and DKD T=4.
USUAL_TEMPERATURE = {"dist": 1.0, "ls": 2.0}
DEFAULT_TEMPERATURE = 4.0
QUICK = dict(epochs=2, max_train=256, max_test=128, batch_size=32,
             latency_runs=5)
# The names of keras_kd.objectives.LOGIT_OBJECTIVES, written out so that
# --help needs no import of keras_kd (tests/test_launcher.py checks they agree).
OBJECTIVES = ("dist", "dkd", "forward_kl", "gkd", "hard", "kd", "ls",
              "reverse_kl", "skew_kl", "skew_reverse_kl")
QUANTIZE_MODES = ("float32", "float16", "dynamic", "int8")
# Datasets that need no download: scikit-learn's digits, MNIST-1D (generated
# by the mnist1d package).
OFFLINE_DATASETS = ("digits", "mnist1d")
# The seed feeds NumPy's generator, which takes 0 .. 2**32 - 1.
MAX_SEED = 2**32 - 1

# keras-kd run --task: image classification (the default) or the offline
# language-model run (keras_kd.app.causal_lm_run).
TASKS = ("image-classification", "causal-lm")
# The names of keras_kd.app.language_models.SIZES and of
# keras_kd.objectives.SEQUENCE_OBJECTIVES (the token-level objectives),
# written out for --help (tests/app/test_causal_lm_run.py checks they agree).
LM_SIZES = ("tiny", "student", "teacher", "large")
LM_OBJECTIVES = ("forward_kl", "gkd", "reverse_kl", "skew_kl",
                 "skew_reverse_kl")
# The options --task causal-lm reads, by default: examples/language_model.py's
# settings (AdamW, cosine decay to a peak learning rate of 3e-3, alpha 0.5,
# T=1; forward KL, which gained most in docs/benchmarks.md). A teacher of 600
# steps and students of 400 steps of 32 x 128 bytes.
LM_DEFAULTS = dict(lm_teacher="teacher", lm_student="student",
                   objective="forward_kl", alpha=0.5, temperature=1.0,
                   teacher_steps=600, steps=400, batch_size=32,
                   learning_rate=3e-3, sequence_length=128,
                   max_bytes=4_000_000)
LM_QUICK = dict(lm_teacher="tiny", lm_student="tiny", teacher_steps=30,
                steps=20, batch_size=8, sequence_length=32, max_bytes=60_000,
                latency_runs=5)
# Options whose default depends on --task (None in the parser, filled by
# apply_task_defaults from DEFAULTS or LM_DEFAULTS).
TASK_DEFAULTED = ("objective", "alpha", "batch_size", "learning_rate")
# The options of one task only: (the other task's way to say it).
IMAGE_ONLY = {
    "dataset": "the language model trains on the Python standard library's "
    "source (offline); size it with --max-bytes",
    "teacher": "choose the language model sizes with --lm-teacher and "
    "--lm-student (" + ", ".join(LM_SIZES) + ")",
    "student": "choose the language model sizes with --lm-teacher and "
    "--lm-student (" + ", ".join(LM_SIZES) + ")",
    "epochs": "count language model training in steps: --steps",
    "teacher_epochs": "count language model training in steps: "
    "--teacher-steps",
    "max_train": "size the text with --max-bytes",
    "max_test": "size the text with --max-bytes",
    "image_size": "leave it out", "weights": "leave it out",
    "teacher_finetune": "leave it out", "finetune_epochs": "leave it out",
    "finetune_lr_factor": "leave it out", "calibrate": "leave it out",
    "mnist1d_samples": "leave it out", "qat": "leave it out",
}
LM_ONLY = {
    "lm_teacher": "for images use --teacher", "lm_student":
    "for images use --student", "steps": "for images use --epochs",
    "teacher_steps": "for images use --teacher-epochs",
    "sequence_length": "leave it out", "max_bytes":
    "for images use --max-train", "on_policy": "leave it out",
}

# What TensorFlow's libraries print while they load, before absl's logging is
# initialised (TF_CPP_MIN_LOG_LEVEL does not reach those): absl/glog lines
# ("I0000 00:00:17.. 123 port.cc:153] ...") of severity I, W or E, the older
# TensorFlow format ("2025-01-01 10:00:00.1: I tensorflow/...] ..."), absl's
# header and cpu_feature_guard's second line. Fatal (F) lines are kept.
_NATIVE_LOG_LINE = re.compile(
    rb"^(WARNING: All log messages before absl::InitializeLog\(\) is called"
    rb"|[IWE]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ \S+:\d+\] "
    rb"|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWE] \S+:\d+\] "
    rb"|To enable the following instructions: )")
# Set (when the user has not) before TensorFlow is imported, unless --verbose.
QUIET_ENVIRONMENT = {"TF_CPP_MIN_LOG_LEVEL": "3", "GLOG_minloglevel": "3",
                     "GRPC_VERBOSITY": "ERROR"}


# ----------------------------------------------------------------------
# Argument types: each error names the fix.
# ----------------------------------------------------------------------
def _number(convert, accept, fix):
    """An argparse type: ``convert(text)`` when ``accept`` holds for it,
    else an error ``'<text>' is not <fix>``."""
    def parse(text):
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not accept(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not {fix}")
        return value
    return parse


def _in_unit_interval(value):
    return 0.0 <= value <= 1.0


_alpha = _number(float, _in_unit_interval,
                 "in [0, 1]; alpha weighs the hard-label loss (1 - alpha the "
                 "distillation loss), e.g. --alpha 0.1")


def _positive_float(name, example):
    return _number(float, lambda v: v > 0 and math.isfinite(v),
                   f"a positive finite number; e.g. --{name} {example}")


def _positive_int(name, example):
    return _number(int, lambda v: v >= 1,
                   f"a positive integer; e.g. --{name} {example}")


def _fraction(name, example):
    return _number(float, _in_unit_interval,
                   f"in [0, 1]; e.g. --{name} {example}")


_seed = _number(int, lambda v: 0 <= v <= MAX_SEED,
                f"a seed: use an integer from 0 to {MAX_SEED}, e.g. --seed 0")


def _add_size_and_output_options(p, default_name, quick):
    """The data-size, output, seed and --quick options of run and search."""
    p.add_argument("--max-train", type=_positive_int("max-train", 5000),
                   default=None, help="use at most this many training examples")
    p.add_argument("--max-test", type=_positive_int("max-test", 1000),
                   default=None,
                   help="use at most this many validation and test examples")
    p.add_argument("--output", type=_output_dir, default="saved_models",
                   help="directory under which the run directory is made")
    p.add_argument("--run-name", default=None,
                   help=f"name of the run directory (default: {default_name})")
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--quick", "--smoke", dest="quick", action="store_true",
                   help="smoke-test size: %s" % ", ".join(
                       f"{k}={v}" for k, v in quick.items()))


def _output_dir(text):
    """``--output``: a directory this user can create or write into."""
    path = os.path.abspath(os.path.expanduser(text))
    if os.path.exists(path) and not os.path.isdir(path):
        raise argparse.ArgumentTypeError(
            f"{text!r} is a file, not a directory; the run directory is made "
            "under --output: pass a directory, e.g. --output saved_models")
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise argparse.ArgumentTypeError(
            f"{existing!r} is a file, so {text!r} cannot be made; pass a "
            "directory, e.g. --output saved_models")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(
            f"{existing!r} is not writable, so nothing can be saved under "
            f"{text!r}; pass a directory you can write to, e.g. "
            "--output ~/keras-kd-runs")
    return text


def _image_size(text):
    parts = text.lower().replace(",", "x").split("x")
    try:
        size = tuple(int(p) for p in parts)
    except ValueError:
        size = ()
    if len(size) == 1:
        size = size * 2
    if len(size) != 2 or min(size) < 1:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an image size; use one side (--image-size 32) "
            "or HEIGHTxWIDTH (--image-size 96x96)")
    return size


def _model_name(text):
    from keras_kd.app import models  # imports Keras: after --help answered

    try:
        return models.resolve_name(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _dataset_name(text):
    if text in OFFLINE_DATASETS:
        return text
    from keras_kd.extras import require

    tfds = require("tensorflow_datasets")

    builders = tfds.list_builders()
    if text in builders:
        return text
    close = difflib.get_close_matches(
        text, builders + list(OFFLINE_DATASETS), n=5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise argparse.ArgumentTypeError(
        f"unknown dataset {text!r}.{hint} Use 'digits' (bundled, offline), "
        "'mnist1d' (generated offline, 1-D signals) or "
        "a tensorflow-datasets image classification name such as cifar10, "
        "cifar100, mnist, fashion_mnist (all names: "
        "python -c 'import tensorflow_datasets as tfds; "
        "print(tfds.list_builders())').")


_mnist1d_samples = _number(
    int, lambda v: v >= 20 and v % 10 == 0,
    "a multiple of 10 (one tenth per digit) of at least 20; e.g. "
    "--mnist1d-samples 5000")


def _objective(text):
    if text.lower() in OBJECTIVES:
        return text.lower()
    raise argparse.ArgumentTypeError(
        f"unknown objective {text!r}; choose one of {', '.join(OBJECTIVES)}")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except ``None`` ones (their help says what they mean)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


# ----------------------------------------------------------------------
# The parser
# ----------------------------------------------------------------------
def add_run_parser(subparsers):
    """Registers ``keras-kd run`` on an argparse ``subparsers`` object.

    Example:

    >>> parser = argparse.ArgumentParser(prog="keras-kd")
    >>> run = add_run_parser(parser.add_subparsers(dest="command"))
    >>> parser.parse_args(["run", "--seed", "3", "--epochs", "5"]).epochs
    5
    """
    p = subparsers.add_parser(
        "run", help="train teacher, student alone and distilled student; "
        "export; report",
        description="Train a teacher, the student alone and the distilled "
        "student, export the distilled student to TFLite, and write a report "
        "(table, report.json, report.md, plots) under OUTPUT/RUN_NAME/. "
        "Defaults run offline on MNIST-1D (generated by the mnist1d "
        "package).",
        formatter_class=_HelpFormatter)
    d = DEFAULTS
    p.add_argument("--dataset", type=_dataset_name, default=d["dataset"],
                   help="'mnist1d' (MNIST-1D, generated offline: 40-point "
                   "signals, 1-D CNNs; the default), 'digits' (bundled, "
                   "offline) or a tensorflow-datasets name: cifar10, "
                   "fashion_mnist, mnist, ...")
    p.add_argument("--mnist1d-samples", type=_mnist1d_samples, default=None,
                   metavar="N",
                   help="--dataset mnist1d: generate N signals, a multiple "
                   "of 10 (one tenth per digit), 80%% for training "
                   "(default: the package's 5000)")
    p.add_argument("--teacher", type=_model_name, default=d["teacher"],
                   help="built-in (cnn, small_cnn, tiny_cnn, mlp, small_mlp) "
                   "or keras.applications name (ResNet50, MobileNetV2, ...)")
    p.add_argument("--student", type=_model_name, default=d["student"],
                   help="same choices as --teacher")
    p.add_argument("--image-size", type=_image_size, default=None,
                   help="resize images to SIDE or HxW (keras.applications "
                   "models need at least 32)")
    p.add_argument("--weights", choices=("auto", "none", "imagenet"),
                   default="auto",
                   help="initial weights of keras.applications models: "
                   "imagenet, none (random), or auto (imagenet when the "
                   "weights are cached or downloadable, else none)")
    p.add_argument("--teacher-finetune", action="store_true",
                   help="transfer learning for the teacher: train the head on "
                   "a frozen backbone for --epochs, then fine-tune everything "
                   "for --finetune-epochs at learning rate x "
                   "--finetune-lr-factor")
    p.add_argument("--finetune-epochs", type=_positive_int(
        "finetune-epochs", 5), default=None,
        help="fine-tuning epochs (default: half of --epochs, at least 1)")
    p.add_argument("--finetune-lr-factor", type=_positive_float(
        "finetune-lr-factor", 0.1), default=0.1)
    lm = LM_DEFAULTS
    p.add_argument("--objective", type=_objective, default=None,
                   help="logit distillation objective: one of "
                   + ", ".join(OBJECTIVES) + f" (default: {d['objective']}; "
                   f"{lm['objective']} for --task causal-lm, which takes "
                   "the token-level ones: " + ", ".join(LM_OBJECTIVES) + ")")
    p.add_argument("--alpha", type=_alpha, default=None,
                   help="weight of the hard-label loss; 1 - alpha on the "
                   f"distillation loss (default: {d['alpha']}; "
                   f"{lm['alpha']} for --task causal-lm)")
    p.add_argument("--temperature", type=_positive_float("temperature", 4),
                   default=d["temperature"],
                   help="softening temperature (default: the objective's "
                   "usual value, " + ", ".join(
                       f"{k} {v:g}" for k, v in USUAL_TEMPERATURE.items())
                   + f", {DEFAULT_TEMPERATURE:g} for the others; "
                   f"{lm['temperature']:g} for --task causal-lm)")
    p.add_argument("--epochs", type=_positive_int("epochs", 20),
                   default=d["epochs"],
                   help="epochs for each of teacher, student, distilled student")
    p.add_argument("--teacher-epochs", type=_positive_int("teacher-epochs", 20),
                   default=None, help="teacher epochs (default: --epochs)")
    p.add_argument("--batch-size", type=_positive_int("batch-size", 64),
                   default=None, help=f"default: {d['batch_size']}; "
                   f"{lm['batch_size']} sequences for --task causal-lm")
    p.add_argument("--learning-rate", type=_positive_float(
        "learning-rate", "1e-3"), default=None,
        help=f"Adam's (default: {d['learning_rate']:g}); for --task "
        "causal-lm the peak of AdamW's warm-up and cosine decay (default: "
        f"{lm['learning_rate']:g})")
    p.add_argument("--quantize", choices=QUANTIZE_MODES,
                   default=d["quantize"],
                   help="TFLite quantization of the exported student")
    p.add_argument("--latency-runs", type=_positive_int("latency-runs", 50),
                   default=d["latency_runs"])
    _add_size_and_output_options(p, "DATASET-TEACHER-STUDENT-TIMESTAMP",
                                 QUICK)
    p.add_argument("--no-export", action="store_true",
                   help="skip the TFLite export")
    p.add_argument("--qat", action="store_true",
                   help="with --quantize int8: also fine-tune the distilled "
                   "student quantization-aware, on the labels (QAT) and from "
                   "the teacher (QAD), and report each int8 file next to the "
                   "post-training int8 one")
    p.add_argument("--calibrate", action="store_true",
                   help="fold the temperature fitted on the validation split "
                   "into the exported student: calibrated probabilities, the "
                   "same predictions (keras_kd.calibration)")
    p.add_argument("--verbose", type=int, choices=(0, 1, 2), default=2,
                   help="Keras fit verbosity (2: one line per epoch); for "
                   "TensorFlow's own log lines use keras-kd --verbose run")
    p.add_argument("--task", choices=TASKS, default=TASKS[0],
                   help="causal-lm: distil a GPT-2-style byte-level language "
                   "model on the Python standard library's source (offline) "
                   "and report bits per byte, greedy agreement with the "
                   "teacher and sample text; its options are below")
    g = p.add_argument_group(
        "language models (--task causal-lm)",
        "--quick: " + ", ".join(f"{k}={v}" for k, v in LM_QUICK.items()))
    g.add_argument("--lm-teacher", choices=LM_SIZES, default=None,
                   help=f"teacher size (default: {lm['lm_teacher']})")
    g.add_argument("--lm-student", choices=LM_SIZES, default=None,
                   help=f"student size (default: {lm['lm_student']})")
    g.add_argument("--teacher-steps", type=_positive_int("teacher-steps", 600),
                   default=None, help="training steps of the teacher "
                   f"(default: {lm['teacher_steps']})")
    g.add_argument("--steps", type=_positive_int("steps", 400), default=None,
                   help="training steps of each student (default: "
                   f"{lm['steps']})")
    g.add_argument("--sequence-length", type=_positive_int(
        "sequence-length", 128), default=None,
        help=f"bytes per window (default: {lm['sequence_length']})")
    g.add_argument("--max-bytes", type=_positive_int("max-bytes", 4000000),
                   default=None, help="bytes of source read, 10%% of them "
                   f"held out by file (default: {lm['max_bytes']})")
    g.add_argument("--on-policy", type=_fraction("on-policy", 0.5),
                   default=None, metavar="LAMBDA",
                   help="distil on-policy (kd.OnPolicy): this share of the "
                   "sequences continued by the student from their first half")
    return p


def add_export_arguments(parser):
    """Adds the options of ``keras-kd export`` to an argparse ``parser``.

    Example:

    >>> parser = add_export_arguments(argparse.ArgumentParser())
    >>> parser.parse_args(["m.keras", "-q", "int8"]).quantize
    ['int8']
    """
    parser.add_argument(
        "model", help="a .keras file: a student (a classifier, or a "
        "language model as keras-kd run --task causal-lm saves it), or a "
        "Distiller (its student is exported)")
    parser.add_argument(
        "--output", "-o", default=None,
        help="the .tflite file; with several --quantize modes, '_<mode>' is "
        "added before '.tflite' (a path without '.tflite' is a directory). "
        "Default: beside the model, <name>_<mode>.tflite")
    parser.add_argument(
        "--quantize", "-q", action="append", default=None,
        help="float32, float16, dynamic, int8 (repeatable or a comma list; "
        "default float32)")
    parser.add_argument(
        "--representative-data", default=None,
        help="a data set keras-kd run knows (mnist1d, digits: offline; or a "
        "tensorflow-datasets name), its training inputs, or an .npz file "
        "(array 'x', 'x_train' or its first array) or .npy file of inputs; "
        "required for int8, except for a quantization-aware model (exported "
        "from its learned ranges)")
    parser.add_argument(
        "--eval-data", default=None,
        help="a data set name as for --representative-data (its test split) "
        "or an .npz file with 'x' and 'y' arrays: reports the accuracy "
        "change")
    parser.add_argument(
        "--sequence-length", type=_positive_int("sequence-length", 128),
        default=None,
        help="a language model (called on token_ids and padding_mask, as "
        "keras-kd run --task causal-lm saves): the file's fixed sequence "
        "length (default: the model's max_sequence_length)")
    parser.add_argument("--allow-flex", action="store_true",
                        help="accept TensorFlow (Flex) ops in the file")
    parser.add_argument("--latency-runs", type=int, default=50,
                        help="batch-1 invocations timed (default 50)")
    return parser


def add_export_parser(subparsers):
    """Registers ``keras-kd export`` on an argparse ``subparsers`` object."""
    parser = subparsers.add_parser(
        "export", help="export a trained student to TFLite",
        description="Export a .keras student (or a Distiller's student) to "
        "TFLite at one or more precisions, verified against the Keras model.")
    return add_export_arguments(parser)


# ----------------------------------------------------------------------
# keras-kd search
# ----------------------------------------------------------------------
# The grid of `keras-kd search` (keras_kd.search's defaults): the
# temperatures hold each objective's usual value (DIST 1, LS 2, KD and DKD 4).
# It searches on the digits (3x fewer training examples than keras-kd run's
# MNIST-1D default: a shorter search); --dataset mnist1d searches there.
SEARCH_DEFAULTS = dict(dataset="digits",
                       objectives=("kd", "dist", "dkd", "ls"),
                       temperatures=(1.0, 2.0, 4.0), alphas=(0.1, 0.5),
                       epochs=10, teacher_epochs=30, batch_size=64,
                       learning_rate=1e-3)
SEARCH_QUICK = dict(epochs=2, teacher_epochs=2, max_train=256, max_test=128,
                    batch_size=32, max_trials=3)


def _comma_list(parse_one, name, example):
    """A comma-separated list of ``parse_one`` values, each once."""
    def parse(text):
        values = [parse_one(part.strip()) for part in text.split(",")
                  if part.strip()]
        if not values or len(set(values)) != len(values):
            raise argparse.ArgumentTypeError(
                f"{text!r}: give distinct values separated by commas, e.g. "
                f"--{name} {example}")
        return tuple(values)
    return parse


def _search_alpha(text):
    value = _alpha(text)
    if value == 1.0:
        raise argparse.ArgumentTypeError(
            "alpha 1 is the student alone, which the search always includes "
            "as its baseline; list alphas below 1, e.g. --alphas 0.1,0.5")
    return value


def add_search_parser(subparsers):
    """Registers ``keras-kd search`` on an argparse ``subparsers`` object.

    Example:

    >>> parser = argparse.ArgumentParser(prog="keras-kd")
    >>> _ = add_search_parser(parser.add_subparsers(dest="command"))
    >>> parser.parse_args(["search", "--objectives", "kd,dist"]).objectives
    ('kd', 'dist')
    """
    p = subparsers.add_parser(
        "search", help="rank objectives, temperatures and alphas for a "
        "teacher-student pair (keras-tuner)",
        description="Train the teacher once, then a fresh student for each "
        "objective x temperature x alpha and the student alone "
        "(keras_kd.search, keras-tuner); print the ranking by validation "
        "accuracy and write OUTPUT/RUN_NAME/search.json. Needs "
        'pip install "keras-kd[search]".',
        formatter_class=_HelpFormatter)
    d = SEARCH_DEFAULTS
    p.add_argument("--dataset", type=_dataset_name, default=d["dataset"],
                   help="as for keras-kd run (default: digits)")
    p.add_argument("--teacher", type=_model_name, default=DEFAULTS["teacher"],
                   help="as for keras-kd run")
    p.add_argument("--student", type=_model_name, default=DEFAULTS["student"],
                   help="as for keras-kd run")
    p.add_argument("--image-size", type=_image_size, default=None,
                   help="as for keras-kd run")
    p.add_argument("--weights", choices=("auto", "none", "imagenet"),
                   default="auto", help="as for keras-kd run")
    p.add_argument("--objectives", type=_comma_list(
        _objective, "objectives", "kd,dist"), default=d["objectives"],
        help="comma-separated objectives: " + ", ".join(OBJECTIVES))
    p.add_argument("--temperatures", type=_comma_list(
        _positive_float("temperatures", "1,4"), "temperatures", "1,2,4"),
        default=d["temperatures"],
        help="comma-separated temperatures, tried with every objective but "
        "hard")
    p.add_argument("--alphas", type=_comma_list(
        _search_alpha, "alphas", "0.1,0.5"), default=d["alphas"],
        help="comma-separated hard-label weights below 1 (the student alone, "
        "alpha 1, is always a row)")
    p.add_argument("--max-trials", type=_positive_int("max-trials", 10),
                   default=None,
                   help="at most this many trials, drawn at random, the "
                   "student alone first (default: the whole grid)")
    p.add_argument("--epochs", type=_positive_int("epochs", 10),
                   default=d["epochs"], help="epochs of each trial")
    p.add_argument("--teacher-epochs", type=_positive_int(
        "teacher-epochs", 30), default=d["teacher_epochs"])
    p.add_argument("--batch-size", type=_positive_int("batch-size", 64),
                   default=d["batch_size"])
    p.add_argument("--learning-rate", type=_positive_float(
        "learning-rate", "1e-3"), default=d["learning_rate"])
    _add_size_and_output_options(
        p, "DATASET-TEACHER-STUDENT-search-TIMESTAMP", SEARCH_QUICK)
    p.add_argument("--verbose", type=int, choices=(0, 1, 2), default=0,
                   help="Keras fit verbosity of the teacher and the trials")
    # What keras-kd run's teacher training reads and search does not offer.
    p.set_defaults(teacher_finetune=False, finetune_epochs=None,
                   finetune_lr_factor=0.1)
    return p


def build_parser(run_defaults=None):
    """The ``keras-kd`` argument parser (subcommands ``run``, ``export``,
    ``search``); ``run_defaults`` replaces defaults of ``run`` options.

    Pure argparse: building it, and ``--help``, import neither Keras nor
    keras_kd.

    Example:

    >>> build_parser().parse_args(["--verbose", "export", "m.keras"]).command
    'export'
    """
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Knowledge distillation for Keras 3: train a student "
        "from a teacher and ship it to TFLite.")
    parser.add_argument("--version", action="version",
                        version=f"%(prog)s {version()}")
    parser.add_argument("--verbose", "-v", dest="native_logs",
                        action="store_true",
                        help="show TensorFlow's native log lines (C++, absl), "
                        "silenced by default; goes before the command")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_run_parser(subparsers).set_defaults(**(run_defaults or {}))
    add_export_parser(subparsers)
    add_search_parser(subparsers)
    return parser


# ----------------------------------------------------------------------
# keras-kd run --task: the options of each task
# ----------------------------------------------------------------------
def _flag(dest):
    return "--" + dest.replace("_", "-")


def given_run_options(argv):
    """The image-task options (:data:`IMAGE_ONLY`) that ``argv`` sets
    itself, even to their default value.

    >>> sorted(given_run_options(["run", "--dataset", "mnist1d", "--seed", "1"]))
    ['dataset']
    """
    unset = object()
    args = build_parser(dict.fromkeys(IMAGE_ONLY, unset)).parse_args(argv)
    return {dest for dest in IMAGE_ONLY if getattr(args, dest) is not unset}


def run_option_error(args):
    """The one-line error of ``keras-kd run`` options that do not go with
    ``--task``, naming the fix; None when they go together.

    Image options count as given when ``args.given_options`` (set by
    :func:`main` from :func:`given_run_options`) names them, else when they
    differ from their default.

    Example:

    >>> args = build_parser().parse_args(
    ...     ["run", "--task", "causal-lm", "--epochs", "3"])
    >>> run_option_error(args)
    '--epochs applies to image classification, not --task causal-lm: count language model training in steps: --steps'
    """
    defaults = add_run_parser(argparse.ArgumentParser().add_subparsers())
    given = getattr(args, "given_options", None)
    if args.task == "causal-lm":
        for dest, fix in IMAGE_ONLY.items():
            if (dest in given if given is not None
                    else getattr(args, dest) != defaults.get_default(dest)):
                return (f"{_flag(dest)} applies to image classification, not "
                        f"--task causal-lm: {fix}")
        if args.quantize == "int8":
            return ("--quantize int8 is not offered for --task causal-lm: use "
                    "--quantize dynamic (int8 weights, float activations), "
                    "float16 or float32")
        if args.objective is not None and args.objective not in LM_OBJECTIVES:
            return (f"--objective {args.objective} is not a token-level "
                    "objective; --task causal-lm takes one of "
                    + ", ".join(LM_OBJECTIVES))
        if args.sequence_length is not None and args.sequence_length < 4:
            return (f"--sequence-length {args.sequence_length} is too short "
                    "for a prompt and its continuation; e.g. "
                    "--sequence-length 128")
        return None
    for dest, fix in LM_ONLY.items():
        if getattr(args, dest) is not None:
            return (f"{_flag(dest)} applies to --task causal-lm: add --task "
                    f"causal-lm, or {fix}")
    if args.qat and (args.quantize != "int8" or args.no_export):
        return ("--qat compares quantization-aware students with the "
                "post-training int8 export: add --quantize int8 (and leave "
                "out --no-export)")
    if args.mnist1d_samples is not None and args.dataset != "mnist1d":
        return (f"--mnist1d-samples sizes the generated MNIST-1D, not "
                f"--dataset {args.dataset}: add --dataset mnist1d, or size "
                "the data with --max-train and --max-test")
    return None


def check_run_options(args):
    """Stops ``keras-kd run`` (exit status 2, one line on stderr) when
    :func:`run_option_error` finds options that do not go with ``--task``."""
    if getattr(args, "command", None) != "run":
        return
    message = run_option_error(args)
    if message:
        sys.stderr.write(f"{PROG} run: error: {message}\n")
        raise SystemExit(2)


def apply_task_defaults(args):
    """Fills the options left at None whose default depends on ``--task``
    (:data:`TASK_DEFAULTED`, and for causal-lm the options of
    :data:`LM_DEFAULTS`); returns ``args``.

    >>> args = build_parser().parse_args(["run", "--task", "causal-lm"])
    >>> apply_task_defaults(args).objective, args.batch_size, args.steps
    ('forward_kl', 32, 400)
    """
    if args.task != "causal-lm":
        return _fill(args, {name: DEFAULTS[name] for name in TASK_DEFAULTED})
    if args.quick:  # smaller sizes; options given explicitly still win
        if args.latency_runs == DEFAULTS["latency_runs"]:
            args.latency_runs = LM_QUICK["latency_runs"]
        _fill(args, LM_QUICK)
    return _fill(args, LM_DEFAULTS)


def _fill(args, values):
    for name, value in values.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


# ----------------------------------------------------------------------
# Version, logs, main
# ----------------------------------------------------------------------
def version():
    """keras-kd's version, read without importing keras_kd.

    From the installed distribution's metadata; from ``keras_kd/__init__.py``
    when it is not installed (a source tree on ``sys.path``).

    >>> version().count(".") >= 1
    True
    """
    from importlib import metadata, util

    try:
        return metadata.version("keras-kd")
    except metadata.PackageNotFoundError:
        pass
    spec = util.find_spec("keras_kd")
    if spec is not None and spec.origin:
        with open(spec.origin, encoding="utf-8") as f:
            found = re.search(r'^__version__ = "([^"]+)"', f.read(), re.M)
        if found:
            return found.group(1)
    return "unknown"


def _native_logs_wanted(argv):
    """Whether ``--verbose``/``-v`` comes before the command in ``argv``."""
    for token in argv:
        if token in ("--verbose", "-v"):
            return True
        if not token.startswith("-"):
            return False
    return False


def quiet_native_logs(environ=None):
    """Sets :data:`QUIET_ENVIRONMENT`'s variables that are not set yet.

    Must run before TensorFlow is imported; returns the names it set.

    >>> env = {"TF_CPP_MIN_LOG_LEVEL": "1"}
    >>> quiet_native_logs(env), env["TF_CPP_MIN_LOG_LEVEL"]
    (['GLOG_minloglevel', 'GRPC_VERBOSITY'], '1')
    """
    environ = os.environ if environ is None else environ
    added = [name for name in QUIET_ENVIRONMENT if name not in environ]
    for name in added:
        environ[name] = QUIET_ENVIRONMENT[name]
    return added


@contextlib.contextmanager
def without_native_log_lines():
    """Leaves TensorFlow's load-time native log lines out of stderr.

    While the block runs, file descriptor 2 goes through a pipe; a thread
    passes on every line but those :data:`_NATIVE_LOG_LINE` matches (Python's
    own warnings and errors go through).
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no usable stderr
        yield
        return
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    out_fd = os.dup(saved)  # the thread's own: `saved` closes on the way out

    def forward():
        with os.fdopen(read_end, "rb") as pipe, \
                os.fdopen(out_fd, "wb", buffering=0) as out:
            for line in pipe:
                if not _NATIVE_LOG_LINE.match(line):
                    out.write(line)

    thread = threading.Thread(target=forward, name="keras-kd-stderr",
                              daemon=True)
    thread.start()
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os.dup2(saved, 2)  # the pipe's last write end closes: the thread ends
        os.close(saved)
        thread.join(timeout=10)


def _import_tensorflow_if_installed():
    """Both commands use TensorFlow (tf.data, the TFLite converter) when it is
    installed: importing it here, inside :func:`without_native_log_lines`,
    keeps its load-time lines out on every backend."""
    from importlib import util

    if util.find_spec("tensorflow") is not None:
        import tensorflow  # noqa: F401


def main(argv=None):
    """Entry point of the ``keras-kd`` command; returns the exit status.

    ``--help``, ``--version``, no command and bad options answer from the
    parser alone; a command imports :mod:`keras_kd.app.cli` and runs there.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    verbose = _native_logs_wanted(argv)
    if not verbose:
        quiet_native_logs()
    quiet = contextlib.nullcontext() if verbose else without_native_log_lines()
    with quiet:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        if args.command == "run":
            args.given_options = given_run_options(argv)
        check_run_options(args)
        _import_tensorflow_if_installed()
        from keras_kd.app import cli
    # --verbose shows the library's hidden lines too (the export's).
    show = verbose and "KERAS_KD_VERBOSE" not in os.environ
    if show:
        os.environ["KERAS_KD_VERBOSE"] = "1"
    try:
        return cli.execute(args)
    finally:
        if show:
            os.environ.pop("KERAS_KD_VERBOSE", None)


if __name__ == "__main__":
    sys.exit(main())
