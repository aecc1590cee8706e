"""Teacher targets of a step: run the teachers live, or read cached outputs.

Live, the teachers run in inference mode (``training=False``) under
``stop_gradient``: their weights and BatchNorm statistics never change. The
first teacher runs through a tap view (:mod:`keras_kd.taps`) when feature
objectives need its intermediate outputs, so it still runs once.

Offline, precomputed outputs arrive as targets,
``y = {"teacher_logits": t, "labels": y, "teacher_features": [...]}``, so that
each output travels with its sample through shuffling and batching
(:mod:`keras_kd.soft_labels` builds them); the teachers then never run.
"""

from keras import ops

from keras_kd import inputs, taps


def split_targets(y):
    """Splits targets into (cached teacher outputs, labels).

    ``y`` is a dict with ``"teacher_logits"`` (and optionally
    ``"teacher_features"`` and ``"labels"``) for cached outputs; any other
    ``y`` is labels.

    Example:

    >>> split_targets({"teacher_logits": [[1.0]], "labels": [0]})[1]
    [0]
    >>> split_targets([0, 1])
    (None, [0, 1])
    """
    if isinstance(y, dict) and "teacher_logits" in y:
        return y, y.get("labels")
    return None, y


def holds_cached_targets(x, y):
    """True when ``fit``/``evaluate`` data carry cached teacher outputs.

    Recognizes a targets dict (``fit(x, {"teacher_logits": ...})``) and a
    ``tf.data.Dataset`` of ``(x, targets)`` elements, such as
    ``SoftLabels.as_dataset()``. Other sources (generators, ``PyDataset``)
    are not inspected: the teachers' state then stays in each step, which is
    correct whichever targets come.
    """
    if y is not None:
        return split_targets(y)[0] is not None
    spec = getattr(x, "element_spec", None)
    if inputs.is_tf_dataset(x) and isinstance(spec, (tuple, list)) and \
            len(spec) >= 2:
        return split_targets(spec[1])[0] is not None
    return False


class LiveTeachers:
    """Runs the teachers on a batch: logits, and the first one's taps.

    Args:
        teachers: the teacher models (a list).
        feature_layers: names of the first teacher's layers to tap, in the
            order of the feature objectives.
    """

    def __init__(self, teachers, feature_layers=()):
        self.feature_layers = list(feature_layers)
        view = taps.make_view(teachers[0], self.feature_layers, "teacher")
        self.views = [view] + list(teachers[1:])

    def __call__(self, x):
        """``(logits, features)``: a tensor, or a list for several teachers."""
        logits, features = [], []
        for i, view in enumerate(self.views):
            out = view(x, training=False)
            if i == 0 and self.feature_layers:
                features = [ops.stop_gradient(f) for f in out[1:]]
                out = out[0]
            logits.append(ops.stop_gradient(out))
        return (logits[0] if len(logits) == 1 else logits), features


def cached_outputs(cached, num_features):
    """``(logits, features)`` of a cached targets dict, as tensors."""
    logits = cached["teacher_logits"]  # a list: several teachers
    logits = ([ops.convert_to_tensor(t) for t in logits]
              if isinstance(logits, (list, tuple))
              else ops.convert_to_tensor(logits))
    features = [ops.convert_to_tensor(f)
                for f in cached.get("teacher_features", [])]
    if len(features) != num_features:
        raise ValueError(
            f"The cached targets hold {len(features)} teacher feature(s) but "
            f"the Distiller has {num_features} feature objective(s). Build "
            "the cache with feature_layers=[...] naming each objective's "
            "teacher_layer, in order (see keras_kd.compute_soft_labels)."
        )
    return logits, features


def teacher_targets(x, y, live):
    """``(teacher_logits, teacher_features, labels)`` of a batch.

    Reads them from cached targets when ``y`` holds them, else runs
    ``live`` (a :class:`LiveTeachers`) on ``x``.
    """
    cached, labels = split_targets(y)
    if cached is None:
        logits, features = live(x)
    else:
        logits, features = cached_outputs(cached, len(live.feature_layers))
    return logits, features, labels


def truncated(teacher_logits, classes):
    """The teachers' first ``classes`` logits (a padded vocabulary's real
    ids), for ``Distiller(truncate_teacher_logits=True)``."""
    if isinstance(teacher_logits, (list, tuple)):
        return [truncated(t, classes) for t in teacher_logits]
    if teacher_logits.shape[-1] is None or teacher_logits.shape[-1] > classes:
        return teacher_logits[..., :classes]
    return teacher_logits
