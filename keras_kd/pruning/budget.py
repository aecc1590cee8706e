"""Pruning targets: how many channels each dependency group keeps.

Three ways to say it, used by :func:`keras_kd.pruning.prune`:

- a **ratio** per group (or one for all): a group of ``n`` channels keeps

      k = min(n, max(min_channels, round_to · ⌈(n − ⌊ratio · n⌋) / round_to⌉));

- a **uniform budget** (``params=`` and / or ``flops=``): the smallest single
  ratio, shared by every group, whose pruned model fits the budget (found by
  bisection);
- a **global budget** (``global_ranking=True``): channels of all groups are
  ranked on one scale and the least important ones model-wide go first until
  the budget is met. Raw scores do not compare across groups (a residual
  group sums the scores of several producers; layers differ in fan-in and
  scale), so each group's scores are divided by their mean,
  ``ŝ_c = s_c / mean_{c' ∈ g} s_c'``, the ``"mean"`` group normaliser of
  torch-pruning's global pruning (Fang et al., CVPR 2023, "DepGraph: Towards
  Any Structural Pruning"). A channel scoring half its group's mean is as
  expendable in any group. For a threshold ``τ`` every group removes its
  channels with ``ŝ_c < τ``, then applies ``min_channels`` and ``round_to``
  as above; the smallest ``τ`` whose model fits the budget is kept.

Parameters and FLOPs of a candidate are counted from the weight shapes it
would have (:func:`params_after`, :func:`flops_after`), without building it.
"""

import numpy as np

from keras_kd.pruning import counting
from keras_kd.pruning import importance


def rounded_keep(n, removed, min_channels=1, round_to=1):
    """Channels a group of ``n`` keeps when ``removed`` of them are asked to
    go: ``min(n, max(min_channels, round_to · ⌈(n − removed) / round_to⌉))``.

    >>> rounded_keep(64, 20), rounded_keep(64, 20, round_to=8), rounded_keep(4, 4, min_channels=2)
    (44, 48, 2)
    """
    keep = int(round_to * np.ceil((n - removed) / round_to))
    return int(min(n, max(min_channels, keep)))


def kept_count(n, ratio, min_channels=1, round_to=1):
    """How many of ``n`` channels a group keeps at ``ratio`` (see the module
    docstring).

    >>> kept_count(64, 0.3), kept_count(64, 0.3, round_to=8), kept_count(4, 0.9, min_channels=2)
    (45, 48, 2)
    """
    return rounded_keep(n, int(np.floor(ratio * n + 1e-9)), min_channels,
                        round_to)


def uniform_keep(graph, ratio, min_channels=1, round_to=1):
    """``{group name: kept count}`` for a ratio (a float, or a dict of
    ratios by group name; groups left out keep every channel)."""
    keep = {}
    for group in graph.groups:
        share = ratio.get(group.name, 0.0) if isinstance(ratio, dict) else ratio
        keep[group.name] = kept_count(group.size, share, min_channels, round_to)
    return keep


def plan(graph, class_scores, keep):
    """The removed classes and the report's group entries when each group
    keeps its ``keep[name]`` highest-scored channels (ties keep the earlier
    channel)."""
    removed, groups = [], []
    for group in graph.groups:
        keep_n = keep[group.name]
        values = importance.group_scores(graph, group, class_scores)
        order = np.argsort(-values, kind="stable")
        kept = np.sort(order[:keep_n])
        removed.extend(int(r) for r in np.delete(group.roots, kept))
        groups.append(dict(name=group.name, producers=list(group.producers),
                           channels_before=group.size, channels_after=keep_n,
                           kept=kept.tolist()))
    return removed, groups


def weight_shapes(model, graph, removed):
    """``{(layer name, weight index): shape}`` of the weights that lose
    positions when the classes ``removed`` go."""
    removed = np.asarray(list(removed), dtype=int)
    shapes = {}
    for s, roots in zip(graph.slices, graph.slice_roots):
        shape = shapes.setdefault(
            (s.layer, s.weight),
            list(model.get_layer(s.layer).weights[s.weight].shape))
        shape[s.axis] = int((~np.isin(roots, removed)).sum())
    return shapes


def params_after(model, graph, removed):
    """``count_params()`` of the model pruned of the classes ``removed``,
    counted from the weight shapes without building it."""
    total = model.count_params()
    for (name, w), shape in weight_shapes(model, graph, removed).items():
        before = model.get_layer(name).weights[w].shape
        total += int(np.prod(shape)) - int(np.prod(before))
    return total


def flops_after(model, graph, removed):
    """:func:`keras_kd.pruning.count_flops` of the model pruned of the
    classes ``removed``, counted from the weight shapes without building it
    (pruning cuts channels only, so every output position stays)."""
    return counting.count_flops(model, weight_shapes(model, graph, removed))


