"""Boundary objectives: the student imitates the teacher's pre-ReLU features.

Both compare the teacher's features *before* its ReLU with the student's
pre-ReLU features mapped by a trainable connector ``r`` (1×1 ``Conv2D`` +
BatchNorm for images, ``Dense`` for ``(batch, L, C)`` maps and vectors),
owned by the objective, saved with the Distiller and never part of the
student. Tap the teacher's and the student's BatchNorm layers that precede
a ReLU (or any layer whose output is pre-activation).

* AB transfers where each neuron is active (the activation boundaries);
* OFD regresses the teacher's features clipped below at a per-channel
  margin, ignoring where both sides are already negative enough.
"""

import math

import keras
from keras import ops

from keras_kd.objectives.base import to_float32
from keras_kd.objectives.features import FitNet


def _per_sample_sum(x):
    axes = tuple(range(1, len(x.shape)))
    return ops.sum(x, axis=axes) if axes else x


def ab_loss(teacher_features, student_features, margin=1.0):
    """Activation-boundary (AB) loss, one value per sample.

    With ``t`` the teacher's pre-ReLU features, ``s = r(f_s)`` the connected
    student's and ``ρ(t) = 1[t > 0]``, the squared hinge of eq. 6:

        loss = Σ_elements ρ(t)·max(0, m − s)² + (1 − ρ(t))·max(0, m + s)²

    (Heo et al., "Knowledge Transfer via Distillation of Activation
    Boundaries Formed by Hidden Neurons", AAAI 2019, arXiv:1811.03233; margin
    ``m`` = 1). The sum over a sample's elements is the paper's; the
    authors' code also divides by the batch and multiplies by 3/1000 per
    stage, which here is the ``weight``. The teacher's side is a constant.

    Args:
        teacher_features: pre-ReLU ``(batch, ...)`` tensor.
        student_features: the connected student features, same shape.
        margin: ``m`` > 0.

    Returns:
        A ``(batch,)`` float32 tensor.

    Example:

    >>> import numpy as np
    >>> t = np.array([[1.0, -1.0]]); s = np.array([[2.0, -2.0]])
    >>> [float(v) for v in ab_loss(t, s)]
    [0.0]
    """
    t = ops.stop_gradient(to_float32(ops.convert_to_tensor(teacher_features)))
    s = to_float32(ops.convert_to_tensor(student_features))
    on = ops.cast(t > 0, "float32")
    loss = on * ops.square(ops.relu(margin - s)) + (1.0 - on) * ops.square(
        ops.relu(margin + s))
    return _per_sample_sum(loss)


def _check_connectable(objective, teacher_shape, student_shape):
    if len(teacher_shape) != len(student_shape):
        objective.check_spatial(teacher_shape, student_shape)  # raises
    objective.check_same_length(teacher_shape, student_shape)


@keras.saving.register_keras_serializable(package="keras_kd")
class ActivationBoundaries(FitNet):
    """Activation-boundary distillation (AB) on one pre-ReLU layer pair.

    ``weight · Σ ρ(t)·max(0, m − r(f_s))² + (1 − ρ(t))·max(0, m + r(f_s))²``
    (:func:`ab_loss`; Heo et al., AAAI 2019) with the student's trainable
    connector ``r`` (1×1 conv + BatchNorm, always made, as in the paper).
    The paper trains with AB alone first (initialisation) and then with the
    labels; used as a term of the loss, the authors' code weighs the last
    stage 3/1000 (weight 0.003) and each earlier stage half the next.

    Args:
        teacher_layer: the teacher's pre-ReLU layer (e.g. a BatchNorm).
        student_layer: the student's pre-ReLU layer.
        margin: the margin ``m`` > 0 (1 in the paper).
        weight: the term's weight in the total loss.
        resize: resize the student's map to the teacher's spatial size.

    Example:

    >>> import keras_kd as kd
    >>> kd.objectives.ActivationBoundaries("teacher_bn", "student_bn").name
    'ab'
    """

    def __init__(self, teacher_layer, student_layer, margin=1.0, weight=1.0,
                 resize=False, name="ab", **kwargs):
        kwargs.pop("adapter", None)
        super().__init__(teacher_layer, student_layer, weight=weight,
                         adapter="always", resize=resize, name=name, **kwargs)
        if not isinstance(margin, (int, float)) or isinstance(margin, bool) \
                or margin <= 0:
            raise ValueError(f"margin must be a number > 0, got {margin!r}; "
                             "the paper uses 1.")
        self.margin = float(margin)

    def build_for(self, teacher_shape, student_shape):
        _check_connectable(self, teacher_shape, student_shape)
        super().build_for(teacher_shape, student_shape)

    def compute(self, teacher_features, student_features, training=False):
        s = self.adapter(self.resize_student(student_features),
                         training=training)
        return ab_loss(teacher_features, s, self.margin)

    def get_config(self):
        config = super().get_config()
        config.pop("adapter", None)
        config["margin"] = self.margin
        return config


