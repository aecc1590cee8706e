"""Post-training int8, QAT and QAD of a narrow MobileNetV2-style student, side by side.

For one student on an offline data set, and each seed:

* **float**: the student trained on hard labels, exported as float32 TFLite;
* **float, fine-tuned as long (control)**: a float copy given the fine-tune
  that QAT gets (epochs, optimizer, learning rate), without quantization, so
  that what the fine-tune alone adds shows;
* **PTQ int8**: that float student, post-training full-integer quantization
  (``to_tflite(quantize="int8", representative_data=x_train[:calibration])``);
* **QAT**: ``quantize_model`` of the float student, fine-tuned on hard labels
  only, exported as int8 from the ranges it learned;
* **QAD**: the same quantization-aware copy fine-tuned by ``kd.Distiller``
  against the float teacher (same epochs, optimizer and learning rate as QAT);
* **KD float**, **KD float, fine-tuned as long (control)**, **KD -> PTQ
  int8**, **KD -> QAD**: the same from a student distilled in float first
  (the "short fine-tune of the already distilled student" recipe); its
  control is fine-tuned with the teacher, as QAD is.

The data sets (``--dataset``):

* ``mnist1d`` (default): MNIST-1D generated offline (10,000 signals: 8,000
  for training, 2,000 for testing), `keras-kd run`'s ``cnn`` teacher, a
  2,026-parameter 1-D depthwise student with hard-swish, without BatchNorm
  (``student_model_1d``: 4 channels, 8 inverted residual blocks;
  ``--activation relu`` for ReLU), trained 30 epochs; QAD with DIST (tau 1,
  alpha 0.1), the objective `keras-kd run` measured best there. Over 5 seeds
  post-training int8 costs the distilled student 1.7 +- 0.6 points (every
  seed) and QAD's file ends 0.7 +- 0.7 above the float one; with ReLU the
  loss is 0.7 +- 0.6 (docs/quantization.md).
* ``digits``: scikit-learn's 8x8 digits, a CNN teacher and a student with
  BatchNorm and ReLU6 (``student_model``); post-training int8 costs it nothing.

Each row gives the test accuracy of the Keras model and of the TFLite file
(LiteRT interpreter), the file size and the median batch-1 LiteRT latency on
one thread. Run from the repository root:

    KERAS_BACKEND=tensorflow python benchmarks/qat.py            # 3 seeds
    KERAS_BACKEND=tensorflow python benchmarks/qat.py --seeds 0 1 2 3 4
    KERAS_BACKEND=tensorflow python benchmarks/qat.py --dataset digits
    KERAS_BACKEND=tensorflow python benchmarks/qat.py --smoke --json out.json
"""

import argparse
import json
import os
import platform
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_kd as kd  # noqa: E402
from keras_kd.app.qat import fine_tune as qat_fine_tune  # noqa: E402
from keras_kd.data import load_digits, load_mnist1d  # noqa: E402

ROWS = (
    ("float", "float student (hard labels)", "float32"),
    ("float_ft", "float, fine-tuned as long (control)", "float32"),
    ("ptq", "post-training int8 of it", "int8"),
    ("qat", "QAT fine-tune, hard labels", "int8"),
    ("qad", "QAD fine-tune, float teacher", "int8"),
    ("kd_float", "distilled float student", "float32"),
    ("kd_float_ft", "distilled, fine-tuned as long (control)", "float32"),
    ("kd_ptq", "post-training int8 of it", "int8"),
    ("kd_qad", "QAD fine-tune of it", "int8"),
)


def teacher_model():
    """The float teacher: a CNN on 8x8x1 digits."""
    inputs = keras.Input((8, 8, 1), name="image")
    h = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(inputs)
    h = keras.layers.Conv2D(64, 3, padding="same", activation="relu")(h)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(128, activation="relu")(h)
    return keras.Model(inputs, keras.layers.Dense(10)(h), name="teacher")


def _conv_bn(h, filters, kernel, strides=1, relu6=True, depthwise=False):
    if depthwise:
        h = keras.layers.DepthwiseConv2D(kernel, strides=strides,
                                         padding="same", use_bias=False)(h)
    else:
        h = keras.layers.Conv2D(filters, kernel, strides=strides,
                                padding="same", use_bias=False)(h)
    h = keras.layers.BatchNormalization(momentum=0.9)(h)
    return keras.layers.ReLU(6.0)(h) if relu6 else h