def normalized_scores(graph, class_scores):
    """``{group name: ŝ}``: each group's channel scores divided by their
    mean (all zeros for a group whose scores are all zero).

    >>> import keras, numpy as np
    >>> from keras_kd.pruning import DependencyGraph, importance
    >>> m = keras.Sequential([keras.Input((2,)), keras.layers.Dense(4, name="a"),
    ...                       keras.layers.Dense(1)])
    >>> m.get_layer("a").set_weights([np.array([[1., 2, 3, 6], [0, 0, 0, 0]]), np.zeros(4)])
    >>> g = DependencyGraph(m)
    >>> normalized_scores(g, importance.magnitude(g))["a"].tolist()   # mean 3
    [0.3333333333333333, 0.6666666666666666, 1.0, 2.0]
    """
    result = {}
    for group in graph.groups:
        values = importance.group_scores(graph, group, class_scores)
        mean = float(values.mean())
        result[group.name] = values / mean if mean > 0 else np.zeros_like(values)
    return result


def threshold_keep(graph, normalized, threshold, min_channels=1, round_to=1):
    """``{group name: kept count}`` when every group removes its channels
    whose normalised score is below ``threshold``."""
    return {g.name: rounded_keep(g.size, int((normalized[g.name] < threshold).sum()),
                                 min_channels, round_to)
            for g in graph.groups}


def check_budget(value, what):
    """A budget as a positive int, or a ValueError naming the fix."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer,
                                                         float)) \
            or not np.isfinite(value) or value <= 0:
        raise ValueError(
            f"{what}={value!r} must be a positive number: the most {what} "
            "the pruned model may have (see report['params_before'] and "
            "report['flops_before'] of a ratio=0 prune for the full model).")
    return int(value)


def keep_for_budget(model, graph, class_scores, params=None, flops=None,
                    min_channels=1, round_to=1, global_ranking=False):
    """``(keep, ratio, threshold)`` meeting ``params`` and ``flops``.

    Uniform (``global_ranking=False``): the smallest shared ratio in [0, 1),
    by bisection, ``threshold`` None. Global: the smallest threshold on the
    normalised scores, ``ratio`` None. Raises a ValueError naming the fix
    when even the most pruned model is over budget.
    """
    if flops is not None and counting.count_flops(model) is None:
        raise ValueError(
            "flops= needs every layer's output size, and some is unknown "
            "(a None spatial dimension): give the model a fixed input shape "
            "or use params=.")

    def fits(keep):
        removed, _ = plan(graph, class_scores, keep)
        return (params is None or params_after(model, graph, removed) <= params) \
            and (flops is None or flops_after(model, graph, removed) <= flops)

    def unreachable(keep):
        removed, _ = plan(graph, class_scores, keep)
        parts = []
        if params is not None:
            parts.append(f"params={params}")
        if flops is not None:
            parts.append(f"flops={flops}")
        raise ValueError(
            f"{' and '.join(parts)} cannot be reached: pruning every group "
            f"down to min_channels={min_channels} (round_to={round_to}) leaves "
            f"{params_after(model, graph, removed)} parameters and "
            f"{flops_after(model, graph, removed)} FLOPs. Raise the budget, "
            "lower min_channels or round_to, or remove layers from "
            "never_prune.")

    if global_ranking:
        normalized = normalized_scores(graph, class_scores)
        values = np.concatenate([v for v in normalized.values()] + [[np.inf]])
        candidates = np.unique(values)
        keep_at = [None] * len(candidates)

        def keep_of(k):
            if keep_at[k] is None:
                keep_at[k] = threshold_keep(graph, normalized, candidates[k],
                                            min_channels, round_to)
            return keep_at[k]

        if not fits(keep_of(len(candidates) - 1)):
            unreachable(keep_of(len(candidates) - 1))
        if fits(keep_of(0)):
            return keep_of(0), None, float(candidates[0])
        low, high = 0, len(candidates) - 1      # fits(high), not fits(low)
        while high - low > 1:
            middle = (low + high) // 2
            if fits(keep_of(middle)):
                high = middle
            else:
                low = middle
        return keep_of(high), None, float(candidates[high])

    def keep_at_ratio(share):
        return uniform_keep(graph, share, min_channels, round_to)

    low, high = 0.0, 1.0 - 1e-9
    if fits(keep_at_ratio(low)):
        return keep_at_ratio(low), low, None
    if not fits(keep_at_ratio(high)):
        unreachable(keep_at_ratio(high))
    for _ in range(40):
        middle = (low + high) / 2
        if fits(keep_at_ratio(middle)):
            high = middle
        else:
            low = middle
    return keep_at_ratio(high), high, None
