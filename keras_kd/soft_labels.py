"""Precomputed teacher outputs (offline distillation).

Live distillation runs the teacher at every step of every epoch. When the
inputs are not augmented, the teacher's outputs are the same each epoch: run
the teacher once, store its logits (and, for feature objectives, its tapped
features) beside the inputs, and train the student from the stored outputs.
A training step then costs about as much as training the student alone.

The stored outputs reach the :class:`~keras_kd.Distiller` as targets,
``y = {"teacher_logits": t, "labels": y, "teacher_features": [...]}``, so that
each output travels with its sample through shuffling and batching; the
Distiller then never calls the teacher.

Cached outputs describe the inputs *as they were when the cache was built*.
Random augmentation applied afterwards (to the dataset returned by
:meth:`SoftLabels.as_dataset`) changes the inputs but not the stored
outputs, so the student would imitate the teacher on images it never saw:
use live distillation with augmentation.
"""

import hashlib
import json
import os

import keras
import numpy as np

from keras_kd import taps

_FORMAT = "keras-kd soft labels"
_VERSION = 1
_MANIFEST = "manifest.json"
_FLOAT16_MAX = 65504.0


# ----------------------------------------------------------------------
# Fingerprints
# ----------------------------------------------------------------------
def teacher_fingerprint(teacher):
    """Identifies a teacher: name, SHA-256 of its weights, output shape.

    The checksum covers every weight's shape, dtype and values in order, so
    a retrained or reloaded-with-other-weights teacher gets another one.

    Args:
        teacher: a built ``keras.Model``.

    Returns:
        A dict ``{"name", "weights_sha256", "output_shape"}``.

    Example:

    >>> import keras
    >>> inputs = keras.Input((4,))
    >>> teacher = keras.Model(inputs, keras.layers.Dense(3)(inputs), name="t")
    >>> fp = teacher_fingerprint(teacher)
    >>> fp["name"], fp["output_shape"], len(fp["weights_sha256"])
    ('t', [None, 3], 64)
    """
    digest = hashlib.sha256()
    for weight in teacher.weights:
        value = np.ascontiguousarray(keras.ops.convert_to_numpy(weight.value))
        digest.update(f"{value.shape}{value.dtype}".encode())
        digest.update(value.tobytes())
    shape = taps.output_shape(teacher)
    return {
        "name": teacher.name,
        "weights_sha256": digest.hexdigest(),
        "output_shape": None if shape is None else list(shape),
    }


def _array_sha256(array):
    array = np.ascontiguousarray(array)
    return hashlib.sha256(
        f"{array.shape}{array.dtype}".encode() + array.tobytes()).hexdigest()


# ----------------------------------------------------------------------
# Top-k compression
# ----------------------------------------------------------------------
def compress_top_k(logits, k):
    """Keeps the k largest logits of each row (float16) and their indices.

    The other ``C − k`` classes are summarised by one number per row, their
    log-mean-exp ``m = log((1 / (C − k)) Σ_{j ∉ top-k} exp(t_j))`` (float32).
    :func:`expand_top_k` rebuilds full logits from the three arrays.

    Args:
        logits: ``(n, C)`` array of teacher logits.
        k: how many classes to keep, ``1 <= k <= C``.

    Returns:
        ``(values, indices, fill)``: ``(n, k)`` float16 logits sorted in
        decreasing order, ``(n, k)`` class indices (uint16 when ``C <= 65535``,
        else int32) and ``(n,)`` float32 fill values (0 when ``k == C``).

    Example:

    >>> import numpy as np
    >>> values, indices, fill = compress_top_k(np.array([[3.0, 1.0, 2.0]]), 2)
    >>> values.tolist(), indices.tolist()
    ([[3.0, 2.0]], [[0, 2]])
    """
    logits = np.asarray(logits, dtype="float32")
    if logits.ndim != 2:
        raise ValueError(
            f"Top-k compression needs (samples, classes) logits, got shape "
            f"{logits.shape}. Use top_k=None for teachers with other outputs."
        )
    classes = logits.shape[1]
    if not isinstance(k, (int, np.integer)) or not 1 <= k <= classes:
        raise ValueError(
            f"top_k must be an integer in [1, {classes}] (the class count), "
            f"got {k!r}. Use top_k=None to store all logits."
        )
    k = int(k)
    if logits.size and float(np.max(np.abs(logits))) > _FLOAT16_MAX:
        raise ValueError(
            "The teacher's logits exceed the float16 range (65504), so they "
            "cannot be stored in float16 top-k form. Use top_k=None."
        )
    order = np.argsort(-logits, axis=1, kind="stable")
    indices = order[:, :k]
    values = np.take_along_axis(logits, indices, axis=1)
    if k < classes:
        rest = np.take_along_axis(logits, order[:, k:], axis=1).astype(
            "float64")
        top = rest.max(axis=1, keepdims=True)
        fill = (top[:, 0] + np.log(np.mean(np.exp(rest - top), axis=1)))
    else:
        fill = np.zeros((logits.shape[0],))
    index_dtype = "uint16" if classes <= 65535 else "int32"
    return (values.astype("float16"), indices.astype(index_dtype),
            fill.astype("float32"))


