"""The ``keras-kd`` command's settings and option types, with argparse alone.

What the parser (:mod:`keras_kd.app.parser`) knows without importing Keras or
keras-kd's library: the defaults of ``run`` and ``search``, the names of the
objectives, models, quantization modes and data sets, written out
(``tests/test_launcher.py`` checks that they agree with keras-kd's own), and
the argparse types whose errors name the fix. Nothing here imports Keras, so
``keras-kd --help`` and a bad option answer at once.
"""

import argparse
import difflib
import math
import os

from keras_kd.app.dataset_names import TFDS_BUILDERS

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
# Objectives that set their own temperatures (Tf-KD's virtual teacher,
# MLKD's set of temperatures, CTKD's learned one): --temperature does not
# reach them.
OWN_TEMPERATURE = ("ctkd", "mlkd", "tfkd")
QUICK = dict(epochs=2, max_train=256, max_test=128, batch_size=32,
             latency_runs=5)
# The names of keras_kd.objectives.LOGIT_OBJECTIVES, written out so that
# --help needs no import of keras_kd (tests/test_launcher.py checks they agree).
OBJECTIVES = ("ctkd", "dist", "dkd", "forward_kl", "gkd", "hard", "kd", "ls",
              "mlkd", "reverse_kl", "skew_kl", "skew_reverse_kl", "tfkd")
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
    "prune": "leave it out", "prune_criterion": "leave it out",
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

# The built-in models of keras_kd.app.models.BUILTIN_MODELS and the
# keras.applications names it builds (keras_kd.app.models.APPLICATIONS, on a
# Keras that has them all), written out so that --teacher and --student are
# checked without importing Keras (tests/test_launcher.py checks they agree).
BUILTIN_MODELS = ("cnn", "small_cnn", "tiny_cnn", "mlp", "small_mlp")
APPLICATIONS = (
    "ConvNeXtBase", "ConvNeXtLarge", "ConvNeXtSmall", "ConvNeXtTiny",
    "ConvNeXtXLarge", "DenseNet121", "DenseNet169", "DenseNet201",
    "EfficientNetB0", "EfficientNetB1", "EfficientNetB2", "EfficientNetB3",
    "EfficientNetB4", "EfficientNetB5", "EfficientNetB6", "EfficientNetB7",
    "EfficientNetV2B0", "EfficientNetV2B1", "EfficientNetV2B2",
    "EfficientNetV2B3", "EfficientNetV2L", "EfficientNetV2M",
    "EfficientNetV2S", "InceptionResNetV2", "InceptionV3", "MobileNet",
    "MobileNetV2", "MobileNetV3Large", "MobileNetV3Small", "NASNetLarge",
    "NASNetMobile", "ResNet101", "ResNet101V2", "ResNet152", "ResNet152V2",
    "ResNet50", "ResNet50V2", "VGG16", "VGG19", "Xception")

# keras-kd run --prune: the names of keras_kd.pruning.importance.CRITERIA,
# written out for --help (tests/app/test_pruned_run.py checks they agree),
# and the default, the first-order Taylor criterion on labelled training
# examples (keras_kd.app.pruned says why).
PRUNE_CRITERIA = ("l1", "l2", "bn", "activation", "taylor")
PRUNE_CRITERION = "taylor"

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


# ----------------------------------------------------------------------
# Argument types: each error names the fix.
# ----------------------------------------------------------------------
def number(convert, accept, fix):
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


def in_unit_interval(value):
    """Whether ``0 <= value <= 1``."""
    return 0.0 <= value <= 1.0


alpha = number(float, in_unit_interval,
               "in [0, 1]; alpha weighs the hard-label loss (1 - alpha the "
               "distillation loss), e.g. --alpha 0.1")


def positive_float(name, example):
    return number(float, lambda v: v > 0 and math.isfinite(v),
                  f"a positive finite number; e.g. --{name} {example}")


# keras_kd.checks.check_temperature's range, written out so that the parser
# needs no import of keras_kd (tests/test_launcher.py checks they agree).
TEMPERATURE_RANGE = (0.01, 100.0)


def temperature(name, example):
    low, high = TEMPERATURE_RANGE
    return number(float, lambda v: low <= v <= high,
                  f"a temperature in [{low:g}, {high:g}] (below, T^2 underflows "
                  f"and the loss teaches nothing); e.g. --{name} {example}")


def positive_int(name, example):
    return number(int, lambda v: v >= 1,
                  f"a positive integer; e.g. --{name} {example}")


def fraction(name, example):
    return number(float, in_unit_interval,
                  f"in [0, 1]; e.g. --{name} {example}")


seed = number(int, lambda v: 0 <= v <= MAX_SEED,
              f"a seed: use an integer from 0 to {MAX_SEED}, e.g. --seed 0")


