"""Low-rank factorization of Dense and 1x1 convolution layers by truncated SVD.

A layer ``y = f(x W + b)`` with ``W`` of shape ``(n_in, n_out)`` becomes two
layers. With the singular value decomposition ``W = U Σ Vᵀ`` (singular values
``σ_1 ≥ σ_2 ≥ ...``), keeping the ``r`` largest:

    W ≈ (U_r Σ_r)(V_rᵀ),    x W + b ≈ (x A) B + b,  A = U_r Σ_r,  B = V_rᵀ

(Eckart–Young: the best rank-``r`` approximation in Frobenius norm). The
first layer (``A``, ``r`` units, no bias, linear) is new; the second keeps the
original layer's name, units, bias and activation, so whatever consumed the
original layer consumes the second one. Parameters go from
``n_in·n_out (+ n_out)`` to ``r·(n_in + n_out) (+ n_out)``: worth it while
``r < n_in·n_out / (n_in + n_out)``.

``energy`` picks the smallest ``r`` whose kept share of the spectrum's
energy, ``Σ_{i≤r} σ_i² / Σ_i σ_i²``, is at least ``energy``. At full rank
(``r = min(n_in, n_out)``) the outputs are unchanged up to rounding.
"""

import copy

import keras
import numpy as np

from keras_kd.pruning import nodes as nodes_lib


def svd_rank(singular_values, energy):
    """The smallest ``r`` with ``Σ_{i≤r} σ_i² ≥ energy · Σ_i σ_i²``.

    Args:
        singular_values: the singular values, largest first.
        energy: the share of ``Σ σ²`` to keep, in (0, 1].

    >>> svd_rank([3.0, 2.0, 1.0], 0.9)   # 9/14 = 0.64, 13/14 = 0.93
    2
    """
    if not 0.0 < energy <= 1.0:
        raise ValueError(f"energy={energy!r} must be in (0, 1]: the share of "
                         "the sum of squared singular values to keep.")
    s2 = np.square(np.asarray(singular_values, dtype=np.float64))
    total = s2.sum()
    if total == 0.0:
        return 1
    kept = np.cumsum(s2) / total
    return int(min(np.searchsorted(kept, energy - 1e-12) + 1, len(s2)))


def _is_one_by_one(layer):
    return isinstance(layer, (keras.layers.Conv1D, keras.layers.Conv2D,
                              keras.layers.Conv3D)) \
        and not isinstance(layer, (keras.layers.Conv1DTranspose,
                                   keras.layers.Conv2DTranspose,
                                   keras.layers.Conv3DTranspose,
                                   keras.layers.SeparableConv1D,
                                   keras.layers.SeparableConv2D,
                                   keras.layers.DepthwiseConv1D,
                                   keras.layers.DepthwiseConv2D)) \
        and all(k == 1 for k in layer.kernel_size) \
        and layer.get_config().get("groups", 1) == 1


def factorizable(layer):
    """True for a Dense layer or a 1x1 Conv1D/2D/3D with ``groups=1``."""
    return type(layer) is keras.layers.Dense or _is_one_by_one(layer)


def _split_configs(entry, layer, rank, first_name):
    """The configs of the two layers replacing ``layer`` (first, second)."""
    first = copy.deepcopy(entry)
    second = copy.deepcopy(entry)
    cfg1 = first["config"]
    cfg1["name"] = first_name
    if "name" in first:
        first["name"] = first_name
    cfg1.update(activation="linear", use_bias=False, kernel_regularizer=None,
                bias_regularizer=None, activity_regularizer=None,
                kernel_constraint=None, bias_constraint=None)
    cfg1["units" if "units" in cfg1 else "filters"] = rank
    if "filters" in second["config"]:
        ndim = len(layer.kernel_size)
        second["config"].update(strides=[1] * ndim, padding="valid",
                                dilation_rate=[1] * ndim)
    first.pop("build_config", None)
    second.pop("build_config", None)
    return first, second


