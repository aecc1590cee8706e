"""Importance of channels: which ones a pruned model can best do without.

Each criterion scores every channel class of a :class:`DependencyGraph`
(channels that are removed together); a class's score is the sum over the
layers that produce it (its group's producers). Lower scores go first.

- ``"l1"`` / ``"l2"``: the norm of each filter, ``Σ|w|`` or ``(Σ w²)^½``
  over the filter's kernel slice (Li et al. 2017, "Pruning Filters for
  Efficient ConvNets").
- ``"bn"``: ``|γ|`` of the BatchNormalization on the channel ("network
  slimming", Liu et al. 2017, "Learning Efficient Convolutional Networks
  through Network Slimming"); groups without a BatchNormalization fall back
  to ``"l1"`` (named in the pruning report).
- ``"activation"``: the mean magnitude of each producer's output channel over
  calibration data, ``E_{batch, positions} |a_c|`` (Minitron: Sun et al.
  2024, "Compact Language Models via Pruning and Knowledge Distillation";
  Muralidharan et al. 2024, arXiv:2407.14679), read from a multi-output
  ``keras.Model(model.inputs, [producer outputs])``.
- ``"taylor"``: first-order Taylor expansion of the loss when a channel is
  removed (Molchanov et al. 2019, "Importance Estimation for Neural Network
  Pruning"): ``I_c = mean over batches of (Σ_{θ ∈ filter c} θ · ∂L/∂θ)²``.
  The filter's output ``z_c`` is linear in its kernel slice and bias, so by
  Euler's identity ``Σ_θ θ ∂L/∂θ = Σ_{positions} z_c ∂L/∂z_c``: the
  activation-times-gradient form of Molchanov et al. 2017, computed from
  weight gradients. Needs labels or teacher targets and a loss.
"""

import numpy as np

import keras

from keras_kd import inputs as inputs_lib
from keras_kd.pruning import gradients

CRITERIA = ("l1", "l2", "bn", "activation", "taylor")


def _weight(graph, s):
    layer = graph.model.get_layer(s.layer)
    return keras.ops.convert_to_numpy(layer.weights[s.weight])


def _filter_slices(graph):
    return [(i, s) for i, s in enumerate(graph.slices) if s.role == "filter"]


def magnitude(graph, p=1):
    """``{class: Σ over producers of the filter's L_p norm}``, ``p`` in 1, 2.

    >>> import keras, numpy as np
    >>> from keras_kd.pruning import DependencyGraph, importance
    >>> m = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3, name="a"),
    ...                       keras.layers.Dense(1)])
    >>> m.get_layer("a").set_weights([np.array([[1., -2, 0], [1, 1, 0]]), np.zeros(3)])
    >>> g = DependencyGraph(m)
    >>> importance.group_scores(g, g.groups[0], importance.magnitude(g)).tolist()
    [2.0, 3.0, 0.0]
    """
    per_slice = {}
    for index, s in _filter_slices(graph):
        w = np.moveaxis(_weight(graph, s), s.axis, -1).reshape(-1, len(s.ids))
        per_slice[index] = np.abs(w).sum(0) if p == 1 \
            else np.sqrt(np.square(w).sum(0))
    return graph.class_scores(per_slice)


def bn_scale(graph):
    """``{class: Σ |γ|}`` over the BatchNormalization layers of each class
    (classes without one are absent)."""
    per_slice = {i: np.abs(_weight(graph, s)) for i, s in enumerate(graph.slices)
                 if s.role == "norm" and s.name == "gamma"}
    return graph.class_scores(per_slice)


def calibration_batches(data, steps=None, what="calibration_data",
                        batch_size=32):
    """Yield ``(x, y)`` batches (``y`` None when there are no targets).

    ``data``: an array of inputs, a tuple ``(x, y)`` of arrays, or a finite
    ``tf.data.Dataset`` / iterable of ``x`` or ``(x, y[, sample_weight])``
    batches; at most ``steps`` batches are read (an infinite data set needs
    ``steps``; one of unknown length too).
    """
    if inputs_lib.is_array_like(data) or (
            isinstance(data, tuple) and len(data) == 2
            and all(inputs_lib.is_array_like(d) for d in data)):
        x, y = data if isinstance(data, tuple) else (data, None)
        stops = range(0, len(x), batch_size)
        for step, start in enumerate(stops):
            if steps is not None and step >= steps:
                return
            yield x[start:start + batch_size], \
                None if y is None else y[start:start + batch_size]
        return
    if steps is None and inputs_lib.cardinality(data) is None:
        raise ValueError(
            f"{what} has no known length, so reading it might never end; "
            "pass calibration_steps= (the number of batches to read).")
    for element in inputs_lib.bounded(data, steps, what):
        if isinstance(element, (tuple, list)) and len(element) >= 2:
            yield element[0], element[1]
        else:
            yield element, None


