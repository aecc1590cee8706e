"""DIST: distillation from a stronger teacher by correlation of predictions."""

import keras
from keras import ops

from keras_kd.checks import check_number, check_teacher_weights
from keras_kd.objectives.base import Objective, check_temperature
from keras_kd.objectives.distributions import (
    as_temperature,
    float32_tensor,
    num_classes,
    soft_targets,
)


def pearson(a, b, axis, eps=1e-8):
    """Pearson correlation of ``a`` and ``b`` along ``axis``:
    ``Σ a'b' / (‖a'‖·‖b'‖ + eps)``, ``a' = a − mean(a)`` (DIST's and
    torchdistill's form).

    Example:

    >>> import numpy as np
    >>> round(float(pearson(np.array([1.0, 2.0, 3.0]),
    ...                     np.array([2.0, 4.0, 7.0]), axis=0)), 4)
    0.9934
    """
    a, b = ops.convert_to_tensor(a), ops.convert_to_tensor(b)
    a = a - ops.mean(a, axis=axis, keepdims=True)
    b = b - ops.mean(b, axis=axis, keepdims=True)
    num = ops.sum(a * b, axis=axis)
    norm_a = ops.sqrt(ops.maximum(ops.sum(ops.square(a), axis=axis), 1e-30))
    norm_b = ops.sqrt(ops.maximum(ops.sum(ops.square(b), axis=axis), 1e-30))
    return num / (norm_a * norm_b + eps)


def dist_loss(teacher_logits, student_logits, temperature=1.0, beta=1.0,
              gamma=1.0, teacher_weights=None):
    """DIST: correlation-based distillation, as a ``(batch,)`` tensor.

    Matches the *relations* between predictions rather than their values
    (Huang et al., "Knowledge Distillation from A Stronger Teacher", NeurIPS
    2022, arXiv:2205.10536):

        p = softmax(z / τ)                          (batch × classes)
        inter = 1 − mean_i pearson(p_s[i, :], p_t[i, :])   (per sample)
        intra = 1 − mean_c pearson(p_s[:, c], p_t[:, c])   (per class)
        loss = τ² · (β · inter + γ · intra)

    The intra-class term couples the samples of the batch, so it cannot be
    split per sample: the returned vector is ``τ² · (β · (1 − ρ_i) + γ ·
    intra)``, the intra term spread evenly over the samples. Its mean is
    exactly the DIST loss; with ``sample_weight`` the inter term is weighted
    per sample and the intra term by the mean weight. With a list of teacher
    logits, ``p_t`` is the weighted mean of the teachers' probabilities.

    Usual settings: β=γ=1, τ=1 (weights 1 or 2 on the whole term).

    Args:
        teacher_logits: ``(batch, ..., classes)`` tensor (class axis last), or a list of them.
        student_logits: ``(batch, ..., classes)`` tensor (class axis last).
        temperature: ``τ > 0``.
        beta: weight of the inter-class (per-sample) relation, >= 0.
        gamma: weight of the intra-class (per-class) relation, >= 0.
        teacher_weights: per-teacher weights for a list of teachers.

    Returns:
        A float32 tensor of shape ``logits.shape[:-1]`` (one value per sample, or per token).

    Example:

    >>> import numpy as np
    >>> t = np.array([[2.0, 0.0, -1.0], [0.0, 1.0, 0.5]])
    >>> from keras import ops
    >>> float(ops.mean(dist_loss(t, t))) < 1e-6
    True
    """
    T = as_temperature(temperature)
    check_number("beta", beta, "the usual DIST value is beta=1.0.")
    check_number("gamma", gamma, "the usual DIST value is gamma=1.0.")
    p_t = soft_targets(teacher_logits, T, teacher_weights)
    p_s = ops.softmax(float32_tensor(student_logits) / T, axis=-1)
    inter = 1.0 - pearson(p_s, p_t, axis=-1)
    # Per class, across every element of the batch (samples, or tokens).
    classes = num_classes(p_s)
    intra = 1.0 - ops.mean(pearson(ops.reshape(p_s, (-1, classes)),
                                    ops.reshape(p_t, (-1, classes)), axis=0))
    return (beta * inter + gamma * intra) * (T * T)


@keras.saving.register_keras_serializable(package="keras_kd")
class DIST(Objective):
    """DIST correlation distillation (``distillation_loss="dist"``).

    Wraps :func:`dist_loss`: ``τ² · (β · inter + γ · intra)`` with Pearson
    correlations between the softened predictions, per sample (inter-class)
    and per class across the batch (intra-class) (Huang et al., NeurIPS
    2022). Usual settings: β=γ=1, τ=1 — note the Distiller's default
    temperature is 4, so pass ``temperature=1.0`` here or to ``compile``.

    Args:
        beta: weight of the inter-class relation, >= 0.
        gamma: weight of the intra-class relation, >= 0.
        temperature: overrides the Distiller's temperature when given.
        teacher_weights: per-teacher weights for multi-teacher distillation.
        weight: a multiplier on the term.

    Example:

    >>> import keras_kd as kd
    >>> kd.objectives.DIST(temperature=1.0).get_config()["gamma"]
    1.0
    """

    def __init__(self, beta=1.0, gamma=1.0, temperature=None,
                 teacher_weights=None, weight=1.0, name="dist", **kwargs):
        super().__init__(weight=weight, name=name, **kwargs)
        self.beta = check_number("beta", beta,
                                  "the usual DIST value is beta=1.0.")
        self.gamma = check_number("gamma", gamma,
                                   "the usual DIST value is gamma=1.0.")
        if temperature is not None:
            check_temperature(temperature)
        self.temperature = temperature
        self.teacher_weights = check_teacher_weights(teacher_weights)

    def compute(self, teacher_logits, student_logits, labels=None,
                temperature=4.0):
        t = temperature if self.temperature is None else self.temperature
        return dist_loss(teacher_logits, student_logits, t, self.beta,
                         self.gamma, self.teacher_weights)

    def get_config(self):
        config = super().get_config()
        config.update(beta=self.beta, gamma=self.gamma,
                      temperature=self.temperature,
                      teacher_weights=self.teacher_weights)
        return config