def expand_top_k(values, indices, fill, num_classes):
    """Rebuilds full logits from :func:`compress_top_k`'s arrays.

    The kept classes get their stored logits; every other class gets the
    row's fill value ``m`` (the log-mean-exp of the dropped logits):

        t̂_c = t_c (c in top-k),   t̂_c = m = log((1/(C−k)) Σ_{j∉top-k} e^{t_j})

    so that at temperature 1, ``softmax(t̂)`` keeps the top-k probabilities
    and spreads the remaining mass ``1 − Σ_top-k p_c`` uniformly over the
    ``C − k`` other classes: the "marginal smoothing with top-K" soft labels
    of Shen & Xing, "A Fast Knowledge Distillation Framework for Visual
    Recognition" (FKD), ECCV 2022, arXiv:2112.01528. At another temperature
    T, ``softmax(t̂ / T)`` is an approximation of ``softmax(t / T)``: the
    dropped classes share one logit, their log-mean-exp. With ``k == C``
    nothing is dropped and ``t̂`` equals the float16-rounded logits.

    Args:
        values: ``(n, k)`` kept logits.
        indices: ``(n, k)`` their class indices.
        fill: ``(n,)`` fill logits.
        num_classes: the class count C.

    Returns:
        A ``(n, C)`` float32 array.

    Example:

    >>> import numpy as np
    >>> t = np.array([[3.0, 1.0, 2.0, 1.0]])
    >>> expand_top_k(*compress_top_k(t, 2), num_classes=4).tolist()
    [[3.0, 1.0, 2.0, 1.0]]
    """
    values = np.asarray(values, dtype="float32")
    indices = np.asarray(indices).astype("int64")
    fill = np.asarray(fill, dtype="float32")
    dense = np.repeat(fill[:, None], num_classes, axis=1)
    np.put_along_axis(dense, indices, values, axis=1)
    return dense


# ----------------------------------------------------------------------
# Column storage: in memory, or raw files mapped with np.memmap
# ----------------------------------------------------------------------
class _Column:
    """One per-sample array, grown batch by batch (memory or a .bin file)."""

    def __init__(self, name, dtype, row_shape, directory=None):
        self.name = name
        self.dtype = np.dtype(dtype)
        self.row_shape = tuple(int(d) for d in row_shape)
        self.directory = directory
        self._chunks = []
        self._array = None

    @property
    def row_bytes(self):
        return int(self.dtype.itemsize * np.prod(self.row_shape, dtype=np.int64))

    @property
    def file(self):
        return os.path.join(self.directory, f"{self.name}.bin")

    def spec(self):
        return {"dtype": self.dtype.str, "shape": list(self.row_shape)}

    def truncate(self, rows):
        """Drops what lies past ``rows`` (a batch torn by an interruption)."""
        if self.directory is None:
            return
        mode = "r+b" if os.path.exists(self.file) else "w+b"
        with open(self.file, mode) as f:
            f.truncate(rows * self.row_bytes)

    def append(self, rows):
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        if tuple(rows.shape[1:]) != self.row_shape:
            raise ValueError(
                f"'{self.name}' rows have shape {rows.shape[1:]} but the first "
                f"batch had {self.row_shape}: every batch must have the same "
                "per-sample shape (pad or resize the inputs)."
            )
        if self.directory is None:
            self._chunks.append(rows)
        else:
            with open(self.file, "ab") as f:
                f.write(rows.tobytes())
                f.flush()
                os.fsync(f.fileno())

    def array(self, rows):
        """The column as an array: in memory, or a read-only memory map."""
        if self._array is not None:
            return self._array
        if self.directory is None:
            self._array = (np.concatenate(self._chunks) if self._chunks else
                           np.zeros((0,) + self.row_shape, self.dtype))
            self._chunks = [self._array]
        elif rows == 0:
            self._array = np.zeros((0,) + self.row_shape, self.dtype)
        else:
            self._array = np.memmap(self.file, dtype=self.dtype, mode="r",
                                    shape=(rows,) + self.row_shape)
        return self._array


