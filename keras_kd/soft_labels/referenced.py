"""The caller's inputs, referenced by an in-memory cache, checked on every use.

An in-memory cache built from NumPy arrays keeps a reference to them rather
than a copy: a copy would double the inputs' memory, which for images dwarfs
the logits. The cached outputs then belong to the inputs *as they were*: an
array shuffled or rescaled in place afterwards would pair new inputs with old
outputs. So the build records a CRC-32 per row of every input (4 bytes per
sample), and each use compares the rows it reads: all of them for
``SoftLabels.inputs`` and ``as_numpy()`` (one pass, about 1 s per GB), each
batch's for ``as_dataset()`` while it is read (one pass per epoch). A
changed row is refused, naming it.
"""

import zlib

import numpy as np


def row_crc32(array):
    """The CRC-32 of each row (along the first axis) of ``array``.

    Example:

    >>> a = np.arange(6, dtype="int32").reshape(3, 2)
    >>> crcs = row_crc32(a)
    >>> crcs.dtype, crcs.shape, int(crcs[0]) == zlib.crc32(a[0].tobytes())
    (dtype('uint32'), (3,), True)
    """
    rows = np.ascontiguousarray(array)
    n = int(rows.shape[0])
    size = int(np.prod(rows.shape[1:], dtype=np.int64)) * rows.itemsize
    flat = rows.reshape(n, -1).view(np.uint8) if n and size else \
        np.zeros((n, 0), np.uint8)
    return np.fromiter((zlib.crc32(row) for row in flat), dtype=np.uint32,
                       count=n)


class ReferencedInputs:
    """Inputs an in-memory cache references: an array (or array-like with
    slicing) or a dict of them, with a CRC-32 per row recorded batch by
    batch as the build reads them.

    Example:

    >>> x = np.ones((4, 3), "float32")
    >>> inputs = ReferencedInputs(x, batch_size=2)
    >>> inputs.add(x[:2]); inputs.add(x[2:])
    >>> inputs.check() is x
    True
    >>> x[3] = 2.0  # changed in place after the build
    >>> inputs.check()  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: The inputs (x) of this in-memory soft-label cache changed since it was built: row 3 differs...
    """

    def __init__(self, x, batch_size):
        self.x = x
        self.batch_size = batch_size
        self.keys = sorted(x) if isinstance(x, dict) else None
        self._parts = {key: [] for key in self.keys or [None]}
        self._crcs = None

    def _of(self, x, key):
        return x if key is None else x[key]

    def add(self, xb):
        """Records the row checksums of the build's next input batch."""
        for key, parts in self._parts.items():
            parts.append(row_crc32(self._of(xb, key)))

    @property
    def crcs(self):
        """The recorded checksums, ``{key: (n,) uint32}`` (key None for
        one array)."""
        if self._crcs is None:
            self._crcs = {key: np.concatenate(parts) if parts else
                          np.zeros(0, np.uint32)
                          for key, parts in self._parts.items()}
            self._parts = {key: [value] for key, value in self._crcs.items()}
        return self._crcs

    def check_rows(self, indices, arrays, keys=None):
        """Refuses rows ``indices`` read as ``arrays`` (one per key of
        ``keys``, by default all keys in order) that differ from the
        build's."""
        indices = np.asarray(indices)
        for key, array in zip(keys or self.keys or [None], arrays):
            found = row_crc32(array)
            stored = self.crcs[key][indices]
            if not np.array_equal(found, stored):
                first = int(indices[np.flatnonzero(found != stored)[0]])
                self._refuse(key, first)

    def check(self):
        """Refuses inputs whose rows differ from the build's (all of them,
        read ``batch_size`` rows at a time); returns them."""
        n = len(self.crcs[self.keys[0] if self.keys else None])
        for key in self.keys or [None]:
            try:
                array = self._of(self.x, key)
            except KeyError:
                self._refuse(key, None, "it is gone from the dict")
            if int(array.shape[0]) != n:
                self._refuse(key, None, f"it has {array.shape[0]} rows, "
                             f"not {n}")
            for begin in range(0, n, self.batch_size):
                end = min(begin + self.batch_size, n)
                self.check_rows(np.arange(begin, end),
                                [np.asarray(array[begin:end])], [key])
        return self.x

    def _refuse(self, key, row, what=None):
        where = "" if key is None else f" (in x[{key!r}])"
        what = what or f"row {row} differs{where}"
        raise ValueError(
            f"The inputs (x) of this in-memory soft-label cache changed "
            f"since it was built: {what}. An in-memory cache references the "
            "NumPy inputs it was built from (no copy), and its teacher "
            "outputs belong to them as they were: shuffled or rescaled in "
            "place, they would be paired with other inputs' outputs. Leave x "
            "unchanged while the cache is in use (pass x.copy() to "
            "compute_soft_labels to change x afterwards), shuffle with "
            "as_dataset(shuffle=True), or rebuild the cache from the new x.")
