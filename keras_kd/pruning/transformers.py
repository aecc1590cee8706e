"""Width and depth pruning of keras-hub transformers (GPT-2, BERT, Gemma).

`prune_transformer` ranks attention heads, MLP units, hidden channels and
whole blocks by Minitron's activation importance on calibration tokens
(`keras_kd.pruning.transformers_importance`), rebuilds the backbone from its
config with the new sizes, and copies the kept weights into it. keras-hub is
never imported here: the model in hand is rebuilt through its own class.
"""

import numpy as np

from keras_kd.pruning.transformers_families import BLOCK, family_of
from keras_kd.pruning.transformers_importance import activation_importance

def _target(value, current, what, model):
    if value is None:
        return current
    if isinstance(value, bool) or not isinstance(value, (int, float,
                                                         np.integer)):
        raise ValueError(f"{what} must be a count (int) or a share kept "
                         f"(float in (0, 1]); got {value!r}.")
    count = int(value) if isinstance(value, (int, np.integer)) else max(
        1, int(round(float(value) * current)))
    if isinstance(value, float) and not 0 < value <= 1:
        raise ValueError(f"{what}={value} as a share must lie in (0, 1].")
    if not 1 <= count <= current:
        raise ValueError(
            f"{what}={value} asks for {count}, but the {model}'s {what} is "
            f"{current}: pruning keeps between 1 and {current}.")
    return count


def _top(scores, count):
    """The indices of the ``count`` highest scores, in increasing order."""
    return np.sort(np.argsort(-np.asarray(scores), kind="stable")[:count])


def _new_sizes(family, old, heads, kv_heads, intermediate, hidden, layers):
    name = family.name
    new = dict(old)
    new["N"] = _target(heads, old["N"], "heads", name)
    new["I"] = _target(intermediate, old["I"], "intermediate", name)
    new["H"] = _target(hidden, old["H"], "hidden", name)
    new["L"] = _target(layers, old["L"], "layers", name)
    if family.kv_key is None:
        if kv_heads is not None:
            raise ValueError(
                f"{name} has no separate key/value heads: pass heads= only.")
        new["K"] = new["N"]
        if new["H"] % new["N"]:
            raise ValueError(
                f"{name}: hidden ({new['H']}) must be a multiple of heads "
                f"({new['N']}): {family.note}")
        new["D"] = new["H"] // new["N"]
        if new["D"] > old["D"]:
            raise ValueError(
                f"{name}: heads={new['N']} with hidden={new['H']} makes heads "
                f"of {new['D']} channels, wider than the {old['D']} they have. "
                f"To remove whole heads pass hidden={new['N'] * old['D']}; "
                f"{family.note}")
    else:
        new["K"] = _target(kv_heads, old["K"], "kv_heads", name)
        group = old["N"] // old["K"]
        if new["N"] % new["K"] or new["N"] // new["K"] > group:
            raise ValueError(
                f"{name}: heads={new['N']} must be kv_heads ({new['K']}) "
                f"times the query heads kept per key/value group, at most "
                f"{group}; {family.note}")
    return new


def _kept_heads(family, scores, old, new):
    """Kept query heads and key/value heads of one block."""
    if family.kv_key is None:
        heads = _top(scores, new["N"])
        return heads, heads
    group = old["N"] // old["K"]
    groups = _top(scores.reshape(old["K"], group).sum(1), new["K"])
    per_group = new["N"] // new["K"]
    heads = np.concatenate([
        g * group + _top(scores[g * group:(g + 1) * group], per_group)
        for g in groups])
    return heads, groups


def _slice(array, roles, index, query_scale):
    """``array`` with each axis cut to the kept positions of its role."""
    out = np.asarray(array)
    for axis, role in enumerate(roles):
        if role in ("H", "N", "K", "I"):
            out = np.take(out, index[role], axis=axis)
    for role in ("Dq", "Dv"):
        if role in roles and index[role] is not None:
            head_axis = roles.index("N") if "N" in roles else roles.index("K")
            d_axis = roles.index(role)
            moved = np.moveaxis(out, (head_axis, d_axis), (-2, -1))
            kept = np.asarray(index[role]).reshape(
                (1,) * (moved.ndim - 2) + np.shape(index[role]))
            out = np.moveaxis(np.take_along_axis(moved, kept, axis=-1),
                              (-2, -1), (head_axis, d_axis))
    return out * query_scale if query_scale != 1.0 else out


