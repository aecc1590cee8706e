"""Logit objectives: the student imitates the teacher's output distribution."""

import keras
from keras import ops

from keras_kd.checks import check_number, check_teacher_weights
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
        p = _soft_targets(teacher_logits, temperature, teacher_weights)
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
# Helpers shared by the objectives below
# ----------------------------------------------------------------------
def _f32(x):
    """A float32 tensor (NumPy inputs converted, so that every backend works)."""
    return to_float32(ops.convert_to_tensor(x))


def _as_temperature(temperature):
    """A Python or tensor temperature (the Distiller passes a variable)."""
    check_temperature(temperature)
    if isinstance(temperature, (int, float)):
        return float(temperature)
    return ops.cast(ops.convert_to_tensor(temperature), "float32")


def _one_hot_labels(labels, logits):
    """float32 one-hot of integer (or one-hot) labels, shaped like ``logits``.

    Labels have one entry per element of ``logits`` (every axis but the
    last), optionally with a trailing axis of 1, or are one-hot already.
    """
    if labels is None:
        raise ValueError(
            "This objective needs the labels: pass labels=... (integer class "
            "indices), or in a Distiller pass y to fit()/evaluate()."
        )
    classes = _num_classes(logits)
    labels = ops.convert_to_tensor(labels)
    if len(labels.shape) == len(logits.shape):
        if labels.shape[-1] == classes and classes != 1:
            labels = ops.argmax(labels, axis=-1)  # one-hot: the argmax
        else:
            labels = ops.squeeze(labels, -1)
    return ops.one_hot(ops.cast(labels, "int32"), classes, dtype="float32")


def _num_classes(logits):
    first = logits[0] if isinstance(logits, (list, tuple)) else logits
    return ops.shape(first)[-1] if first.shape[-1] is None else first.shape[-1]


def _kl_rows(p, log_q):
    """``Σ_c p_c (log p_c − log q_c)`` per row, with 0·log 0 = 0."""
    log_p = ops.log(ops.maximum(p, 1e-30))
    return ops.sum(p * (log_p - log_q), axis=-1)


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
    T = _as_temperature(temperature)
    check_number("alpha", alpha, "the usual DKD value is alpha=1.0.")
    check_number("beta", beta, "the usual DKD value is beta=8.0.")
    s = _f32(student_logits) / T
    gt = _one_hot_labels(labels, s)
    other = 1.0 - gt
    # Teacher side (probabilities, so that several teachers can be averaged).
    p_t = _soft_targets(teacher_logits, T, teacher_weights)
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
    nckd = _kl_rows(p_hat_t, log_p_hat_s * other)
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
    z = _f32(logits)
    classes = ops.cast(_num_classes(z), "float32")
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
    T = _as_temperature(temperature)
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
# DIST: distillation from a stronger teacher
# ----------------------------------------------------------------------
def _pearson(a, b, axis, eps=1e-8):
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
    T = _as_temperature(temperature)
    check_number("beta", beta, "the usual DIST value is beta=1.0.")
    check_number("gamma", gamma, "the usual DIST value is gamma=1.0.")
    p_t = _soft_targets(teacher_logits, T, teacher_weights)
    p_s = ops.softmax(_f32(student_logits) / T, axis=-1)
    inter = 1.0 - _pearson(p_s, p_t, axis=-1)
    # Per class, across every element of the batch (samples, or tokens).
    classes = _num_classes(p_s)
    intra = 1.0 - ops.mean(_pearson(ops.reshape(p_s, (-1, classes)),
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


# ----------------------------------------------------------------------
# Hard-label distillation
# ----------------------------------------------------------------------
def hard_loss(teacher_logits, student_logits, teacher_weights=None):
    """Hard-label distillation: cross-entropy against the teacher's argmax.

        loss_i = −log softmax(s_i)[argmax_c t_ic]

    The teacher's decision is used as the label (as in DeiT's hard
    distillation, Touvron et al., ICML 2021, arXiv:2012.12877). No
    temperature. With a list of teacher logits the label is the argmax of
    the teachers' weighted mean probabilities (softmax at T=1). Float32.

    Args:
        teacher_logits: ``(batch, ..., classes)`` tensor (class axis last), or a list of them.
        student_logits: ``(batch, ..., classes)`` tensor (class axis last).
        teacher_weights: per-teacher weights for a list of teachers.

    Returns:
        A float32 tensor of shape ``logits.shape[:-1]`` (one value per sample, or per token).

    Example:

    >>> import numpy as np
    >>> t = np.array([[0.0, 5.0]]); s = np.array([[0.0, 0.0]])
    >>> round(float(hard_loss(t, s)[0]), 4)
    0.6931
    """
    if isinstance(teacher_logits, (list, tuple)):
        scores = _soft_targets(teacher_logits, 1.0, teacher_weights)
    else:
        scores = _f32(teacher_logits)
    s = _f32(student_logits)
    target = ops.one_hot(ops.argmax(scores, axis=-1), _num_classes(s),
                         dtype="float32")
    target = ops.stop_gradient(target)
    return -ops.sum(target * ops.log_softmax(s, axis=-1), axis=-1)


@keras.saving.register_keras_serializable(package="keras_kd")
class HardDistillation(Objective):
    """Hard-label distillation (``distillation_loss="hard"``).

    Wraps :func:`hard_loss`: the student's cross-entropy against the
    teacher's predicted class. It ignores the temperature and needs no
    labels, so it also distills on unlabeled data. The Distiller weighs it
    as ``alpha · CE(y) + (1 − alpha) · weight · CE(argmax t)`` (DeiT uses
    0.5 / 0.5).

    Args:
        teacher_weights: per-teacher weights for multi-teacher distillation.
        weight: a multiplier on the term.

    Example:

    >>> import keras_kd as kd
    >>> kd.objectives.get("hard").name
    'hard'
    """

    def __init__(self, teacher_weights=None, weight=1.0, name="hard",
                 **kwargs):
        super().__init__(weight=weight, name=name, **kwargs)
        self.teacher_weights = check_teacher_weights(teacher_weights)

    def compute(self, teacher_logits, student_logits, labels=None,
                temperature=None):
        return hard_loss(teacher_logits, student_logits, self.teacher_weights)

    def get_config(self):
        config = super().get_config()
        config.update(teacher_weights=self.teacher_weights)
        return config