def factorize(model, layers=None, rank=None, energy=None):
    """Split Dense and 1x1 convolution layers in two by truncated SVD.

    Args:
        model: a built Functional or Sequential model.
        layers: names of the layers to factorize (each must be a Dense or a
            1x1 convolution). ``None``: every such layer whose factorization
            at the chosen rank has fewer parameters than the layer.
        rank: the rank ``r`` to keep (capped at ``min(n_in, n_out)``).
        energy: instead of ``rank``, the share in (0, 1] of ``Σ σ²`` to
            keep; each layer gets the smallest rank that keeps it.

    Returns:
        ``(new_model, report)``: a model of the same class whose factorized
        layer ``name`` became ``name + "_low_rank"`` (``r`` units, ``A``)
        followed by ``name`` (``B`` and the bias), and a dict with, per
        factorized layer, ``rank``, ``full_rank``, ``energy`` (kept share),
        ``params_before`` and ``params_after``; ``skipped`` (name → reason)
        and the model's ``params_before`` / ``params_after``.

    >>> import keras, numpy as np
    >>> from keras_kd.pruning import factorize
    >>> m = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4, name="d")])
    >>> small, report = factorize(m, layers=["d"], rank=4)
    >>> [layer.name for layer in small.layers]
    ['d_low_rank', 'd']
    >>> x = np.ones((2, 6), "float32")
    >>> bool(np.allclose(small.predict(x, verbose=0), m.predict(x, verbose=0), atol=1e-5))
    True
    """
    if (rank is None) == (energy is None):
        raise ValueError("Pass exactly one of rank= (an int >= 1) or "
                         "energy= (a share in (0, 1]) to factorize().")
    if rank is not None and (not isinstance(rank, (int, np.integer)) or rank < 1):
        raise ValueError(f"rank={rank!r} must be an int >= 1.")
    if energy is not None:
        svd_rank([1.0], energy)   # validates energy
    graph = nodes_lib.layer_nodes(model, what="factorize")
    by_name = {node.name: node.layer for node in graph}
    if layers is not None:
        for name in layers:
            if name not in by_name:
                raise ValueError(f"factorize(): no layer named {name!r} in "
                                 f"{model.name!r}; its layers are "
                                 f"{sorted(by_name)}.")
            if not factorizable(by_name[name]):
                raise ValueError(
                    f"Cannot factorize the layer {name!r} "
                    f"({type(by_name[name]).__name__}): only Dense and 1x1 "
                    "Conv1D/Conv2D/Conv3D layers with groups=1 can be split "
                    "by SVD; leave it out of layers=.")
        chosen = list(layers)
    else:
        chosen = [node.name for node in graph if factorizable(node.layer)]
    config = model.get_config()
    entries = nodes_lib.layer_entries(config)
    weights, report_layers, skipped = {}, {}, {}
    for name in chosen:
        layer = by_name[name]
        kernel = keras.ops.convert_to_numpy(layer.kernel)
        w = kernel.reshape(-1, kernel.shape[-1]).astype(np.float64)
        n_in, n_out = w.shape
        u, s, vt = np.linalg.svd(w, full_matrices=False)
        r = min(int(rank), len(s)) if rank is not None else svd_rank(s, energy)
        bias = n_out if layer.use_bias else 0
        before, after = n_in * n_out + bias, r * (n_in + n_out) + bias
        if layers is None and after >= before:
            skipped[name] = (f"rank {r} would not save parameters "
                             f"({after} >= {before})")
            continue
        first_name = name + "_low_rank"
        while first_name in by_name:
            first_name += "_"
        a = (u[:, :r] * s[:r]).astype(kernel.dtype)
        b = vt[:r].astype(kernel.dtype)
        lead = kernel.shape[:-2]
        weights[first_name] = [a.reshape(lead + (n_in, r))]
        rest = [keras.ops.convert_to_numpy(v) for v in layer.weights[1:]]
        weights[name] = [b.reshape((1,) * len(lead) + (r, n_out))] + rest
        share = float((s[:r] ** 2).sum() / max((s ** 2).sum(), 1e-300))
        report_layers[name] = dict(rank=r, full_rank=len(s), energy=share,
                                   params_before=before, params_after=after)
        first, second = _split_configs(entries[name], layer, r, first_name)
        index = config["layers"].index(entries[name])
        if "inbound_nodes" in second:   # Functional: B reads A
            ref = copy.deepcopy(second["inbound_nodes"][0]["args"][0])
            ref["config"]["keras_history"] = [first_name, 0, 0]
            if ref["config"].get("shape"):
                ref["config"]["shape"] = list(ref["config"]["shape"][:-1]) + [r]
            second["inbound_nodes"] = [{"args": [ref], "kwargs": {}}]
        config["layers"][index:index + 1] = [first, second]
    new = nodes_lib.rebuild(model, config, weights)
    return new, dict(layers=report_layers, skipped=skipped,
                     params_before=model.count_params(),
                     params_after=new.count_params())
