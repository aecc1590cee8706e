"""Calibration of a classifier's probabilities: NLL, ECE, temperature scaling.

A model is *calibrated* when, among the examples it gives confidence ``p``, a
share ``p`` is right. Distilled students inherit their teacher's softened
targets and can end up over- or under-confident; this module measures that
and fixes it after training without changing a single prediction:

* :func:`nll`: the mean negative log-likelihood of the true labels;
* :func:`ece`: the expected calibration error over equal-width confidence
  bins, and :func:`reliability` for the reliability diagram;
* :func:`fit_temperature`: post-hoc temperature scaling, one scalar ``T``
  fitted on held-out data by minimising the NLL of ``softmax(z / T)``;
* :func:`with_temperature`: a copy of a logits model whose outputs are divided
  by ``T`` (a final ``Rescaling(1 / T)`` layer), ready to export.

Reference: Guo, Pleiss, Sun & Weinberger, "On Calibration of Modern Neural
Networks", ICML 2017 (ECE with 15 bins, temperature scaling).

All functions take logits (the outputs of a keras-kd student or teacher, not
probabilities) as NumPy arrays and integer labels, and compute in float64.
"""

import math
import numbers

import numpy as np

# Guo et al. (2017) use 15 equal-width bins.
DEFAULT_BINS = 15
# The interval fit_temperature searches; T outside it means the logits are
# all but constant (T large) or all but one-hot already (T small).
TEMPERATURE_RANGE = (0.05, 20.0)


def _check(logits, labels):
    z = np.asarray(logits, dtype="float64")
    y = np.asarray(labels)
    if z.ndim != 2:
        raise ValueError(
            f"logits must be a (n, num_classes) array, got shape {z.shape}; "
            "pass model.predict(x) of a model with one logits output.")
    if y.ndim == 2 and y.shape == z.shape:
        raise ValueError(
            "labels look one-hot (shape equal to the logits'); pass integer "
            "labels: np.argmax(y, axis=-1).")
    y = y.reshape(-1)
    if len(y) != len(z):
        raise ValueError(f"{len(z)} rows of logits but {len(y)} labels; pass "
                         "one label per row.")
    if len(y) == 0:
        raise ValueError("No examples: pass at least one row of logits.")
    if not np.all(np.isfinite(z)):
        raise ValueError("logits hold NaN or infinite values; check the "
                         "model's outputs before measuring calibration.")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.equal(np.mod(y, 1), 0)):
            raise ValueError("labels must be integer class indices.")
        y = y.astype("int64")
    if y.min() < 0 or y.max() >= z.shape[1]:
        raise ValueError(
            f"labels must be in 0..{z.shape[1] - 1} (the logits have "
            f"{z.shape[1]} classes), got {y.min()}..{y.max()}.")
    return z, y


