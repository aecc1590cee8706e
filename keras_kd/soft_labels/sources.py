"""Where a cache build reads its batches: arrays, or a batched ``tf.data`` dataset.

Inputs are one array, or a dict of equally long arrays (one per model input,
as keras-hub models take ``{"token_ids", "padding_mask"}``). Each batch is
``(x, y, sample_weight)``, ``y`` and ``sample_weight`` None when absent.
"""

import hashlib
import re

import numpy as np

from keras_kd import inputs

# Dict input names become file names (``inputs.<name>.bin``).
INPUT_NAME = re.compile(r"[A-Za-z0-9_]+", re.ASCII)


def check_input_names(keys):
    """Refuses dict input names that cannot name a cache column file.

    Example:

    >>> check_input_names(["token_ids", "padding_mask"])
    >>> check_input_names(["token ids"])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: The input name 'token ids' cannot name a cache column: ...
    """
    keys = list(keys)
    if not keys:
        raise ValueError("x is an empty dict: give at least one input array.")
    for key in keys:
        if not isinstance(key, str) or not INPUT_NAME.fullmatch(key):
            better = re.sub(r"[^A-Za-z0-9_]", "_", str(key), flags=re.ASCII)
            raise ValueError(
                f"The input name {key!r} cannot name a cache column: each "
                "input of a dict is stored as its own column (file "
                "'inputs.<name>.bin'), so names may hold only ASCII letters, "
                f"digits and underscores. Rename the key (e.g. to "
                f"{better or 'input_0'!r}) in x, and the teacher's and "
                "student's matching keras.Input(name=...); for a tf.data "
                "source, map the dataset to the new keys."
            )


def to_numpy(x):
    """An input batch as NumPy: an array, or a dict of arrays."""
    if isinstance(x, dict):
        return {k: np.asarray(v) for k, v in x.items()}
    return np.asarray(x)


def num_rows(x):
    """The batch size of an input batch (every dict entry must agree)."""
    if isinstance(x, dict):
        sizes = {k: int(v.shape[0]) if len(v.shape) else None
                 for k, v in x.items()}
        if None in sizes.values() or len(set(sizes.values())) != 1:
            raise ValueError(
                f"The inputs of a dict must be equally long arrays (one row "
                f"per sample), got lengths {sizes}."
            )
        return next(iter(sizes.values()))
    return int(np.shape(x)[0])


def batch_sha256(x):
    """SHA-256 of an input batch (an array's as before; a dict's by key)."""
    from keras_kd.soft_labels.guards import array_sha256

    if not isinstance(x, dict):
        return array_sha256(x)
    digest = hashlib.sha256()
    for key in sorted(x):
        digest.update(f"{key}:{array_sha256(x[key])}".encode())
    return digest.hexdigest()


def same_batch(a, b):
    """True when two reads of an input batch are identical."""
    if isinstance(a, dict) or isinstance(b, dict):
        return (isinstance(a, dict) and isinstance(b, dict)
                and list(a) == list(b)
                and all(same_batch(a[k], b[k]) for k in a))
    return a.shape == b.shape and np.array_equal(a, b)


def _check_x(x):
    if isinstance(x, dict):
        check_input_names(x)
    elif isinstance(x, (list, tuple)):
        raise ValueError(
            "compute_soft_labels takes inputs as one array or a dict of "
            "arrays (name -> array), got a "
            f"{type(x).__name__}. Give several inputs as a dict keyed by the "
            "teacher's input names."
        )


def split_element(element):
    """(x, y, sample_weight) of a dataset element: ``x``, ``(x,)``,
    ``(x, y)`` or ``(x, y, sample_weight)``; a dict element is ``x``."""
    if isinstance(element, (tuple, list)):
        if not 1 <= len(element) <= 3:
            raise ValueError(
                f"Dataset elements must be x, (x, y) or (x, y, "
                f"sample_weight), got a tuple of {len(element)}."
            )
        parts = list(element) + [None] * (3 - len(element))
    else:
        parts = [element, None, None]
    _check_x(parts[0])
    return tuple(parts)


def _np(value):
    return None if value is None else np.asarray(value)


def _weights(value):
    return None if value is None else np.asarray(value, dtype="float32")


class Source:
    """(x, y, sample_weight) batches of arrays or a batched tf.data.Dataset."""

    def __init__(self, x, y, batch_size, sample_weight=None):
        self.batch_size = batch_size
        self.dataset = None
        self.y = y
        self.sample_weight = sample_weight
        if inputs.is_tf_dataset(x):
            if y is not None or sample_weight is not None:
                raise ValueError(
                    "Pass labels and sample weights inside the dataset ((x, "
                    "y) or (x, y, sample_weight) batches), not as y= or "
                    "sample_weight=, when x is a tf.data.Dataset."
                )
            self.dataset = x
            cardinality = int(x.cardinality())
            self.num_batches = cardinality if cardinality >= 0 else None
            self.num_samples = None
            return
        if isinstance(x, dict):
            check_input_names(x)
            for key, value in x.items():
                if not inputs.is_array_like(value):
                    raise TypeError(
                        f"x['{key}'] must be a NumPy array (or np.memmap, or "
                        "any array with shape and slicing), got "
                        f"{type(value).__name__}."
                    )
            self.num_samples = num_rows(x)
        elif inputs.is_array_like(x):
            self.num_samples = int(x.shape[0])
        else:
            raise TypeError(
                f"x must be a NumPy array (or np.memmap, or any array with "
                f"shape and slicing), a dict of such arrays (one per model "
                f"input), or a batched tf.data.Dataset, got "
                f"{type(x).__name__}."
            )
        self.x = x
        if y is not None and len(y) != self.num_samples:
            raise ValueError(
                f"x has {self.num_samples} samples but y has {len(y)}; pass "
                "labels aligned with the inputs."
            )
        if sample_weight is not None:
            if isinstance(sample_weight, (dict, list, tuple)):
                raise TypeError(
                    "sample_weight must be one array, (n,) per sample or "
                    f"(n, length) per token, got a "
                    f"{type(sample_weight).__name__}."
                )
            if len(sample_weight) != self.num_samples:
                raise ValueError(
                    f"x has {self.num_samples} samples but sample_weight has "
                    f"{len(sample_weight)}; pass weights aligned with the "
                    "inputs."
                )
        self.num_batches = -(-self.num_samples // batch_size)

    def _slice(self, begin, end):
        x = self.x
        xb = ({k: np.asarray(v[begin:end]) for k, v in x.items()}
              if isinstance(x, dict) else np.asarray(x[begin:end]))
        yb = None if self.y is None else np.asarray(self.y[begin:end])
        wb = (None if self.sample_weight is None else
              _weights(self.sample_weight[begin:end]))
        return xb, yb, wb

    def first_batch(self):
        if self.dataset is None:
            return self._slice(0, self.batch_size)
        for element in self.dataset.take(1):
            xb, yb, wb = split_element(element)
            return to_numpy(xb), _np(yb), _weights(wb)
        raise ValueError("The dataset is empty: nothing to run the teacher on.")

    def batches(self, start_batch, start_row):
        if self.dataset is None:
            for begin in range(start_row, self.num_samples, self.batch_size):
                end = min(begin + self.batch_size, self.num_samples)
                yield self._slice(begin, end)
        else:
            for element in self.dataset.skip(start_batch):
                xb, yb, wb = split_element(element)
                yield to_numpy(xb), _np(yb), _weights(wb)
