"""keras_kd.calibration: NLL, ECE (Guo et al., 2017), temperature scaling."""

import math

import keras
import numpy as np
import pytest

from keras_kd import calibration


def _probs(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_nll_matches_hand_computed_values():
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.3, 0.3, 0.4]])
    y = [0, 2, 0]
    # -(ln 0.7 + ln 0.8 + ln 0.3) / 3
    expected = -(math.log(0.7) + math.log(0.8) + math.log(0.3)) / 3
    assert calibration.nll(np.log(p), y) == pytest.approx(expected, rel=1e-12)
    # shifting the logits of a row changes nothing; T divides them first
    z = np.log(p) + np.array([[5.0], [-3.0], [100.0]])
    assert calibration.nll(z, y) == pytest.approx(expected, rel=1e-9)
    q = _probs(np.log(p) / 2.0)
    assert calibration.nll(np.log(p), y, temperature=2.0) == pytest.approx(
        -np.mean(np.log(q[[0, 1, 2], y])), rel=1e-12)
    # large logits stay finite (a stable log-sum-exp)
    assert calibration.nll([[1000.0, 0.0]], [1]) == pytest.approx(1000.0)


def test_ece_matches_hand_computed_bins():
    # confidences 0.95 (right), 0.92 (wrong), 0.55 (right), 0.45 (right, 3
    # classes), with M = 10 bins: (0.9, 1.0] holds two (acc 0.5, conf
    # 0.935), (0.5, 0.6] one (acc 1, conf 0.55), (0.4, 0.5] one (acc 1,
    # conf 0.45).
    p = np.array([[0.95, 0.05, 0.0], [0.92, 0.08, 0.0],
                  [0.55, 0.45, 0.0], [0.45, 0.30, 0.25]])
    y = [0, 1, 0, 0]
    z = np.log(np.clip(p, 1e-300, None))
    expected = (2 / 4 * abs(0.5 - 0.935) + 1 / 4 * abs(1 - 0.55)
                + 1 / 4 * abs(1 - 0.45))
    assert calibration.ece(z, y, num_bins=10) == pytest.approx(expected,
                                                               abs=1e-12)
    bins = calibration.reliability(z, y, num_bins=10)
    np.testing.assert_array_equal(bins["count"],
                                  [0, 0, 0, 0, 1, 1, 0, 0, 0, 2])
    assert bins["accuracy"][9] == 0.5
    assert bins["confidence"][9] == pytest.approx(0.935)
    assert np.isnan(bins["accuracy"][0])


def test_ece_against_an_independent_loop_with_15_bins():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(500, 10)) * 3
    y = rng.integers(0, 10, 500)
    p = _probs(z)
    conf, pred = p.max(1), p.argmax(1)
    total = 0.0
    for m in range(1, 16):
        in_bin = (conf > (m - 1) / 15) & (conf <= m / 15)
        if in_bin.any():
            total += in_bin.mean() * abs((pred[in_bin] == y[in_bin]).mean()
                                         - conf[in_bin].mean())
    assert calibration.ece(z, y) == pytest.approx(total, abs=1e-12)
    # a confidence exactly on an edge goes to the lower bin: (0.4, 0.6]
    half = np.log([[0.5, 0.5]])
    assert calibration.reliability(half, [0], num_bins=5)["count"][2] == 1


def test_fitted_temperature_lowers_nll_on_an_overconfident_model():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(size=(3000, 10)) * 1.5
    y = np.array([rng.choice(10, p=row) for row in _probs(true_logits)])
    overconfident = 4.0 * true_logits
    val, test = slice(0, 2000), slice(2000, None)
    t = calibration.fit_temperature(overconfident[val], y[val])
    assert 3.5 < t < 4.5
    # the fitted T is the minimum: a grid of NumPy NLLs agrees
    grid = np.linspace(0.5, 8.0, 751)
    losses = [-np.mean(np.log(_probs(overconfident[val] / g)[
        np.arange(2000), y[val]])) for g in grid]
    assert abs(t - grid[int(np.argmin(losses))]) <= 0.01 + 1e-9
    before = calibration.nll(overconfident[test], y[test])
    after = calibration.nll(overconfident[test], y[test], temperature=t)
    assert after < before - 0.5
    assert calibration.ece(overconfident[test], y[test], temperature=t) < (
        calibration.ece(overconfident[test], y[test]) / 3)