def student_model(width=8, expansion=6):
    """A narrow MobileNetV2-style student: a Conv-BN-ReLU6 stem, then two
    inverted residual blocks (1x1 expand-BN-ReLU6, 3x3 depthwise-BN-ReLU6,
    1x1 linear projection-BN), the first strided, the second with a
    residual Add, then global average pooling and a Dense classifier."""
    inputs = keras.Input((8, 8, 1), name="image")
    h = _conv_bn(inputs, width, 3)
    # Block 1: stride 2, no residual.
    b = _conv_bn(h, width * expansion, 1)
    b = _conv_bn(b, None, 3, strides=2, depthwise=True)
    h = _conv_bn(b, 2 * width, 1, relu6=False)
    # Block 2: stride 1, residual.
    b = _conv_bn(h, 2 * width * expansion, 1)
    b = _conv_bn(b, None, 3, depthwise=True)
    b = _conv_bn(b, 2 * width, 1, relu6=False)
    h = keras.layers.Add()([h, b])
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inputs, keras.layers.Dense(10)(h), name="student")


ACTIVATIONS_1D = ("hard_silu", "relu", "relu6")


def student_model_1d(width=4, expansion=4, blocks=8, stem_kernel=5,
                     activation="hard_silu"):
    """A narrow MobileNetV2-style student for MNIST-1D signals, without
    BatchNorm and with MobileNetV3's hard-swish (``hard_silu``,
    ``x * relu6(x + 3) / 6``) by default: the ``(40, 1)`` signal reshaped to
    a ``(40, 1, 1)`` image, a (``stem_kernel``, 1) convolution stem, then
    ``blocks`` inverted residual blocks (1x1 expand, (5, 1) depthwise, each
    followed by the activation, then a 1x1 linear projection; the first two
    strided by 2 along the signal, the others with a residual Add), global
    average pooling and a Dense classifier (2,026 parameters with the
    defaults). ``activation`` is ``"hard_silu"``, ``"relu"`` or ``"relu6"``.

    Without BatchNorm the activations have wide per-tensor ranges; with 4
    channels between blocks no other channel carries the same information to
    average the rounding out, and eight blocks compound it. Hard-swish is
    TFLite's ``HARD_SWISH`` op, quantized on its own input and output ranges
    (ReLU is fused into the convolution before it): the kind of student that
    post-training int8 costs accuracy."""
    layers = keras.layers
    if activation not in ACTIVATIONS_1D:
        raise ValueError(f"activation must be one of {ACTIVATIONS_1D}, got "
                         f"{activation!r}")

    def act(h):
        if activation == "hard_silu":
            return layers.Activation("hard_silu")(h)
        return layers.ReLU(6.0 if activation == "relu6" else None)(h)

    inputs = keras.Input((40, 1), name="signal")
    h = layers.Reshape((40, 1, 1))(inputs)
    h = act(layers.Conv2D(width, (stem_kernel, 1), padding="same")(h))
    for block in range(blocks):
        strides = (2, 1) if block < 2 else 1
        b = act(layers.Conv2D(width * expansion, 1)(h))
        b = act(layers.DepthwiseConv2D((5, 1), strides=strides,
                                       padding="same")(b))
        b = layers.Conv2D(width, 1)(b)
        h = b if block < 2 else layers.Add()([h, b])
    h = layers.GlobalAveragePooling2D()(h)
    return keras.Model(inputs, layers.Dense(10)(h), name="student")


def teacher_model_1d():
    """The float teacher on MNIST-1D: `keras-kd run`'s ``cnn`` (Conv1D)."""
    from keras_kd.app.models import build_model

    return build_model("cnn", (40, 1), 10, model_name="teacher")


def _loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _fit(model, x, y, epochs, lr, batch_size):
    model.compile(keras.optimizers.Adam(lr), _loss())
    model.fit(x, y, epochs=epochs, batch_size=batch_size, verbose=0)
    return model


def _distil(teacher, student, x, y, epochs, lr, batch_size, **options):
    distiller = kd.Distiller(teacher, student)
    distiller.compile(keras.optimizers.Adam(lr), _loss(), **options)
    distiller.fit(x, y, epochs=epochs, batch_size=batch_size, verbose=0)
    return student


