"""Dataset loaders: tensorflow-datasets by name, and the bundled offline default.

The offline default is scikit-learn's bundled handwritten digits (1,797 real
8×8 grey images, 10 classes): it needs no download, so examples, tests and the
``keras-kd`` command run anywhere. Real work loads a tensorflow-datasets
dataset by name (``cifar10``, ``fashion_mnist``, ...).
"""

import numpy as np


def load_digits(test_fraction=0.25, seed=0, as_images=False):
    """Scikit-learn's bundled digits, split into train and test, scaled to [0, 1].

    Args:
        test_fraction: share of the samples held out for testing (stratified).
        seed: seed of the split.
        as_images: return ``(n, 8, 8, 1)`` images instead of ``(n, 64)`` vectors.

    Returns:
        ``((x_train, y_train), (x_test, y_test))``: float32 inputs, int32 labels.

    Example:

    >>> (x_train, y_train), (x_test, y_test) = load_digits()
    >>> x_train.shape, x_test.shape
    ((1347, 64), (450, 64))
    """
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    if not 0.0 < test_fraction < 1.0:
        raise ValueError(
            f"test_fraction must be in (0, 1), got {test_fraction!r}; e.g. 0.25."
        )
    data = sk_load_digits()
    x = (data.data / 16.0).astype("float32")
    y = data.target.astype("int32")
    if as_images:
        x = x.reshape(-1, 8, 8, 1)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_fraction, random_state=seed, stratify=y)
    return (x_train, y_train), (x_test, y_test)


def load_tfds(name, split=("train", "test"), image_size=None, batch_size=None,
              shuffle=True, seed=0, data_dir=None, download=True):
    """Loads a tensorflow-datasets image classification dataset by name.

    Images are scaled to [0, 1] float32 and, with ``image_size``, resized
    (bilinear); grey images keep one channel. Labels are int32.

    Args:
        name: a tfds name such as ``"cifar10"`` or ``"fashion_mnist"``.
        split: the split names to load (a tuple gives a tuple of datasets).
        image_size: ``(height, width)`` to resize to, or None to keep.
        batch_size: batch the datasets when given.
        shuffle: shuffle the first split (the training split).
        seed: shuffle seed.
        data_dir: where tfds keeps its data (its default when None).
        download: let tfds download the data when it is missing.

    Returns:
        A ``tf.data.Dataset`` of ``(image, label)`` per split, and the
        ``tfds.core.DatasetInfo``: ``(datasets, info)``.

    Example (needs the data set or network access):

    >>> (train, test), info = load_tfds("cifar10", batch_size=64)  # doctest: +SKIP
    """
    import tensorflow as tf
    import tensorflow_datasets as tfds

    single = isinstance(split, str)
    splits = [split] if single else list(split)
    try:
        datasets, info = tfds.load(name, split=splits, as_supervised=True,
                                   with_info=True, data_dir=data_dir,
                                   download=download)
    except Exception as error:  # tfds raises several types for a bad name
        raise ValueError(
            f"Could not load tensorflow-datasets dataset {name!r} "
            f"(splits {splits}): {error}. Check the name against "
            "tfds.list_builders(), and that the data is downloaded or the "
            "network is reachable; offline, use the bundled digits "
            "(keras_kd.data.load_digits)."
        ) from error

    def prepare(image, label):
        image = tf.cast(image, tf.float32) / 255.0
        if image_size is not None:
            image = tf.image.resize(image, image_size)
        return image, tf.cast(label, tf.int32)

    out = []
    for i, ds in enumerate(datasets):
        if shuffle and i == 0:
            ds = ds.shuffle(10_000, seed=seed)
        ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
        if batch_size:
            ds = ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
        out.append(ds)
    return (out[0] if single else tuple(out)), info
