"""Dataset loaders: tensorflow-datasets by name, and the bundled offline default.

The offline default is scikit-learn's bundled handwritten digits (1,797 real
8×8 grey images, 10 classes): it needs no download, so examples, tests and the
``keras-kd`` command run anywhere. Real work loads a tensorflow-datasets
dataset by name (``cifar10``, ``fashion_mnist``, ...).
"""

import numpy as np

from keras_kd.extras import require


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
    sk_load_digits = require("sklearn.datasets").load_digits
    train_test_split = require("sklearn.model_selection").train_test_split

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
    tf = require("tensorflow")
    tfds = require("tensorflow_datasets")

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


class Splits:
    """Train, validation and test ``tf.data`` pipelines plus what models need.

    Attributes:
        name: the dataset name.
        train, validation, test: batched ``tf.data.Dataset`` of
            ``(image, label)``; ``train`` reshuffles every epoch, the others
            keep their order.
        num_classes: the number of classes.
        input_shape: one example's shape, e.g. ``(8, 8, 1)``.
        counts: ``{"train": n, "validation": n, "test": n}`` (None when
            unknown).
    """

    def __init__(self, name, train, validation, test, num_classes,
                 input_shape, counts):
        self.name = name
        self.train = train
        self.validation = validation
        self.test = test
        self.num_classes = int(num_classes)
        self.input_shape = tuple(int(d) for d in input_shape)
        self.counts = counts

    def __repr__(self):
        return (f"Splits({self.name!r}, input_shape={self.input_shape}, "
                f"num_classes={self.num_classes}, counts={self.counts})")


def _parse_image_size(image_size):
    if image_size is None:
        return None
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    image_size = tuple(int(s) for s in image_size)
    if len(image_size) != 2 or min(image_size) < 1:
        raise ValueError(
            f"image_size must be a positive int or (height, width), got "
            f"{image_size!r}; e.g. image_size=32.")
    return image_size


