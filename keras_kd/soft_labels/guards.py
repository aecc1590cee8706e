"""Guards of a soft-label cache: whose outputs, over which data.

A cache is valid only for the teacher that computed it (its fingerprint) and
for the data it was built from, in order, without random augmentation.
"""

import hashlib
import weakref

import keras
import numpy as np

from keras_kd import taps, targets


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


def check_teacher(stored, teacher, where, fix):
    """Refuses a teacher whose fingerprint differs from a cache's.

    Name and output shape are compared first (free), then the SHA-256 of
    the weights (one pass over them).

    Args:
        stored: the cache's ``manifest["teacher"]``.
        teacher: the teacher to compare.
        where: where the cache is, for the message ("at '<path>'").
        fix: how to fix a mismatch, for the message.

    Raises:
        ValueError: naming what differs.
    """
    cheap = {"name": teacher.name, "output_shape": None}
    shape = taps.output_shape(teacher)
    cheap["output_shape"] = None if shape is None else list(shape)
    for key, what in (("name", "name"), ("output_shape", "output shape"),
                      ("weights_sha256", "weights checksum")):
        if key == "weights_sha256":
            cheap[key] = teacher_fingerprint(teacher)[key]
        if cheap[key] != stored.get(key):
            raise ValueError(
                f"The soft-label cache {where} was built for another "
                f"teacher: its {what} is {stored.get(key)!r}, this "
                f"teacher's is {cheap[key]!r}. Cached outputs are "
                f"only valid for the teacher that made them. {fix}"
            )


class Origin:
    """Which cache (teacher fingerprint, place) some training data came
    from, and the Distillers already checked against it."""

    def __init__(self, teacher, where):
        self.teacher = teacher
        self.where = where
        self.checked = weakref.WeakSet()


# id(data object) -> (weak reference to it, Origin): the datasets and target
# arrays that SoftLabels.as_dataset / as_numpy handed out.
_ORIGINS = {}


def mark_origin(data, origin):
    """Records that ``data`` (a dataset, or a targets array) holds outputs
    of the cache ``origin`` describes; returns ``data``."""
    key = id(data)
    try:
        ref = weakref.ref(data, lambda _, key=key: _ORIGINS.pop(key, None))
    except TypeError:  # cannot be referenced weakly: not tracked
        return data
    _ORIGINS[key] = (ref, origin)
    return data


def origin_of(data):
    """The :class:`Origin` of data handed out by a cache, or None."""
    entry = _ORIGINS.get(id(data))
    if entry is None or entry[0]() is not data:
        return None
    return entry[1]


def check_cached_teacher(distiller, x, y=None):
    """Refuses training data cached for another teacher than the Distiller's.

    ``Distiller.fit`` and ``evaluate`` call this with their data. When it is
    a dataset from :meth:`SoftLabels.as_dataset` or the targets of
    :meth:`SoftLabels.as_numpy` (the objects those return, not datasets
    derived from them), the cache's teacher fingerprint is compared with
    the Distiller's first teacher: name and output shape, then the
    weights' SHA-256 (once per Distiller and cache; hashing costs about a
    second per GB of teacher weights).

    Raises:
        ValueError: naming the cache and what differs.
    """
    if not _ORIGINS or not targets.holds_cached_targets(x, y):
        return
    cached = targets.split_targets(y)[0] if y is not None else None
    data = cached["teacher_logits"] if cached is not None else x
    origin = origin_of(data)
    if origin is None or distiller in origin.checked:
        return
    check_teacher(
        origin.teacher, distiller.teachers[0], origin.where,
        "Train this Distiller from a cache built by its teacher: "
        "kd.compute_soft_labels(distiller.teacher, x, path=<a new "
        "directory>), or load it with SoftLabels.load(path, teacher=...) to "
        "check which teacher it belongs to.")
    origin.checked.add(distiller)


def array_sha256(array):
    array = np.ascontiguousarray(array)
    return hashlib.sha256(
        f"{array.shape}{array.dtype}".encode() + array.tobytes()).hexdigest()


def random_ops(dataset):
    """Names of random or shuffling ops in a tf.data pipeline's graph.

    Two reads of a pipeline can agree even with random augmentation (a
    global seed replays the same draws on each new iterator), so the graph
    itself is inspected too. Returns [] when the graph cannot be read.
    """
    import tensorflow as tf

    try:
        graph = tf.compat.v1.GraphDef()
        # Private tf.data API, kept: the only view of a pipeline's random ops;
        # test_soft_labels.py::test_random_ops_are_read_from_the_pipelines_graph.
        graph.ParseFromString(dataset._as_serialized_graph().numpy())
    except Exception:  # noqa: BLE001 -- private API; the read check remains
        return []
    names = {node.op for node in graph.node}
    for function in graph.library.function:
        names |= {node.op for node in function.node_def}
    return sorted(n for n in names if "Random" in n or "Shuffle" in n)