# ----------------------------------------------------------------------
# Input sources
# ----------------------------------------------------------------------
def _is_tf_dataset(x):
    return type(x).__module__.startswith("tensorflow") and hasattr(
        x, "element_spec") and hasattr(x, "take")


def _is_array_like(x):
    return hasattr(x, "shape") and hasattr(x, "__getitem__") and hasattr(
        x, "dtype")


def _random_ops(dataset):
    """Names of random or shuffling ops in a tf.data pipeline's graph.

    Two reads of a pipeline can agree even with random augmentation (a
    global seed replays the same draws on each new iterator), so the graph
    itself is inspected too. Returns [] when the graph cannot be read.
    """
    import tensorflow as tf

    try:
        graph = tf.compat.v1.GraphDef()
        graph.ParseFromString(dataset._as_serialized_graph().numpy())
    except Exception:  # noqa: BLE001 -- private API; the read check remains
        return []
    names = {node.op for node in graph.node}
    for function in graph.library.function:
        names |= {node.op for node in function.node_def}
    return sorted(n for n in names if "Random" in n or "Shuffle" in n)


def _split_element(element):
    """(x, y) from a dataset element: ``x`` or ``(x, y[, sample_weight])``."""
    if isinstance(element, (tuple, list)):
        if len(element) == 1:
            return element[0], None
        return element[0], element[1]
    if isinstance(element, dict):
        raise ValueError(
            "compute_soft_labels takes datasets of x or (x, y) batches with a "
            "single input array, got a dict element. Map the dataset to "
            "(x, y) tuples first."
        )
    return element, None


def _np(value):
    return None if value is None else np.asarray(value)


