"""The keras.io "Knowledge Distillation" recipe (MNIST), written with keras-kd.

keras.io's example (https://keras.io/examples/vision/knowledge_distillation/)
writes a ``Distiller`` by hand; keras-kd provides it. Same models, same
options: a Conv(256)-Conv(512) teacher trained 5 epochs, a Conv(16)-Conv(32)
student distilled for 3 epochs with ``alpha=0.1`` and ``temperature=10``, and
the same student trained from scratch for comparison.

Full size (tensorflow-datasets MNIST, downloaded on first use)::

    python examples/keras_io_mnist.py

Smoke size (bundled 8x8 digits, offline, seconds)::

    python examples/keras_io_mnist.py --smoke
"""

import argparse
import sys

import keras
import numpy as np

import keras_kd as kd
from keras_kd.data import load_dataset
from keras_kd.app.report import accuracy, count_params


def teacher_model(input_shape):
    """keras.io's teacher: two strided convolutions (256 and 512 filters)."""
    return keras.Sequential([
        keras.Input(shape=input_shape),
        keras.layers.Conv2D(256, (3, 3), strides=(2, 2), padding="same"),
        keras.layers.LeakyReLU(negative_slope=0.2),
        keras.layers.MaxPooling2D(pool_size=(2, 2), strides=(1, 1),
                                  padding="same"),
        keras.layers.Conv2D(512, (3, 3), strides=(2, 2), padding="same"),
        keras.layers.Flatten(),
        keras.layers.Dense(10),
    ], name="teacher")


def student_model(input_shape):
    """keras.io's student: the same shape with 16 and 32 filters."""
    return keras.Sequential([
        keras.Input(shape=input_shape),
        keras.layers.Conv2D(16, (3, 3), strides=(2, 2), padding="same"),
        keras.layers.LeakyReLU(negative_slope=0.2),
        keras.layers.MaxPooling2D(pool_size=(2, 2), strides=(1, 1),
                                  padding="same"),
        keras.layers.Conv2D(32, (3, 3), strides=(2, 2), padding="same"),
        keras.layers.Flatten(),
        keras.layers.Dense(10),
    ], name="student")


# --smoke: the bundled digits (1,212 training images, 450 test), offline.
# Their 19 steps an epoch are few next to MNIST's 938: the students need more
# epochs than the recipe's 3 to learn (about a second an epoch), the teacher
# fewer than its 5 (its 512-filter convolution costs seconds an epoch on a
# CPU; 3 epochs take it above 90% test accuracy).
SMOKE = {"teacher_epochs": 3, "epochs": 15, "max_train": None}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true",
                        help="bundled 8x8 digits, offline, a few epochs")
    parser.add_argument("--teacher-epochs", type=int, default=None,
                        help="5 (the recipe's); --smoke: SMOKE's")
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs of distillation and of the scratch "
                        "student: 3 (the recipe's); --smoke: SMOKE's")
    parser.add_argument("--max-train", type=int, default=None,
                        help="keep at most this many training examples")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the weights and of the data shuffles")
    args = parser.parse_args(argv)
    defaults = SMOKE if args.smoke else {"teacher_epochs": 5, "epochs": 3}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    keras.utils.set_random_seed(args.seed)

    if args.smoke:
        splits = load_dataset("digits", batch_size=64, seed=args.seed,
                              max_train=args.max_train)
    else:
        splits = load_dataset("mnist", batch_size=64, seed=args.seed,
                              max_train=args.max_train)
    shape = splits.input_shape

    teacher = teacher_model(shape)
    student = student_model(shape)
    student_scratch = keras.models.clone_model(student)
    student_scratch.set_weights(student.get_weights())

    print(f"Training the teacher ({count_params(teacher):,} parameters)")
    teacher.compile(
        optimizer=keras.optimizers.Adam(),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy()])
    teacher.fit(splits.train, epochs=args.teacher_epochs, verbose=2)

    print(f"Distilling into the student ({count_params(student):,} "
          "parameters): alpha=0.1, temperature=10")
    distiller = kd.Distiller(student=student, teacher=teacher)
    distiller.compile(
        optimizer=keras.optimizers.Adam(),
        metrics=[keras.metrics.SparseCategoricalAccuracy()],
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        distillation_loss="kd", alpha=0.1, temperature=10)
    distiller.fit(splits.train, epochs=args.epochs, verbose=2)

    print("Training the same student from scratch")
    student_scratch.compile(
        optimizer=keras.optimizers.Adam(),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy()])
    student_scratch.fit(splits.train, epochs=args.epochs, verbose=2)

    results = {
        "teacher": accuracy(teacher, splits.test),
        "distilled student": accuracy(distiller.student, splits.test),
        "student from scratch": accuracy(student_scratch, splits.test),
    }
    for name, acc in results.items():
        print(f"{name:>22}: test accuracy {acc:.4f}")
    assert all(np.isfinite(v) for v in results.values())
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
