"""Which teacher layer should each student layer imitate: ``pair_layers``.

Feature distillation needs pairs of layers, and choosing them is the
question users of feature methods ask most. :func:`pair_layers` proposes
pairs from the models' structure and scores each candidate pair with linear
CKA on a batch (Kornblith et al., "Similarity of Neural Network
Representations Revisited", ICML 2019, arXiv:1905.00414):

* CNNs: a *stage* is the run of layers with one spatial resolution; the
  teacher's and the student's stages with the same resolution are paired,
  stage output with stage output (or, with ``select="cka"``, the most
  similar of the last few layers of each);
* transformers: student block ``j`` of ``L_s`` is paired with teacher block
  ``round((j + 1) · L_t / L_s) − 1``, the same relative depth (as
  DistilBERT and TinyBERT map layers);
* dense networks (MLPs, the dense towers of recommenders: no feature map
  both models share and no transformer blocks): the *hidden vectors* are
  the outputs of the hidden ``Dense`` layers, each taken after the
  activation and normalization layers that directly follow it; student
  hidden layer ``j`` of ``L_s`` is paired by the same relative depth, or,
  with ``select="cka"``, by the largest total CKA over the assignments that
  keep the order (teacher layers non-decreasing with the student's).

It returns the ``feature_losses`` for ``Distiller.compile`` (FitNet, AT,
ReviewKD, or the vector objectives cosine, RKD, SP and PKT over the pairs),
with the scores attached.
"""

import re

import keras
import numpy as np

from keras_kd import taps


def linear_cka(x, y):
    """Linear CKA between two representations of the same ``n`` examples.

        CKA(X, Y) = ⟨K_c, L_c⟩_F / (‖K_c‖_F ‖L_c‖_F),
        K = X Xᵀ, L = Y Yᵀ, K_c = H K H, H = I − 11ᵀ/n

    (Kornblith et al., ICML 2019, eq. for linear HSIC; the Gram form, so the
    feature widths may be large). Rows are examples; other axes are
    flattened. 1 for identical representations, and invariant to
    orthogonal transforms and isotropic scaling. Computed in float64 NumPy.

    Args:
        x: ``(n, ...)`` array.
        y: ``(n, ...)`` array.

    Returns:
        A float in [0, 1].

    Example:

    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(size=(16, 5))
    >>> round(linear_cka(x, 3.0 * x), 6)
    1.0
    """
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    y = np.asarray(y, np.float64).reshape(len(y), -1)
    if len(x) != len(y) or len(x) < 2:
        raise ValueError(f"linear_cka needs the same n >= 2 examples in both,"
                         f" got {len(x)} and {len(y)}.")
    x = x - x.mean(axis=0)
    y = y - y.mean(axis=0)
    k, l_ = x @ x.T, y @ y.T
    denom = np.linalg.norm(k) * np.linalg.norm(l_)
    return float(np.sum(k * l_) / denom) if denom > 0 else 0.0


class Pairing(list):
    """The proposed ``feature_losses`` (a list, ready for ``compile``),
    with ``pairs`` (one dict per pair: ``teacher``, ``student`` layer names,
    their shapes and ``cka``) and ``candidates`` (every scored pair)."""

    def __init__(self, objectives, pairs, candidates):
        super().__init__(objectives)
        self.pairs = pairs
        self.candidates = candidates

    def __repr__(self):
        rows = ", ".join(f"{p['teacher']}->{p['student']} "
                         f"(CKA {p['cka']:.3f})" for p in self.pairs)
        return f"Pairing([{rows}])"


def _first_batch(data, max_samples):
    if isinstance(data, (np.ndarray, dict)) or hasattr(data, "shape"):
        batch = data
    else:
        try:
            batch = next(iter(data))
        except TypeError:
            raise ValueError(
                "data must be a batch of the models' inputs (an array or a "
                "dict of arrays) or an iterable of batches, got "
                f"{type(data).__name__}.") from None
        if isinstance(batch, tuple):
            batch = batch[0]
    if isinstance(batch, dict):
        return {k: np.asarray(v)[:max_samples] for k, v in batch.items()}
    return np.asarray(batch)[:max_samples]


