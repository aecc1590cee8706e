"""Guards of a soft-label cache: whose outputs, over which data.

A cache is valid only for the teacher that computed it (its fingerprint) and
for the data it was built from, in order, without random augmentation.
"""

import hashlib

import keras
import numpy as np

from keras_kd import taps


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
