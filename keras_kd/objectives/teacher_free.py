"""Teacher-free distillation (Tf-KD): a hand-made virtual teacher.

Yuan et al. ("Revisiting Knowledge Distillation via Label Smoothing
Regularization", CVPR 2020, arXiv:1909.11723) read KD as a learned label
smoothing and replace the teacher by a virtual one that puts probability
``a`` on the true class and spreads ``1 − a`` evenly over the others. The
loss needs the labels only; :func:`virtual_teacher` gives the
:class:`~keras_kd.Distiller` a weightless stand-in teacher, so that Tf-KD is
compiled like any other logit objective.
"""

import keras
from keras import ops

from keras_kd.checks import check_number
from keras_kd.objectives.base import Objective, check_temperature
from keras_kd.objectives.distributions import (
    as_temperature,
    float32_tensor,
    kl_rows,
    num_classes,
    one_hot_labels,
)


def virtual_teacher_probabilities(labels, logits, correct_prob=0.99,
                                  temperature=20.0):
    """The virtual teacher's softened distribution ``softmax(p^d / T)``.

    ``p^d_c = a`` for the true class and ``(1 − a) / (K − 1)`` otherwise
    (Yuan et al., CVPR 2020, eq. 9); the authors' code softens these
    *probabilities* with a temperature before the softmax, as here.

    Example:

    >>> import numpy as np
    >>> p = virtual_teacher_probabilities(np.array([0]), np.zeros((1, 3)),
    ...                                   correct_prob=0.9, temperature=1.0)
    >>> [round(float(v), 4) for v in p[0]]
    [0.5391, 0.2304, 0.2304]
    """
    T = as_temperature(temperature)
    a = check_number("correct_prob", correct_prob,
                     "the usual Tf-KD value is correct_prob=0.99.")
    if not 0.0 < a <= 1.0:
        raise ValueError(
            f"correct_prob must be in (0, 1], got {correct_prob!r}; the usual "
            "Tf-KD value is 0.99 (0.9 in the paper's equations).")
    z = float32_tensor(logits)
    gt = one_hot_labels(labels, z)
    classes = ops.cast(num_classes(z), "float32")
    p_d = gt * a + (1.0 - gt) * (1.0 - a) / (classes - 1.0)
    return ops.softmax(p_d / T, axis=-1)


def tfkd_loss(labels, student_logits, correct_prob=0.99, temperature=20.0):
    """Tf-KD_reg: KL from the virtual teacher to the student, per sample.

        p^d_c = a if c = y else (1 − a) / (K − 1)
        loss_i = KL(softmax(p^d / T) ‖ softmax(s))
               = Σ_c u_c (log u_c − log_softmax(s)_c),  u = softmax(p^d / T)

    Follows the authors' code (``loss_kd_regularization``): the student's
    logits are *not* divided by T (the paper writes ``p_τ`` for both sides)
    and no T² factor is applied. Their ``KLDivLoss()`` averages over the
    batch *and* the K classes before a ``multiplier``; this function sums
    over the classes, so their ``multiplier`` m is a weight of ``m / K``
    here (m=100 on CIFAR-100 is weight 1).

    Usual settings: a=0.99, T=20, CE weight 1 − α with α=0.1 to 0.95
    depending on the network (``compile(alpha=1 − α)``).

    Args:
        labels: integer labels, one per element (``logits.shape[:-1]``), or one-hot.
        student_logits: ``(batch, ..., classes)`` tensor (class axis last).
        correct_prob: the virtual teacher's probability ``a`` of the true class.
        temperature: ``T`` applied to the virtual teacher's probabilities.

    Returns:
        A float32 tensor of shape ``logits.shape[:-1]``.

    Example:

    >>> import numpy as np
    >>> loss = tfkd_loss(np.array([1]), np.array([[0.0, 2.0, 0.0]]),
    ...                  temperature=20.0)
    >>> round(float(loss[0]), 4)
    0.4525
    """
    s = float32_tensor(student_logits)
    u = virtual_teacher_probabilities(labels, s, correct_prob, temperature)
    return kl_rows(u, ops.log_softmax(s, axis=-1))


