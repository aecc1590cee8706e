"""The ``keras-kd`` command.

``keras-kd run`` trains a teacher, the same student alone and the student
distilled from the teacher, exports the distilled student to TFLite and writes
a report (table, JSON, Markdown, plots) under ``saved_models/<run>/``. With no
options it runs offline on the bundled digits (8×8 images) in a few minutes on
a laptop CPU; ``--quick`` runs a smoke-sized version in seconds.

``keras-kd export`` converts a saved ``.keras`` model to TFLite.

Examples::

    keras-kd run                       # offline default: digits, cnn -> small_cnn, DIST
    keras-kd run --quick               # a few seconds, for tests
    keras-kd run --dataset cifar10 --teacher ResNet50 --student MobileNetV2 \\
        --image-size 96 --weights imagenet --teacher-finetune --epochs 10 \\
        --objective kd
"""

import argparse
import datetime
import difflib
import math
import os
import sys
import time

# DIST by default: on the digits, with a 224k-parameter teacher and a
# 5k-parameter student, KD at T=4 trails the student alone after 30 epochs
# (-0.7 points on average over 3 seeds) while DIST, made for a large
# teacher-student gap, gains 1.1-1.8 points (docs/cli.md).
DEFAULTS = dict(dataset="digits", teacher="cnn", student="small_cnn",
                objective="dist", alpha=0.1, temperature=None, epochs=30,
                batch_size=64, learning_rate=1e-3, quantize="float32",
                latency_runs=50)
# The papers' temperatures: DIST (Huang et al., 2022) tau=1; logit
# standardization (Sun et al., 2024) T=2; Hinton KD and DKD T=4.
USUAL_TEMPERATURE = {"dist": 1.0, "ls": 2.0}
DEFAULT_TEMPERATURE = 4.0
QUICK = dict(epochs=2, max_train=256, max_test=128, batch_size=32,
             latency_runs=5)


def _stage(message):
    stamp = datetime.datetime.now().strftime("%H:%M:%S")
    print(f"[keras-kd {stamp}] {message}", flush=True)


# ----------------------------------------------------------------------
# Argument types: each error names the fix.
# ----------------------------------------------------------------------
def _alpha(text):
    from keras_kd.checks import check_alpha

    try:
        return check_alpha(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not in [0, 1]; alpha weighs the hard-label loss "
            "(1 - alpha the distillation loss), e.g. --alpha 0.1") from None


def _positive_float(name, example):
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            value = None
        if value is None or not (value > 0 and math.isfinite(value)):
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a positive finite number; e.g. --{name} "
                f"{example}")
        return value
    return parse