# Each data set with its teacher, its student and its settings (every one
# can be overridden on the command line).
DATASETS = {
    "mnist1d": dict(
        describe="MNIST-1D ({samples:,} signals generated offline, 80% for "
                 "training, 20% for testing), narrow MobileNetV2-style 1-D "
                 "student without BatchNorm ({activation}, width {width}, "
                 "expansion {expansion}, stem kernel {stem_kernel}, "
                 "{blocks} blocks)",
        teacher=teacher_model_1d,
        student=lambda a: student_model_1d(a.width, a.expansion, a.blocks,
                                           a.stem_kernel, a.activation),
        defaults=dict(samples=10000, width=4, expansion=4, blocks=8,
                      stem_kernel=5, activation="hard_silu", epochs=30,
                      teacher_epochs=20, objective="dist",
                      alpha=0.1, temperature=1.0)),
    "digits": dict(
        describe="Digits (8x8x1 images), narrow MobileNetV2-style student "
                 "(width {width}, expansion {expansion})",
        teacher=teacher_model,
        student=lambda a: student_model(a.width, a.expansion),
        defaults=dict(width=8, expansion=6, blocks=2, epochs=30,
                      teacher_epochs=10, objective="kd",
                      alpha=0.5, temperature=2.0)),
}


def load_data(args):
    if args.dataset == "digits":
        return load_digits(as_images=True)
    return load_mnist1d(num_samples=args.samples)


def run_seed(seed, args, out_dir, data):
    (x_train, y_train), (x_test, y_test) = data
    spec = DATASETS[args.dataset]
    calib = x_train[:args.calibration]
    bs = args.batch_size
    distil = dict(alpha=args.alpha, temperature=args.temperature,
                  distillation_loss=args.objective)
    keras.utils.set_random_seed(seed)
    teacher = _fit(spec["teacher"](), x_train, y_train, args.teacher_epochs,
                   1e-3, bs)
    teacher_acc = float(np.mean(np.argmax(teacher.predict(
        x_test, verbose=0), -1) == y_test))

    def export(model, name, quantize):
        path = os.path.join(out_dir, f"seed{seed}_{name}.tflite")
        report = kd.export.to_tflite(
            model, path, quantize=quantize,
            representative_data=calib if quantize == "int8" else None,
            eval_data=(x_test, y_test), latency_runs=args.latency_runs)
        return {"keras_accuracy": report.keras_accuracy,
                "tflite_accuracy": report.tflite_accuracy,
                "size_bytes": report.size_bytes,
                "latency_ms": report.latency_ms_median,
                "quantize": report.quantize}

    def fine_tune(float_student, teacher=None):
        """QAT (teacher None) or QAD: keras_kd.app.qat.fine_tune, the
        fine-tune of keras-kd run --qat."""
        return qat_fine_tune(float_student, x_train, y_train,
                             calibration_data=calib, teacher=teacher,
                             epochs=args.qat_epochs,
                             learning_rate=args.qat_lr, batch_size=bs,
                             **({} if teacher is None else distil))[0]

    def float_fine_tune(float_student, teacher=None):
        """The control: the same fine-tune (epochs, optimizer, learning
        rate, labels, teacher) of a float copy, no quantization."""
        copy = keras.models.clone_model(float_student)
        copy.set_weights(float_student.get_weights())
        if teacher is None:
            return _fit(copy, x_train, y_train, args.qat_epochs, args.qat_lr,
                        bs)
        return _distil(teacher, copy, x_train, y_train, args.qat_epochs,
                       args.qat_lr, bs, **distil)

    rows = {}
    student = _fit(spec["student"](args), x_train, y_train, args.epochs,
                   args.lr, bs)
    rows["float"] = export(student, "float", "float32")
    rows["float_ft"] = export(float_fine_tune(student), "float_ft", "float32")
    rows["ptq"] = export(student, "ptq", "int8")
    rows["qat"] = export(fine_tune(student), "qat", "int8")
    rows["qad"] = export(fine_tune(student, teacher), "qad", "int8")
    if not args.no_kd:
        keras.utils.set_random_seed(seed)
        kd_student = _distil(teacher, spec["student"](args), x_train, y_train,
                             args.epochs, args.lr, bs, **distil)
        rows["kd_float"] = export(kd_student, "kd_float", "float32")
        rows["kd_float_ft"] = export(float_fine_tune(kd_student, teacher),
                                     "kd_float_ft", "float32")
        rows["kd_ptq"] = export(kd_student, "kd_ptq", "int8")
        rows["kd_qad"] = export(fine_tune(kd_student, teacher), "kd_qad",
                                "int8")
    return {"seed": seed, "teacher_accuracy": teacher_acc,
            "student_parameters": student.count_params(), "rows": rows}


