"""Compares keras-kd's distillation objectives on the bundled digits.

Trains one teacher per seed, then the same student from the same initial
weights with each objective (and alone, with cross-entropy only), and prints
a markdown table of the student's test accuracy (mean ± std over seeds).
Everything is offline (scikit-learn's bundled 8×8 digits) and runs on CPU.

    KERAS_BACKEND=jax python benchmarks/objectives.py            # 3 seeds
    KERAS_BACKEND=jax python benchmarks/objectives.py --quick    # smoke run
"""

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_kd as kd  # noqa: E402
from keras_kd import objectives as obj  # noqa: E402
from keras_kd.data import load_digits  # noqa: E402


def conv_net(name, filters, embed, classes=10):
    """Conv → conv (``{name}_conv2``, 8×8) → pool → dense embedding → logits."""
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(filters[0], 3, padding="same", activation="relu",
                            name=f"{name}_conv1")(inputs)
    h = keras.layers.Conv2D(filters[1], 3, padding="same", activation="relu",
                            name=f"{name}_conv2")(h)
    h = keras.layers.MaxPooling2D(2)(h)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(embed, activation="relu", name=f"{name}_embed")(h)
    return keras.Model(inputs, keras.layers.Dense(classes,
                                                  name=f"{name}_logits")(h),
                       name=name)


def configs(epochs):
    """(name, settings shown in the table, compile kwargs) per objective."""
    warmup = max(1, epochs // 4)
    return [
        ("KD", "α=0.1, T=4", dict(alpha=0.1, temperature=4.0)),
        ("DKD", f"α_CE=0.5, T=4, α=1, β=8, warm-up {warmup} ep",
         dict(alpha=0.5, temperature=4.0,
              distillation_loss=obj.DKD(alpha=1.0, beta=8.0,
                                        warmup_epochs=warmup))),
        ("KD + LS", "α=0.1, τ=2", dict(alpha=0.1, temperature=2.0,
                                       distillation_loss="ls")),
        ("DIST", "α=0.5, τ=1, β=γ=1", dict(alpha=0.5, temperature=1.0,
                                           distillation_loss="dist")),
        ("hard", "α=0.5", dict(alpha=0.5, distillation_loss="hard")),
        ("FitNet", "CE + 100·hint (conv2)", dict(
            alpha=1.0, distillation_loss=None, feature_losses=[
                kd.FitNet("teacher_conv2", "student_conv2", weight=100.0)])),
        ("AT", "CE + 1000·AT (conv2)", dict(
            alpha=1.0, distillation_loss=None, feature_losses=[
                obj.AttentionTransfer("teacher_conv2", "student_conv2",
                                      weight=1000.0)])),
        ("RKD", "CE + 25·dist + 50·angle (embed)", dict(
            alpha=1.0, distillation_loss=None, feature_losses=[
                obj.RKD("teacher_embed", "student_embed")])),
        ("SP", "CE + 3000·SP (embed)", dict(
            alpha=1.0, distillation_loss=None, feature_losses=[
                obj.SimilarityPreserving("teacher_embed", "student_embed",
                                         weight=3000.0)])),
        ("PKT", "CE + 30000·PKT (embed)", dict(
            alpha=1.0, distillation_loss=None, feature_losses=[
                obj.PKT("teacher_embed", "student_embed", weight=30000.0)])),
    ]


def accuracy(model, x, y):
    logits = model.predict(x, batch_size=512, verbose=0)
    return float((np.argmax(logits, -1) == y).mean())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=15,
                        help="student epochs (the teacher trains 2×)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--only", nargs="*", default=None,
                        help="objective names to run (default: all)")
    parser.add_argument("--quick", action="store_true",
                        help="1 seed, 3 student epochs: a smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.epochs = 1, 3

    (x_train, y_train), (x_test, y_test) = load_digits(as_images=True)
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    runs = configs(args.epochs)
    if args.only:
        wanted = {n.lower() for n in args.only}
        runs = [r for r in runs if r[0].lower() in wanted]
    results = {"teacher": [], "student alone": []}
    results.update({name: [] for name, _, _ in runs})
    start = time.time()
    for seed in range(args.seeds):
        keras.utils.set_random_seed(seed)
        teacher = conv_net("teacher", (32, 32), 64)
        teacher.compile(optimizer=keras.optimizers.Adam(1e-3), loss=ce)
        teacher.fit(x_train, y_train, epochs=2 * args.epochs,
                    batch_size=args.batch_size, verbose=0)
        results["teacher"].append(accuracy(teacher, x_test, y_test))

        keras.utils.set_random_seed(1000 + seed)
        init = conv_net("student", (4, 8), 16).get_weights()

        def fresh_student():
            student = conv_net("student", (4, 8), 16)
            student.set_weights(init)
            return student

        keras.utils.set_random_seed(2000 + seed)
        student = fresh_student()
        student.compile(optimizer=keras.optimizers.Adam(1e-3), loss=ce)
        student.fit(x_train, y_train, epochs=args.epochs,
                    batch_size=args.batch_size, verbose=0)
        results["student alone"].append(accuracy(student, x_test, y_test))

        for name, _, kwargs in runs:
            keras.utils.set_random_seed(2000 + seed)
            student = fresh_student()
            distiller = kd.Distiller(teacher=teacher, student=student)
            distiller.compile(optimizer=keras.optimizers.Adam(1e-3), loss=ce,
                              **kwargs)
            distiller.fit(x_train, y_train, epochs=args.epochs,
                          batch_size=args.batch_size, verbose=0)
            results[name].append(accuracy(student, x_test, y_test))
        print(f"seed {seed} done ({time.time() - start:.0f} s)", flush=True)

    settings = {"teacher": f"conv 32-32, dense 64; {2 * args.epochs} epochs",
                "student alone": "conv 4-8, dense 16; CE only"}
    settings.update({name: s for name, s, _ in runs})
    print()
    print(f"Student test accuracy (%) on digits, {args.seeds} seed(s), "
          f"{args.epochs} student epochs, backend "
          f"{keras.backend.backend()}, {time.time() - start:.0f} s:")
    print()
    print("| objective | settings | test accuracy (%) |")
    print("|---|---|---|")
    for name, values in results.items():
        values = 100.0 * np.asarray(values)
        print(f"| {name} | {settings[name]} | {values.mean():.2f} ± "
              f"{values.std():.2f} |")


if __name__ == "__main__":
    main()