def _positive_int(name, example):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < 1:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a positive integer; e.g. --{name} {example}")
        return value
    return parse


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
    from keras_kd.app import models

    try:
        return models.resolve_name(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _dataset_name(text):
    if text == "digits":
        return text
    from keras_kd.extras import require

    tfds = require("tensorflow_datasets")

    builders = tfds.list_builders()
    if text in builders:
        return text
    close = difflib.get_close_matches(text, builders + ["digits"], n=5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise argparse.ArgumentTypeError(
        f"unknown dataset {text!r}.{hint} Use 'digits' (bundled, offline) or "
        "a tensorflow-datasets image classification name such as cifar10, "
        "cifar100, mnist, fashion_mnist (all names: "
        "python -c 'import tensorflow_datasets as tfds; "
        "print(tfds.list_builders())').")


def _objective_names():
    from keras_kd import objectives

    return sorted(objectives.LOGIT_OBJECTIVES)


def _objective(text):
    names = _objective_names()
    if text.lower() in names:
        return text.lower()
    raise argparse.ArgumentTypeError(
        f"unknown objective {text!r}; choose one of {', '.join(names)}")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except ``None`` ones (their help says what they mean)."""

    def _get_help_string(self, action):
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def add_run_parser(subparsers):
    """Registers ``keras-kd run`` on an argparse ``subparsers`` object."""
    p = subparsers.add_parser(
        "run", help="train teacher, student alone and distilled student; "
        "export; report",
        description="Train a teacher, the student alone and the distilled "
        "student, export the distilled student to TFLite, and write a report "
        "(table, report.json, report.md, plots) under OUTPUT/RUN_NAME/. "
        "Defaults run offline on the bundled digits.",
        formatter_class=_HelpFormatter)
    d = DEFAULTS
    p.add_argument("--dataset", type=_dataset_name, default=d["dataset"],
                   help="'digits' (bundled, offline) or a tensorflow-datasets "
                   "name: cifar10, fashion_mnist, mnist, ...")
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
    p.add_argument("--objective", type=_objective, default=d["objective"],
                   help="logit distillation objective: one of "
                   + ", ".join(_objective_names()))
    p.add_argument("--alpha", type=_alpha, default=d["alpha"],
                   help="weight of the hard-label loss; 1 - alpha on the "
                   "distillation loss")
    p.add_argument("--temperature", type=_positive_float("temperature", 4),
                   default=d["temperature"],
                   help="softening temperature (default: the objective's "
                   "usual value, " + ", ".join(
                       f"{k} {v:g}" for k, v in USUAL_TEMPERATURE.items())
                   + f", {DEFAULT_TEMPERATURE:g} for the others)")
    p.add_argument("--epochs", type=_positive_int("epochs", 20),
                   default=d["epochs"],
                   help="epochs for each of teacher, student, distilled student")
    p.add_argument("--teacher-epochs", type=_positive_int("teacher-epochs", 20),
                   default=None, help="teacher epochs (default: --epochs)")
    p.add_argument("--batch-size", type=_positive_int("batch-size", 64),
                   default=d["batch_size"])
    p.add_argument("--learning-rate", type=_positive_float(
        "learning-rate", "1e-3"), default=d["learning_rate"])
    p.add_argument("--quantize", choices=("float32", "float16", "dynamic",
                                          "int8"), default=d["quantize"],
                   help="TFLite quantization of the exported student")
    p.add_argument("--max-train", type=_positive_int("max-train", 5000),
                   default=None, help="use at most this many training examples")
    p.add_argument("--max-test", type=_positive_int("max-test", 1000),
                   default=None,
                   help="use at most this many validation and test examples")
    p.add_argument("--latency-runs", type=_positive_int("latency-runs", 50),
                   default=d["latency_runs"])
    p.add_argument("--output", default="saved_models",
                   help="directory under which the run directory is made")
    p.add_argument("--run-name", default=None,
                   help="name of the run directory (default: "
                   "DATASET-TEACHER-STUDENT-TIMESTAMP)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", "--smoke", dest="quick", action="store_true",
                   help="smoke-test size: %s" % ", ".join(
                       f"{k}={v}" for k, v in QUICK.items()))
    p.add_argument("--no-export", action="store_true",
                   help="skip the TFLite export")
    p.add_argument("--verbose", type=int, choices=(0, 1, 2), default=2,
                   help="Keras fit verbosity (2: one line per epoch)")
    p.set_defaults(func=run)
    return p


def build_parser():
    """The ``keras-kd`` argument parser (subcommands ``run`` and ``export``)."""
    parser = argparse.ArgumentParser(
        prog="keras-kd",
        description="Knowledge distillation for Keras 3: train a student "
        "from a teacher and ship it to TFLite.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_run_parser(subparsers)
    from keras_kd.app import export_command

    export_command.add_export_parser(subparsers)
    return parser


# ----------------------------------------------------------------------
# keras-kd run
# ----------------------------------------------------------------------
def _apply_objective_defaults(args):
    if args.temperature is None:
        args.temperature = USUAL_TEMPERATURE.get(args.objective,
                                                 DEFAULT_TEMPERATURE)


def _apply_quick(args):
    if not args.quick:
        return
    if args.epochs == DEFAULTS["epochs"]:
        args.epochs = QUICK["epochs"]
    if args.max_train is None:
        args.max_train = QUICK["max_train"]
    if args.max_test is None:
        args.max_test = QUICK["max_test"]
    if args.latency_runs == DEFAULTS["latency_runs"]:
        args.latency_runs = QUICK["latency_runs"]
    if args.batch_size == DEFAULTS["batch_size"]:
        args.batch_size = QUICK["batch_size"]


def _resolve_weights(args, models):
    if args.weights == "none":
        return None
    apps = [m for m in (args.teacher, args.student) if models.is_application(m)]
    if not apps:
        if args.weights == "imagenet":
            _stage("note: --weights imagenet applies to keras.applications "
                   "models only; the built-in models start from random "
                   "weights")
        return None
    if args.weights == "imagenet":
        return "imagenet"
    if models.imagenet_weights_available():
        _stage("weights: imagenet (reachable) for " + ", ".join(apps))
        return "imagenet"
    _stage("weights: none: ImageNet weights are neither cached nor "
           "downloadable (offline); pass --weights imagenet once online")
    return None


def _history(h):
    return {k: [float(v) for v in vals] for k, vals in h.history.items()}


def _merge(a, b):
    out = {k: list(v) for k, v in a.items()}
    for k, v in b.items():
        out.setdefault(k, []).extend(v)
    return out


def _compile(model, lr):
    import keras

    model.compile(
        optimizer=keras.optimizers.Adam(lr),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"])


class _Run:
    """The state one ``keras-kd run`` builds up, stage by stage."""

    def __init__(self, args):
        import keras

        self.args = args
        self.backend = keras.backend.backend()
        self.run_name = args.run_name or "{}-{}-{}-{}".format(
            args.dataset, args.teacher.lower(), args.student.lower(),
            datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
        self.run_dir = os.path.join(args.output, self.run_name)
        self.timings = {}
        self.histories = {}

    def timed(self, key, stage, *stage_args):
        start = time.perf_counter()
        result = stage(self, *stage_args)
        self.timings[key] = time.perf_counter() - start
        return result


def _load_data(run):
    """Loads the dataset; returns a function that builds it afresh."""
    from keras_kd import data
    from keras_kd.app import models, report

    args = run.args
    _stage(f"loading dataset {args.dataset}"
           + (f" resized to {args.image_size}" if args.image_size else ""))
    size = args.image_size
    needs_32 = [m for m in (args.teacher, args.student)
                if models.is_application(m)]
    if needs_32 and size is None and args.dataset == "digits":
        size = (32, 32)
        _stage(f"{', '.join(needs_32)} need images of at least 32x32: "
               "resizing digits to 32x32 (set --image-size to change)")

    def load():
        try:
            return data.load_dataset(
                args.dataset, image_size=size, batch_size=args.batch_size,
                max_train=args.max_train, max_test=args.max_test,
                seed=args.seed)
        except ValueError as error:
            raise SystemExit(f"keras-kd run: {error}") from None

    run.load = load
    run.splits = load()
    run.test_labels = report.labels_of(run.splits.test)
    _stage(f"data: input shape {run.splits.input_shape}, "
           f"{run.splits.num_classes} classes, examples {run.splits.counts}, "
           f"test examples {len(run.test_labels)}")
    run.weights = _resolve_weights(args, models)


def _same_order_train(run):
    # The training pipeline reshuffles at each pass, and the order of the
    # passes follows from the seed: a pipeline built afresh for each student
    # gives the student alone and the distilled student the same batches in
    # the same order, so the comparison measures distillation, not the order.
    return run.load().train


def _build(run, name, role):
    from keras_kd.app import models

    weights = run.weights if models.is_application(name) else None
    try:
        return models.build_model(name, run.splits.input_shape,
                                  run.splits.num_classes, weights=weights,
                                  model_name=role)
    except (ValueError, RuntimeError) as error:
        raise SystemExit(f"keras-kd run: {error}") from None


def _train_teacher(run):
    """Builds and trains the teacher (frozen backbone, then fine-tuning)."""
    from keras_kd.app import models, report

    args, splits = run.args, run.splits
    teacher = _build(run, args.teacher, "teacher")
    epochs = args.teacher_epochs or args.epochs
    _stage(f"teacher {args.teacher}: {report.count_params(teacher):,} "
           f"parameters; training {epochs} epochs"
           + (" on a frozen backbone" if args.teacher_finetune else ""))
    if args.teacher_finetune:
        if run.weights is None:
            _stage("note: --teacher-finetune without pretrained weights: "
                   "the frozen backbone holds random features (a smoke test "
                   "of the mechanics, not transfer learning)")
        models.freeze_backbone(teacher)
    _compile(teacher, args.learning_rate)
    history = _history(teacher.fit(
        splits.train, validation_data=splits.validation, epochs=epochs,
        verbose=args.verbose, shuffle=False))
    if args.teacher_finetune:
        ft_epochs = args.finetune_epochs or max(1, args.epochs // 2)
        lr = args.learning_rate * args.finetune_lr_factor
        models.unfreeze_backbone(teacher)
        _stage(f"teacher: fine-tuning all layers for {ft_epochs} epochs at "
               f"learning rate {lr:g}")
        _compile(teacher, lr)
        history = _merge(history, _history(teacher.fit(
            splits.train, validation_data=splits.validation,
            epochs=ft_epochs, verbose=args.verbose, shuffle=False)))
    teacher.trainable = True
    run.teacher = teacher
    run.histories["teacher"] = history


def _train_student_alone(run):
    """Builds the student; trains a copy of it alone on the labels."""
    import keras

    from keras_kd.app import report

    args = run.args
    run.student = _build(run, args.student, "student")
    alone = keras.models.clone_model(run.student)
    alone.set_weights(run.student.get_weights())
    _stage(f"student {args.student} alone: {report.count_params(alone):,} "
           f"parameters; training {args.epochs} epochs on the labels")
    _compile(alone, args.learning_rate)
    run.histories["student alone"] = _history(alone.fit(
        _same_order_train(run), validation_data=run.splits.validation,
        epochs=args.epochs, verbose=args.verbose, shuffle=False))
    run.alone = alone


def _distil(run):
    """Distils the teacher into the student (same initial weights)."""
    import keras

    from keras_kd.distiller import Distiller

    args = run.args
    _stage(f"distilling teacher -> student: objective {args.objective}, "
           f"alpha {args.alpha}, temperature {args.temperature}, "
           f"{args.epochs} epochs")
    distiller = Distiller(teacher=run.teacher, student=run.student)
    distiller.compile(
        optimizer=keras.optimizers.Adam(args.learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"], alpha=args.alpha, temperature=args.temperature,
        distillation_loss=args.objective)
    run.histories["distilled student"] = _history(distiller.fit(
        _same_order_train(run), validation_data=run.splits.validation,
        epochs=args.epochs, verbose=args.verbose, shuffle=False))


def _measure(run):
    """Saves the three models and measures size, accuracy and latency."""
    from keras_kd import saving
    from keras_kd.app import report

    args, test = run.args, run.splits.test
    _stage("saving models and measuring test accuracy and latency")
    example = next(iter(test.map(lambda x, y: x).unbatch().batch(1)
                        .as_numpy_iterator()))
    run.records = []
    for key, label, model, arch in (
            ("teacher", "teacher", run.teacher, args.teacher),
            ("student_alone", "student alone", run.alone, args.student),
            ("student_distilled", "distilled student", run.student,
             args.student)):
        path = os.path.join(run.run_dir, f"{key}.keras")
        size = saving.save_model_only(model, path)
        run.records.append(dict(
            key=key, label=f"{label} ({arch})", path=path,
            parameters=report.count_params(model), size_bytes=size,
            test_accuracy=report.accuracy(model, test, run.test_labels),
            latency_ms=report.keras_latency_ms(model, example,
                                               runs=args.latency_runs),
            runtime=f"keras ({run.backend})"))


def _export(run):
    """Exports the distilled student with ``to_tflite``; a failure is
    reported, and the trained models are kept."""
    args, splits = run.args, run.splits
    path = os.path.join(run.run_dir, f"student_distilled_{args.quantize}"
                        ".tflite")
    _stage(f"exporting the distilled student to TFLite ({args.quantize}): "
           f"{path}")
    try:
        from keras_kd import export
    except ImportError as error:
        _stage(f"TFLite export unavailable ({error}); skipped")
        run.export_info = {"error": str(error)}
        return
    representative = splits.train.map(lambda x, y: x).unbatch().take(100) \
        .batch(1)
    try:
        result = export.to_tflite(
            run.student, path, quantize=args.quantize,
            representative_data=representative, eval_data=splits.test,
            latency_runs=args.latency_runs)
    except Exception as error:  # report, do not lose the trained models
        _stage(f"TFLite export failed: {type(error).__name__}: {error}")
        run.export_info = {"error": f"{type(error).__name__}: {error}"}
        return
    run.export_info = result.as_dict()
    run.records.append(dict(
        key="student_tflite", label=f"distilled student, TFLite "
        f"{args.quantize}", path=str(result.path), parameters=None,
        size_bytes=int(result.size_bytes),
        test_accuracy=result.tflite_accuracy,
        latency_ms=result.latency_ms_median, runtime="tflite"))


def _write_report(run):
    """Writes report.json, report.md and the plots; prints the table."""
    import keras

    from keras_kd.app import report

    splits = run.splits
    result = dict(
        backend=run.backend, keras_version=keras.__version__,
        config={k: (list(v) if isinstance(v, tuple) else v)
                for k, v in vars(run.args).items() if k != "func"},
        dataset=dict(name=splits.name, input_shape=list(splits.input_shape),
                     num_classes=splits.num_classes, counts=splits.counts),
        models=run.records, histories=run.histories,
        export=run.export_info, timings=run.timings, run_dir=run.run_dir)
    result["paths"] = report.write_report(run.run_dir, result)
    print()
    print(report.markdown_table(run.records))
    print()
    gain = run.records[2]["test_accuracy"] - run.records[1]["test_accuracy"]
    _stage(f"distillation changed the student's test accuracy by "
           f"{100 * gain:+.2f} points ({len(run.test_labels)} test examples)")
    return result


def run(args):
    """Runs the main job for parsed ``keras-kd run`` arguments; returns the report.

    Stages: load data; build and train the teacher (optionally frozen
    backbone, then fine-tuning); train the student alone; distil the same
    initial student with :class:`keras_kd.Distiller`; save the three models
    (``.keras``); export the distilled student to TFLite; measure parameters,
    file size, test accuracy and latency; write ``report.json``,
    ``report.md``, ``learning_curves.png`` and ``accuracy_vs_size.png``.
    """
    import keras

    _apply_quick(args)
    _apply_objective_defaults(args)
    start = time.perf_counter()
    keras.utils.set_random_seed(args.seed)
    state = _Run(args)
    os.makedirs(state.run_dir, exist_ok=True)
    _stage(f"run {state.run_name}: backend {state.backend}, output "
           f"{state.run_dir}")
    state.export_info = None
    state.timed("data_s", _load_data)
    state.timed("teacher_s", _train_teacher)
    state.timed("student_alone_s", _train_student_alone)
    state.timed("distillation_s", _distil)
    _measure(state)
    if not args.no_export:
        state.timed("export_s", _export)
    state.timings["total_s"] = time.perf_counter() - start
    result = _write_report(state)
    _stage(f"done in {state.timings['total_s']:.0f} s; report: "
           f"{result['paths']['markdown']}")
    return result


def main(argv=None):
    """Entry point of the ``keras-kd`` command."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    result = args.func(args)
    return 0 if result is None or isinstance(result, dict) else int(result)


if __name__ == "__main__":
    sys.exit(main())