def _host(model):
    """The graph model holding the candidate layers: ``model``, or its
    nested backbone (a keras-hub task), with the path prefix of names."""
    if not taps.is_graph_model(model):
        raise ValueError(
            f"pair_layers needs Functional or Sequential models; "
            f"'{model.name}' is a subclassed {type(model).__name__}.")
    if _blocks(model):
        return model, ""
    for layer in model.layers:
        if taps.is_graph_model(layer) and _blocks(layer):
            return layer, f"{layer.name}/"
    return model, ""


def _blocks(model):
    """Transformer blocks of a keras-hub backbone (or alike), in order."""
    blocks = getattr(model, "transformer_layers", None)
    if blocks:
        return list(blocks)
    return [layer for layer in model.layers
            if re.search("transformer|decoder_block|encoder_block",
                         type(layer).__name__.lower())
            and _rank(layer) == 3]


def _rank(layer):
    try:
        out = layer.output
    except (AttributeError, ValueError):
        return None
    return None if isinstance(out, (list, tuple, dict)) else len(out.shape)


def _stages(model):
    """``{(H, W): [layer names, in order]}`` of rank-4 layer outputs."""
    channels_first = keras.config.image_data_format() == "channels_first"
    stages = {}
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer) or _rank(layer) != 4:
            continue
        shape = tuple(layer.output.shape)
        hw = shape[2:4] if channels_first else shape[1:3]
        if None not in hw:
            stages.setdefault(hw, []).append(layer.name)
    return stages


# Layers that keep a hidden Dense layer's (batch, units) output a "hidden
# vector" of the same layer: its activation and normalization.
_ELEMENTWISE = (keras.layers.Activation, keras.layers.ReLU,
                keras.layers.LeakyReLU, keras.layers.PReLU, keras.layers.ELU,
                keras.layers.Softmax, keras.layers.BatchNormalization,
                keras.layers.LayerNormalization)


def _hidden_vectors(model):
    """Names of a model's hidden vectors, input to output: each ``Dense``
    layer with a ``(batch, units)`` output, continued through the
    activation / normalization layers that take its output (the last of
    them is the name), unless one of them is a model output (the logits)."""
    groups, ends = [], {}   # ends: id(tensor) -> group it ends
    for layer in model.layers:
        if _rank(layer) != 2:
            continue
        if isinstance(layer, keras.layers.Dense):
            ends[id(layer.output)] = len(groups)
            groups.append([layer])
        elif isinstance(layer, _ELEMENTWISE):
            try:
                group = ends.pop(id(layer.input), None)
            except (AttributeError, ValueError):
                group = None
            if group is not None:
                groups[group].append(layer)
                ends[id(layer.output)] = group
    outputs = {id(t) for t in model.outputs}
    return [g[-1].name for g in groups
            if not any(id(layer.output) in outputs for layer in g)]


def _depth(j, teacher_layers, student_layers):
    """The teacher layer of student layer ``j``: the same relative depth."""
    return max(0, round((j + 1) * teacher_layers / student_layers) - 1)


def _monotone_best(scores):
    """Teacher indices ``t_0 <= t_1 <= ...`` (one per row of the
    ``(student, teacher)`` ``scores``) with the largest total score, by
    dynamic programming; among equal totals the earliest teacher layers."""
    scores = np.asarray(scores, np.float64)
    total = scores[0].copy()
    back = []
    for row in scores[1:]:
        # best[t]: the best total of the rows so far ending at a teacher
        # index <= t, and where it ends.
        where = np.zeros(len(total), int)
        best = total.copy()
        for t in range(1, len(total)):
            if best[t - 1] >= best[t]:
                best[t], where[t] = best[t - 1], where[t - 1]
            else:
                where[t] = t
        back.append(where)
        total = row + best
    chosen = [int(np.argmax(total))]
    for where in reversed(back):
        chosen.append(int(where[chosen[-1]]))
    return chosen[::-1]


def _features(host, names, x):
    outputs = [taps.layer_output(host, n, "model") for n in names]
    # A Sequential model has no .input until called; .inputs it has.
    inputs = (host.inputs[0] if isinstance(host, keras.Sequential)
              else host.input)
    features = keras.Model(inputs, outputs)(x, training=False)
    if not isinstance(features, (list, tuple)):   # one output: unwrapped
        features = [features]
    return [keras.ops.convert_to_numpy(f) for f in features]


