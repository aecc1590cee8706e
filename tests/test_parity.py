"""Backend parity: the same weights and batch give the same loss everywhere.

The expected values were computed once (see ``EXPECTED``) and are checked on
every backend the suite runs on (rtol 1e-5), and against NumPy.
"""

import keras
import numpy as np
from keras import ops

import keras_kd as kd
from tests.helpers import mlp, to_numpy

# loss terms for the fixed weights and batch of `_setup`, computed once and
# stored: every backend must reproduce them.
EXPECTED = {
    "loss": 11.0351926,
    "student_loss": 4.48900556,
    "distillation_loss": 3.63420052,
    "fitnet_loss": 3.57227528,
}


def _setup():
    teacher, student = mlp(16, "teacher", inputs=12, classes=5), mlp(
        6, "student", inputs=12, classes=5)
    distiller = kd.Distiller(teacher, student)
    distiller.compile(
        "sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        alpha=0.3, temperature=3.0,
        feature_losses=[kd.FitNet("teacher_hidden", "student_hidden",
                                  weight=2.0)])
    rng = np.random.default_rng(1234)
    for v in distiller.trainable_weights + distiller.teacher.weights:
        v.assign(rng.normal(0.0, 0.5, size=tuple(v.shape)).astype("float32"))
    x = rng.normal(size=(8, 12)).astype("float32")
    y = rng.integers(0, 5, 8).astype("int32")
    return distiller, x, y


def _terms(distiller, x, y):
    loss = distiller.compute_loss(x, ops.convert_to_tensor(y), distiller(x),
                                  training=False)
    values = {name: float(to_numpy(value)) for name, value
              in distiller.get_metrics_result().items() if name != "loss"}
    values["loss"] = float(to_numpy(loss))
    return values


def _numpy_terms(distiller, x, y):
    def relu(z):
        return np.maximum(z, 0)

    def log_softmax(z):
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))

    def weights(model):
        return [to_numpy(w).astype("float64") for w in model.weights]

    tw1, tb1, tw2, tb2 = weights(distiller.teacher)
    sw1, sb1, sw2, sb2 = weights(distiller.student)
    aw, ab = (to_numpy(w).astype("float64")
              for w in distiller.feature_objectives[0].adapter.weights)
    x = x.astype("float64")
    ht, hs = relu(x @ tw1 + tb1), relu(x @ sw1 + sb1)
    t, s = ht @ tw2 + tb2, hs @ sw2 + sb2
    T = 3.0
    log_p, log_q = log_softmax(t / T), log_softmax(s / T)
    soft = (T * T * (np.exp(log_p) * (log_p - log_q)).sum(-1)).mean()
    hard = -log_softmax(s)[np.arange(len(y)), y].mean()
    hint = ((hs @ aw + ab - ht) ** 2).mean()
    return {"student_loss": hard, "distillation_loss": soft,
            "fitnet_loss": hint, "loss": 0.3 * hard + 0.7 * soft + 2 * hint}


def test_loss_matches_stored_values_and_numpy():
    distiller, x, y = _setup()
    got = _terms(distiller, x, y)
    reference = _numpy_terms(distiller, x, y)
    for key, value in reference.items():
        np.testing.assert_allclose(got[key], value, rtol=1e-5)
    for key, value in EXPECTED.items():
        np.testing.assert_allclose(got[key], value, rtol=1e-5)
