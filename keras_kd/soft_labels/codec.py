"""Top-k compression of teacher logits: k values and indices per row, one fill.

Works over the last axis of logits of any rank: ``(n, classes)`` for one
label per sample, ``(n, length, vocab)`` for one distribution per token.
"""

import numpy as np

FLOAT16_MAX = 65504.0


VALUE_DTYPES = ("float16", "float32")


def compress_top_k(logits, k, value_dtype="float16"):
    """Keeps the k largest logits of each row and their indices.

    A row is the class (or vocabulary) axis, the last one: logits may be
    ``(n, C)`` or ``(n, length, V)`` (one row per token), or any rank. The
    other ``C − k`` classes of a row are summarised by one number, their
    log-mean-exp ``m = log((1 / (C − k)) Σ_{j ∉ top-k} exp(t_j))`` (float32).
    :func:`expand_top_k` rebuilds full logits from the three arrays.

    Bytes per row: ``k · (2 + 2) + 4`` (float16 values, uint16 indices, the
    fill), with int32 indices when ``C > 65535`` (``k · 6 + 4``) and float32
    values with ``value_dtype="float32"`` (2 bytes more per value).

    Args:
        logits: ``(n, ..., C)`` array of teacher logits.
        k: how many classes to keep, ``1 <= k <= C``.
        value_dtype: ``"float16"`` (half the bytes) or ``"float32"`` (the
            logits exactly).

    Returns:
        ``(values, indices, fill)``: ``(..., k)`` logits sorted in decreasing
        order, ``(..., k)`` class indices (uint16 when ``C <= 65535``, else
        int32) and ``(...)`` float32 fill values (0 when ``k == C``).

    Example:

    >>> import numpy as np
    >>> values, indices, fill = compress_top_k(np.array([[3.0, 1.0, 2.0]]), 2)
    >>> values.tolist(), indices.tolist()
    ([[3.0, 2.0]], [[0, 2]])
    """
    logits = np.asarray(logits, dtype="float32")
    if logits.ndim < 2:
        raise ValueError(
            f"Top-k compression needs (samples, ..., classes) logits, got "
            f"shape {logits.shape}. Use top_k=None for other outputs."
        )
    classes = logits.shape[-1]
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or \
            not 1 <= k <= classes:
        raise ValueError(
            f"top_k must be an integer in [1, {classes}] (the class count), "
            f"got {k!r}. Use top_k=None to store all logits."
        )
    if value_dtype not in VALUE_DTYPES:
        raise ValueError(f"value_dtype must be one of {VALUE_DTYPES}, got "
                         f"{value_dtype!r}.")
    k = int(k)
    if value_dtype == "float16" and logits.size and \
            float(np.max(np.abs(logits))) > FLOAT16_MAX:
        raise ValueError(
            "The teacher's logits exceed the float16 range (65504), so they "
            "cannot be stored as float16 values. Use value_dtype='float32' "
            "(compute_soft_labels(..., top_k_dtype='float32')) or top_k=None."
        )
    if k < classes:  # the k largest in O(C), then sorted
        part = np.argpartition(-logits, k - 1, axis=-1)[..., :k]
        order = np.argsort(-np.take_along_axis(logits, part, axis=-1),
                           axis=-1, kind="stable")
        indices = np.take_along_axis(part, order, axis=-1)
    else:
        indices = np.argsort(-logits, axis=-1, kind="stable")
    values = np.take_along_axis(logits, indices, axis=-1)
    if k < classes:
        rest = logits.astype("float64")
        np.put_along_axis(rest, indices, -np.inf, axis=-1)
        top = rest.max(axis=-1, keepdims=True)
        fill = top[..., 0] + np.log(
            np.sum(np.exp(rest - top), axis=-1) / (classes - k))
    else:
        fill = np.zeros(logits.shape[:-1])
    index_dtype = "uint16" if classes <= 65535 else "int32"
    return (values.astype(value_dtype), indices.astype(index_dtype),
            fill.astype("float32"))


def expand_top_k(values, indices, fill, num_classes):
    """Rebuilds full logits from :func:`compress_top_k`'s arrays.

    The kept classes get their stored logits; every other class gets the
    row's fill value ``m`` (the log-mean-exp of the dropped logits):

        t̂_c = t_c (c in top-k),   t̂_c = m = log((1/(C−k)) Σ_{j∉top-k} e^{t_j})

    so that at temperature 1, ``softmax(t̂)`` keeps the top-k probabilities
    and spreads the remaining mass ``1 − Σ_top-k p_c`` uniformly over the
    ``C − k`` other classes: the "marginal smoothing with top-K" soft labels
    of Shen & Xing, "A Fast Knowledge Distillation Framework for Visual
    Recognition" (FKD), ECCV 2022, arXiv:2112.01528. At another temperature
    T, ``softmax(t̂ / T)`` is an approximation of ``softmax(t / T)``: the
    dropped classes share one logit, their log-mean-exp. With ``k == C``
    nothing is dropped and ``t̂`` equals the stored logits (exactly the
    teacher's with float32 values).

    Args:
        values: ``(..., k)`` kept logits.
        indices: ``(..., k)`` their class indices.
        fill: ``(...)`` fill logits.
        num_classes: the class count C.

    Returns:
        A ``(..., C)`` float32 array.

    Example:

    >>> import numpy as np
    >>> t = np.array([[3.0, 1.0, 2.0, 1.0]])
    >>> expand_top_k(*compress_top_k(t, 2), num_classes=4).tolist()
    [[3.0, 1.0, 2.0, 1.0]]
    """
    values = np.asarray(values, dtype="float32")
    indices = np.asarray(indices).astype("int64")
    fill = np.asarray(fill, dtype="float32")
    dense = np.repeat(fill[..., None], num_classes, axis=-1)
    np.put_along_axis(dense, indices, values, axis=-1)
    return dense