def prune_transformer(model, *, heads=None, kv_heads=None, intermediate=None,
                      hidden=None, layers=None, calibration_data=None,
                      batch_size=16, criterion="activation"):
    """Width and depth pruning of a keras-hub transformer, Minitron-style.

    Ranks, on ``calibration_data``, every attention head, MLP unit, hidden
    (embedding) channel and block (Sun et al. 2024, "Compact Language Models
    via Pruning and Knowledge Distillation", arXiv:2407.14679):

    - head h of a block: ``mean_t ||o_{t,h} W_O[h]||_2``, the size of what
      the head writes; query/key and value channels of a head likewise;
    - MLP unit i: ``mean_t |a_{t,i}| * ||W_down[i]||_2``;
    - hidden channel c: ``sum over normalization layers of
      mean_t |LN(x)_{t,c}|``;
    - block b: ``mean_t (1 - cos(x_t, block_b(x_t)))`` (Men et al. 2024,
      "ShortGPT"), a block that changes little being dropped first;

    (means over tokens that are not padding), keeps the best in every block
    (the same count in each, as the config holds one size), and rebuilds the
    backbone *from its config* with the new sizes: the result is a task (or
    backbone) of the same class, without masks, whose ``get_config()`` says
    the new sizes, with the kept weights. Tied embeddings are cut on the
    hidden axis, so the output layer they make is cut with them.

    What each family can prune (keras-hub ties some sizes in the config):

    - ``GPT2Backbone``/``BertBackbone``: head size = ``hidden_dim /
      num_heads``. ``heads`` alone cannot remove heads (the rest would have
      to widen); with ``hidden = heads x head size`` whole heads go, and with
      fewer hidden channels and the same heads every head keeps
      ``hidden / heads`` query/key and value channels (query scaled by
      ``sqrt(new / old head size)``, so the kept scores are unchanged).
      A head count change alone changes no parameter count.
    - ``GemmaBackbone``: ``head_dim`` is its own entry, so ``heads`` prunes
      query heads (the same number within every key/value group) and
      ``kv_heads`` whole key/value groups, hidden unchanged; head_dim itself
      is not pruned (rotary embeddings).

    Exact cases: removing heads, units or query/key/value channels whose
    output weights are zero, or blocks that are the identity, leaves the
    outputs unchanged; in general the pruned model equals the original with
    the removed heads and units zeroed. Hidden channels are not exact
    (normalization statistics change): distil afterwards.

    Args:
        model: a keras-hub task (``GPT2CausalLM``, ``BertTextClassifier``,
            ``GemmaCausalLM``, ...) or its backbone.
        heads: query heads kept per block: an int, or a float share.
        kv_heads: key/value heads kept per block (Gemma).
        intermediate: MLP units kept per block (int or share).
        hidden: hidden channels kept (int or share).
        layers: blocks kept (int or share).
        calibration_data: a dict of NumPy arrays the backbone takes
            (``token_ids``, ``padding_mask``, BERT's ``segment_ids``), or an
            ``(x, y)`` tuple of one: some hundreds of sequences.
        batch_size: sequences per forward pass of the calibration.
        criterion: ``"activation"`` (the one available).

    Returns:
        ``(new_model, report)``. ``report``: ``"family"``, ``"sizes_before"``
        / ``"sizes_after"`` (``L`` blocks, ``H`` hidden, ``N`` heads, ``K``
        key/value heads, ``D`` head size, ``I`` units), ``"kept_blocks"`` and
        ``"block_scores"``, ``"hidden"`` (kept channels), ``"layers"`` (per
        kept block, by its new name: ``source`` block, kept ``heads``,
        ``kv_heads``, ``units``, and ``query_key``/``value`` channels per
        kept head when head size changed), ``"params_before"`` /
        ``"params_after"`` (``count_params()``), ``"flops_before"`` /
        ``"flops_after"`` (2 x multiply-accumulates per token at the
        calibration length).

    Example:

    >>> import keras_hub
    >>> backbone = keras_hub.models.GPT2Backbone(
    ...     vocabulary_size=64, num_layers=3, num_heads=2, hidden_dim=16,
    ...     intermediate_dim=32, max_sequence_length=8)
    >>> lm = keras_hub.models.GPT2CausalLM(backbone=backbone)
    >>> x = {"token_ids": np.random.default_rng(0).integers(0, 64, (4, 8)),
    ...      "padding_mask": np.ones((4, 8), "int32")}
    >>> small, report = prune_transformer(lm, intermediate=16, layers=2,
    ...                                   calibration_data=x)
    >>> type(small).__name__, small.backbone.num_layers
    ('GPT2CausalLM', 2)
    >>> report["params_after"] == small.count_params()
    True
    """
    if criterion != "activation":
        raise ValueError(f"criterion must be 'activation'; got {criterion!r}.")
    task = model if hasattr(model, "backbone") else None
    backbone = model.backbone if task is not None else model
    family = family_of(backbone)
    if calibration_data is None:
        raise ValueError(
            f"prune_transformer ranks the {family.name}'s heads, units, "
            "channels and blocks on calibration tokens: pass "
            "calibration_data={'token_ids': ..., 'padding_mask': ...}.")
    config = backbone.get_config()
    old = family.sizes(config)
    new = _new_sizes(family, old, heads, kv_heads, intermediate, hidden,
                     layers)
    scores = activation_importance(backbone, family, calibration_data,
                                   batch_size)
    kept_blocks = _top(scores["blocks"], new["L"])
    index = {"H": _top(scores["hidden"], new["H"])}
    per_layer, report_layers = {}, {}
    for i, b in enumerate(kept_blocks):
        q_heads, kv = _kept_heads(family, scores["heads"][b], old, new)
        entry = {"N": q_heads, "K": kv, "I": _top(scores["units"][b], new["I"]),
                 "H": index["H"], "Dq": None, "Dv": None}
        if new["D"] < old["D"]:
            entry["Dq"] = np.sort(np.argsort(
                -scores["query_key"][b][q_heads], axis=-1, kind="stable")[
                    :, :new["D"]], axis=-1)
            entry["Dv"] = np.sort(np.argsort(
                -scores["value"][b][q_heads], axis=-1, kind="stable")[
                    :, :new["D"]], axis=-1)
        per_layer[int(b)] = entry
        report_layers[f"block_{i}"] = {
            "source": int(b), "heads": q_heads.tolist(),
            "kv_heads": kv.tolist(), "units": entry["I"].tolist(),
            **({"query_key": entry["Dq"].tolist(),
                "value": entry["Dv"].tolist()} if entry["Dq"] is not None
               else {})}
    config.pop("trainable", None)  # a frozen teacher gives a trainable model
    config.pop("name", None)
    new_backbone = type(backbone).from_config(family.config(config, new))
    _copy_weights(family, backbone, new_backbone, kept_blocks, per_layer,
                  index, np.sqrt(new["D"] / old["D"]))
    new_model = new_backbone
    if task is not None:
        new_model = _rebuild_task(task, new_backbone, index["H"])
    length = np.asarray(_first(calibration_data)["token_ids"]).shape[1]
    vocabulary = config["vocabulary_size"] if task is not None and hasattr(
        task, "generate") else 0
    before = model.count_params()
    report = {
        "family": family.name, "note": family.note,
        "sizes_before": old, "sizes_after": new,
        "kept_blocks": kept_blocks.tolist(),
        "block_scores": scores["blocks"].tolist(),
        "hidden": index["H"].tolist(), "layers": report_layers,
        "params_before": before, "params_after": new_model.count_params(),
        "flops_before": _flops(family, old, length, vocabulary),
        "flops_after": _flops(family, new, length, vocabulary)}
    return new_model, report