def ofd_margin(gamma, beta):
    """OFD's per-channel margin from a BatchNorm's scale and offset.

    A BatchNorm output channel is taken as ``x ~ N(β, γ²)``; the margin is
    the expectation of its negative part, ``E[x | x < 0] = β − |γ|·φ(β/|γ|)
    / Φ(−β/|γ|)``, or ``−3|γ|`` when ``Φ(−β/|γ|) ≤ 0.001`` (Heo et al., ICCV
    2019, eq. 3 and the authors' ``get_margin_from_BN``).

    Args:
        gamma: the BatchNorm's scale per channel (a sequence of floats).
        beta: its offset per channel.

    Returns:
        A list of floats, one per channel.

    Example:

    >>> [round(m, 4) for m in ofd_margin([1.0], [0.0])]
    [-0.7979]
    """
    margins = []
    for g, b in zip(gamma, beta):
        s, m = abs(float(g)), float(b)
        s = max(s, 1e-12)
        cdf = 0.5 * (1.0 + math.erf(-m / s / math.sqrt(2.0)))
        if cdf > 0.001:
            pdf = math.exp(-(m / s) ** 2 / 2.0) / math.sqrt(2.0 * math.pi)
            margins.append(m - s * pdf / cdf)
        else:
            margins.append(-3.0 * s)
    return margins


def ofd_loss(teacher_features, student_features, margin):
    """Overhaul-of-feature-distillation (OFD) loss, one value per sample.

    The teacher's pre-ReLU features are clipped below at the per-channel
    margin ``m`` (``t̂ = max(t, m)``); the partial L2 distance skips the
    elements where the student is already below a non-positive target:

        loss = Σ_elements (s − t̂)² · 1[s > t̂ or t̂ > 0]

    (Heo et al., "A Comprehensive Overhaul of Feature Distillation", ICCV
    2019, arXiv:1904.01866, eq. 2-4). The per-sample sum is the paper's and
    the code's; the code's division by 1000 per batch and its stage weights
    are left to ``weight``.

    Args:
        teacher_features: pre-ReLU ``(batch, ..., C)`` tensor (``(batch, C,
            H, W)`` under ``channels_first``).
        student_features: the connected student features, same shape.
        margin: a float, or one float per channel (see :func:`ofd_margin`).

    Returns:
        A ``(batch,)`` float32 tensor.

    Example:

    >>> import numpy as np
    >>> t = np.array([[-2.0, 1.0]]); s = np.array([[-3.0, 0.0]])
    >>> [float(v) for v in ofd_loss(t, s, -1.0)]
    [1.0]
    """
    t = ops.stop_gradient(to_float32(ops.convert_to_tensor(teacher_features)))
    s = to_float32(ops.convert_to_tensor(student_features))
    m = ops.convert_to_tensor(margin, "float32")
    if len(m.shape) == 1 and len(t.shape) == 4 and \
            keras.config.image_data_format() == "channels_first":
        m = ops.reshape(m, (-1, 1, 1))
    target = ops.maximum(t, m)
    keep = ops.logical_or(s > target, target > 0)
    return _per_sample_sum(ops.square(s - target) * ops.cast(keep, "float32"))


