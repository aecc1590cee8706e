"""Guards of a soft-label cache: whose outputs, over which data.

A cache is valid only for the teacher that computed it (its fingerprint:
name, output shape, architecture, weights) and for the data it was built
from, in order, without random augmentation.
"""

import hashlib
import json
import warnings
import weakref

import keras
import numpy as np

from keras_kd import taps, targets


def teacher_fingerprint(teacher):
    """Identifies a teacher: name, output shape, architecture, weights.

    The weights checksum covers every weight's shape, dtype and values in
    order, so a retrained or reloaded-with-other-weights teacher gets
    another one. The architecture checksum
    (:func:`architecture_sha256`) covers its layers, their configuration
    and connections, so the same weights in another model (a layer without
    weights added, such as ``Rescaling``, or ``relu`` changed to ``tanh``)
    get another one too.

    Args:
        teacher: a built ``keras.Model``.

    Returns:
        A dict ``{"name", "weights_sha256", "output_shape",
        "architecture_sha256"}``.

    Example:

    >>> import keras
    >>> inputs = keras.Input((4,))
    >>> teacher = keras.Model(inputs, keras.layers.Dense(3)(inputs), name="t")
    >>> fp = teacher_fingerprint(teacher)
    >>> fp["name"], fp["output_shape"], len(fp["weights_sha256"])
    ('t', [None, 3], 64)
    """
    shape = taps.output_shape(teacher)
    return {
        "name": teacher.name,
        "weights_sha256": weights_sha256(teacher),
        "output_shape": None if shape is None else list(shape),
        "architecture_sha256": architecture_sha256(teacher),
    }


def weights_sha256(model):
    """SHA-256 of a model's weights: each one's shape, dtype and values, in
    order (about a second per GB)."""
    digest = hashlib.sha256()
    for weight in model.weights:
        value = np.ascontiguousarray(keras.ops.convert_to_numpy(weight.value))
        digest.update(f"{value.shape}{value.dtype}".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


# Config entries that do not change what a model computes in inference
# from the cached inputs: whether weights train, and a keras-hub task's
# preprocessor (it runs before the inputs the cache stores).
_NOT_FUNCTION = ("trainable",)
_NOT_FUNCTION_TOP = ("name", "preprocessor")


def _config(layer):
    """``layer.get_config()``, or its class alone where it has none."""
    kind = f"{type(layer).__module__}.{type(layer).__qualname__}"
    try:
        config = layer.get_config()
    except (NotImplementedError, TypeError, ValueError, AttributeError):
        return {"class": kind}
    config = dict(config)
    config["class"] = kind
    return config


def _layer_names(value, names):
    """Collects the layer names of a model config, in order, into
    ``names`` (name -> index): the entries of every ``"layers"`` list."""
    if isinstance(value, dict):
        for key in sorted(value, key=str):
            item = value[key]
            if key == "layers" and isinstance(item, list):
                for entry in item:
                    if not isinstance(entry, dict):
                        continue
                    name = entry.get("name")
                    if name is None and isinstance(entry.get("config"), dict):
                        name = entry["config"].get("name")
                    if isinstance(name, str):
                        names.setdefault(name, len(names))
            _layer_names(item, names)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _layer_names(item, names)


def _canonical(value, names):
    """``value`` with layer names replaced by their index (automatic names,
    ``dense_3``, depend on how many layers a process made before) and the
    entries of ``_NOT_FUNCTION`` left out."""
    if isinstance(value, dict):
        return {str(k): _canonical(v, names) for k, v in value.items()
                if k not in _NOT_FUNCTION}
    if isinstance(value, (list, tuple)):
        return [_canonical(v, names) for v in value]
    if isinstance(value, str) and value in names:
        return f"<layer {names[value]}>"
    return value


def architecture_sha256(model):
    """SHA-256 of a model's architecture: its config, made stable.

    The config (``model.get_config()``: layers, their settings and, for a
    functional or Sequential model, how they connect) is written as JSON
    with sorted keys, after replacing each layer's name by its position
    (automatic names such as ``dense_3`` depend on how many layers the
    process created before) and leaving out what does not change the
    outputs in inference: ``trainable`` flags and the model's own name
    (compared on its own). A subclassed model adds its tracked layers'
    configs; what its ``call`` computes from them is not seen.

    Args:
        model: a ``keras.Model``.

    Returns:
        64 hexadecimal digits.

    Example:

    >>> import keras
    >>> def mlp(activation):
    ...     inputs = keras.Input((4,))
    ...     h = keras.layers.Dense(8, activation=activation)(inputs)
    ...     return keras.Model(inputs, keras.layers.Dense(3)(h))
    >>> architecture_sha256(mlp("relu")) == architecture_sha256(mlp("relu"))
    True
    >>> architecture_sha256(mlp("relu")) == architecture_sha256(mlp("tanh"))
    False
    """
    config = _config(model)
    for key in _NOT_FUNCTION_TOP:
        config.pop(key, None)
    if "layers" not in config:  # subclassed: its tracked layers too
        config["tracked_layers"] = [_config(layer)
                                    for layer in getattr(model, "layers", [])]
    names = {}
    _layer_names(config, names)
    if "tracked_layers" in config:
        for entry in config["tracked_layers"]:
            if isinstance(entry.get("name"), str):
                names.setdefault(entry["name"], len(names))
    text = json.dumps(_canonical(config, names), sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()


def check_teacher(stored, teacher, where, fix):
    """Refuses a teacher whose fingerprint differs from a cache's.

    Name and output shape are compared first (free), then the architecture
    (:func:`architecture_sha256`), then the SHA-256 of the weights (one pass
    over them). A cache written before the architecture was fingerprinted
    is accepted on the other three, with a warning.

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
    checks = [("name", "name", ""), ("output_shape", "output shape", ""),
              ("architecture_sha256", "architecture (SHA-256 of its config)",
               " A layer was added, removed or configured otherwise (an "
               "activation, a Rescaling), so the same weights compute "
               "other outputs."),
              ("weights_sha256", "weights checksum", "")]
    if stored.get("architecture_sha256") is None:
        warnings.warn(
            f"The soft-label cache {where} records no architecture "
            "fingerprint (it was written by an older keras-kd), so its "
            "teacher is checked by name, output shape and weights only: a "
            "teacher with the same weights in another architecture would "
            "pass. Rebuild it (overwrite=True) to record it.", stacklevel=3)
        checks.pop(2)
    for key, what, why in checks:
        if key == "architecture_sha256":
            cheap[key] = architecture_sha256(teacher)
        if key == "weights_sha256":
            cheap[key] = weights_sha256(teacher)
        if cheap[key] != stored.get(key):
            raise ValueError(
                f"The soft-label cache {where} was built for another "
                f"teacher: its {what} is {stored.get(key)!r}, this "
                f"teacher's is {cheap[key]!r}.{why} Cached outputs are "
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