def _flops(family, s, length, vocabulary):
    """2 x multiply-accumulates per token (see the report)."""
    projections = 2 * s["H"] * s["N"] * s["D"] + 2 * s["H"] * s["K"] * s["D"]
    attention = 2 * s["N"] * s["D"] * length
    mlp = (3 if family.mlp_factor == 2 else 2) * s["H"] * s["I"]
    return int(2 * (s["L"] * (projections + attention + mlp)
                    + s["H"] * vocabulary))


def _first(data):
    if isinstance(data, (tuple, list)):
        return data[0]
    return data


def _copy_weights(family, old, new, kept_blocks, per_layer, index, scale):
    """Sets ``new``'s weights to ``old``'s kept slices."""
    by_path = {v.path: v for v in old.weights}
    for variable in new.weights:
        match = BLOCK.match(variable.path)
        if match:
            source_block = int(kept_blocks[int(match.group(2))])
            source = f"{match.group(1)}_{source_block}/{match.group(3)}"
            idx = per_layer[source_block]
        else:
            source, idx = variable.path, {"H": index["H"]}
        array = np.asarray(by_path[source].numpy())
        roles = family.axis_roles(source, array.ndim)
        q_scale = scale if match and "query" in match.group(3) else 1.0
        array = _slice(array, roles, {**{"Dq": None, "Dv": None}, **idx},
                       q_scale)
        if tuple(array.shape) != tuple(variable.shape):
            raise ValueError(
                f"prune_transformer: '{variable.path}' of the rebuilt "
                f"{family.name} is {tuple(variable.shape)}, the slice is "
                f"{array.shape}.")
        variable.assign(array.astype(variable.dtype))


def _rebuild_task(task, backbone, hidden):
    """A task of ``task``'s class on ``backbone``, its own weights (a
    classifier's head) cut on the hidden axis."""
    config = {k: v for k, v in task.get_config().items()
              if k not in ("backbone", "preprocessor", "name", "trainable",
                           "dtype")}
    new = type(task)(backbone=backbone, preprocessor=task.preprocessor,
                     **config)
    inner = {id(v) for v in task.backbone.weights}
    old_own = [v for v in task.weights if id(v) not in inner]
    inner = {id(v) for v in backbone.weights}
    new_own = [v for v in new.weights if id(v) not in inner]
    for old, var in zip(old_own, new_own):
        array = np.asarray(old.numpy())
        if array.ndim and tuple(array.shape[1:]) == tuple(var.shape[1:]) and (
                array.shape[0] != var.shape[0]):
            array = np.take(array, hidden, axis=0)
        if tuple(array.shape) != tuple(var.shape):
            raise ValueError(
                f"prune_transformer cannot slice the {type(task).__name__}'s "
                f"weight '{old.path}' {tuple(array.shape)} to "
                f"{tuple(var.shape)}.")
        var.assign(array.astype(var.dtype))
    return new