# method -> (objective class name in keras_kd.objectives, usual weight).
METHODS = {"fitnet": ("FitNet", 100.0), "at": ("AttentionTransfer", 1000.0),
           "reviewkd": ("ReviewKD", 1.0), "cosine": ("CosineEmbedding", 1.0),
           "rkd": ("RKD", 1.0), "sp": ("SimilarityPreserving", 3000.0),
           "pkt": ("PKT", 30000.0)}
# The methods that need feature maps (refused for hidden vectors).
MAP_METHODS = ("at", "reviewkd")


def pair_layers(teacher, student, data, method="fitnet", weight=None,
                select="end", candidates=3, max_samples=64):
    """Proposes teacher/student feature pairs and the losses that use them.

    CNN stages are matched by spatial resolution (each resolution both
    models have; the stage's output layer, or with ``select="cka"`` the
    most similar pair among the last ``candidates`` layers of each stage);
    transformer blocks by relative depth. Models with neither (dense MLPs,
    the dense towers of a recommender) pair their hidden vectors (each
    hidden ``Dense`` layer after its activation): student layer ``j`` of
    ``L_s`` with teacher layer ``round((j + 1) · L_t / L_s) − 1``, or with
    ``select="cka"`` the order-keeping assignment (teacher layers
    non-decreasing) of the largest total CKA. Every candidate pair is scored
    with :func:`linear_cka` on up to ``max_samples`` examples of ``data``
    (transformer tokens count as examples; for hidden vectors every
    teacher × student pair is a candidate). See the module docstring.

    Args:
        teacher: a Functional or Sequential model (a keras-hub task or
            backbone included).
        student: the same kind of model.
        data: a batch of inputs (array or dict) or an iterable of batches
            (``(x, y)`` tuples are fine).
        method: one objective per pair: ``"fitnet"`` (:class:`FitNet`, an
            adapter where the widths differ), ``"at"`` (attention transfer,
            feature maps only), ``"cosine"``, ``"rkd"``, ``"sp"`` or
            ``"pkt"``; or ``"reviewkd"``: one objective over all the CNN
            pairs.
        weight: the objectives' weight; default their usual one (FitNet
            100, AT 1000, ReviewKD 1, cosine 1, RKD 1, SP 3000, PKT 30000).
        select: ``"end"`` (stage outputs for CNNs, relative depth for
            hidden vectors) or ``"cka"`` (CNNs and hidden vectors).
        candidates: layers per stage considered with ``select="cka"``.
        max_samples: examples used for CKA.

    Returns:
        A :class:`Pairing`: the list of objectives for ``feature_losses``,
        with ``.pairs`` and ``.candidates`` (their CKA scores).

    Raises:
        ValueError: an unknown ``method`` or ``select``; ``"at"`` or
            ``"reviewkd"`` for hidden vectors (they compare feature maps;
            the message names FitNet); models with no pair to propose.

    Example:

    >>> import keras, numpy as np
    >>> def cnn(width, name):
    ...     x = keras.Input((8, 8, 1))
    ...     h = keras.layers.Conv2D(width, 3, padding="same", name=f"{name}_a")(x)
    ...     h = keras.layers.Conv2D(width, 3, strides=2, name=f"{name}_b")(h)
    ...     h = keras.layers.GlobalAveragePooling2D()(h)
    ...     return keras.Model(x, keras.layers.Dense(3)(h), name=name)
    >>> pairing = pair_layers(cnn(8, "t"), cnn(4, "s"),
    ...                       np.random.rand(16, 8, 8, 1))
    >>> [(p["teacher"], p["student"]) for p in pairing.pairs]
    [('t_a', 's_a'), ('t_b', 's_b')]
    >>> def mlp(widths, name):
    ...     x = keras.Input((6,))
    ...     h = x
    ...     for i, w in enumerate(widths):
    ...         h = keras.layers.Dense(w, activation="relu",
    ...                                name=f"{name}_{i}")(h)
    ...     return keras.Model(x, keras.layers.Dense(3)(h), name=name)
    >>> pairing = pair_layers(mlp((16, 16, 16, 16), "t"), mlp((4, 4), "s"),
    ...                       np.random.rand(16, 6))
    >>> [(p["teacher"], p["student"]) for p in pairing.pairs]
    [('t_1', 's_0'), ('t_3', 's_1')]
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}, got "
                         f"{method!r}.")
    if select not in ("end", "cka"):
        raise ValueError(f"select must be 'end' or 'cka', got {select!r}.")
    x = _first_batch(data, max_samples)
    t_host, t_prefix = _host(teacher)
    s_host, s_prefix = _host(student)
    t_blocks, s_blocks = _blocks(t_host), _blocks(s_host)
    vectors = False
    if t_blocks and s_blocks:
        if method == "reviewkd":
            raise ValueError("ReviewKD compares feature maps; for "
                             "transformers use method='fitnet' or 'at'.")
        t_names = [b.name for b in t_blocks]
        s_names = [b.name for b in s_blocks]
        options = [[(t_names[_depth(j, len(t_names), len(s_names))], s)]
                   for j, s in enumerate(s_names)]
    else:
        t_stages, s_stages = _stages(t_host), _stages(s_host)
        shared = [hw for hw in t_stages if hw in s_stages]
        shared.sort(key=lambda hw: -hw[0] * hw[1])   # shallow to deep
        k = candidates if select == "cka" else 1
        options = [[(t, s) for t in t_stages[hw][-k:]
                    for s in s_stages[hw][-k:]] for hw in shared]
        if not shared:
            t_names, s_names = _hidden_vectors(t_host), _hidden_vectors(s_host)
            if not (t_names and s_names):
                raise ValueError(
                    "pair_layers found no spatial resolution that both "
                    "models' feature maps have, no transformer blocks in "
                    "both and no hidden Dense layers in both (the teacher "
                    f"has {len(t_names)}, the student {len(s_names)}); pass "
                    "feature pairs by hand, e.g. kd.FitNet('t_layer', "
                    "'s_layer').")
            if method in MAP_METHODS:
                raise ValueError(
                    f"method={method!r} compares feature maps, and these "
                    "models' paired layers are hidden vectors (batch, "
                    "units): use method='fitnet' (kd.FitNet, with an adapter "
                    "where the widths differ), or 'cosine', 'rkd', 'sp', "
                    "'pkt'.")
            vectors = True
            # One group per student layer: every teacher layer a candidate.
            options = [[(t, s) for t in t_names] for s in s_names]
    t_needed = sorted({t for group in options for t, _ in group})
    s_needed = sorted({s for group in options for _, s in group})
    t_feat = dict(zip(t_needed, _features(t_host, t_needed, x)))
    s_feat = dict(zip(s_needed, _features(s_host, s_needed, x)))

    def examples(f):
        return f.reshape(-1, f.shape[-1]) if f.ndim == 3 else f

    scored = [[(t, s, linear_cka(examples(t_feat[t]), examples(s_feat[s])))
               for t, s in group] for group in options]
    if vectors:
        n_s, n_t = len(scored), len(scored[0])
        picks = (_monotone_best([[c for _, _, c in rows] for rows in scored])
                 if select == "cka" else
                 [_depth(j, n_t, n_s) for j in range(n_s)])
        chosen = [rows[i] for rows, i in zip(scored, picks)]
    else:
        chosen = [max(rows, key=lambda r: r[2]) if select == "cka"
                  else rows[-1] for rows in scored]
    pairs = [{"teacher": t_prefix + t, "student": s_prefix + s,
              "teacher_shape": t_feat[t].shape[1:],
              "student_shape": s_feat[s].shape[1:], "cka": cka}
             for t, s, cka in chosen]
    cands = [{"teacher": t_prefix + t, "student": s_prefix + s, "cka": c}
             for rows in scored for t, s, c in rows]
    return Pairing(_objectives(pairs, method, weight), pairs, cands)


def _objectives(pairs, method, weight):
    from keras_kd import objectives

    name, default = METHODS[method]
    cls = getattr(objectives, name)
    weight = default if weight is None else weight
    if method == "reviewkd":
        return [cls([p["teacher"] for p in pairs],
                    [p["student"] for p in pairs], weight=weight)]
    return [cls(p["teacher"], p["student"], weight=weight,
                name=f"{method}{i + 1}") for i, p in enumerate(pairs)]
