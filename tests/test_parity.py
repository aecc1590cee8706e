"""Backend parity: the same weights and batch give the same loss everywhere.

Where the values come from: ``tests/regenerate_parity.py`` draws the weights
and the batch with NumPy (``parity_arrays``) and computes the loss terms in
float64 with ``tests/references.py`` (``reference_terms``), without Keras.

* The Distiller's terms are compared, on every backend, with the references
  computed now (rtol 1e-5).
* ``EXPECTED`` stores the same reference values, written by
  ``python -m tests.regenerate_parity --write``. They could be recomputed at
  each run, and are: the stored copy is kept on purpose, as a small guard
  against silent drift that a live comparison cannot see, such as a change
  of convention made in both the library and tests/references.py (a dropped
  T², another reduction), or a change in NumPy's random stream. The
  references must reproduce them to float64 round-off, the Distiller to
  float32 accuracy.
"""

import keras
import numpy as np
from keras import ops

import keras_kd as kd
from tests.helpers import mlp, to_numpy
from tests.regenerate_parity import (ALPHA, CLASSES, FITNET_WEIGHT, INPUTS,
                                     STUDENT_WIDTH, TEACHER_WIDTH,
                                     TEMPERATURE, parity_arrays,
                                     reference_terms)

# Written by `python -m tests.regenerate_parity --write`; do not edit by hand.
EXPECTED = {
    "student_loss": 2.1627753602698236,
    "distillation_loss": 3.571884025598749,
    "fitnet_loss": 5.793933146751229,
    "loss": 14.737017719502528,
}


def _setup(arrays):
    teacher = mlp(TEACHER_WIDTH, "teacher", inputs=INPUTS, classes=CLASSES)
    student = mlp(STUDENT_WIDTH, "student", inputs=INPUTS, classes=CLASSES)
    distiller = kd.Distiller(teacher, student)
    hint = kd.FitNet("teacher_hidden", "student_hidden", weight=FITNET_WEIGHT)
    distiller.compile(
        "sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        alpha=ALPHA, temperature=TEMPERATURE, feature_losses=[hint])
    for model in (teacher, student):
        for layer in ("hidden", "logits"):
            name = f"{model.name}_{layer}"
            model.get_layer(name).set_weights(list(arrays[name]))
    assert isinstance(hint.adapter, keras.layers.Dense)
    hint.adapter.set_weights(list(arrays["adapter"]))
    return distiller


def _terms(distiller, x, y):
    loss = distiller.compute_loss(x, ops.convert_to_tensor(y), distiller(x),
                                  training=False)
    values = {name: float(to_numpy(value)) for name, value
              in distiller.get_metrics_result().items() if name != "loss"}
    values["loss"] = float(to_numpy(loss))
    return values


def test_references_reproduce_the_stored_values():
    reference = reference_terms(parity_arrays())
    assert set(reference) == set(EXPECTED)
    for key, value in EXPECTED.items():
        np.testing.assert_allclose(reference[key], value, rtol=1e-9,
                                   err_msg=key)


def test_loss_matches_references_and_stored_values():
    arrays = parity_arrays()
    got = _terms(_setup(arrays), arrays["x"], arrays["y"])
    assert set(got) == set(EXPECTED)
    for key, value in reference_terms(arrays).items():
        np.testing.assert_allclose(got[key], value, rtol=1e-5, err_msg=key)
    for key, value in EXPECTED.items():
        np.testing.assert_allclose(got[key], value, rtol=1e-5, err_msg=key)
