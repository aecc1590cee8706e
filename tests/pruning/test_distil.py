"""Prune, then distil: kd.Distiller takes a pruned teacher as its student."""

import keras
import numpy as np

import keras_kd as kd
from keras_kd.pruning import prune
from tests.pruning.blocks import images, randomize, resnet_block


def test_distiller_trains_the_pruned_teacher_and_leaves_the_teacher_alone():
    teacher = randomize(resnet_block())
    student, _ = prune(teacher, ratio=0.5)
    before_teacher = [w.copy() for w in teacher.get_weights()]
    before_student = [w.copy() for w in student.get_weights()]
    x, y = images(8), np.arange(8) % 3
    distiller = kd.Distiller(teacher, student)
    distiller.compile(optimizer=keras.optimizers.SGD(0.1),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      alpha=0.5, temperature=2.0)
    distiller.fit(x, y, epochs=1, batch_size=4, verbose=0)
    for a, b in zip(before_teacher, teacher.get_weights()):
        np.testing.assert_array_equal(a, b)
    changed = [not np.array_equal(a, b)
               for a, b in zip(before_student, student.get_weights())]
    assert any(changed)
    assert distiller.predict(x, verbose=0).shape == (8, 3)
