"""Structured pruning: a smaller model of the same layers with the kept weights.

:func:`prune` scores every channel class (:mod:`keras_kd.pruning.importance`),
removes the lowest-scored share of each dependency group
(:class:`keras_kd.pruning.graph.DependencyGraph`) and rebuilds the model from
its config with fewer units / filters, slicing every weight that is indexed
by a removed channel. No masks: the result is an ordinary, smaller Keras model
that saves, loads and exports like the original.

Per group of ``n`` channels the number kept is

    k = min(n, max(min_channels, round_to · ⌈(n − ⌊ratio · n⌋) / round_to⌉))

so ``ratio`` is the share removed, ``round_to`` rounds the kept count up to a
multiple (8 for fast kernels), and ``min_channels`` is a floor. Budgets in
parameters or FLOPs, uniform or ranked across groups, are
:mod:`keras_kd.pruning.budget`.
"""

import copy

import keras
import numpy as np

from keras_kd.pruning import budget
from keras_kd.pruning import counting
from keras_kd.pruning import importance
from keras_kd.pruning import nodes as nodes_lib
from keras_kd.pruning.budget import kept_count, params_after
from keras_kd.pruning.graph import DependencyGraph

__all__ = ["prune", "prune_channels", "kept_count", "params_after"]

_WIDTH_KEYS = ("units", "filters", "output_dim")


def _default_never_prune(model):
    return list(nodes_lib.output_names(model))


def prune(model, ratio=0.25, criterion="l1", never_prune=None, min_channels=1,
          round_to=1, calibration_data=None, loss=None, calibration_steps=None,
          params=None, flops=None, global_ranking=False):
    """Remove the least important channels of every dependency group.

    Args:
        model: a built Functional or Sequential model (``channels_last``)
            made of the layers :class:`DependencyGraph` supports.
        ratio: the share of each group's channels to remove, in [0, 1), or
            a dict ``{group name: ratio}`` (a group is named after its first
            producing layer; groups left out are not pruned).
        criterion: ``"l1"``, ``"l2"``, ``"bn"``, ``"activation"`` or
            ``"taylor"`` (see :mod:`keras_kd.pruning.importance`).
        never_prune: layer names whose output channels are kept whole;
            default: the layers producing the model's outputs (the
            classifier). Model outputs are never cut in any case.
        min_channels: the fewest channels a group keeps.
        round_to: kept counts are rounded up to a multiple of it.
        calibration_data: inputs, ``(x, y)``, or a finite data set of
            batches, for ``"activation"`` and ``"taylor"``.
        loss: ``loss(y, y_pred)`` (or a Keras loss name) for ``"taylor"``.
        calibration_steps: the most batches of ``calibration_data`` to read.
        params: a global budget instead of ``ratio``: the most parameters the
            pruned model may have. The smallest share ``ratio`` (one for
            every group, found by bisection) that meets it is used, and
            reported as ``report["ratio"]``.
        flops: a budget in FLOPs per sample
            (:func:`keras_kd.pruning.count_flops`), alone or with ``params``
            (then both are met).
        global_ranking: with ``params`` or ``flops``: rank the channels of
            all groups together on their mean-normalised scores and remove
            the least important model-wide until the budget is met (groups
            then keep different shares; ``report["threshold"]`` is the
            normalised score below which channels went, see
            :mod:`keras_kd.pruning.budget`).

    Returns:
        ``(pruned_model, report)``. ``report["groups"]``: per group its
        ``name``, ``producers``, ``channels_before``, ``channels_after`` and
        ``kept`` (indices into the group's channels, in the first producer's
        order); ``report["layers"][name][weight name]``: ``{axis: kept
        indices}`` for every weight that lost positions (what the pruned
        model's weights are sliced from); ``params_before/after`` (equal to
        ``count_params()``) and ``flops_before/after``
        (:func:`keras_kd.pruning.counting.count_flops`); ``budget``
        (``{"params", "flops"}``), ``global_ranking`` and ``threshold``.

    >>> import keras, numpy as np
    >>> from keras_kd.pruning import prune
    >>> m = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
    ...                       keras.layers.Dense(3, name="head")])
    >>> small, report = prune(m, ratio=0.5)
    >>> small.layers[0].units, report["params_before"], report["params_after"]
    (8, 195, 99)
    """
    _check_args(ratio, min_channels, round_to)
    params = budget.check_budget(params, "params")
    flops = budget.check_budget(flops, "flops")
    if global_ranking and params is None and flops is None:
        raise ValueError(
            "global_ranking=True ranks channels across groups against a "
            "budget: pass params= or flops= (or drop global_ranking to "
            "remove the same share of every group).")
    if never_prune is None:
        never_prune = _default_never_prune(model)
    graph = DependencyGraph(model, never_prune)
    class_scores, fallback = importance.scores(
        graph, criterion, calibration_data, loss, calibration_steps)
    threshold = None
    if params is not None or flops is not None:
        keep, ratio, threshold = budget.keep_for_budget(
            model, graph, class_scores, params, flops, min_channels, round_to,
            global_ranking)
    else:
        keep = budget.uniform_keep(graph, ratio, min_channels, round_to)
    removed, groups = budget.plan(graph, class_scores, keep)
    new, report = _cut(model, graph, removed, groups, never_prune)
    report.update(criterion=criterion, ratio=ratio, fallback_to_l1=fallback,
                  global_ranking=bool(global_ranking), threshold=threshold,
                  budget=dict(params=params, flops=flops))
    return new, report


