"""MLKD: multi-level logit distillation (instance, batch and class level)."""

import keras
from keras import ops

from keras_kd.checks import check_number, check_teacher_weights
from keras_kd.objectives.base import Objective, check_temperature
from keras_kd.objectives.distributions import (
    float32_tensor,
    kl_rows,
    num_classes,
    soft_targets,
)

# The authors' prediction augmentation: the base T=4 plus 2, 3, 5 and 6.
MLKD_TEMPERATURES = (2.0, 3.0, 4.0, 5.0, 6.0)


def _check_temperatures(temperatures):
    if not isinstance(temperatures, (list, tuple)) or not temperatures:
        raise ValueError(
            f"temperatures must be a non-empty list of numbers, got "
            f"{temperatures!r}; the usual MLKD values are "
            f"{list(MLKD_TEMPERATURES)}.")
    return tuple(check_temperature(t, strict=True) for t in temperatures)


def _gram_gap(p_t, p_s, transpose):
    """``‖G_t − G_s‖²_F`` with ``G = P Pᵀ`` (batch) or ``Pᵀ P`` (class)."""
    if transpose:
        g_t = ops.matmul(ops.transpose(p_t), p_t)
        g_s = ops.matmul(ops.transpose(p_s), p_s)
    else:
        g_t = ops.matmul(p_t, ops.transpose(p_t))
        g_s = ops.matmul(p_s, ops.transpose(p_s))
    return ops.sum(ops.square(g_t - g_s))


def mlkd_loss(teacher_logits, student_logits, temperatures=MLKD_TEMPERATURES,
              instance_weight=1.0, batch_weight=1.0, class_weight=1.0,
              teacher_weights=None):
    """Multi-level logit distillation (MLKD), one value per sample.

    Aligns the predictions at three levels, each at several temperatures
    (the "prediction augmentation") (Jin, Wang and Lin, "Multi-Level Logit
    Distillation", CVPR 2023):

        p^T = softmax(z / T)                    (B × C, for each T in 𝒯)
        instance = Σ_T T² · KL(p_t^T ‖ p_s^T)              (per sample)
        batch    = Σ_T ‖p_t p_tᵀ − p_s p_sᵀ‖²_F / B        (B × B Gram)
        class    = Σ_T ‖p_tᵀ p_t − p_sᵀ p_s‖²_F / C        (C × C Gram)
        loss_i = w_ins · instance_i + w_bat · batch + w_cls · class

    The batch and class terms couple the samples, so they are spread evenly
    over the samples (the vector's mean is the MLKD loss), as in
    :func:`~keras_kd.objectives.dist_loss`; logits of higher rank are
    flattened to rows first. The three terms and their normalisations
    (T² on the KL, 1/B and 1/C on the Gram gaps) are those of the authors'
    code (``kd_loss``, ``bc_loss``, ``cc_loss``). That code also multiplies
    each weak-augmentation term by the share of samples (or classes) whose
    teacher confidence is below the batch median, and adds the same terms
    on a strongly augmented view of the batch; both are left out here
    (strong augmentation belongs to the input pipeline).

    Usual settings: 𝒯 = {2, 3, 4, 5, 6}, all weights 1.

    Args:
        teacher_logits: ``(batch, ..., classes)`` tensor (class axis last), or a list of them.
        student_logits: ``(batch, ..., classes)`` tensor (class axis last).
        temperatures: the temperatures 𝒯.
        instance_weight: weight of the per-sample KL term, >= 0.
        batch_weight: weight of the sample-similarity term, >= 0.
        class_weight: weight of the class-correlation term, >= 0.
        teacher_weights: per-teacher weights for a list of teachers.

    Returns:
        A float32 tensor of shape ``logits.shape[:-1]``.

    Example:

    >>> import numpy as np
    >>> from keras import ops
    >>> t = np.array([[2.0, 0.0, -1.0], [0.0, 1.0, 0.5]])
    >>> float(ops.max(mlkd_loss(t, t))) < 1e-4
    True
    """
    temperatures = _check_temperatures(temperatures)
    w_ins = check_number("instance_weight", instance_weight,
                         "the usual MLKD value is 1.0.")
    w_bat = check_number("batch_weight", batch_weight,
                         "the usual MLKD value is 1.0.")
    w_cls = check_number("class_weight", class_weight,
                         "the usual MLKD value is 1.0.")
    s = float32_tensor(student_logits)
    classes = num_classes(s)
    instance = 0.0
    coupled = 0.0
    for T in temperatures:
        p_t = soft_targets(teacher_logits, T, teacher_weights)
        log_q = ops.log_softmax(s / T, axis=-1)
        instance = instance + (T * T) * kl_rows(p_t, log_q)
        rows_t = ops.reshape(p_t, (-1, classes))
        rows_s = ops.reshape(ops.exp(log_q), (-1, classes))
        n = ops.cast(ops.shape(rows_s)[0], "float32")
        if w_bat:
            coupled = coupled + w_bat * _gram_gap(rows_t, rows_s, False) / n
        if w_cls:
            coupled = coupled + w_cls * _gram_gap(rows_t, rows_s, True) / (
                float(classes))
    return w_ins * instance + coupled


@keras.saving.register_keras_serializable(package="keras_kd")
class MLKD(Objective):
    """Multi-level logit distillation (``distillation_loss="mlkd"``).

    Wraps :func:`mlkd_loss`: instance-level KL plus batch-level (sample
    similarity) and class-level (class correlation) Gram-matrix alignment,
    each summed over several temperatures (Jin et al., CVPR 2023). The
    Distiller's temperature is not used: the temperatures are the
    objective's own. Usual settings: temperatures (2, 3, 4, 5, 6), weights 1,
    CE weight 0.1 and KD weight 0.9 (the authors' configuration:
    ``compile(alpha=0.1)``).

    Args:
        temperatures: the temperatures of the prediction augmentation.
        instance_weight: weight of the instance (KL) term.
        batch_weight: weight of the batch (sample-similarity) term.
        class_weight: weight of the class (class-correlation) term.
        teacher_weights: per-teacher weights for multi-teacher distillation.
        weight: a multiplier on the whole term.

    Example:

    >>> import keras_kd as kd
    >>> kd.objectives.MLKD().get_config()["temperatures"]
    [2.0, 3.0, 4.0, 5.0, 6.0]
    """

    def __init__(self, temperatures=MLKD_TEMPERATURES, instance_weight=1.0,
                 batch_weight=1.0, class_weight=1.0, teacher_weights=None,
                 weight=1.0, name="mlkd", **kwargs):
        super().__init__(weight=weight, name=name, **kwargs)
        self.temperatures = list(_check_temperatures(temperatures))
        self.instance_weight = check_number(
            "instance_weight", instance_weight, "the usual MLKD value is 1.0.")
        self.batch_weight = check_number(
            "batch_weight", batch_weight, "the usual MLKD value is 1.0.")
        self.class_weight = check_number(
            "class_weight", class_weight, "the usual MLKD value is 1.0.")
        self.teacher_weights = check_teacher_weights(teacher_weights)

    def compute(self, teacher_logits, student_logits, labels=None,
                temperature=None):
        return mlkd_loss(teacher_logits, student_logits, self.temperatures,
                         self.instance_weight, self.batch_weight,
                         self.class_weight, self.teacher_weights)

    def get_config(self):
        config = super().get_config()
        config.update(temperatures=list(self.temperatures),
                      instance_weight=self.instance_weight,
                      batch_weight=self.batch_weight,
                      class_weight=self.class_weight,
                      teacher_weights=self.teacher_weights)
        return config