def test_fit_temperature_clips_to_the_bounds():
    # every prediction right: the NLL falls as T -> 0
    z = np.array([[2.0, 0.0], [0.0, 2.0]])
    low, high = calibration.TEMPERATURE_RANGE
    t = calibration.fit_temperature(z, [0, 1])
    # within the first step of the search's grid (61 points over log T),
    # where the NLL (about e^-40) no longer changes in float64
    assert low <= t <= low * (high / low) ** (1 / 60)
    assert calibration.nll(z, [0, 1], temperature=t) < 1e-15
    # every prediction wrong: T grows to the upper bound (uniform outputs)
    t = calibration.fit_temperature(z, [1, 0])
    assert high / (high / low) ** (1 / 60) <= t <= high


def _student():
    inputs = keras.Input((40, 1))
    h = keras.layers.Conv1D(4, 5, padding="same", activation="relu",
                            name="student_conv1")(inputs)
    h = keras.layers.GlobalAveragePooling1D()(h)
    return keras.Model(inputs, keras.layers.Dense(10, name="student_logits")(
        h), name="student")


def test_with_temperature_divides_logits_and_keeps_argmax(tmp_path):
    keras.utils.set_random_seed(0)
    model = _student()
    x = np.random.default_rng(0).standard_normal((256, 40, 1)).astype(
        "float32")
    logits = model.predict(x, verbose=0)
    before = [w.copy() for w in model.get_weights()]
    scaled = calibration.with_temperature(model, 2.5)
    out = scaled.predict(x, verbose=0)
    np.testing.assert_array_equal(np.argmax(out, -1), np.argmax(logits, -1))
    np.testing.assert_allclose(out, logits / 2.5, rtol=1e-6, atol=1e-7)
    assert scaled.layers[-1].name == "temperature_scaling"
    assert scaled.get_layer("student_conv1") is not model.get_layer(
        "student_conv1")
    # the original is unchanged, the copy shares no weights with it
    scaled.get_layer("student_logits").kernel.assign(
        np.zeros((4, 10), "float32"))
    for a, b in zip(model.get_weights(), before):
        np.testing.assert_array_equal(a, b)
    # it saves and loads like any model
    path = tmp_path / "scaled.keras"
    scaled2 = calibration.with_temperature(model, 2.5)
    scaled2.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded.predict(x, verbose=0),
                               scaled2.predict(x, verbose=0), rtol=1e-6)


@pytest.mark.parametrize("call, message", [
    (lambda: calibration.nll(np.zeros((2, 3)), [0, 3]), "labels must be in"),
    (lambda: calibration.nll(np.zeros((2, 3)), np.eye(3)[:2]), "one-hot"),
    (lambda: calibration.ece(np.zeros(3), [0]), r"\(n, num_classes\)"),
    (lambda: calibration.ece(np.zeros((2, 3)), [0]), "one label per row"),
    (lambda: calibration.nll([[np.nan, 0.0]], [0]), "NaN"),
    (lambda: calibration.nll(np.zeros((1, 2)), [0], temperature=0),
     "temperature=1.5"),
    (lambda: calibration.fit_temperature(np.zeros((1, 2)), [0],
                                         bounds=(2, 1)), "0 < low < high"),
])
def test_bad_arguments_name_the_fix(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_with_temperature_refuses_a_subclassed_model():
    class Sub(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(2)

        def call(self, x):
            return self.dense(x)

    model = Sub()
    model(np.ones((1, 3), "float32"))
    with pytest.raises(ValueError, match="keras.Model\\(inputs, model"):
        calibration.with_temperature(model, 2.0)
