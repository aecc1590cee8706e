"""Training throughput of distillation: keras-kd vs keras.distillation.

ResNet50 (teacher) -> MobileNetV2 (student) on synthetic ImageNet-sized data,
Hinton KD (T=4) plus the hard-label loss, measured with ``fit()`` in float32
and in mixed precision. Both engines run the frozen teacher once per step in
inference mode. No weights or data are downloaded: the models are randomly
initialised (throughput does not depend on the weights' values).

Usage (the backend comes from ``KERAS_BACKEND``)::

    KERAS_BACKEND=jax python benchmarks/throughput.py            # GPU run
    KERAS_BACKEND=tensorflow python benchmarks/throughput.py --batch-size 128
    KERAS_BACKEND=jax python benchmarks/throughput.py --smoke    # CPU check

For each engine and precision it warms up for one epoch (compilation), then
times ``--epochs`` epochs of ``--steps`` steps each; an epoch ends with a
device sync (Keras reads the logs back), so wall time per epoch covers the
queued work. It prints images/s (median over timed epochs) and the device,
and with ``--json PATH`` writes the same results as JSON.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))
import keras_kd as kd  # noqa: E402

ENGINES = ("keras-kd", "keras.distillation")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")


def device_name():
    """The accelerator the backend computes on, in words."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        d = jax.devices()[0]
        if d.platform != "cpu":
            return f"{d.platform}: {d.device_kind} (x{len(jax.devices())})"
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            details = tf.config.experimental.get_device_details(gpus[0])
            return f"gpu: {details.get('device_name', gpus[0].name)} " \
                   f"(x{len(gpus)})"
    if backend == "torch":
        import torch

        if torch.cuda.is_available():
            return f"gpu: {torch.cuda.get_device_name(0)} " \
                   f"(x{torch.cuda.device_count()})"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f
                       if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"cpu: {cpu} ({os.cpu_count()} logical cores)"


def build_models(size, classes):
    teacher = keras.applications.ResNet50(
        weights=None, input_shape=(size, size, 3), classes=classes,
        classifier_activation=None, name="resnet50_teacher")
    student = keras.applications.MobileNetV2(
        weights=None, input_shape=(size, size, 3), classes=classes,
        classifier_activation=None, name="mobilenetv2_student")
    return teacher, student


def build_distiller(engine, teacher, student, jit_compile):
    hard = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    optimizer = keras.optimizers.SGD(0.01, momentum=0.9)
    if engine == "keras-kd":
        distiller = kd.Distiller(teacher=teacher, student=student)
        distiller.compile(optimizer=optimizer, loss=hard, alpha=0.1,
                          temperature=4.0, jit_compile=jit_compile)
    else:
        distiller = keras.distillation.Distiller(
            teacher=teacher, student=student,
            distillation_losses=keras.distillation.LogitsDistillation(
                temperature=4.0),
            student_loss_weight=0.1)
        distiller.compile(optimizer=optimizer, loss=hard,
                          jit_compile=jit_compile)
    return distiller


class _EpochTimer(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.times = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        # Keras has converted the logs to Python numbers: the device is done.
        self.times.append(time.perf_counter() - self._start)


def measure(engine, precision, args):
    """Images/s of ``fit`` for one engine and dtype policy."""
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    keras.config.set_dtype_policy(precision)
    try:
        teacher, student = build_models(args.image_size, args.classes)
        teacher.trainable = False
        distiller = build_distiller(engine, teacher, student, args.jit)
    finally:
        keras.config.set_dtype_policy("float32")
    rng = np.random.default_rng(0)
    n = args.batch_size * args.steps
    x = rng.uniform(-1, 1, (n, args.image_size, args.image_size, 3)).astype(
        "float32")
    y = rng.integers(0, args.classes, n)
    timer = _EpochTimer()
    history = distiller.fit(x, y, batch_size=args.batch_size,
                            epochs=1 + args.epochs, shuffle=False, verbose=0,
                            callbacks=[timer])
    timed = timer.times[1:]
    rates = [n / t for t in timed]
    return {
        "engine": engine,
        "precision": precision,
        "images_per_s": statistics.median(rates),
        "images_per_s_all": rates,
        "warmup_s": timer.times[0],
        "loss_scaled": isinstance(distiller.optimizer,
                                  keras.optimizers.LossScaleOptimizer),
        "final_loss": float(history.history["loss"][-1]),
    }


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=20,
                        help="steps per timed epoch")
    parser.add_argument("--epochs", type=int, default=3,
                        help="timed epochs (after one warm-up epoch)")
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--precisions", default="float32,mixed_float16")
    parser.add_argument("--jit", default="auto", choices=("auto", "true",
                                                          "false"),
                        help="jit_compile for both engines")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny CPU check: 32x32 inputs, batch 8, "
                             "10 classes, 2 steps x 1 timed epoch")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    if args.smoke:
        args.batch_size, args.image_size, args.classes = 8, 32, 10
        args.steps, args.epochs = 2, 1
    args.jit = {"auto": "auto", "true": True, "false": False}[args.jit]
    args.engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    args.precisions = [p.strip() for p in args.precisions.split(",")
                       if p.strip()]
    for e in args.engines:
        if e not in ENGINES:
            parser.error(f"unknown engine {e!r}; choose from {ENGINES}")
    for p in args.precisions:
        if p not in PRECISIONS:
            parser.error(f"unknown precision {p!r}; choose from {PRECISIONS}")
    return args


def main(argv=None):
    args = parse_args(argv)
    device = device_name()
    header = (f"ResNet50 -> MobileNetV2, {args.image_size}x{args.image_size}, "
              f"batch {args.batch_size}, {args.classes} classes, synthetic "
              f"data | backend {keras.backend.backend()} | keras "
              f"{keras.__version__} | jit_compile={args.jit} | device {device}")
    print(header)
    results = []
    for precision in args.precisions:
        for engine in args.engines:
            r = measure(engine, precision, args)
            results.append(r)
            print(f"{engine:<20} {precision:<15} "
                  f"{r['images_per_s']:10.1f} images/s  (warm-up "
                  f"{r['warmup_s']:.1f} s, loss scaling "
                  f"{'on' if r['loss_scaled'] else 'off'})", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": device, "backend": keras.backend.backend(),
                       "keras": keras.__version__,
                       "config": {k: v for k, v in vars(args).items()
                                  if k != "json"},
                       "results": results}, f, indent=2)
    return results


if __name__ == "__main__":
    main()
