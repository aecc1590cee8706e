"""keras_kd.data: the bundled digits, load_dataset, and the tfds path (mocked)."""

import numpy as np
import pytest

from keras_kd.data import load_dataset, load_digits


def _arrays(ds):
    batches = list(ds.as_numpy_iterator())
    return (np.concatenate([b[0] for b in batches]),
            np.concatenate([b[1] for b in batches]))


def test_load_digits_matches_sklearn():
    from sklearn.datasets import load_digits as sk

    (x_train, y_train), (x_test, y_test) = load_digits()
    assert x_train.shape == (1347, 64) and x_test.shape == (450, 64)
    raw = sk()
    # every example is a scaled sklearn row with its label
    rows = {tuple(r): t for r, t in zip((raw.data / 16.0).astype("float32"),
                                        raw.target)}
    for x, y in zip(x_test[:20], y_test[:20]):
        assert rows[tuple(x)] == y
    (xi, _), _ = load_digits(as_images=True)
    np.testing.assert_array_equal(xi.reshape(-1, 64), x_train)


def test_load_dataset_digits_splits_and_order():
    splits = load_dataset("digits", batch_size=50, validation_fraction=0.1)
    (x_train, y_train), (x_test, y_test) = load_digits(as_images=True)
    n_val = int(round(len(x_train) * 0.1))
    assert splits.counts == {"train": len(x_train) - n_val,
                             "validation": n_val, "test": len(x_test)}
    assert splits.input_shape == (8, 8, 1) and splits.num_classes == 10
    xv, yv = _arrays(splits.validation)
    np.testing.assert_array_equal(xv, x_train[-n_val:])
    np.testing.assert_array_equal(yv, y_train[-n_val:])
    xt, yt = _arrays(splits.test)
    np.testing.assert_array_equal(xt, x_test)
    np.testing.assert_array_equal(yt, y_test)
    # the training split is shuffled but holds the same examples
    xr, yr = _arrays(splits.train)
    assert sorted(yr.tolist()) == sorted(y_train[:-n_val].tolist())
    np.testing.assert_allclose(xr.sum(), x_train[:-n_val].sum(), rtol=1e-5)


def test_load_dataset_limits_and_resize():
    splits = load_dataset("digits", image_size=16, max_train=40, max_test=30,
                          batch_size=16)
    x, y = _arrays(splits.train)
    assert x.shape == (40, 16, 16, 1) and splits.input_shape == (16, 16, 1)
    assert _arrays(splits.test)[0].shape[0] == 30
    assert 0.0 <= x.min() and x.max() <= 1.0 + 1e-6


@pytest.mark.parametrize("kwargs, message", [
    ({"batch_size": 0}, "batch_size must be >= 1"),
    ({"validation_fraction": 1.0}, "validation_fraction must be in"),
    ({"max_train": 0}, "max_train must be >= 1"),
    ({"image_size": (8, 8, 8)}, "image_size must be"),
])
def test_load_dataset_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        load_dataset("digits", **kwargs)


def test_load_dataset_tfds_with_mock_data():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=20):
        splits = load_dataset("fashion_mnist", batch_size=8, max_train=12,
                              image_size=(10, 12))
        x, y = _arrays(splits.train)
        xt, _ = _arrays(splits.test)
    assert splits.input_shape == (10, 12, 1) and splits.num_classes == 10
    assert x.shape == (12, 10, 12, 1) and x.dtype == np.float32
    assert y.dtype == np.int32 and set(y) <= set(range(10))
    assert 0.0 <= x.min() and x.max() <= 1.0 + 1e-6
    assert xt.shape[1:] == (10, 12, 1)


def test_load_dataset_unknown_tfds_name():
    with pytest.raises(ValueError, match="tfds.list_builders"):
        load_dataset("no_such_dataset_xyz", download=False)