def _is_number(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_temperature(temperature):
    if not (_is_number(temperature) and temperature > 0
            and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a positive finite number, got "
                         f"{temperature!r}; e.g. temperature=1.5.")
    return float(temperature)


def _check_num_bins(num_bins):
    if not (isinstance(num_bins, numbers.Integral)
            and not isinstance(num_bins, bool) and num_bins >= 1):
        raise ValueError(f"num_bins must be an integer >= 1, got "
                         f"{num_bins!r}; e.g. num_bins=15 (Guo et al.).")
    return int(num_bins)


def _check_bounds(bounds):
    """``(low, high)`` as floats with ``0 < low < high < inf``."""
    fix = (f"pass two temperatures, bounds=(low, high) with 0 < low < high, "
           f"e.g. bounds={TEMPERATURE_RANGE}.")
    if isinstance(bounds, (str, bytes)) or not hasattr(bounds, "__len__") \
            or len(bounds) != 2:
        raise ValueError(f"bounds must be a pair (low, high), got "
                         f"{bounds!r}; {fix}")
    low, high = bounds
    if not (_is_number(low) and _is_number(high) and 0 < low < high
            and math.isfinite(high)):
        raise ValueError(f"bounds must be 0 < low < high (finite numbers), "
                         f"got {bounds!r}; {fix}")
    return float(low), float(high)


def _log_softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def softmax(logits, temperature=1.0):
    """``softmax(logits / temperature)`` along the last axis, in float64.

    Example:

    >>> softmax([[0.0, np.log(3.0)]]).round(2)
    array([[0.25, 0.75]])
    """
    z = np.asarray(logits, dtype="float64") / _check_temperature(temperature)
    return np.exp(_log_softmax(z.reshape(-1, z.shape[-1]))).reshape(z.shape)


def nll(logits, labels, temperature=1.0):
    """Mean negative log-likelihood of the labels under ``softmax(z / T)``.

    ``NLL = -(1/n) Σ_i log softmax(z_i / T)[y_i]``, computed with a stable
    log-sum-exp in float64 (the cross-entropy, in nats).

    Args:
        logits: ``(n, num_classes)`` logits.
        labels: ``n`` integer labels.
        temperature: divides the logits first (1: as they are).

    Returns:
        A float.

    Example:

    >>> logits = np.log([[0.5, 0.25, 0.25], [0.2, 0.6, 0.2]])
    >>> round(nll(logits, [0, 2]), 4)   # -(log 0.5 + log 0.2) / 2
    1.1513
    """
    z, y = _check(logits, labels)
    log_p = _log_softmax(z / _check_temperature(temperature))
    return float(-log_p[np.arange(len(y)), y].mean())


def reliability(logits, labels, num_bins=DEFAULT_BINS, temperature=1.0):
    """Per-bin counts, accuracy and mean confidence: a reliability diagram.

    Each example's confidence is its largest probability ``max_k
    softmax(z / T)_k``; bin ``m`` (1-based) holds the confidences in
    ``((m - 1) / M, m / M]`` (Guo et al., 2017, section 2).

    Args:
        logits: ``(n, num_classes)`` logits.
        labels: ``n`` integer labels.
        num_bins: ``M``, equal-width bins over (0, 1].
        temperature: divides the logits first.

    Returns:
        A dict of NumPy arrays with one entry per bin: ``edges`` (``M + 1``
        bin edges), ``count``, ``accuracy`` and ``confidence`` (NaN for
        empty bins).

    Example:

    >>> bins = reliability(np.log([[0.9, 0.1], [0.6, 0.4]]), [0, 1],
    ...                    num_bins=5)
    >>> bins["count"].tolist(), bins["accuracy"][[2, 4]].tolist()
    ([0, 0, 1, 0, 1], [0.0, 1.0])
    """
    z, y = _check(logits, labels)
    num_bins = _check_num_bins(num_bins)
    p = np.exp(_log_softmax(z / _check_temperature(temperature)))
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype("float64")
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    # bin m holds (edges[m], edges[m + 1]]: ceil(c * M) - 1, clipped for
    # float round-off at the ends.
    index = np.clip(np.ceil(confidence * num_bins).astype(int) - 1, 0,
                    num_bins - 1)
    count = np.bincount(index, minlength=num_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.bincount(index, correct, minlength=num_bins) / count
        conf = np.bincount(index, confidence, minlength=num_bins) / count
    return {"edges": edges, "count": count, "accuracy": acc,
            "confidence": conf}


def ece(logits, labels, num_bins=DEFAULT_BINS, temperature=1.0):
    """Expected calibration error over ``num_bins`` equal-width bins.

    ``ECE = Σ_m (|B_m| / n) · |acc(B_m) − conf(B_m)|``, where ``B_m`` holds
    the examples whose confidence (largest probability) falls in
    ``((m − 1)/M, m/M]``, ``acc`` is their accuracy and ``conf`` their mean
    confidence (Guo et al., "On Calibration of Modern Neural Networks", ICML
    2017, eq. 3; ``M = 15`` there). 0 is perfectly calibrated; the gap is in
    probability units (0.05: five points).

    Args:
        logits: ``(n, num_classes)`` logits.
        labels: ``n`` integer labels.
        num_bins: ``M``.
        temperature: divides the logits first.

    Returns:
        A float in [0, 1].

    Example: one example at 0.9 confidence (right), one at 0.6 (wrong):
    ``(1/2)·|1 − 0.9| + (1/2)·|0 − 0.6| = 0.35``.

    >>> round(ece(np.log([[0.9, 0.1], [0.6, 0.4]]), [0, 1]), 4)
    0.35
    """
    bins = reliability(logits, labels, num_bins, temperature)
    count = bins["count"]
    filled = count > 0
    gaps = np.abs(bins["accuracy"][filled] - bins["confidence"][filled])
    return float(np.sum(count[filled] / count.sum() * gaps))


def fit_temperature(logits, labels, bounds=TEMPERATURE_RANGE, tol=1e-6):
    """The temperature ``T`` that minimises ``nll(logits / T, labels)``.

    Temperature scaling (Guo et al., ICML 2017, section 4.2): one scalar fitted
    on held-out data (a validation split, never the training data, where a
    model is overconfident by construction). Dividing every logit by the same
    ``T > 0`` keeps each example's argmax, so accuracy is unchanged; ``T > 1``
    softens overconfident predictions, ``T < 1`` sharpens underconfident
    ones.

    The NLL is convex in ``β = 1/T`` (a log-sum-exp of functions linear in β,
    minus a linear term), so a grid over ``log T`` followed by a
    golden-section search between the best grid point's neighbours finds the
    minimum within ``bounds`` to ``tol`` (relative, in T).

    Args:
        logits: ``(n, num_classes)`` held-out logits.
        labels: ``n`` integer labels.
        bounds: ``(low, high)`` for ``T``; the result is clipped to them.
        tol: the search stops when the bracket is this narrow, relative.

    Returns:
        A float ``T``.

    Example: logits three times too large are fitted back to ``T ≈ 3``.

    >>> rng = np.random.default_rng(0)
    >>> z = rng.normal(size=(4000, 5)) * 2
    >>> p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    >>> y = np.array([rng.choice(5, p=row) for row in p])
    >>> bool(2.8 < fit_temperature(3 * z, y) < 3.2)
    True
    >>> bool(0.9 < fit_temperature(z, y) < 1.1)   # calibrated already
    True
    """
    z, y = _check(logits, labels)
    low, high = _check_bounds(bounds)
    if not (_is_number(tol) and 0 < tol < 1):
        # tol <= 0 would never end the search; the bracket is in log T.
        raise ValueError(f"tol must be a number in (0, 1), got {tol!r}; "
                         "e.g. tol=1e-6.")
    rows = np.arange(len(y))
    z = z - z.max(axis=1, keepdims=True)  # the NLL does not change
    true = z[rows, y]

    def loss(log_t):
        scaled = z / math.exp(log_t)
        top = scaled.max(axis=1)
        lse = top + np.log(np.exp(scaled - top[:, None]).sum(axis=1))
        return float(np.mean(lse - true / math.exp(log_t)))

    grid = np.linspace(math.log(low), math.log(high), 61)
    values = [loss(g) for g in grid]
    best = int(np.argmin(values))
    a, b = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = loss(c), loss(d)
    while b - a > tol:
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = loss(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = loss(d)
    return float(min(max(math.exp((a + b) / 2.0), low), high))


def with_temperature(model, temperature, name=None):
    """A copy of a logits model whose outputs are divided by ``temperature``.

    The copy is the model's own graph (cloned, same weights, same layer
    names) followed by ``keras.layers.Rescaling(1 / T)`` named
    ``temperature_scaling``: ``softmax`` of its outputs is the calibrated
    probabilities, its argmax is the original's, and it exports to TFLite
    like any student (the scaling is one multiplication). The original model
    is left unchanged and shares no weights with the copy.

    A model that outputs probabilities (a softmax or sigmoid last layer, the
    default of keras.applications and keras-hub classifiers) is refused with
    a ValueError naming the fix: dividing probabilities by ``T`` is not
    ``softmax(z / T)`` (the rows would sum to ``1 / T``). Build it with
    ``activation=None`` (``classifier_activation=None``), copy the weights,
    and add ``keras.layers.Softmax()`` after the returned model to serve
    probabilities.

    Args:
        model: a functional or Sequential ``keras.Model`` with one logits
            output (a keras-kd student).
        temperature: ``T > 0``, e.g. from :func:`fit_temperature`.
        name: the copy's name (default: the model's).

    Returns:
        A ``keras.Model``.

    Example:

    >>> import keras
    >>> inputs = keras.Input((3,))
    >>> model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    >>> scaled = with_temperature(model, 2.0)
    >>> x = np.ones((1, 3), "float32")
    >>> np.allclose(scaled.predict(x, verbose=0),
    ...             model.predict(x, verbose=0) / 2.0)
    True
    """
    import keras

    t = _check_temperature(temperature)
    try:
        outputs = model.outputs
    except (AttributeError, ValueError):
        outputs = None
    if not outputs:
        raise ValueError(
            f"with_temperature needs a functional or Sequential model, got "
            f"{type(model).__name__}; wrap a subclassed model first: inputs "
            "= keras.Input(shape); keras.Model(inputs, model(inputs)).")
    if len(outputs) != 1:
        raise ValueError(
            f"The model has {len(outputs)} outputs; temperature scaling "
            "needs one logits output.")
    found = _probability_output(keras, model)
    if found is not None:
        raise ValueError(
            f"with_temperature needs a model that outputs logits, but "
            f"'{model.name}' outputs probabilities ({found}): dividing "
            "probabilities by T gives rows that no longer sum to 1, not "
            "softmax(z / T). Pass the same model built without its final "
            "activation (activation=None on its last layer; "
            "classifier_activation=None for keras.applications models, "
            "activation=None for keras-hub classifiers), with the same "
            "weights: logits_model.set_weights(model.get_weights()). Fit T "
            "on that model's outputs too, and add keras.layers.Softmax() "
            "after the returned copy to serve probabilities.")
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    scaled = keras.layers.Rescaling(1.0 / t, name="temperature_scaling")(
        clone.outputs[0])
    return keras.Model(clone.inputs, scaled, name=name or model.name)


def _output_layer(model):
    """The layer of a graph model that produces its (single) output, or None.

    Only public attributes: a layer whose ``output`` is the model's output
    tensor (layers called more than once have no single ``output``).
    """
    target = model.outputs[0]
    for layer in reversed(model.layers):
        try:
            out = layer.output
        except (AttributeError, ValueError):
            continue
        if out is target:
            return layer
    return None


def _probability_output(keras, model):
    """How ``model``'s outputs come out as probabilities, or None for logits.

    Looks at the layer producing the output (into nested models): a softmax
    or sigmoid activation (``Dense(activation="softmax")``,
    ``Activation("softmax")``, ``Softmax()``), as keras.applications and
    keras-hub classifiers build it by default. Failing that, when every
    input is a float tensor of known shape, the model is run on two random
    rows: non-negative rows summing to 1 are probabilities whatever made
    them. (``log_softmax`` outputs are logits up to a shift per row, so they
    pass.)
    """
    softmax, sigmoid = (keras.activations.get("softmax"),
                        keras.activations.get("sigmoid"))
    current = model
    while True:
        layer = _output_layer(current)
        if layer is None:
            break
        if isinstance(layer, keras.layers.Softmax):
            return f"its last layer '{layer.name}' is a Softmax layer"
        activation = getattr(layer, "activation", None)
        for fn, name in ((softmax, "softmax"), (sigmoid, "sigmoid")):
            if activation is fn:
                return (f"its last layer '{layer.name}' applies "
                        f"activation='{name}'")
        if not (isinstance(layer, keras.Model) and getattr(
                layer, "outputs", None) and len(layer.outputs) == 1):
            break
        current = layer  # a nested model's output is the outer one's
    return _probabilities_on_random_rows(keras, model)


def _probabilities_on_random_rows(keras, model):
    specs = list(model.inputs)
    if not all(None not in tuple(t.shape)[1:] and "float" in
               keras.backend.standardize_dtype(t.dtype) for t in specs):
        return None  # token ids, unknown lengths: not probed
    rng = np.random.default_rng(0)
    rows = [rng.standard_normal((2,) + tuple(t.shape)[1:]).astype(
        keras.backend.standardize_dtype(t.dtype)) for t in specs]
    try:
        out = model(rows[0] if len(rows) == 1 else rows, training=False)
        out = np.asarray(keras.ops.convert_to_numpy(out), "float64")
    except Exception:  # noqa: BLE001 - an input structure the probe can't build
        return None
    if out.ndim >= 2 and out.shape[-1] > 1 and np.all(out >= 0) and \
            np.allclose(out.sum(-1), 1.0, atol=1e-3):
        return "every row of its outputs on random inputs is >= 0 and sums to 1"
    return None