def output_dir(text):
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


def image_size(text):
    """``--image-size``: ``SIDE`` or ``HEIGHTxWIDTH`` -> ``(height, width)``.

    >>> image_size("32"), image_size("96x64")
    ((32, 32), (96, 64))
    """
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


def model_name(text):
    """``--teacher`` / ``--student``: a built-in model or a keras.applications
    name, matched without regard to case, from :data:`BUILTIN_MODELS` and
    :data:`APPLICATIONS` (no Keras import).

    >>> model_name("resnet50"), model_name("cnn")
    ('ResNet50', 'cnn')
    """
    names = BUILTIN_MODELS + APPLICATIONS
    lowered = {n.lower(): n for n in names}
    if text.lower() in lowered:
        return lowered[text.lower()]
    close = difflib.get_close_matches(text, names, n=3)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise argparse.ArgumentTypeError(
        f"Unknown model {text!r}.{hint} Choose a built-in model "
        f"({', '.join(BUILTIN_MODELS)}) or a keras.applications name "
        f"({', '.join(APPLICATIONS)}).")


def dataset_name(text):
    """``--dataset``: ``digits``, ``mnist1d`` or a tensorflow-datasets name.

    Checked against :data:`OFFLINE_DATASETS` and the written-out
    tensorflow-datasets names (:data:`~keras_kd.app.dataset_names.
    TFDS_BUILDERS`), without importing anything: a name close to a known one
    (``cifar11``) is refused with the close names. Only a name that is
    neither known nor close to a known one is asked of tensorflow-datasets
    itself (installed with ``pip install "keras-kd[data]"``).

    >>> dataset_name("cifar10")
    'cifar10'
    >>> dataset_name("cifar11")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: unknown dataset 'cifar11'. Did you mean: cifar10_1, cifar10, ...
    """
    known = OFFLINE_DATASETS + TFDS_BUILDERS
    if text in known:
        return text
    close = difflib.get_close_matches(text, known, n=5)
    if not close:
        from keras_kd.extras import require  # a rare name: ask tfds

        builders = require("tensorflow_datasets").list_builders()
        if text in builders:
            return text
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise argparse.ArgumentTypeError(
        f"unknown dataset {text!r}.{hint} Use 'digits' (bundled, offline), "
        "'mnist1d' (generated offline, 1-D signals) or "
        "a tensorflow-datasets image classification name such as cifar10, "
        "cifar100, mnist, fashion_mnist (all names: "
        "python -c 'import tensorflow_datasets as tfds; "
        "print(tfds.list_builders())').")


mnist1d_samples = number(
    int, lambda v: v >= 20 and v % 10 == 0,
    "a multiple of 10 (one tenth per digit) of at least 20; e.g. "
    "--mnist1d-samples 5000")


prune_share = number(
    float, lambda v: 0.0 < v < 1.0,
    "a share in (0, 1) of the teacher's parameters for the pruned student; "
    "e.g. --prune 0.25 (a quarter)")


def objective(text):
    """``--objective``: one of :data:`OBJECTIVES` (any case)."""
    if text.lower() in OBJECTIVES:
        return text.lower()
    raise argparse.ArgumentTypeError(
        f"unknown objective {text!r}; choose one of {', '.join(OBJECTIVES)}")


def run_name(text):
    """``--run-name``: one folder name under ``--output``.

    A name with a path separator, ``..`` or ``.`` would put the run outside
    ``--output`` (``--run-name ../../escaped``, ``--run-name /abs/path``):
    refused, naming the fix.

    >>> run_name("cifar-kd-1")
    'cifar-kd-1'
    >>> run_name("../escaped")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: '../escaped' is not a folder name: ...
    """
    separators = {os.sep, "/"} | ({os.altsep} if os.altsep else set())
    if (not text.strip() or text in (".", "..")
            or any(s in text for s in separators) or "\0" in text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a folder name: the run is written to "
            "OUTPUT/RUN_NAME, so give one name without '/' or '..' (e.g. "
            "--run-name cifar-kd-1) and choose the parent folder with "
            "--output")
    return text


def comma_list(parse_one, name, example):
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


def search_alpha(text):
    """``--alphas`` of ``keras-kd search``: an alpha below 1."""
    value = alpha(text)
    if value == 1.0:
        raise argparse.ArgumentTypeError(
            "alpha 1 is the student alone, which the search always includes "
            "as its baseline; list alphas below 1, e.g. --alphas 0.1,0.5")
    return value


# keras_kd.search runs the student alone and at least one distilled student.
max_trials = number(
    int, lambda v: v >= 2,
    "at least 2 (the student alone and one distilled setting); e.g. "
    "--max-trials 10")