@keras.saving.register_keras_serializable(package="keras_kd")
class TfKD(Objective):
    """Teacher-free KD with a virtual teacher (``distillation_loss="tfkd"``).

    Wraps :func:`tfkd_loss`: the student matches ``softmax(p^d / T)``, a
    virtual teacher that gives probability ``a`` to the true class (Yuan et
    al., CVPR 2020). The teacher's logits are not read: compile it in a
    Distiller whose teacher is :func:`virtual_teacher` (no weights, nothing
    to run). ``temperature`` here is the virtual teacher's own (20 in the
    paper), not the Distiller's. Needs the labels.

    The self-teaching variant (Tf-KD_self: a trained copy of the student
    as teacher, then plain KD) is ``Distiller(teacher=trained_copy,
    student=fresh)`` with ``"kd"``; :func:`keras_kd.schemes.born_again`
    runs it.

    Args:
        correct_prob: the virtual teacher's probability of the true class.
        temperature: the virtual teacher's temperature.
        weight: a multiplier on the term (the authors' ``multiplier / K``).

    Example:

    >>> import keras, numpy as np
    >>> import keras_kd as kd
    >>> from keras_kd.objectives import TfKD, virtual_teacher
    >>> student = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> distiller = kd.Distiller(teacher=virtual_teacher(student),
    ...                          student=student)
    >>> distiller.compile(optimizer="sgd", alpha=0.1,
    ...     loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    ...     distillation_loss=TfKD(correct_prob=0.99, temperature=20.0))
    >>> x = np.ones((8, 4), "float32"); y = np.zeros(8, "int32")
    >>> _ = distiller.fit(x, y, epochs=1, verbose=0)
    """

    needs_labels = True

    def __init__(self, correct_prob=0.99, temperature=20.0, weight=1.0,
                 name="tfkd", **kwargs):
        super().__init__(weight=weight, name=name, **kwargs)
        self.correct_prob = check_number(
            "correct_prob", correct_prob,
            "the usual Tf-KD value is correct_prob=0.99.")
        if not 0.0 < self.correct_prob <= 1.0:
            raise ValueError(
                f"correct_prob must be in (0, 1], got {correct_prob!r}; the "
                "usual Tf-KD value is 0.99.")
        self.temperature = check_temperature(temperature, strict=True)

    def compute(self, teacher_logits, student_logits, labels=None,
                temperature=None):
        if labels is None:
            raise ValueError(
                "Tf-KD needs the labels (its virtual teacher is built from "
                "them): pass y to fit()/evaluate().")
        return tfkd_loss(labels, student_logits, self.correct_prob,
                         self.temperature)

    def get_config(self):
        config = super().get_config()
        config.update(correct_prob=self.correct_prob,
                      temperature=self.temperature)
        return config


@keras.saving.register_keras_serializable(package="keras_kd")
class ConstantLogits(keras.layers.Layer):
    """Outputs one constant row of logits per sample (zeros: uniform).

    The stand-in teacher's only layer. Its logits are a non-trainable
    weight, so that the teacher counts as built and the Distiller's
    checks pass; nothing about the inputs is read but their batch size.

    Example:

    >>> import numpy as np
    >>> tuple(ConstantLogits(3)(np.ones((2, 5))).shape)
    (2, 3)
    """

    # Read by the untrained-teacher check: a stand-in has nothing to score.
    is_virtual_teacher = True

    def __init__(self, classes, **kwargs):
        super().__init__(**kwargs)
        self.classes = int(classes)
        self.logits = self.add_weight(
            shape=(self.classes,), initializer="zeros", trainable=False,
            name="logits")

    def call(self, inputs):
        first = inputs[0] if isinstance(inputs, (list, tuple)) else inputs
        batch = ops.shape(first)[0]
        return ops.broadcast_to(ops.cast(self.logits, "float32"),
                                (batch, self.classes))

    def compute_output_shape(self, input_shape):
        first = input_shape[0] if isinstance(input_shape, list) else \
            input_shape
        return (first[0], self.classes)

    def get_config(self):
        config = super().get_config()
        config["classes"] = self.classes
        return config


def virtual_teacher(student, name="virtual_teacher"):
    """A weightless teacher for teacher-free objectives (:class:`TfKD`).

    A functional model with the student's inputs whose output is constant
    (uniform) logits of the student's class count: the Distiller's checks and steps run as
    usual at no cost, and objectives that ignore the teacher's logits
    (Tf-KD) train the student alone. Students with one output of shape
    ``(batch, classes)``.

    Example:

    >>> import keras
    >>> student = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> virtual_teacher(student).output.shape
    (None, 3)
    """
    outputs = student.outputs if hasattr(student, "outputs") else None
    if not outputs or len(outputs) != 1 or len(outputs[0].shape) != 2:
        raise ValueError(
            "virtual_teacher needs a built functional or Sequential student "
            "with one output of shape (batch, classes); build it with "
            "keras.Input(...) first.")
    inputs = [keras.Input(shape=tuple(i.shape[1:]), dtype=i.dtype)
              for i in student.inputs]
    out = ConstantLogits(outputs[0].shape[-1], name=f"{name}_logits")(
        inputs if len(inputs) > 1 else inputs[0])
    return keras.Model(inputs if len(inputs) > 1 else inputs[0], out,
                       name=name)
