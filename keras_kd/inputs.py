"""What a user's data looks like: arrays, ``tf.data`` pipelines, first batches.

Shared by the teacher check, the soft-label cache and the export, which each
need to recognise a ``tf.data.Dataset`` without importing TensorFlow (a
PyTorch or JAX user may not have it) and to peek at a first batch.
"""

import itertools
import math

import numpy as np


def is_tf_dataset(x):
    """True for a ``tf.data.Dataset`` (checked without importing TensorFlow).

    Example:

    >>> is_tf_dataset(np.zeros(3))
    False
    """
    return type(x).__module__.startswith("tensorflow") and hasattr(
        x, "take") and hasattr(x, "element_spec")


def is_array_like(x):
    """True for NumPy arrays, memory maps and other sliceable arrays."""
    return (hasattr(x, "shape") and hasattr(x, "__getitem__")
            and hasattr(x, "dtype") and not isinstance(x, (list, tuple, dict)))


def first_labeled_batch(x, y, limit=256):
    """The first ``(inputs, labels)`` batch of NumPy data or a ``tf.data``
    dataset of ``(x, y)`` elements, or None when there is none to read.

    Inputs given as dicts or lists (several model inputs) and label dicts
    (cached teacher outputs) are not read.

    Example:

    >>> xb, yb = first_labeled_batch(np.zeros((500, 3)), np.arange(500))
    >>> xb.shape, yb.shape
    ((256, 3), (256,))
    """
    if isinstance(y, dict):
        return None
    if y is not None and isinstance(x, np.ndarray):
        return x[:limit], np.asarray(y)[:limit]
    if y is None and is_tf_dataset(x):
        for element in x.take(1):
            if isinstance(element, (tuple, list)) and len(element) >= 2:
                xb, yb = element[0], element[1]
                if isinstance(xb, (dict, list, tuple)) or isinstance(yb, dict):
                    return None
                return np.asarray(xb)[:limit], np.asarray(yb)[:limit]
    return None


def cardinality(data):
    """How many elements (batches) ``data`` yields: an int, ``math.inf`` for
    an infinite data set (``ds.repeat()`` without a count), or None where it
    cannot be known without reading (a ``tf.data`` pipeline after ``filter``,
    a Python generator).

    Arrays count their rows; ``tf.data`` datasets answer from
    ``cardinality()``; anything with ``len()`` (a ``keras.utils.PyDataset``,
    a ``torch.utils.data.DataLoader``) answers from it.

    Example:

    >>> cardinality(np.zeros((5, 3)))
    5
    >>> cardinality(iter([1, 2])) is None
    True
    """
    if is_tf_dataset(data):
        n = int(data.cardinality())
        if n == -1:  # tf.data.INFINITE_CARDINALITY
            return math.inf
        return n if n >= 0 else None  # -2: tf.data.UNKNOWN_CARDINALITY
    if is_array_like(data):
        return int(data.shape[0])
    try:
        return len(data)
    except TypeError:
        return None


def refuse_infinite(data, what, fix=None):
    """Raise ``ValueError`` when ``data`` is an infinite data set.

    keras-kd reads every data set to its end only when that end exists; an
    infinite one (``ds.repeat()``) is refused with a message naming the
    argument and the fix, before anything is read. See :func:`bounded` for
    reads up to a stated number of steps.

    Args:
        data: what the user passed.
        what: the argument's name, for the message.
        fix: the way out to suggest (default: ``.take(n)``).

    Example:

    >>> refuse_infinite(np.zeros((3, 2)), "x")  # finite: nothing happens
    """
    if cardinality(data) == math.inf:
        fix = fix or f"pass a finite data set, e.g. {what}.take(100)"
        raise ValueError(
            f"{what} is an infinite data set (ds.repeat() without a count), so "
            f"reading it would never end; {fix}.")


def bounded(iterable, limit, what):
    """Yield at most ``limit`` elements of ``iterable``.

    The guard for reads whose length cannot be known in advance: a loop over
    ``bounded(ds, steps, "eval_data")`` stops after ``limit`` elements even
    when ``ds`` never ends. ``limit=None`` reads everything, and is refused
    for an infinite data set (:func:`refuse_infinite`).

    Example:

    >>> import itertools
    >>> list(bounded(itertools.count(), 3, "data"))
    [0, 1, 2]
    """
    if limit is None:
        refuse_infinite(iterable, what)
        yield from iterable
        return
    if limit < 0:
        raise ValueError(f"the number of steps to read from {what} must be "
                         f">= 0, got {limit}")
    yield from itertools.islice(iterable, int(limit))
