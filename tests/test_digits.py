"""Distillation without labels on the bundled digits: the student learns from
the teacher's soft labels alone (training split), and is scored on the test
split. The figure is printed (run with -s to see it)."""

import keras
import numpy as np

import keras_kd as kd
from keras_kd.data import load_digits


def mlp(width, name):
    inputs = keras.Input((64,))
    h = keras.layers.Dense(width, activation="relu")(inputs)
    return keras.Model(inputs, keras.layers.Dense(10)(h), name=name)


def test_label_free_distillation_reaches_95_percent_on_digits():
    keras.utils.set_random_seed(0)
    (x_train, y_train), (x_test, y_test) = load_digits()
    teacher = mlp(256, "teacher")
    teacher.compile(keras.optimizers.Adam(3e-3),
                    keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                    metrics=["accuracy"])
    teacher.fit(x_train, y_train, epochs=40, batch_size=64, verbose=0)
    teacher_acc = teacher.evaluate(x_test, y_test, verbose=0)[1]

    student = mlp(32, "student")
    distiller = kd.Distiller(teacher, student)
    distiller.compile(keras.optimizers.Adam(3e-3), temperature=4.0)
    history = distiller.fit(x_train, epochs=60, batch_size=64, verbose=0)
    assert set(history.history) == {"loss", "distillation_loss"}

    predictions = distiller.predict(x_test, verbose=0).argmax(-1)
    student_acc = float((predictions == y_test).mean())
    print(f"\n[{keras.backend.backend()}] digits, no labels for the student: "
          f"teacher {teacher_acc:.4f}, distilled student {student_acc:.4f} "
          f"test accuracy ({teacher.count_params()} -> "
          f"{student.count_params()} parameters)")
    assert teacher_acc >= 0.95
    assert student_acc >= 0.95
