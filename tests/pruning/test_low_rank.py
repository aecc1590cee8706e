"""keras_kd.pruning.low_rank: SVD factorization of Dense and 1x1 convolutions."""

import keras
import numpy as np
import pytest

from keras_kd.pruning import factorize, svd_rank


# Low-rank factorization (NumPy SVD): no backend-specific path of its own (the Keras
# and keras-kd calls it makes are tested on every backend elsewhere), so CI runs
# this file under one backend (tests/conftest.py, `one_backend`; a test's own
# mark wins).
pytestmark = pytest.mark.one_backend("torch")


def _conv_model():
    i = keras.Input((5, 5, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="c3")(i)
    x = keras.layers.Conv2D(6, 1, strides=2, padding="same", name="pw")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(7, activation="relu", name="fc")(x)
    return keras.Model(i, keras.layers.Dense(4, name="head")(x))


def _x(shape, n=3):
    return np.random.default_rng(0).normal(size=(n,) + shape).astype("float32")


def test_full_rank_leaves_outputs_unchanged():
    model = _conv_model()
    x = _x((5, 5, 3))
    small, report = factorize(model, layers=["pw", "fc", "head"], rank=1000)
    np.testing.assert_allclose(small.predict(x, verbose=0),
                               model.predict(x, verbose=0), atol=1e-5)
    assert report["layers"]["pw"]["rank"] == 6
    assert report["layers"]["fc"]["rank"] == 6       # min(6, 7)
    assert report["layers"]["head"]["energy"] == pytest.approx(1.0)
    assert [type(l).__name__ for l in small.layers].count("Conv2D") == 3
    assert small.get_layer("pw_low_rank").filters == 6


def test_truncation_is_the_best_rank_r_approximation():
    """Eckart-Young: ||W - A B||_F² = Σ_{i>r} σ_i², from NumPy's spectrum."""
    model = _conv_model()
    small, report = factorize(model, layers=["fc"], rank=2)
    w = keras.ops.convert_to_numpy(model.get_layer("fc").kernel)
    a = keras.ops.convert_to_numpy(small.get_layer("fc_low_rank").kernel)
    b = keras.ops.convert_to_numpy(small.get_layer("fc").kernel)
    assert a.shape == (6, 2) and b.shape == (2, 7)
    s = np.linalg.svd(w.astype(np.float64), compute_uv=False)
    np.testing.assert_allclose(np.sum((w - a @ b) ** 2), np.sum(s[2:] ** 2),
                               rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(report["layers"]["fc"]["energy"],
                               np.sum(s[:2] ** 2) / np.sum(s ** 2), rtol=1e-6)
    # the bias moved to the second layer unchanged
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(small.get_layer("fc").bias),
        keras.ops.convert_to_numpy(model.get_layer("fc").bias))
    assert report["layers"]["fc"]["params_after"] == 2 * (6 + 7) + 7
    assert small.count_params() == model.count_params() - (6 * 7) + 2 * 13


def test_energy_picks_the_smallest_rank():
    s = np.array([4.0, 2.0, 1.0, 0.5])
    shares = np.cumsum(s ** 2) / np.sum(s ** 2)      # .753, .941, .988, 1
    for energy in (0.5, 0.753, 0.76, 0.95, 0.99, 1.0):
        expected = next(i + 1 for i, c in enumerate(shares) if c >= energy - 1e-12)
        assert svd_rank(s, energy) == expected
    model = _conv_model()
    w = keras.ops.convert_to_numpy(model.get_layer("head").kernel)
    sv = np.linalg.svd(w, compute_uv=False)
    shares = np.cumsum(sv ** 2) / np.sum(sv ** 2)
    _, report = factorize(model, layers=["head"], energy=0.8)
    assert report["layers"]["head"]["rank"] == int(np.argmax(shares >= 0.8)) + 1


def test_sequential_and_automatic_choice_and_save(tmp_path):
    model = keras.Sequential([keras.Input((12,)), keras.layers.Dense(10, name="a"),
                              keras.layers.Dense(3, name="b")])
    small, report = factorize(model, rank=2)
    assert isinstance(small, keras.Sequential)
    # a: 2*(12+10) < 120 factorized; b: 2*(10+3) = 26 < 30 factorized
    assert sorted(report["layers"]) == ["a", "b"]
    small, report = factorize(model, rank=3)
    assert sorted(report["layers"]) == ["a"] and "b" in report["skipped"]
    path = str(tmp_path / "m.keras")
    small.save(path)
    again = keras.saving.load_model(path)
    x = _x((12,))
    np.testing.assert_allclose(again.predict(x, verbose=0),
                               small.predict(x, verbose=0), atol=1e-6)


def test_refusals_name_the_layer():
    model = _conv_model()
    with pytest.raises(ValueError, match="'c3'.*Conv2D.*1x1"):
        factorize(model, layers=["c3"], rank=2)
    with pytest.raises(ValueError, match="no layer named 'nope'"):
        factorize(model, layers=["nope"], rank=2)
    with pytest.raises(ValueError, match="exactly one of rank"):
        factorize(model, rank=2, energy=0.9)
    with pytest.raises(ValueError, match=r"energy=1.5 must be in \(0, 1\]"):
        factorize(model, energy=1.5)
