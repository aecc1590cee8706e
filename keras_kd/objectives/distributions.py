"""Softened class distributions: the math the logit objectives share.

Teacher probabilities at a temperature (averaged over several teachers),
one-hot labels shaped like the logits, row-wise KL divergences, and the
conversions every objective applies to its inputs (float32 tensors, a Python
or tensor temperature). Logits have any rank, the class axis last.
"""

from keras import ops

from keras_kd.objectives.base import check_temperature, to_float32


def float32_tensor(x):
    """A float32 tensor (NumPy inputs converted, so that every backend works).

    Example:

    >>> import keras, numpy as np
    >>> keras.backend.standardize_dtype(float32_tensor(np.array([1, 2])).dtype)
    'float32'
    """
    return to_float32(ops.convert_to_tensor(x))


def as_temperature(temperature):
    """A checked temperature: a Python float, or a float32 tensor for a
    tensor or variable (the Distiller passes its ``temperature`` variable).

    Example:

    >>> as_temperature(2)
    2.0
    """
    check_temperature(temperature)
    if isinstance(temperature, (int, float)):
        return float(temperature)
    return ops.cast(ops.convert_to_tensor(temperature), "float32")


def soft_targets(teacher_logits, temperature, teacher_weights=None):
    """Teacher probabilities at temperature T, averaged over several teachers.

    ``teacher_logits`` is a tensor, or a list of tensors (one per teacher);
    several teachers give ``Σ_k w_k softmax(t_k / T)`` with weights ``w``
    normalised to sum to 1 (uniform when ``teacher_weights`` is None), as in
    multi-teacher distillation (Hinton et al., 2015, section 5: the ensemble's
    mean distribution).

    Example: two teachers, one sure of class 0 and one uniform, weighted 3:1.

    >>> import numpy as np
    >>> p = soft_targets([np.array([[50.0, 0.0]]), np.array([[0.0, 0.0]])],
    ...                  1.0, teacher_weights=[3.0, 1.0])
    >>> [round(float(v), 3) for v in p[0]]   # 0.75·[1, 0] + 0.25·[0.5, 0.5]
    [0.875, 0.125]
    """
    if not isinstance(teacher_logits, (list, tuple)):
        return ops.softmax(to_float32(teacher_logits) / temperature, axis=-1)
    k = len(teacher_logits)
    if teacher_weights is None:
        teacher_weights = [1.0 / k] * k
    total = float(sum(teacher_weights))
    probs = [
        (w / total) * ops.softmax(to_float32(t) / temperature, axis=-1)
        for w, t in zip(teacher_weights, teacher_logits)
    ]
    return ops.sum(ops.stack(probs, axis=0), axis=0)


def num_classes(logits):
    """The class count (last axis) of logits, or of the first of a list;
    a symbolic size when the static one is unknown.

    Example:

    >>> import numpy as np
    >>> num_classes(np.zeros((2, 5)))
    5
    """
    first = logits[0] if isinstance(logits, (list, tuple)) else logits
    return ops.shape(first)[-1] if first.shape[-1] is None else first.shape[-1]


def one_hot_labels(labels, logits):
    """float32 one-hot of integer (or one-hot) labels, shaped like ``logits``.

    Labels have one entry per element of ``logits`` (every axis but the
    last), optionally with a trailing axis of 1, or are one-hot already (then
    their argmax is taken).

    Example:

    >>> import numpy as np
    >>> from keras import ops
    >>> ops.convert_to_numpy(one_hot_labels(np.array([2, 0]),
    ...                                     np.zeros((2, 3)))).tolist()
    [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]
    """
    if labels is None:
        raise ValueError(
            "This objective needs the labels: pass labels=... (integer class "
            "indices), or in a Distiller pass y to fit()/evaluate()."
        )
    classes = num_classes(logits)
    labels = ops.convert_to_tensor(labels)
    if len(labels.shape) == len(logits.shape):
        if labels.shape[-1] == classes and classes != 1:
            labels = ops.argmax(labels, axis=-1)  # one-hot: the argmax
        else:
            labels = ops.squeeze(labels, -1)
    return ops.one_hot(ops.cast(labels, "int32"), classes, dtype="float32")


def kl_rows(p, log_q):
    """``Σ_c p_c (log p_c − log q_c)`` per row, with 0·log 0 = 0.

    Example:

    >>> import numpy as np
    >>> p = float32_tensor([[0.5, 0.5]])
    >>> log_q = float32_tensor(np.log([[0.25, 0.75]]))
    >>> round(float(kl_rows(p, log_q)[0]), 4)   # 0.5·log 2 + 0.5·log(2/3)
    0.1438
    """
    log_p = ops.log(ops.maximum(p, 1e-30))
    return ops.sum(p * (log_p - log_q), axis=-1)
