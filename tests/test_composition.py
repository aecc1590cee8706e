"""keras_kd.composition: the batch's masks are computed once per step."""

import keras
import numpy as np
import pytest

import keras_kd as kd
from keras_kd import composition, masking
from tests.helpers import mlp


def test_prepare_returns_the_first_calls_dict_once():
    terms = composition.Composition(kd.objectives.KD(), [])
    rng = np.random.default_rng(0)

    def logits():  # each step has its own predictions
        return keras.ops.convert_to_tensor(
            rng.normal(size=(4, 3)).astype("float32"))

    y_pred = logits()
    labels = keras.ops.convert_to_tensor(np.array([0, -1, 2, 1], "int32"))
    first = terms.prepare(y_pred, labels)      # the step's loss
    assert terms.prepare(y_pred, labels) is first   # its metrics: reused
    assert terms.prepare(y_pred, labels) is not first   # then forgotten
    # The next step computes its own: labels below 0 masked out, set to 0.
    second = terms.prepare(logits(), labels)
    assert second is not first
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(
        second["labeled"]), [True, False, True, True])
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(
        second["labels"]), [0, 0, 2, 1])
    # Other labels with the remembered predictions are not mixed up.
    other_labels = keras.ops.convert_to_tensor(np.array([1, 1, 1, 1], "int32"))
    y_pred = logits()
    terms.prepare(y_pred, labels)
    fresh = terms.prepare(y_pred, other_labels)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(
        fresh["labels"]), [1, 1, 1, 1])


@pytest.mark.skipif(keras.backend.backend() != "torch",
                    reason="counts eager calls: PyTorch runs steps eagerly "
                    "(TensorFlow and JAX trace them once)")
def test_a_pytorch_step_computes_the_masks_once(monkeypatch):
    # Before, compute_loss and compute_metrics each computed them: two
    # mask-layer calls per step, most of the PyTorch step's fixed cost.
    rng = np.random.default_rng(1)
    x = rng.random((12, 8)).astype("float32")
    y = rng.integers(0, 3, 12)
    distiller = kd.Distiller(mlp(8, "teacher", inputs=8, classes=3),
                             mlp(4, "student", inputs=8, classes=3))
    distiller.compile("sgd", keras.losses.SparseCategoricalCrossentropy(
        from_logits=True), metrics=["accuracy"])
    distiller.fit(x, y, batch_size=4, epochs=1, verbose=0)  # builds
    calls = []
    original = masking.ElementMasks.__call__

    def counted(self, logits, labels):
        calls.append(1)
        return original(self, logits, labels)

    monkeypatch.setattr(masking.ElementMasks, "__call__", counted)
    history = distiller.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert len(calls) == 3  # 3 steps, once each
    assert np.isfinite(history.history["accuracy"][0])
