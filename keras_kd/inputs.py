"""What a user's data looks like: arrays, ``tf.data`` pipelines, first batches.

Shared by the teacher check, the soft-label cache and the export, which each
need to recognise a ``tf.data.Dataset`` without importing TensorFlow (a
PyTorch or JAX user may not have it) and to peek at a first batch.
"""

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