class _Source:
    """Batches of (x, y) from arrays or a batched tf.data.Dataset."""

    def __init__(self, x, y, batch_size):
        self.batch_size = batch_size
        self.dataset = None
        if _is_tf_dataset(x):
            if y is not None:
                raise ValueError(
                    "Pass labels inside the dataset ((x, y) batches), not as "
                    "y=, when x is a tf.data.Dataset."
                )
            self.dataset = x
            cardinality = int(x.cardinality())
            self.num_batches = cardinality if cardinality >= 0 else None
            self.num_samples = None
        elif _is_array_like(x) and not isinstance(x, (list, tuple, dict)):
            if y is not None and len(y) != len(x):
                raise ValueError(
                    f"x has {len(x)} samples but y has {len(y)}; pass labels "
                    "aligned with the inputs."
                )
            self.x, self.y = x, y
            self.num_samples = int(x.shape[0])
            self.num_batches = -(-self.num_samples // batch_size)
        else:
            raise TypeError(
                f"x must be a NumPy array (or np.memmap, or any array with "
                f"shape and slicing) or a batched tf.data.Dataset, got "
                f"{type(x).__name__}."
            )

    def first_batch(self):
        if self.dataset is None:
            xb = np.asarray(self.x[:self.batch_size])
            return xb, _np(None if self.y is None else self.y[:self.batch_size])
        for element in self.dataset.take(1):
            xb, yb = _split_element(element)
            return np.asarray(xb), _np(yb)
        raise ValueError("The dataset is empty: nothing to run the teacher on.")

    def batches(self, start_batch, start_row):
        if self.dataset is None:
            for begin in range(start_row, self.num_samples, self.batch_size):
                end = min(begin + self.batch_size, self.num_samples)
                yb = None if self.y is None else np.asarray(self.y[begin:end])
                yield np.asarray(self.x[begin:end]), yb
        else:
            for element in self.dataset.skip(start_batch):
                xb, yb = _split_element(element)
                yield np.asarray(xb), _np(yb)


# ----------------------------------------------------------------------
# The cache
# ----------------------------------------------------------------------
class SoftLabels:
    """A teacher's outputs over a dataset, kept beside the inputs.

    Built by :func:`compute_soft_labels` or reopened by :meth:`load`. Feed it
    to ``Distiller.fit`` through :meth:`as_dataset` (a ``tf.data.Dataset``,
    any backend) or :meth:`as_numpy`; each element is
    ``(x, {"teacher_logits": t, "labels": y, "teacher_features": (...)})``
    ("labels" when labels were given, "teacher_features" when feature layers
    were cached: a tuple in ``as_dataset``, since tf.data would stack a list
    into one tensor; a list in ``as_numpy``).

    Memory (or disk) cost per sample, in bytes: ``4·C`` for float32 logits,
    or ``4·k + 4`` with ``top_k=k`` (2-byte float16 value + 2-byte index per
    kept class, 4-byte index when C > 65535, plus one float32 fill value);
    ``4·prod(shape)`` per cached feature layer (float32; a 8×8×64 map is
    16,384 bytes); the inputs' own size when they are stored
    (``bytes_per_sample`` adds it all up).

    Attributes:
        path: the cache directory, or None for an in-memory cache.
        manifest: the JSON manifest (teacher fingerprint, sizes, progress).
    """

    def __init__(self, manifest, columns, inputs=None, labels=None, path=None):
        self.manifest = manifest
        self.path = path
        self._columns = columns
        self._inputs = inputs
        self._labels = labels

    # -------------------------------------------------------------- info
    @property
    def num_samples(self):
        """How many samples the cache holds."""
        return int(self.manifest["rows_done"])

    @property
    def num_classes(self):
        """The teacher's class count C."""
        return int(self.manifest["num_classes"])

    @property
    def top_k(self):
        """k of the top-k compression, or None when all logits are kept."""
        return self.manifest["top_k"]

    @property
    def feature_layers(self):
        """The cached teacher layers, in the order of ``teacher_features``."""
        return list(self.manifest["feature_layers"])

    @property
    def bytes_per_sample(self):
        """Storage per sample in bytes: outputs, labels and stored inputs."""
        return int(sum(c.row_bytes for c in self._columns.values()))

    def _col(self, name):
        return self._columns[name].array(self.num_samples)

    @property
    def inputs(self):
        """The inputs, aligned with the outputs (array or memory map)."""
        if self._inputs is not None:
            return self._inputs
        return self._col("inputs")

    @property
    def labels(self):
        """The labels, or None when none were given."""
        if self._labels is not None:
            return self._labels
        return self._col("labels") if "labels" in self._columns else None

    def teacher_logits(self, indices=None):
        """Full float32 teacher logits, rebuilt from top-k when compressed.

        Args:
            indices: sample indices (default: all samples).
        """
        sel = slice(None) if indices is None else np.asarray(indices)
        if self.top_k is None:
            return np.asarray(self._col("logits")[sel], dtype="float32")
        return expand_top_k(self._col("topk_values")[sel],
                            self._col("topk_indices")[sel],
                            self._col("topk_fill")[sel], self.num_classes)

    def teacher_features(self, indices=None):
        """The cached teacher features (a list, one array per layer)."""
        sel = slice(None) if indices is None else np.asarray(indices)
        return [np.asarray(self._col(f"feature_{i}")[sel], dtype="float32")
                for i in range(len(self.feature_layers))]

    def _targets(self, indices=None):
        sel = slice(None) if indices is None else np.asarray(indices)
        targets = {"teacher_logits": self.teacher_logits(indices)}
        if self.feature_layers:
            targets["teacher_features"] = self.teacher_features(indices)
        labels = self.labels
        if labels is not None:
            targets["labels"] = np.asarray(labels[sel])
        return targets

    # -------------------------------------------------------------- checks
    def check(self, teacher=None, distiller=None, num_samples=None,
              num_classes=None):
        """Refuses a cache that does not belong to this teacher or data.

        Args:
            teacher: the teacher the outputs must come from (its name,
                weights checksum and output shape are compared).
            distiller: a compiled :class:`~keras_kd.Distiller`; its teacher,
                class count and feature objectives' teacher layers (in
                order) are compared.
            num_samples: the dataset size the cache must cover.
            num_classes: the class count the cache must have.

        Raises:
            ValueError: naming what differs and how to fix it.
        """
        where = f"at '{self.path}'" if self.path else "in memory"
        fix = ("Rebuild it with kd.compute_soft_labels(teacher, x, "
               "path=<a new directory>) (or overwrite=True).")
        if distiller is not None:
            teacher = teacher or distiller.teachers[0]
            classes = taps.output_shape(distiller.student)
            if classes is not None and classes[-1] is not None:
                num_classes = num_classes or int(classes[-1])
            layers = [f.teacher_layer for f in distiller.feature_objectives]
            if layers and layers != self.feature_layers:
                raise ValueError(
                    f"The Distiller's feature objectives tap teacher layers "
                    f"{layers} but the cache {where} holds features of "
                    f"{self.feature_layers}. Build the cache with "
                    f"feature_layers={layers} (same order)."
                )
        if teacher is not None:
            expected = teacher_fingerprint(teacher)
            stored = self.manifest["teacher"]
            for key, what in (("name", "name"),
                              ("output_shape", "output shape"),
                              ("weights_sha256", "weights checksum")):
                if expected[key] != stored[key]:
                    raise ValueError(
                        f"The soft-label cache {where} was built for another "
                        f"teacher: its {what} is {stored[key]!r}, this "
                        f"teacher's is {expected[key]!r}. Cached outputs are "
                        f"only valid for the teacher that made them. {fix}"
                    )
        if num_samples is not None and int(num_samples) != self.num_samples:
            raise ValueError(
                f"The soft-label cache {where} holds {self.num_samples} "
                f"samples but the dataset has {num_samples}. Cached outputs "
                f"are aligned sample by sample with the data they were built "
                f"from. {fix}"
            )
        if num_classes is not None and int(num_classes) != self.num_classes:
            raise ValueError(
                f"The soft-label cache {where} holds {self.num_classes}-class "
                f"teacher logits but {num_classes} classes were expected (the "
                f"student's output width). Give the student "
                f"{self.num_classes} output units, or rebuild the cache with "
                "the matching teacher."
            )
        return self

    # -------------------------------------------------------------- outputs
    def as_numpy(self):
        """``(x, targets)`` in memory, for ``Distiller.fit(x, targets)``.

        ``targets`` is ``{"teacher_logits", "labels"?, "teacher_features"?}``
        with full float32 logits (rebuilt from top-k when compressed); the
        memory cost is that of the dense arrays.
        """
        return np.asarray(self.inputs), self._targets()

    def as_dataset(self, batch_size=32, shuffle=True, seed=None,
                   drop_remainder=False, distiller=None):
        """A ``tf.data.Dataset`` of ``(x, targets)`` batches for ``fit``.

        Samples are read by index (from memory or the memory-mapped files),
        so data larger than memory streams from disk; top-k logits are
        expanded per batch. Shuffling permutes indices with
        ``Dataset.shuffle(n, seed)``, reshuffling every epoch: the same seed
        gives the same order as ``from_tensor_slices((x, y)).shuffle(n,
        seed).batch(batch_size)`` over the original data.

        Do not map a random augmentation over the result: the cached outputs
        describe the un-augmented inputs.

        Args:
            batch_size: samples per batch.
            shuffle: shuffle the samples each epoch.
            seed: the shuffle seed.
            drop_remainder: drop the last incomplete batch.
            distiller: when given, :meth:`check` the cache against it first.

        Example:

        >>> import keras, numpy as np, keras_kd as kd
        >>> from keras_kd.soft_labels import compute_soft_labels
        >>> def mlp(width, name):
        ...     inputs = keras.Input((16,))
        ...     h = keras.layers.Dense(width, activation="relu")(inputs)
        ...     return keras.Model(inputs, keras.layers.Dense(4)(h), name=name)
        >>> teacher, student = mlp(64, "teacher"), mlp(8, "student")
        >>> x = np.random.rand(64, 16).astype("float32")
        >>> y = np.random.randint(0, 4, 64)
        >>> cache = compute_soft_labels(teacher, x, y, batch_size=32)
        >>> distiller = kd.Distiller(teacher=teacher, student=student)
        >>> distiller.compile(loss=keras.losses.SparseCategoricalCrossentropy(
        ...     from_logits=True))
        >>> history = distiller.fit(cache.as_dataset(16, seed=0), epochs=1,
        ...                         verbose=0)
        """
        import tensorflow as tf

        if distiller is not None:
            self.check(distiller=distiller)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(
                f"batch_size must be a positive integer, got {batch_size!r}.")
        n = self.num_samples
        if n == 0:
            raise ValueError("The soft-label cache is empty.")
        inputs = self.inputs
        labels = self.labels
        n_feat = len(self.feature_layers)
        x_dtype = np.dtype(inputs.dtype)
        specs = [(x_dtype, tuple(inputs.shape[1:])),
                 (np.dtype("float32"), (self.num_classes,))]
        specs += [(np.dtype("float32"),
                   self._columns[f"feature_{i}"].row_shape)
                  for i in range(n_feat)]
        if labels is not None:
            specs.append((np.dtype(labels.dtype), tuple(labels.shape[1:])))

        def gather(idx):
            targets = self._targets(idx)
            out = [np.asarray(inputs[idx]), targets["teacher_logits"]]
            out += targets.get("teacher_features", [])
            if labels is not None:
                out.append(targets["labels"])
            return [np.asarray(a, dtype=d) for a, (d, _) in zip(out, specs)]

        def load(idx):
            arrays = tf.numpy_function(
                gather, [idx], [tf.as_dtype(d) for d, _ in specs],
                stateful=False)
            for array, (_, shape) in zip(arrays, specs):
                array.set_shape((None,) + shape)
            targets = {"teacher_logits": arrays[1]}
            if n_feat:
                targets["teacher_features"] = tuple(arrays[2:2 + n_feat])
            if labels is not None:
                targets["labels"] = arrays[-1]
            return arrays[0], targets

        ds = tf.data.Dataset.range(n)
        if shuffle:
            ds = ds.shuffle(n, seed=seed, reshuffle_each_iteration=True)
        ds = ds.batch(batch_size, drop_remainder=drop_remainder)
        return ds.map(load).prefetch(tf.data.AUTOTUNE)

    # -------------------------------------------------------------- loading
    @classmethod
    def load(cls, path, teacher=None, num_samples=None, num_classes=None):
        """Reopens a complete cache written by :func:`compute_soft_labels`.

        Arrays are memory-mapped, not read. Pass ``teacher`` (and the
        dataset size) to refuse a cache built for another teacher or data.

        Args:
            path: the cache directory.
            teacher: optional teacher to :meth:`check` against.
            num_samples: optional dataset size to check.
            num_classes: optional class count to check.
        """
        manifest = _read_manifest(path)
        if manifest is None:
            raise FileNotFoundError(
                f"No soft-label cache at '{path}' (no {_MANIFEST}). Build one "
                "with kd.compute_soft_labels(teacher, x, path=...)."
            )
        if not manifest["complete"]:
            raise ValueError(
                f"The soft-label cache at '{path}' is incomplete "
                f"({manifest['rows_done']} rows done): its build was "
                "interrupted. Rerun compute_soft_labels with the same "
                "arguments to finish it."
            )
        cache = cls(manifest, _open_columns(manifest, path), path=path)
        return cache.check(teacher=teacher, num_samples=num_samples,
                           num_classes=num_classes)


def _read_manifest(path):
    file = os.path.join(path, _MANIFEST)
    if not os.path.exists(file):
        return None
    with open(file) as f:
        manifest = json.load(f)
    if manifest.get("format") != _FORMAT or manifest.get("version") != _VERSION:
        raise ValueError(
            f"'{file}' is not a keras-kd soft-label manifest (version "
            f"{_VERSION}). Pass an empty or new directory as path."
        )
    return manifest


def _write_manifest(path, manifest):
    tmp = os.path.join(path, _MANIFEST + ".tmp")
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(path, _MANIFEST))