def activation(graph, data, steps=None):
    """``{class: Σ over producers of E|a_c|}`` on calibration data, the
    mean over samples and positions of each producer's output channel."""
    names = list(graph.producers)
    model = graph.model
    ins = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    tap = keras.Model(ins, [model.get_layer(n).output for n in names])
    sums, count = [0.0] * len(names), 0
    for x, _ in calibration_batches(data, steps):
        outputs = tap(x, training=False)
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        n = int(keras.ops.shape(outputs[0])[0])
        for k, a in enumerate(outputs):
            a = np.abs(keras.ops.convert_to_numpy(a))
            sums[k] = sums[k] + a.reshape(-1, a.shape[-1]).mean(0) * n
        count += n
    if count == 0:
        raise ValueError("criterion='activation' read no batch from "
                         "calibration_data: pass some inputs.")
    index = {s.layer: i for i, s in _filter_slices(graph)}
    return graph.class_scores({index[n]: sums[k] / count
                               for k, n in enumerate(names)})


def taylor(graph, data, loss, steps=None):
    """``{class: mean over batches of (Σ_{θ ∈ producers' filter c} θ ∂L/∂θ)²}``
    (Molchanov et al. 2019); ``data`` yields ``(x, y)``, ``loss(y, y_pred)``
    is the objective (labels or teacher targets)."""
    model = graph.model
    loss_fn = keras.losses.get(loss) if isinstance(loss, str) else loss
    parts = []      # (slice index, variable)
    for i, s in enumerate(graph.slices):
        if s.role in ("filter", "bias") and s.layer in graph.producers:
            parts.append((i, model.get_layer(s.layer).weights[s.weight]))
    totals, batches = {}, 0
    for x, y in calibration_batches(data, steps):
        if y is None:
            raise ValueError(
                "criterion='taylor' needs targets: calibration_data must "
                "give (x, y) with labels or teacher outputs for loss=.")
        grads = gradients.weight_gradients(model, [v for _, v in parts], x, y,
                                           loss_fn)
        per_slice = {}
        for (i, v), g in zip(parts, grads):
            s = graph.slices[i]
            wg = np.moveaxis(keras.ops.convert_to_numpy(v) * g, s.axis, -1)
            per_slice[i] = wg.reshape(-1, len(s.ids)).sum(0)
        for root, value in graph.class_scores(per_slice).items():
            totals[root] = totals.get(root, 0.0) + value ** 2
        batches += 1
    if batches == 0:
        raise ValueError("criterion='taylor' read no batch from "
                         "calibration_data: pass some (x, y) batches.")
    return {root: value / batches for root, value in totals.items()}


def scores(graph, criterion="l1", calibration_data=None, loss=None,
           calibration_steps=None):
    """``({class: score}, fallback)`` for a criterion name of
    :data:`CRITERIA`; ``fallback`` lists the groups scored by ``"l1"``
    instead (``"bn"`` on groups without a BatchNormalization)."""
    if criterion not in CRITERIA:
        raise ValueError(f"criterion={criterion!r} is not one of {CRITERIA}.")
    if criterion in ("activation", "taylor") and calibration_data is None:
        raise ValueError(f"criterion={criterion!r} reads calibration data: "
                         "pass calibration_data= (inputs, or (x, y)).")
    if criterion == "taylor" and loss is None:
        raise ValueError("criterion='taylor' needs loss= (for example "
                         "keras.losses.SparseCategoricalCrossentropy("
                         "from_logits=True) with labels).")
    if criterion in ("l1", "l2"):
        return magnitude(graph, 1 if criterion == "l1" else 2), []
    if criterion == "activation":
        return activation(graph, calibration_data, calibration_steps), []
    if criterion == "taylor":
        return taylor(graph, calibration_data, loss, calibration_steps), []
    result, l1, fallback = bn_scale(graph), magnitude(graph, 1), []
    for group in graph.groups:
        if not any(int(r) in result for r in group.roots):
            fallback.append(group.name)
            result.update({int(r): l1[int(r)] for r in group.roots})
    return result, fallback


def group_scores(graph, group, class_scores):
    """The scores of a group's classes, in the group's order."""
    return np.array([class_scores.get(int(r), 0.0) for r in group.roots])