def load_dataset(name="digits", image_size=None, batch_size=64,
                 validation_fraction=0.1, max_train=None, max_test=None,
                 seed=0, data_dir=None, download=True, num_samples=None):
    """Loads an image classification dataset as train/validation/test pipelines.

    ``"digits"`` is the bundled offline default (scikit-learn's 8×8 digits as
    ``(8, 8, 1)`` images, no download); ``"mnist1d"`` is MNIST-1D as
    generated offline by :func:`keras_kd.data.load_mnist1d` with the
    package's defaults (5,000 signals of shape ``(40, 1)``, seed 42, 1,000 of
    them for testing; ``seed`` does not change the data; ``num_samples``
    changes the number of signals); any other name is
    loaded with
    tensorflow-datasets (its ``train`` split, the last ``validation_fraction``
    of which is held out for validation, and its ``test`` split). Images are
    scaled to [0, 1] and, with ``image_size``, resized (bilinear). With
    ``max_train``/``max_test`` only the first examples are kept (a fixed
    subset, cached), for quick runs.

    Args:
        name: ``"digits"``, ``"mnist1d"`` or a tensorflow-datasets name (``"cifar10"``,
            ``"fashion_mnist"``, ``"mnist"``, ...).
        image_size: an int or ``(height, width)`` to resize to; None keeps the
            dataset's size.
        batch_size: the batch size of the pipelines.
        validation_fraction: share of the training data held out.
        max_train: keep at most this many training examples.
        max_test: keep at most this many validation and test examples.
        seed: seed of the shuffles and of the digits split.
        data_dir: tensorflow-datasets' data directory (its default if None).
        download: let tensorflow-datasets download missing data.
        num_samples: ``"mnist1d"`` only: the number of signals to generate, a
            multiple of 10 of at least 20, 80% of them for training (the
            last ``validation_fraction`` of those held out) and 20% for
            testing; None: the package's 5,000.

    Returns:
        A :class:`Splits`.

    Example:

    >>> splits = load_dataset("digits", batch_size=32)
    >>> splits.input_shape, splits.num_classes, splits.counts["test"]
    ((8, 8, 1), 10, 450)
    """
    tf = require("tensorflow")

    image_size = _parse_image_size(image_size)
    if batch_size is None or int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}.")
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in (0, 1), got "
                         f"{validation_fraction!r}; e.g. 0.1.")
    for arg, value in (("max_train", max_train), ("max_test", max_test)):
        if value is not None and int(value) < 1:
            raise ValueError(f"{arg} must be >= 1 or None, got {value!r}.")

    def finish(ds, train, cache):
        if cache:
            ds = ds.cache()
        if train:
            ds = ds.shuffle(4096, seed=seed, reshuffle_each_iteration=True)
        return ds.batch(int(batch_size)).prefetch(tf.data.AUTOTUNE)

    if num_samples is not None and name != "mnist1d":
        raise ValueError(
            f"num_samples sets the size of the generated 'mnist1d', not of "
            f"{name!r}: leave it out (size {name!r} with max_train and "
            "max_test, --max-train and --max-test).")
    if name in ("digits", "mnist1d"):
        if name == "digits":
            (x_train, y_train), (x_test, y_test) = load_digits(
                seed=seed, as_images=True)
        else:
            if image_size is not None:
                raise ValueError(
                    "mnist1d holds 1-D signals of 40 points, not images: "
                    "leave image_size (--image-size) unset.")
            from keras_kd.data.mnist1d import load_mnist1d

            sized = {} if num_samples is None else dict(
                num_samples=num_samples)
            (x_train, y_train), (x_test, y_test) = load_mnist1d(**sized)
        n_val = max(1, int(round(len(x_train) * validation_fraction)))
        x_val, y_val = x_train[-n_val:], y_train[-n_val:]
        x_train, y_train = x_train[:-n_val], y_train[:-n_val]
        if max_train:
            x_train, y_train = x_train[:max_train], y_train[:max_train]
        if max_test:
            x_val, y_val = x_val[:max_test], y_val[:max_test]
            x_test, y_test = x_test[:max_test], y_test[:max_test]
        if image_size is not None:
            x_train, x_val, x_test = (
                tf.image.resize(a, image_size).numpy()
                for a in (x_train, x_val, x_test))
        make = tf.data.Dataset.from_tensor_slices
        return Splits(
            name,
            finish(make((x_train, y_train)), True, False),
            finish(make((x_val, y_val)), False, False),
            finish(make((x_test, y_test)), False, False),
            10, x_train.shape[1:],
            {"train": len(x_train), "validation": len(x_val),
             "test": len(x_test)})

    cut = int(round(100 * (1.0 - validation_fraction)))
    (train, val, test), info = load_tfds(
        name, split=(f"train[:{cut}%]", f"train[{cut}%:]", "test"),
        image_size=image_size, shuffle=False, seed=seed, data_dir=data_dir,
        download=download)
    if "label" not in info.features or "image" not in info.features:
        raise ValueError(
            f"keras-kd trains image classifiers: dataset {name!r} has "
            f"features {list(info.features)}, not 'image' and 'label'.")
    num_classes = info.features["label"].num_classes
    shape = tuple(info.features["image"].shape)
    if image_size is not None:
        shape = tuple(image_size) + shape[-1:]
    if None in shape:
        raise ValueError(
            f"The images of {name!r} vary in size {shape}; pass image_size "
            "(--image-size), e.g. 224, to resize them to one size.")
    if max_train:
        train = train.take(int(max_train))
    if max_test:
        val, test = val.take(int(max_test)), test.take(int(max_test))
    counts = {}
    for key, split in (("train", "train"), ("test", "test")):
        try:
            counts[key] = int(info.splits[split].num_examples)
        except Exception:  # unknown (e.g. mocked data)
            counts[key] = None
    if counts.get("train") is not None:
        full = counts["train"]
        counts["validation"] = full - int(full * cut / 100)
        counts["train"] = full - counts["validation"]
    else:
        counts["validation"] = None
    if max_train and counts["train"] is not None:
        counts["train"] = min(counts["train"], int(max_train))
    if max_test:
        for key in ("validation", "test"):
            if counts[key] is not None:
                counts[key] = min(counts[key], int(max_test))
    small = max_train is not None or (
        counts["train"] is not None
        and counts["train"] * _prod(shape) * 4 < 2 ** 30)
    return Splits(name, finish(train, True, small), finish(val, False, small),
                  finish(test, False, small), num_classes, shape, counts)


def _prod(shape):
    out = 1
    for d in shape:
        out *= int(d)
    return out