def _open_columns(manifest, path):
    return {name: _Column(name, spec["dtype"], spec["shape"], path)
            for name, spec in manifest["columns"].items()}


def _make_columns(xb, yb, outputs, top_k, store_inputs, directory):
    logits, features = outputs
    cols = []
    if store_inputs:
        cols.append(("inputs", xb.dtype, xb.shape[1:]))
    if yb is not None:
        cols.append(("labels", yb.dtype, yb.shape[1:]))
    classes = logits.shape[-1]
    if top_k is None:
        cols.append(("logits", "float32", logits.shape[1:]))
    else:
        index_dtype = "uint16" if classes <= 65535 else "int32"
        cols += [("topk_values", "float16", (top_k,)),
                 ("topk_indices", index_dtype, (top_k,)),
                 ("topk_fill", "float32", ())]
    cols += [(f"feature_{i}", "float32", f.shape[1:])
             for i, f in enumerate(features)]
    return {name: _Column(name, dtype, shape, directory)
            for name, dtype, shape in cols}


def _run_teacher(view, n_features, xb):
    out = view.predict_on_batch(xb)
    if n_features:
        out = [np.asarray(o, dtype="float32") for o in out]
        return out[0], out[1:]
    return np.asarray(out, dtype="float32"), []


def _append(columns, xb, yb, logits, features, top_k):
    if "inputs" in columns:
        columns["inputs"].append(xb)
    if "labels" in columns:
        if yb is None:
            raise ValueError("Some dataset batches have labels and some not.")
        columns["labels"].append(yb)
    if top_k is None:
        columns["logits"].append(logits)
    else:
        values, indices, fill = compress_top_k(logits, top_k)
        columns["topk_values"].append(values)
        columns["topk_indices"].append(indices)
        columns["topk_fill"].append(fill)
    for i, f in enumerate(features):
        columns[f"feature_{i}"].append(f)


