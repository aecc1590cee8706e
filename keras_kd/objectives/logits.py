"""Logit objectives: the student imitates the teacher's output distribution."""

import keras
from keras import ops

from keras_kd.objectives.base import Objective, check_temperature, to_float32


def _soft_targets(teacher_logits, temperature, teacher_weights=None):
    """Teacher probabilities at temperature T, averaged over several teachers.

    ``teacher_logits`` is a tensor, or a list of tensors (one per teacher);
    several teachers give ``sum_k w_k softmax(t_k / T)`` with weights ``w``
    normalised to sum to 1 (uniform when ``teacher_weights`` is None).
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


def kd_loss(teacher_logits, student_logits, temperature=4.0,
            teacher_weights=None):
    """Hinton knowledge distillation loss, one value per sample.

    ``T² · KL(softmax(t/T) ‖ softmax(s/T))``, with the KL summed over classes:

        loss_i = T² Σ_c p_ic (log p_ic − log q_ic),
        p = softmax(t / T),  log q = log_softmax(s / T)

    The T² factor keeps the gradient scale independent of T (Hinton et al.,
    "Distilling the Knowledge in a Neural Network", 2015, arXiv:1503.02531).
    Computed in float32 with ``log_softmax``. With a list of teacher logits
    (multi-teacher distillation), ``p`` is the weighted mean of the teachers'
    softened probabilities.

    Usual settings: T=4 with a 0.1 / 0.9 hard / soft weighting on CIFAR.

    Args:
        teacher_logits: ``(batch, classes)`` tensor, or a list of them.
        student_logits: ``(batch, classes)`` tensor.
        temperature: softening temperature ``T > 0``.
        teacher_weights: optional per-teacher weights for a list of teachers.

    Returns:
        A ``(batch,)`` float32 tensor.

    Example:

    >>> import numpy as np
    >>> t = np.array([[2.0, 0.0, -1.0]]); s = np.array([[0.5, 0.2, 0.1]])
    >>> loss = kd_loss(t, s, temperature=2.0)
    >>> round(float(loss[0]), 4)
    0.3946
    """
    check_temperature(temperature)
    p = _soft_targets(teacher_logits, temperature, teacher_weights)
    log_q = ops.log_softmax(to_float32(student_logits) / temperature, axis=-1)
    log_p = ops.log(ops.maximum(p, 1e-30))
    kl = ops.sum(p * (log_p - log_q), axis=-1)
    return kl * (temperature * temperature)


@keras.saving.register_keras_serializable(package="keras_kd")
class KD(Objective):
    """Hinton knowledge distillation (the default ``distillation_loss="kd"``).

    Wraps :func:`kd_loss`: ``T² · KL(softmax(t/T) ‖ softmax(s/T))`` per sample.
    The Distiller combines it as ``alpha·hard + (1 − alpha)·KD``. With several
    teachers the soft target is their (weighted) mean softened distribution.

    Args:
        temperature: overrides the Distiller's ``temperature`` when given.
        teacher_weights: per-teacher weights for multi-teacher distillation.
        weight: a multiplier on the term (1.0 leaves ``1 − alpha`` alone).

    Example:

    >>> import keras_kd as kd
    >>> objective = kd.objectives.KD(temperature=4.0)
    >>> objective.get_config()["temperature"]
    4.0
    """

    def __init__(self, temperature=None, teacher_weights=None, weight=1.0,
                 name="kd", **kwargs):
        super().__init__(weight=weight, name=name, **kwargs)
        if temperature is not None:
            check_temperature(temperature)
        self.temperature = temperature
        self.teacher_weights = (
            None if teacher_weights is None else [float(w) for w in teacher_weights]
        )

    def compute(self, teacher_logits, student_logits, labels=None,
                temperature=4.0):
        t = temperature if self.temperature is None else self.temperature
        return kd_loss(teacher_logits, student_logits, t, self.teacher_weights)

    def get_config(self):
        config = super().get_config()
        config.update(temperature=self.temperature,
                      teacher_weights=self.teacher_weights)
        return config