def prune_channels(model, kept, never_prune=None):
    """Remove exactly the channels not in ``kept``: the surgery of
    :func:`prune` without a criterion or a target.

    Args:
        model: as in :func:`prune`.
        kept: ``{group name: indices kept}``, the indices into the group's
            channels in its first producer's order (as ``report["groups"]``
            gives them; :class:`DependencyGraph` names the groups); groups
            left out keep every channel.
        never_prune: as in :func:`prune` (it decides which groups exist).

    Returns:
        ``(pruned_model, report)`` as :func:`prune` (``criterion`` is None).

    >>> import keras
    >>> from keras_kd.pruning import prune_channels
    >>> m = keras.Sequential([keras.Input((8,)), keras.layers.Dense(6, name="a"),
    ...                       keras.layers.Dense(3, name="head")])
    >>> small, report = prune_channels(m, {"a": [0, 4]})
    >>> small.get_layer("a").units, report["layers"]["head"]["kernel"]
    (2, {0: [0, 4]})
    """
    if never_prune is None:
        never_prune = _default_never_prune(model)
    graph = DependencyGraph(model, never_prune)
    by_name = {g.name: g for g in graph.groups}
    unknown = sorted(set(kept) - set(by_name))
    if unknown:
        raise ValueError(f"kept names no pruning group of {model.name!r}: "
                         f"{unknown}; its groups are {sorted(by_name)}.")
    removed, groups = [], []
    for group in graph.groups:
        keep = sorted(int(k) for k in kept.get(group.name, range(group.size)))
        if not keep or len(set(keep)) != len(keep) or keep[0] < 0 \
                or keep[-1] >= group.size:
            raise ValueError(
                f"kept[{group.name!r}] must be distinct indices in "
                f"[0, {group.size}), at least one; got {keep}.")
        removed.extend(int(r) for r in np.delete(group.roots, keep))
        groups.append(dict(name=group.name, producers=list(group.producers),
                           channels_before=group.size,
                           channels_after=len(keep), kept=keep))
    new, report = _cut(model, graph, removed, groups, never_prune)
    report.update(criterion=None, ratio=None, fallback_to_l1=[],
                  global_ranking=False, threshold=None,
                  budget=dict(params=None, flops=None))
    return new, report


def _cut(model, graph, removed, groups, never_prune):
    """The model without the classes ``removed``, and the report's
    structural entries."""
    positions = graph.kept_positions(removed)
    gone = set(removed)
    widths = {name: sum(int(r) not in gone for r in graph.roots(ids))
              for name, ids in graph.reshapes.items()}
    new = _rebuild(model, positions, widths)
    layers = {}
    for name, per_weight in positions.items():
        layer = model.get_layer(name)
        layers[name] = {layer.weights[w].name: {axis: idx.tolist()
                                                for axis, idx in axes.items()}
                        for w, axes in per_weight.items()}
    return new, dict(
        groups=groups, layers=layers, never_prune=sorted(never_prune),
        params_before=model.count_params(), params_after=new.count_params(),
        flops_before=counting.count_flops(model),
        flops_after=counting.count_flops(new))


def _check_args(ratio, min_channels, round_to):
    shares = ratio.values() if isinstance(ratio, dict) else [ratio]
    for share in shares:
        if not 0.0 <= share < 1.0:
            raise ValueError(f"ratio={share!r} must be in [0, 1): the share "
                             "of each group's channels to remove.")
    if int(min_channels) < 1 or int(round_to) < 1:
        raise ValueError("min_channels and round_to must be ints >= 1, got "
                         f"{min_channels!r} and {round_to!r}.")


def _rebuild(model, positions, reshape_widths):
    """The model with every weight sliced to its kept positions and each
    Reshape's last target dimension set to its kept channels."""
    config = model.get_config()
    entries = nodes_lib.layer_entries(config)
    for name, width in reshape_widths.items():
        target = list(entries[name]["config"]["target_shape"])
        entries[name]["config"]["target_shape"] = target[:-1] + [width]
    weights = {}
    for name, per_weight in positions.items():
        layer = model.get_layer(name)
        arrays = [keras.ops.convert_to_numpy(w) for w in layer.weights]
        for w, axes in per_weight.items():
            for axis, idx in axes.items():
                arrays[w] = np.take(arrays[w], idx, axis=axis)
        weights[name] = arrays
        layer_config = entries[name]["config"]
        for key in _WIDTH_KEYS:
            if key in layer_config:
                layer_config[key] = int(arrays[_width_weight(layer)].shape[-1])
    return nodes_lib.rebuild(model, copy.deepcopy(config), weights)


def _width_weight(layer):
    """Index of the weight whose last axis is the layer's width."""
    names = [w.name for w in layer.weights]
    for candidate in ("pointwise_kernel", "kernel", "embeddings"):
        if candidate in names:
            return names.index(candidate)
    raise ValueError(f"Cannot resize the layer {layer.name!r}: no kernel.")