def compute_soft_labels(teacher, x, y=None, batch_size=256, path=None,
                        top_k=None, feature_layers=None, overwrite=False,
                        check_determinism=True, verbose=0):
    """Runs the teacher once over a dataset and keeps its outputs.

    The teacher runs in inference mode (``training=False``) through its
    compiled ``predict_on_batch``, batch by batch, and its logits (and the
    outputs of ``feature_layers``, from the same forward pass) are stored in
    dataset order beside the inputs and labels:

    - ``path=None``: in memory (NumPy inputs are referenced, not copied);
    - ``path="dir"``: on disk, for data larger than memory: one raw file per
      array (``inputs.bin``, ``labels.bin``, ``logits.bin``, ...), read back
      with ``np.memmap``, plus ``manifest.json`` (teacher fingerprint, shapes,
      dtypes, rows done). The manifest is updated after each batch, so an
      interrupted build rerun with the same arguments continues from the
      last finished batch. A complete cache is reopened without running
      the teacher.

    Guards: a cache at ``path`` built for another teacher (name, weights
    checksum, output shape), another dataset (size, or a different first
    batch) or other options is refused with an error naming the fix. A
    ``tf.data`` source whose graph contains random or shuffling ops, or whose
    first batch reads differently twice (random augmentation, a shuffle), is
    refused with a ValueError: the
    cached outputs would describe inputs the student never sees again.
    Build the cache from the un-augmented, unshuffled data; shuffle with
    ``as_dataset(shuffle=True)``; keep augmentation for live distillation.

    Cost: ``4·C`` bytes per sample for logits (``4·k + 4`` with top-k),
    ``4·prod(shape)`` per feature layer, plus the inputs when stored (always
    with a ``path`` or a ``tf.data`` source).

    Args:
        teacher: the trained teacher, a built ``keras.Model`` producing logits.
        x: inputs: a NumPy array (or ``np.memmap`` / any array with ``shape``
            and slicing), or a batched ``tf.data.Dataset`` of ``x`` or
            ``(x, y)`` elements.
        y: labels for array inputs (optional).
        batch_size: teacher batch size for array inputs.
        path: a directory for an on-disk, resumable cache; None for memory.
        top_k: keep only the k largest logits per sample (float16, with their
            indices); the rest are rebuilt as described in
            :func:`expand_top_k`. None keeps all logits in float32.
        feature_layers: teacher layer names whose outputs to cache, in the
            order of the Distiller's ``feature_losses`` (functional or
            Sequential teachers).
        overwrite: replace an existing cache at ``path`` instead of refusing.
        check_determinism: refuse a ``tf.data`` source whose graph holds
            random or shuffling ops, or whose first batch reads differently
            twice.
        verbose: print progress every batch when 1.

    Returns:
        A :class:`SoftLabels`.

    Example:

    >>> import keras, numpy as np
    >>> inputs = keras.Input((16,))
    >>> teacher = keras.Model(inputs, keras.layers.Dense(10)(inputs))
    >>> x = np.random.rand(100, 16).astype("float32")
    >>> cache = compute_soft_labels(teacher, x, batch_size=32, top_k=3)
    >>> cache.num_samples, cache.teacher_logits().shape, cache.bytes_per_sample
    (100, (100, 10), 16)
    """
    if not isinstance(teacher, keras.Model):
        raise TypeError(f"teacher must be a keras.Model, got "
                        f"{type(teacher).__name__}.")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(
            f"batch_size must be a positive integer, got {batch_size!r}.")
    feature_layers = list(feature_layers or [])
    view = taps.make_view(teacher, feature_layers, "teacher")
    source = _Source(x, None if y is None else y, batch_size)
    store_inputs = path is not None or source.dataset is not None

    first_x, first_y = source.first_batch()
    in_shape = taps.input_shape(teacher)
    if in_shape is not None and first_x.ndim == len(in_shape) - 1:
        raise ValueError(
            f"The dataset's elements have shape {first_x.shape}, one sample "
            f"each, but the teacher takes batches of shape {in_shape}. Batch "
            "the dataset first: dataset.batch(256)."
        )
    if source.dataset is not None and check_determinism:
        again, _ = source.first_batch()
        random_ops = _random_ops(source.dataset)
        if random_ops or again.shape != first_x.shape or not np.array_equal(
                again, first_x):
            found = (f"it contains random operations {random_ops}" if
                     random_ops else "two reads of its first batch differ")
            raise ValueError(
                f"The dataset is not deterministic: {found} (random "
                "augmentation or shuffling in the "
                "pipeline). Cached teacher outputs describe one fixed version "
                "of each input. Build the cache from the un-augmented, "
                "unshuffled dataset, and shuffle with as_dataset(shuffle="
                "True); for augmented training use live distillation. Pass "
                "check_determinism=False to skip this check."
            )
    first_logits, first_features = _run_teacher(view, len(feature_layers),
                                                first_x)
    if first_logits.ndim != 2:
        raise ValueError(
            f"The teacher's output has shape {first_logits.shape[1:]} per "
            "sample; soft labels are (batch, classes) logits."
        )
    num_classes = int(first_logits.shape[-1])
    if top_k is not None:
        compress_top_k(first_logits[:1], top_k)  # validates k
    fingerprint = teacher_fingerprint(teacher)
    options = {"top_k": top_k, "feature_layers": feature_layers,
               "has_labels": first_y is not None,
               "stored_inputs": store_inputs,
               "batch_size": batch_size if source.dataset is None else None}
    dataset_id = {"num_samples": source.num_samples,
                  "num_batches": source.num_batches,
                  "first_batch_sha256": _array_sha256(first_x)}

    manifest = None
    if path is not None:
        os.makedirs(path, exist_ok=True)
        manifest = None if overwrite else _read_manifest(path)
        if overwrite:
            for name in os.listdir(path):
                if name.endswith(".bin") or name.startswith(_MANIFEST):
                    os.remove(os.path.join(path, name))
    if manifest is not None:
        cache = SoftLabels(manifest, _open_columns(manifest, path), path=path)
        cache.check(teacher=teacher)
        fix = ("Pass another path, or overwrite=True to rebuild the cache "
               "there.")
        for key, value in options.items():
            if manifest["options"][key] != value:
                raise ValueError(
                    f"The soft-label cache at '{path}' was built with "
                    f"{key}={manifest['options'][key]!r}, not {value!r}. {fix}"
                )
        stored = manifest["dataset"]
        if stored["num_samples"] is not None and source.num_samples is not \
                None and stored["num_samples"] != source.num_samples:
            cache.check(num_samples=source.num_samples)
        if stored["num_batches"] is not None and source.num_batches is not \
                None and stored["num_batches"] != source.num_batches:
            raise ValueError(
                f"The soft-label cache at '{path}' was built from "
                f"{stored['num_batches']} batches but this dataset has "
                f"{source.num_batches}. {fix}"
            )
        if stored["first_batch_sha256"] != dataset_id["first_batch_sha256"]:
            raise ValueError(
                f"The soft-label cache at '{path}' was built from other data: "
                "the first batch of inputs differs. Cached outputs are "
                f"aligned sample by sample with their data. {fix}"
            )
        columns = cache._columns
        if manifest["complete"]:
            return cache
    else:
        columns = _make_columns(first_x, first_y,
                                (first_logits, first_features), top_k,
                                store_inputs, path)
        manifest = {
            "format": _FORMAT, "version": _VERSION, "teacher": fingerprint,
            "num_classes": num_classes, "top_k": top_k,
            "feature_layers": feature_layers, "options": options,
            "dataset": dataset_id,
            "columns": {n: c.spec() for n, c in columns.items()},
            "rows_done": 0, "batches_done": 0, "complete": False,
        }
        if path is not None:
            _write_manifest(path, manifest)

    rows, done = manifest["rows_done"], manifest["batches_done"]
    for column in columns.values():
        column.truncate(rows)
    for xb, yb in source.batches(done, rows):
        if done == 0:  # the first batch already went through the teacher
            logits, features = first_logits, first_features
        else:
            logits, features = _run_teacher(view, len(feature_layers), xb)
        if (yb is None) == options["has_labels"]:
            raise ValueError("Some dataset batches have labels and some not.")
        _append(columns, xb, yb, logits, features, top_k)
        rows += len(xb)
        done += 1
        manifest.update(rows_done=rows, batches_done=done)
        if path is not None:
            _write_manifest(path, manifest)
        if verbose:
            print(f"soft labels: {rows} samples done", flush=True)
    manifest.update(complete=True)
    manifest["dataset"]["num_samples"] = rows
    manifest["dataset"]["num_batches"] = done
    if path is not None:
        _write_manifest(path, manifest)
    inputs = None if store_inputs else source.x
    return SoftLabels(manifest, columns, inputs=inputs, path=path)
