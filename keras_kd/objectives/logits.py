"""Logit objectives that match softened distributions: KD, DKD and LS.

The student imitates the teacher's output distribution at a temperature
(Hinton KD), with its target and non-target parts weighed apart (DKD), or
after both rows of logits are standardized (LS). The correlation objective
DIST lives in :mod:`keras_kd.objectives.dist`, hard-label distillation in
:mod:`keras_kd.objectives.hard`; both are importable from here too, as they
were before the split. The math they share (soft targets of several teachers,
one-hot labels, KL per row) is in :mod:`keras_kd.objectives.distributions`.
"""

import keras
from keras import ops

from keras_kd.checks import check_number, check_teacher_weights
from keras_kd.objectives.base import Objective, check_temperature, to_float32
from keras_kd.objectives.dist import DIST, dist_loss  # noqa: F401
from keras_kd.objectives.distributions import (
    as_temperature,
    float32_tensor,
    kl_rows,
    num_classes,
    one_hot_labels,
    soft_targets,
)
from keras_kd.objectives.hard import HardDistillation, hard_loss  # noqa: F401


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
        teacher_logits: ``(batch, ..., classes)`` tensor (class axis last), or a list of them.
        student_logits: ``(batch, ..., classes)`` tensor (class axis last).
        temperature: softening temperature ``T > 0``.
        teacher_weights: optional per-teacher weights for a list of teachers.

    Returns:
        A float32 tensor of shape ``logits.shape[:-1]`` (one value per sample, or per token).

    Example:

    >>> import numpy as np
    >>> t = np.array([[2.0, 0.0, -1.0]]); s = np.array([[0.5, 0.2, 0.1]])
    >>> loss = kd_loss(t, s, temperature=2.0)
    >>> round(float(loss[0]), 4)
    0.5695
    """
    check_temperature(temperature)
    log_q = ops.log_softmax(to_float32(student_logits) / temperature, axis=-1)
    if isinstance(teacher_logits, (list, tuple)):
        p = soft_targets(teacher_logits, temperature, teacher_weights)
        log_p = ops.log(ops.maximum(p, 1e-30))
    else:  # one teacher: log p straight from log-softmax, p = exp(log p)
        log_p = ops.log_softmax(to_float32(teacher_logits) / temperature,
                                axis=-1)
        p = ops.exp(log_p)
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
        self.teacher_weights = check_teacher_weights(teacher_weights)

    loss_fn = staticmethod(kd_loss)

    def compute(self, teacher_logits, student_logits, labels=None,
                temperature=4.0):
        t = temperature if self.temperature is None else self.temperature
        return self.loss_fn(teacher_logits, student_logits, t,
                            self.teacher_weights)

    def get_config(self):
        config = super().get_config()
        config.update(temperature=self.temperature,
                      teacher_weights=self.teacher_weights)
        return config


# ----------------------------------------------------------------------
# LS: logit standardization
# ----------------------------------------------------------------------
def standardize_logits(logits, eps=1e-7):
    """Z-scores each row: ``(z − mean(z)) / (std(z) + eps)``.

    ``std`` is the sample standard deviation (divisor ``classes − 1``), as
    ``torch.std`` in the authors' code (Sun et al., CVPR 2024). Float32.

    Example:

    >>> import numpy as np
    >>> z = standardize_logits(np.array([[1.0, 2.0, 3.0]]))
    >>> [round(float(v), 3) for v in z[0]]
    [-1.0, 0.0, 1.0]
    """
    z = float32_tensor(logits)
    classes = ops.cast(num_classes(z), "float32")
    centred = z - ops.mean(z, axis=-1, keepdims=True)
    var = ops.sum(ops.square(centred), axis=-1, keepdims=True) / (
        classes - 1.0)
    return centred / (ops.sqrt(var) + eps)


def ls_loss(teacher_logits, student_logits, temperature=2.0,
            teacher_weights=None):
    """KD with logit standardization (LS), one value per sample.

    Each row of logits is z-scored before the softmax, so the student only
    has to match the *shape* of the teacher's logits, not their scale or
    shift (Sun et al., "Logit Standardization in Knowledge Distillation",
    CVPR 2024, arXiv:2403.01427):

        loss_i = τ² · KL(softmax(Z(t)/τ) ‖ softmax(Z(s)/τ)),
        Z(z) = (z − mean(z)) / std(z)

    With a list of teacher logits each teacher is standardized, then their
    softened probabilities averaged (``teacher_weights``). Float32.

    Usual settings: base temperature τ=2, KD weight 9 (CE weight 1).

    Args:
        teacher_logits: ``(batch, ..., classes)`` tensor (class axis last), or a list of them.
        student_logits: ``(batch, ..., classes)`` tensor (class axis last).
        temperature: base temperature ``τ > 0``.
        teacher_weights: per-teacher weights for a list of teachers.

    Returns:
        A float32 tensor of shape ``logits.shape[:-1]`` (one value per sample, or per token).

    Example:

    >>> import numpy as np
    >>> t = np.array([[2.0, 0.0, -1.0]])
    >>> float(ls_loss(t, 10.0 * t + 3.0, temperature=2.0)[0]) < 1e-6
    True
    """
    T = as_temperature(temperature)
    if isinstance(teacher_logits, (list, tuple)):
        teacher = [standardize_logits(t) for t in teacher_logits]
    else:
        teacher = standardize_logits(teacher_logits)
    return kd_loss(teacher, standardize_logits(student_logits), T,
                   teacher_weights)


@keras.saving.register_keras_serializable(package="keras_kd")
class LS(KD):
    """Logit-standardized KD (``distillation_loss="ls"``).

    Wraps :func:`ls_loss`: KD between z-scored logits at base temperature τ
    (Sun et al., CVPR 2024). Usual settings: τ=2 and a KD weight of 9 against
    a CE weight of 1, e.g. ``compile(alpha=0.1, temperature=2.0,
    distillation_loss=LS(weight=1.0))`` gives 0.1·CE + 0.9·LS (the paper's
    ratio 1:9).

    Args:
        temperature: overrides the Distiller's temperature when given.
        teacher_weights: per-teacher weights for multi-teacher distillation.
        weight: a multiplier on the term.

    Example:

    >>> import keras_kd as kd
    >>> kd.objectives.LS(temperature=2.0).get_config()["temperature"]
    2.0
    """

    loss_fn = staticmethod(ls_loss)

    def __init__(self, temperature=None, teacher_weights=None, weight=1.0,
                 name="ls", **kwargs):
        super().__init__(temperature=temperature,
                         teacher_weights=teacher_weights, weight=weight,
                         name=name, **kwargs)


# ----------------------------------------------------------------------
# DKD: decoupled knowledge distillation
# ----------------------------------------------------------------------
def dkd_loss(teacher_logits, student_logits, labels, alpha=1.0, beta=8.0,
             temperature=4.0, teacher_weights=None):
    """Decoupled knowledge distillation (DKD), one value per sample.

    KD split into a target-class part (TCKD) and a non-target part (NCKD)
    with separate weights (Zhao et al., "Decoupled Knowledge Distillation",
    CVPR 2022, arXiv:2203.08679):

        p = softmax(z / T)                       (teacher t, student s)
        b = [p_y, 1 − p_y]                       binary target / rest
        p̂_c = p_c / (1 − p_y), c ≠ y             distribution over non-targets
        loss_i = T² · (α · KL(b_t ‖ b_s) + β · KL(p̂_t ‖ p̂_s))

    The student's log-probabilities are computed with log-softmax / logsumexp
    (the non-target part masks the target logit with −1000 after dividing by
    T, as the authors' code does), in float32. With a list of teacher logits,
    ``p_t`` is the weighted mean of the teachers' softened probabilities, from
    which ``b_t`` and ``p̂_t`` are derived. This function has no warm-up; the
    :class:`DKD` class applies it.

    Usual settings: α=1, β=8, T=4 on CIFAR-100 (β=2 for ResNet-56/110
    students, 6 for WRN/VGG); T=1, β=0.5 on ImageNet.

    Args:
        teacher_logits: ``(batch, ..., classes)`` tensor (class axis last), or a list of them.
        student_logits: ``(batch, ..., classes)`` tensor (class axis last).
        labels: integer labels, one per element (``logits.shape[:-1]``), or one-hot.
        alpha: weight of the target-class term (TCKD), >= 0.
        beta: weight of the non-target term (NCKD), >= 0.
        temperature: softening temperature ``T > 0``.
        teacher_weights: per-teacher weights for a list of teachers.

    Returns:
        A float32 tensor of shape ``logits.shape[:-1]`` (one value per sample, or per token).

    Example:

    >>> import numpy as np
    >>> t = np.array([[3.0, 1.0, 0.0]]); s = np.array([[1.0, 1.0, 1.0]])
    >>> loss = dkd_loss(t, s, np.array([0]), alpha=1.0, beta=8.0,
    ...                 temperature=1.0)
    >>> float(loss[0]) > 0
    True
    """
    T = as_temperature(temperature)
    check_number("alpha", alpha, "the usual DKD value is alpha=1.0.")
    check_number("beta", beta, "the usual DKD value is beta=8.0.")
    s = float32_tensor(student_logits) / T
    gt = one_hot_labels(labels, s)
    other = 1.0 - gt
    # Teacher side (probabilities, so that several teachers can be averaged).
    p_t = soft_targets(teacher_logits, T, teacher_weights)
    pt_y = ops.sum(p_t * gt, axis=-1)
    pt_rest = ops.sum(p_t * other, axis=-1)
    # Student side, in log space.
    lse_all = ops.logsumexp(s, axis=-1)
    s_masked = s - 1000.0 * gt
    lse_rest = ops.logsumexp(s_masked, axis=-1)
    log_ps_y = ops.sum(s * gt, axis=-1) - lse_all
    log_ps_rest = lse_rest - lse_all
    tckd = (pt_y * (ops.log(ops.maximum(pt_y, 1e-30)) - log_ps_y)
            + pt_rest * (ops.log(ops.maximum(pt_rest, 1e-30)) - log_ps_rest))
    p_hat_t = p_t * other / ops.maximum(ops.expand_dims(pt_rest, -1), 1e-30)
    log_p_hat_s = ops.log_softmax(s_masked, axis=-1)
    nckd = kl_rows(p_hat_t, log_p_hat_s * other)
    return (alpha * tckd + beta * nckd) * (T * T)


def _warmup_factor(epoch, warmup_epochs):
    if warmup_epochs <= 0:
        return 1.0
    return min((epoch + 1) / warmup_epochs, 1.0)


@keras.saving.register_keras_serializable(package="keras_kd")
class DKD(Objective):
    """Decoupled knowledge distillation (``distillation_loss="dkd"``).

    Wraps :func:`dkd_loss`, ``T² · (α · TCKD + β · NCKD)`` per sample (Zhao et
    al., CVPR 2022), times a warm-up factor that grows linearly from
    ``1 / warmup_epochs`` at the first epoch (epoch index 0) to 1 at epoch
    index ``warmup_epochs − 1``, as in the authors' code (``min(epoch /
    warmup, 1)`` with epochs counted from 1). The factor is a non-trainable
    variable updated by :meth:`on_epoch_begin`, which ``Distiller.fit`` calls
    at the start of each epoch; ``warmup_epochs=0`` disables the warm-up.
    DKD needs the labels; with semi-supervised batches (labels < 0 mark
    unlabeled samples) the Distiller averages it over the labeled samples.

    The Distiller weighs it as ``alpha_hard · CE + (1 − alpha_hard) · weight ·
    DKD``; the paper's recipe (CE weight 1, DKD weight 1) is e.g.
    ``compile(alpha=0.5, distillation_loss=DKD(weight=1.0))`` up to a global
    factor of 2.

    Args:
        alpha: weight of the target-class term (TCKD), >= 0 (usual 1).
        beta: weight of the non-target term (NCKD), >= 0 (usual 8 on
            CIFAR-100, 0.5 on ImageNet).
        temperature: overrides the Distiller's temperature when given.
        warmup_epochs: epochs of the linear warm-up (usual 20).
        teacher_weights: per-teacher weights for multi-teacher distillation
            (the teachers' softened probabilities are averaged).
        weight: a multiplier on the term.

    Example:

    >>> import keras_kd as kd
    >>> dkd = kd.objectives.DKD(alpha=1.0, beta=8.0, warmup_epochs=20)
    >>> dkd.on_epoch_begin(4)
    >>> round(dkd.warmup_factor, 2)
    0.25
    """

    needs_labels = True

    def __init__(self, alpha=1.0, beta=8.0, temperature=None,
                 warmup_epochs=20, teacher_weights=None, weight=1.0,
                 name="dkd", **kwargs):
        super().__init__(weight=weight, name=name, **kwargs)
        self.alpha = check_number(
            "alpha", alpha, "the usual DKD value is alpha=1.0.")
        self.beta = check_number(
            "beta", beta, "the usual DKD value is beta=8.0 (CIFAR-100).")
        if temperature is not None:
            check_temperature(temperature)
        self.temperature = temperature
        if not isinstance(warmup_epochs, int) or isinstance(
                warmup_epochs, bool) or warmup_epochs < 0:
            raise ValueError(
                f"warmup_epochs must be an integer >= 0, got "
                f"{warmup_epochs!r}; the usual value is 20 (0 disables the "
                "warm-up)."
            )
        self.warmup_epochs = warmup_epochs
        self.teacher_weights = check_teacher_weights(teacher_weights)
        self._warmup = self.add_weight(
            shape=(), dtype="float32", trainable=False, name="warmup",
            initializer=keras.initializers.Constant(
                _warmup_factor(0, warmup_epochs)))

    @property
    def warmup_factor(self):
        """The current warm-up factor (a float in (0, 1])."""
        return float(ops.convert_to_numpy(self._warmup.value))

    def on_epoch_begin(self, epoch):
        """Sets the warm-up factor for ``epoch`` (0-based, as in Keras)."""
        self._warmup.assign(_warmup_factor(int(epoch), self.warmup_epochs))

    def compute(self, teacher_logits, student_logits, labels=None,
                temperature=4.0):
        if labels is None:
            raise ValueError(
                "DKD needs the labels (its target-class term uses them): pass "
                "y to fit()/evaluate(), or choose distillation_loss='kd', "
                "'ls' or 'dist', which do not."
            )
        t = temperature if self.temperature is None else self.temperature
        loss = dkd_loss(teacher_logits, student_logits, labels, self.alpha,
                        self.beta, t, self.teacher_weights)
        return loss * ops.cast(self._warmup, "float32")

    def get_config(self):
        config = super().get_config()
        config.update(alpha=self.alpha, beta=self.beta,
                      temperature=self.temperature,
                      warmup_epochs=self.warmup_epochs,
                      teacher_weights=self.teacher_weights)
        return config
