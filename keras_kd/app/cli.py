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

import datetime
import os
import sys
import time

import numpy as np

# The parser is built by the launcher, keras_kd_cli, with argparse alone (no
# Keras import, so that --help answers at once); these names stay importable
# from here.
from keras_kd_cli import (  # noqa: F401
    DEFAULT_TEMPERATURE, DEFAULTS, QUICK, USUAL_TEMPERATURE, add_run_parser,
    apply_task_defaults, build_parser, check_run_options)


def _stage(message):
    stamp = datetime.datetime.now().strftime("%H:%M:%S")
    print(f"[keras-kd {stamp}] {message}", flush=True)


# ----------------------------------------------------------------------
# keras-kd run
# ----------------------------------------------------------------------
def _apply_objective_defaults(args):
    apply_task_defaults(args)
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

    # --mnist1d-samples (keras-kd run only; the parser refuses it for other
    # datasets): the size of the generated MNIST-1D.
    sized = {}
    if getattr(args, "mnist1d_samples", None) is not None:
        sized["num_samples"] = args.mnist1d_samples

    def load():
        try:
            return data.load_dataset(
                args.dataset, image_size=size, batch_size=args.batch_size,
                max_train=args.max_train, max_test=args.max_test,
                seed=args.seed, **sized)
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
    _stage("saving models and measuring test accuracy, calibration and "
           "latency")
    example = next(iter(test.map(lambda x, y: x).unbatch().batch(1)
                        .as_numpy_iterator()))
    run.validation_labels = report.labels_of(run.splits.validation)
    run.records, run.correct = [], {}
    for key, label, model, arch in (
            ("teacher", "teacher", run.teacher, args.teacher),
            ("student_alone", "student alone", run.alone, args.student),
            ("student_distilled", "distilled student", run.student,
             args.student)):
        path = os.path.join(run.run_dir, f"{key}.keras")
        size = saving.save_model_only(model, path)
        # Accuracy, test NLL and ECE from one pass; a temperature fitted on
        # the validation split (what post-hoc scaling would ship).
        logits = report.logits_of(model, test)
        # Per-example correctness: the paired interval of the gain.
        run.correct[key] = np.argmax(logits, axis=-1) == run.test_labels
        metrics = report.classification_metrics(
            logits, run.test_labels,
            validation=(report.logits_of(model, run.splits.validation),
                        run.validation_labels))
        run.records.append(dict(
            key=key, label=f"{label} ({arch})", path=path,
            parameters=report.count_params(model), size_bytes=size,
            **metrics,
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
    student, scaled = run.student, ""
    if getattr(args, "calibrate", False):
        from keras_kd import calibration

        distilled = next(r for r in run.records
                         if r["key"] == "student_distilled")
        temperature = distilled["temperature"]
        student = calibration.with_temperature(run.student, temperature)
        scaled = f", temperature-scaled (T={temperature:.3g})"
        _stage(f"folding T={temperature:.4g} (fitted on the validation "
               "split) into the exported student")
    try:
        result = export.to_tflite(
            student, path, quantize=args.quantize,
            representative_data=representative, eval_data=splits.test,
            latency_runs=args.latency_runs)
    except Exception as error:  # report, do not lose the trained models
        return export_failed(run, error)
    run.export_info = result.as_dict()
    run.records.append(dict(
        key="student_tflite", label=f"distilled student, TFLite "
        f"{args.quantize}{scaled}", path=str(result.path), parameters=None,
        size_bytes=int(result.size_bytes),
        test_accuracy=result.tflite_accuracy,
        **_tflite_calibration(run, str(result.path),
                              bool(getattr(result, "flex_ops", None))),
        latency_ms=result.latency_ms_median, runtime="tflite"))


def export_failed(run, error, runtime="TFLite"):
    """Reports a failed export (the trained models are kept): a stage line,
    and the error as the run's ``export_info``."""
    _stage(f"{runtime} export failed: {type(error).__name__}: {error}")
    run.export_info = {"error": f"{type(error).__name__}: {error}"}


def _tflite_calibration(run, path, flex):
    """Test NLL and ECE of the TFLite file's own outputs (run by the LiteRT
    interpreter on the test split, as the export measures its accuracy)."""
    from keras_kd.app import report
    from keras_kd.export import litert

    x = np.concatenate([b for b in run.splits.test.map(lambda x, y: x)
                        .as_numpy_iterator()])
    try:
        interpreter = litert.interpreter(path, flex)
        (logits,) = litert.predict_tflite(interpreter, x)
    except Exception as error:  # keep the run's other results
        _stage(f"TFLite calibration not measured: {type(error).__name__}: "
               f"{error}")
        return {}
    metrics = report.classification_metrics(logits, run.test_labels)
    metrics.pop("test_accuracy")  # the export's own figure is kept
    return metrics


def _write_report(run):
    """Writes report.json, report.md and the plots; prints the table."""
    import keras

    from keras_kd.app import report

    splits = run.splits
    gain = report.distillation_gain(run.correct["student_distilled"],
                                    run.correct["student_alone"])
    result = dict(
        backend=run.backend, keras_version=keras.__version__,
        config={k: (list(v) if isinstance(v, tuple) else v)
                for k, v in vars(run.args).items()
                if k not in ("command", "native_logs")},
        dataset=dict(name=splits.name, input_shape=list(splits.input_shape),
                     num_classes=splits.num_classes, counts=splits.counts),
        models=run.records, gain=gain, histories=run.histories,
        export=run.export_info, timings=run.timings, run_dir=run.run_dir)
    result["paths"] = report.write_report(run.run_dir, result)
    print()
    print(report.markdown_table(run.records))
    print()
    _stage(report.gain_sentence(gain))
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

    apply_task_defaults(args)
    _apply_quick(args)
    _apply_objective_defaults(args)
    start = time.perf_counter()
    keras.utils.set_random_seed(args.seed)
    state = _Run(args)
    make_run_dir(state.run_dir)
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


def make_run_dir(run_dir):
    """Makes the run directory, before any training (a place the results can
    go), or stops with a message naming the fix."""
    try:
        os.makedirs(run_dir, exist_ok=True)
    except OSError as error:
        raise SystemExit(
            f"keras-kd run: cannot make the run directory {run_dir!r} "
            f"({error.strerror or error}); pass a directory you can write to, "
            "e.g. --output ~/keras-kd-runs") from None


def execute(args):
    """Runs the command of parsed ``keras-kd`` arguments; returns the exit
    status (``args.command`` is ``"run"`` or ``"export"``)."""
    if args.command == "export":
        from keras_kd.app import export_command

        return export_command.run_export(args)
    if args.command == "search":
        from keras_kd.app import search_command

        return search_command.run_search(args)
    check_run_options(args)
    if args.task == "causal-lm":
        from keras_kd.app import causal_lm_run

        result = causal_lm_run.run(args)
    else:
        result = run(args)
    return 0 if result is None or isinstance(result, dict) else int(result)


def main(argv=None):
    """The ``keras-kd`` command from Python: ``main(["run", "--quick"])``.

    Returns the exit status: 2 (after printing the help) without a command.
    The installed command is the launcher, :func:`keras_kd_cli.main`, which
    also silences TensorFlow's native logs.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return execute(args)


if __name__ == "__main__":
    sys.exit(main())
