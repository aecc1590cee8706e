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


# ----------------------------------------------------------------------
# Models that output probabilities (issue 28 #19)
# ----------------------------------------------------------------------
def _np_softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _dense_head(activation, name="head"):
    inputs = keras.Input((3,))
    return keras.Model(inputs, keras.layers.Dense(
        4, activation=activation, name="predictions")(inputs), name=name)


def _softmax_layer_model():
    inputs = keras.Input((3,))
    z = keras.layers.Dense(4)(inputs)
    return keras.Model(inputs, keras.layers.Softmax(name="probs")(z))


def _activation_layer_model():
    return keras.Sequential([keras.Input((3,)), keras.layers.Dense(4),
                             keras.layers.Activation("softmax")])


def _nested_softmax_model():
    inputs = keras.Input((3,))
    h = keras.layers.Dense(5, activation="relu")(inputs)
    head = keras.Sequential([keras.Input((5,)),
                             keras.layers.Dense(4, activation="softmax")],
                            name="inner_head")
    return keras.Model(inputs, head(h))


def _lambda_softmax_model():  # no layer says "softmax": found by its outputs
    inputs = keras.Input((3,))
    z = keras.layers.Dense(4)(inputs)
    return keras.Model(inputs, keras.layers.Lambda(
        lambda t: keras.ops.softmax(t, axis=-1))(z))


@pytest.mark.parametrize("make", [
    lambda: _dense_head("softmax"), lambda: _dense_head("sigmoid"),
    _softmax_layer_model, _activation_layer_model, _nested_softmax_model,
    _lambda_softmax_model,
], ids=["dense_softmax", "dense_sigmoid", "softmax_layer", "activation",
        "nested", "lambda"])
def test_with_temperature_refuses_a_model_that_outputs_probabilities(make):
    # Before the fix the copy's rows summed to 1 / T (0.5 at T = 2).
    with pytest.raises(ValueError, match="outputs probabilities") as info:
        calibration.with_temperature(make(), 2.0)
    assert "classifier_activation=None" in str(info.value)
    assert "set_weights" in str(info.value)


def test_the_named_fix_gives_softmax_of_logits_over_t():
    keras.utils.set_random_seed(1)
    probs_model = _dense_head("softmax")
    x = np.random.default_rng(2).standard_normal((6, 3)).astype("float32")
    # The fix the error names: the same model without the activation, same
    # weights, then Softmax after the calibrated copy.
    logits_model = _dense_head(None, name="logits")
    logits_model.set_weights(probs_model.get_weights())
    scaled = calibration.with_temperature(logits_model, 2.0)
    serving = keras.Sequential([scaled, keras.layers.Softmax()])
    kernel, bias = probs_model.get_weights()
    z = x.astype("float64") @ kernel + bias  # NumPy, independent of Keras
    expected = _np_softmax(z / 2.0)
    np.testing.assert_allclose(serving.predict(x, verbose=0), expected,
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(serving.predict(x, verbose=0).sum(-1), 1.0,
                               rtol=1e-6)
    # The original model's probabilities are softmax(z), as built.
    np.testing.assert_allclose(probs_model.predict(x, verbose=0),
                               _np_softmax(z), rtol=1e-5, atol=1e-6)


def test_with_temperature_accepts_log_softmax_outputs():
    # Log-probabilities are logits shifted per row: softmax(log p / T) is
    # softmax(z / T), so such a model is not refused.
    keras.utils.set_random_seed(3)
    inputs = keras.Input((3,))
    dense = keras.layers.Dense(4)
    model = keras.Model(inputs, keras.layers.Activation("log_softmax")(
        dense(inputs)))
    x = np.random.default_rng(4).standard_normal((5, 3)).astype("float32")
    out = calibration.with_temperature(model, 3.0).predict(x, verbose=0)
    kernel, bias = dense.get_weights()
    np.testing.assert_allclose(_np_softmax(out.astype("float64")),
                               _np_softmax((x @ kernel + bias) / 3.0),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("call, message", [
    # (#25) each used to fail inside the function: an unpack error, a
    # "'float' object is not iterable", "could not convert string to float"
    (lambda: calibration.fit_temperature(np.zeros((2, 2)), [0, 1],
                                         bounds=(0.05,)), "a pair"),
    (lambda: calibration.fit_temperature(np.zeros((2, 2)), [0, 1],
                                         bounds=0.05), "a pair"),
    (lambda: calibration.fit_temperature(np.zeros((2, 2)), [0, 1],
                                         bounds=(0.05, 20.0, 40.0)), "a pair"),
    (lambda: calibration.fit_temperature(np.zeros((2, 2)), [0, 1],
                                         bounds=("a", "b")), "finite numbers"),
    (lambda: calibration.fit_temperature(np.zeros((2, 2)), [0, 1],
                                         bounds=(0.0, 1.0)), "0 < low < high"),
    (lambda: calibration.fit_temperature(np.zeros((2, 2)), [0, 1],
                                         bounds=(1.0, np.inf)), "finite"),
    # tol <= 0 never ended the golden-section search
    (lambda: calibration.fit_temperature(np.zeros((2, 2)), [0, 1], tol=0),
     "tol must be"),
    (lambda: calibration.fit_temperature(np.zeros((2, 2)), [0, 1], tol=-1.0),
     "tol must be"),
    (lambda: calibration.nll(np.zeros((2, 2)), [0, 1], temperature="abc"),
     "temperature must be a positive"),
    (lambda: calibration.softmax(np.zeros((2, 2)), temperature=None),
     "temperature must be a positive"),
    (lambda: calibration.ece(np.zeros((2, 2)), [0, 1], num_bins="abc"),
     "num_bins must be an integer"),
    (lambda: calibration.ece(np.zeros((2, 2)), [0, 1], num_bins=2.5),
     "num_bins must be an integer"),
])
def test_malformed_arguments_get_a_clear_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_numpy_scalars_are_accepted_as_bounds_and_bins():
    rng = np.random.default_rng(5)
    z = rng.normal(size=(200, 4))
    y = rng.integers(0, 4, 200)
    t = calibration.fit_temperature(z, y, bounds=(np.float32(0.1),
                                                  np.float64(10.0)))
    assert t == pytest.approx(calibration.fit_temperature(z, y,
                                                          bounds=(0.1, 10.0)))
    assert calibration.ece(z, y, num_bins=np.int64(10)) == pytest.approx(
        calibration.ece(z, y, num_bins=10))