@keras.saving.register_keras_serializable(package="keras_kd")
class OFD(FitNet):
    """Overhaul of feature distillation (OFD) on one pre-ReLU layer pair.

    ``weight · Σ (r(f_s) − max(t, m))² · 1[r(f_s) > max(t, m) or max(t, m)
    > 0]`` (:func:`ofd_loss`; Heo et al., ICCV 2019) with the teacher's
    pre-ReLU features ``t``, the student's trainable connector ``r`` (1×1
    conv + BatchNorm, always made) and the per-channel margin ``m``. Build
    it with :meth:`from_teacher` to take the margin from the BatchNorm
    layer tapped in the teacher, or pass ``margin=`` (a float or one per
    channel). Usual weight: 1/1000 per sample for the last stage (the
    authors' CIFAR code; earlier stages half the next).

    Args:
        teacher_layer: the teacher's pre-ReLU layer (a BatchNorm).
        student_layer: the student's pre-ReLU layer.
        margin: a float or a list of one float per teacher channel.
        weight: the term's weight in the total loss.
        resize: resize the student's map to the teacher's spatial size.

    Example:

    >>> import keras_kd as kd
    >>> kd.objectives.OFD("teacher_bn", "student_bn", margin=-1.0).margin
    -1.0
    """

    def __init__(self, teacher_layer, student_layer, margin=None, weight=1.0,
                 resize=False, name="ofd", **kwargs):
        kwargs.pop("adapter", None)
        super().__init__(teacher_layer, student_layer, weight=weight,
                         adapter="always", resize=resize, name=name, **kwargs)
        if margin is None:
            raise ValueError(
                "OFD needs the teacher's margin: build it with "
                "kd.objectives.OFD.from_teacher(teacher, teacher_layer, "
                "student_layer) (margin from the BatchNorm tapped), or pass "
                "margin= (a float, or one float per channel).")
        if isinstance(margin, (int, float)) and not isinstance(margin, bool):
            self.margin = float(margin)
        else:
            self.margin = [float(m) for m in margin]

    @classmethod
    def from_teacher(cls, teacher, teacher_layer, student_layer, **kwargs):
        """An OFD whose margin comes from the teacher's BatchNorm layer.

        Args:
            teacher: the teacher model.
            teacher_layer: name of its ``BatchNormalization`` layer (the
                features before the ReLU), the layer tapped.
            student_layer: name of the student's pre-ReLU layer.
            **kwargs: the other arguments of :class:`OFD`.

        Example:

        >>> import keras, keras_kd as kd
        >>> x = keras.Input((4, 4, 1))
        >>> h = keras.layers.Conv2D(2, 3, padding="same")(x)
        >>> h = keras.layers.BatchNormalization(name="bn")(h)
        >>> teacher = keras.Model(x, keras.layers.ReLU()(h))
        >>> [round(m, 4) for m in kd.objectives.OFD.from_teacher(
        ...     teacher, "bn", "student_bn").margin]
        [-0.7979, -0.7979]
        """
        layer = teacher.get_layer(teacher_layer)
        if not isinstance(layer, keras.layers.BatchNormalization) or \
                layer.gamma is None or layer.beta is None:
            raise ValueError(
                f"OFD.from_teacher: teacher layer '{teacher_layer}' is a "
                f"{type(layer).__name__}, not a BatchNormalization with "
                "scale and center; tap the BatchNorm before a ReLU, or pass "
                "margin= to OFD yourself.")
        gamma = ops.convert_to_numpy(layer.gamma)
        beta = ops.convert_to_numpy(layer.beta)
        return cls(teacher_layer, student_layer,
                   margin=ofd_margin(gamma.tolist(), beta.tolist()), **kwargs)

    def build_for(self, teacher_shape, student_shape):
        _check_connectable(self, teacher_shape, student_shape)
        if isinstance(self.margin, list):
            width = teacher_shape[1] if (
                len(teacher_shape) == 4 and keras.config.image_data_format()
                == "channels_first") else teacher_shape[-1]
            if len(self.margin) != width:
                raise ValueError(
                    f"OFD: {len(self.margin)} margins for teacher layer "
                    f"'{self.teacher_layer}' with {width} channels; pass one "
                    "margin per channel (OFD.from_teacher does).")
        super().build_for(teacher_shape, student_shape)

    def compute(self, teacher_features, student_features, training=False):
        s = self.adapter(self.resize_student(student_features),
                         training=training)
        return ofd_loss(teacher_features, s, self.margin)

    def get_config(self):
        config = super().get_config()
        config.pop("adapter", None)
        config["margin"] = self.margin
        return config
