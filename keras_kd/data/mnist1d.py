"""MNIST-1D: a small, offline, procedurally generated 1-D classification set.

MNIST-1D (Greydanus & Kobak, "Scaling Down Deep Learning with MNIST-1D", ICML
2024) turns ten hand-made 12-point templates of the digits into 40-point 1-D
signals by random padding, translation, shear, scaling, correlated and i.i.d.
noise. The ``mnist1d`` package generates it from its templates with NumPy, so
no download is needed, and the data set is hard enough that a small model's
architecture and training shows in its accuracy (a linear model reaches about
32%, a small CNN about 94% on the original 4,000/1,000 split), which makes it a
quick benchmark for distillation.
"""

import random

import numpy as np

from keras_kd.extras import require

# The package's own defaults (mnist1d.data.get_dataset_args): 5,000 samples,
# 80% of them for training, seed 42, signals of 40 points.
DEFAULT_NUM_SAMPLES = 5000
DEFAULT_SEED = 42
NUM_CLASSES = 10


def load_mnist1d(num_samples=DEFAULT_NUM_SAMPLES, seed=DEFAULT_SEED,
                 test_fraction=0.2):
    """Generates MNIST-1D with the ``mnist1d`` package, shaped for 1-D convs.

    The samples are ``mnist1d.data.make_dataset``'s, unchanged but for shape
    and type: ``num_samples / 10`` signals per digit, shuffled, standardised
    over the whole set (``(x - mean) / std``, as the package does), the first
    ``1 - test_fraction`` of them for training. With the defaults this is the
    package's (and the paper's) data set: 4,000 training and 1,000 test
    signals, seed 42.

    The package seeds NumPy's and Python's global generators to build the
    data; their states are restored afterwards, so calling this does not
    change the random numbers the caller draws next.

    Reference: Greydanus & Kobak, "Scaling Down Deep Learning with MNIST-1D",
    ICML 2024 (https://github.com/greydanus/mnist1d).

    Args:
        num_samples: signals to generate, a multiple of 10 (one tenth per
            digit), at least 20.
        seed: the generator's seed (the package's default is 42).
        test_fraction: the share held out for testing, in (0, 1).

    Returns:
        ``((x_train, y_train), (x_test, y_test))``: float32 inputs of shape
        ``(n, 40, 1)`` (length, channels: ready for ``keras.layers.Conv1D``),
        int32 labels in 0..9.

    Raises:
        ImportError: without the ``mnist1d`` package, naming
            ``pip install "keras-kd[data]"``.

    Example:

    >>> (x_train, y_train), (x_test, y_test) = load_mnist1d(num_samples=200)
    >>> x_train.shape, x_test.shape, x_train.dtype, y_train.dtype
    ((160, 40, 1), (40, 40, 1), dtype('float32'), dtype('int32'))
    """
    mnist1d_data = require("mnist1d.data")

    if (isinstance(num_samples, bool) or not isinstance(
            num_samples, (int, np.integer)) or num_samples < 20
            or num_samples % NUM_CLASSES):
        raise ValueError(
            f"num_samples must be a multiple of 10 (one tenth per digit) and "
            f"at least 20, got {num_samples!r}; e.g. num_samples=5000.")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(
            f"test_fraction must be in (0, 1), got {test_fraction!r}; e.g. "
            "0.2.")
    args = mnist1d_data.get_dataset_args()
    args.num_samples = int(num_samples)
    args.seed = int(seed)
    args.train_split = 1.0 - float(test_fraction)
    n_train = int(num_samples * args.train_split)
    if n_train < 1 or n_train >= num_samples:
        raise ValueError(
            f"test_fraction={test_fraction!r} leaves no training or no test "
            f"signals out of {num_samples}; e.g. test_fraction=0.2.")

    numpy_state, python_state = np.random.get_state(), random.getstate()
    try:
        dataset = mnist1d_data.make_dataset(args)
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)

    def shaped(x, y):
        return (np.asarray(x, "float32")[..., None],
                np.asarray(y).astype("int32"))

    return (shaped(dataset["x"], dataset["y"]),
            shaped(dataset["x_test"], dataset["y_test"]))