def _mean_std(values, scale=1.0, digits=1):
    values = [v * scale for v in values]
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown(runs, args):
    first = runs[0]
    lines = [
        DATASETS[args.dataset]["describe"].format(**vars(args))
        + f", {first['student_parameters']:,} parameters, teacher accuracy "
        f"{_mean_std([r['teacher_accuracy'] for r in runs], 100)}%, "
        f"seeds {', '.join(str(r['seed']) for r in runs)}, backend "
        f"{keras.backend.backend()}, "
        f"{platform.processor() or platform.machine()}; "
        f"float student {args.epochs} epochs at {args.lr:g}, fine-tunes "
        f"{args.qat_epochs} epochs at {args.qat_lr:g}; QAD and the distilled "
        f"rows: {args.objective}, T={args.temperature:g}, "
        f"alpha={args.alpha:g}; PTQ calibrated on {args.calibration} "
        "training inputs.",
        "",
        "| student | file | test accuracy, Keras (%) | test accuracy, "
        "TFLite (%) | vs float TFLite (points) | file size | latency "
        "(batch 1, µs) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for key, label, _ in ROWS:
        if key not in first["rows"]:
            continue
        base = "kd_float" if key.startswith("kd_") else "float"
        got = [r["rows"][key] for r in runs]
        delta = [r["rows"][key]["tflite_accuracy"]
                 - r["rows"][base]["tflite_accuracy"] for r in runs]
        latency = [g["latency_ms"] * 1000 for g in got
                   if g["latency_ms"] is not None]
        lines.append(
            f"| {label} | {got[0]['quantize']} "
            f"| {_mean_std([g['keras_accuracy'] for g in got], 100)} "
            f"| {_mean_std([g['tflite_accuracy'] for g in got], 100)} "
            f"| {_mean_std(delta, 100)} "
            f"| {statistics.fmean(g['size_bytes'] for g in got) / 1024:.1f} "
            f"KiB | {_mean_std(latency, digits=1) if latency else 'n/a'} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--dataset", choices=sorted(DATASETS),
                        default="mnist1d",
                        help="the data set with its teacher, student and "
                        "settings (the options below override them)")
    parser.add_argument("--width", type=int, default=None,
                        help="student channels (digits: stem; the blocks "
                        "have 2x)")
    parser.add_argument("--expansion", type=int, default=None)
    parser.add_argument("--stem-kernel", type=int, default=None,
                        help="the stem convolution's length (mnist1d)")
    parser.add_argument("--activation", default=None,
                        choices=ACTIVATIONS_1D,
                        help="the student's activation (mnist1d)")
    parser.add_argument("--blocks", type=int, default=None,
                        help="inverted residual blocks (mnist1d)")
    parser.add_argument("--samples", type=int, default=None,
                        help="MNIST-1D signals to generate, 80%% for "
                        "training (mnist1d)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="float student epochs")
    parser.add_argument("--teacher-epochs", type=int, default=None)
    parser.add_argument("--qat-epochs", type=int, default=5,
                        help="QAT / QAD fine-tune epochs")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--qat-lr", type=float, default=1e-3)
    parser.add_argument("--objective", default=None,
                        help="QAD's and the distilled rows' objective")
    parser.add_argument("--alpha", type=float, default=None)
    parser.add_argument("--temperature", type=float, default=None)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--calibration", type=int, default=200,
                        help="training images given to post-training int8 "
                        "and to quantize_model (the converter uses up to "
                        "200)")
    parser.add_argument("--latency-runs", type=int, default=200)
    parser.add_argument("--no-kd", action="store_true",
                        help="skip the distilled-float rows")
    parser.add_argument("--smoke", action="store_true",
                        help="one seed, one epoch each, a few latency runs: "
                        "checks that the benchmark runs, measures nothing")
    parser.add_argument("--json", default=None,
                        help="also write the per-seed results here")
    parser.add_argument("--output-dir", default=None,
                        help="where the .tflite files go (default: a "
                        "temporary directory)")
    args = parser.parse_args(argv)
    for name, value in DATASETS[args.dataset]["defaults"].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.smoke:
        args.seeds = args.seeds[:1]
        args.epochs = args.teacher_epochs = args.qat_epochs = 1
        args.latency_runs = 5
    for name in ("epochs", "teacher_epochs", "qat_epochs", "calibration",
                 "width", "expansion", "blocks", "stem_kernel", "batch_size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, "
                         f"got {getattr(args, name)}")

    start = time.perf_counter()
    try:
        data = load_data(args)
    except ValueError as error:  # load_mnist1d's check of num_samples
        parser.error(f"--samples: {error}")
    out_dir = args.output_dir or tempfile.mkdtemp(prefix="keras_kd_qat_")
    runs = [run_seed(seed, args, out_dir, data) for seed in args.seeds]
    wall = time.perf_counter() - start
    print(markdown(runs, args))
    print(f"\nwall time {wall:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"backend": keras.backend.backend(),
                       "args": vars(args), "wall_s": wall, "runs": runs},
                      f, indent=2)


if __name__ == "__main__":
    main()
