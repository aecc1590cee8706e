"""keras.applications models prune, match their masked original, train,
save and load (weights=None, 32x32 inputs; one backend each)."""

import keras
import numpy as np
import pytest

from keras_kd.pruning import prune
from tests.pruning.test_surgery import _masked, _predict

APPS = {
    "MobileNetV2": lambda: keras.applications.MobileNetV2(
        input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=10,
        classifier_activation=None),
    "EfficientNetB0": lambda: keras.applications.EfficientNetB0(
        input_shape=(32, 32, 3), weights=None, classes=10,
        classifier_activation=None),
    "ResNet50": lambda: keras.applications.ResNet50(
        input_shape=(32, 32, 3), weights=None, classes=10,
        classifier_activation=None),
}


# one backend each; not JAX, whose first fit() compiles these graphs for
# minutes on a loaded CPU (the block tests cover JAX)
@pytest.mark.parametrize("name", [
    pytest.param(name, marks=pytest.mark.one_backend(backend))
    for name, backend in (("MobileNetV2", "torch"), ("EfficientNetB0", "torch"),
                          ("ResNet50", "tensorflow"))])
def test_application_prunes_trains_saves_and_loads(name, tmp_path):
    model = APPS[name]()
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype("float32")
    small, report = prune(model, ratio=0.5, round_to=8)
    assert report["params_after"] == small.count_params() < 0.5 * model.count_params()
    assert [type(l) for l in small.layers] == [type(l) for l in model.layers]
    assert all(g["channels_after"] % 8 == 0 or
               g["channels_after"] == g["channels_before"]
               for g in report["groups"])
    expected = _predict(_masked(model, report), x)
    np.testing.assert_allclose(_predict(small, x), expected,
                               atol=1e-4 * max(1.0, np.abs(expected).max()))
    small.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    small.fit(x, np.array([1, 2]), epochs=1, verbose=0)
    path = str(tmp_path / "pruned.keras")
    small.save(path)
    again = keras.saving.load_model(path)
    np.testing.assert_allclose(_predict(again, x), _predict(small, x), atol=1e-5)
