"""Hard-label distillation: the student learns the teacher's decisions."""

import keras
from keras import ops

from keras_kd.checks import check_teacher_weights
from keras_kd.objectives.base import Objective
from keras_kd.objectives.distributions import (
    float32_tensor,
    num_classes,
    soft_targets,
)


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
        scores = soft_targets(teacher_logits, 1.0, teacher_weights)
    else:
        scores = float32_tensor(teacher_logits)
    s = float32_tensor(student_logits)
    target = ops.one_hot(ops.argmax(scores, axis=-1), num_classes(s),
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
