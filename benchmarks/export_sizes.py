"""Sizes, latencies and accuracy of the digits student at each TFLite precision.

Trains a small student on the bundled digits (offline, seconds), exports it
with ``keras_kd.export.to_tflite`` at float32, float16, dynamic and int8, and
prints a Markdown table. Run from the repository root:

    KERAS_BACKEND=tensorflow python benchmarks/export_sizes.py
    KERAS_BACKEND=jax python benchmarks/export_sizes.py --model cnn

Latency is the median of ``--latency-runs`` batch-1 invocations of the LiteRT
interpreter on one CPU thread of this machine.
"""

import argparse
import os
import platform
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_kd import export  # noqa: E402
from keras_kd.data import load_digits  # noqa: E402


def digits_student(kind):
    """The student: an MLP (64-64-10) or a small CNN on 8x8x1 images."""
    if kind == "mlp":
        inputs = keras.Input((64,), name="pixels")
        h = keras.layers.Dense(64, activation="relu")(inputs)
    else:
        inputs = keras.Input((8, 8, 1), name="image")
        h = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(
            inputs)
        h = keras.layers.Conv2D(32, 3, padding="same", activation="relu")(h)
        h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inputs, keras.layers.Dense(10)(h),
                       name=f"digits_{kind}_student")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("mlp", "cnn"), default="mlp")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--latency-runs", type=int, default=500)
    parser.add_argument("--output-dir", default=None,
                        help="where the .tflite files go (default: a "
                        "temporary directory)")
    args = parser.parse_args()

    keras.utils.set_random_seed(0)
    (x_train, y_train), (x_test, y_test) = load_digits(
        as_images=args.model == "cnn")
    student = digits_student(args.model)
    student.compile(
        keras.optimizers.Adam(3e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    student.fit(x_train, y_train, epochs=args.epochs, batch_size=64,
                verbose=0)

    out = args.output_dir or tempfile.mkdtemp(prefix="keras_kd_sizes_")
    reports = [
        export.to_tflite(student, os.path.join(out, f"student_{q}.tflite"),
                         quantize=q, representative_data=x_train,
                         eval_data=(x_test, y_test),
                         latency_runs=args.latency_runs)
        for q in export.QUANTIZE_MODES]
    base = reports[0].size_bytes
    print(f"Digits {args.model} student ({student.count_params():,} "
          f"parameters), backend {keras.backend.backend()}, "
          f"{platform.processor() or platform.machine()}, "
          f"{args.latency_runs} runs\n")
    print("| precision | file size | vs float32 | median latency (batch 1) "
          "| max abs diff vs Keras | test accuracy Keras -> TFLite |")
    print("|---|---:|---:|---:|---:|---|")
    for r in reports:
        print(f"| {r.quantize} | {r.size_bytes / 1024:.1f} KiB "
              f"| {r.size_bytes / base:.2f}x "
              f"| {r.latency_ms_median * 1000:.1f} µs "
              f"| {r.max_abs_diff:.1e} "
              f"| {r.keras_accuracy:.2%} -> {r.tflite_accuracy:.2%} "
              f"({r.accuracy_change * 100:+.2f} pt) |")
    assert np.isfinite([r.max_abs_diff for r in reports]).all()


if __name__ == "__main__":
    main()
