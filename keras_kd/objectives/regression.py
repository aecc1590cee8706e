"""Regression objectives on embeddings, with a learned uncertainty or the
teacher's own classifier.

* PAD-L2 regresses the teacher's embedding with a per-sample, per-dimension
  variance predicted from the student's embedding, so that hard samples
  weigh less;
* SRD regresses the teacher's embedding and passes the student's (mapped)
  embedding through the teacher's frozen classifier, matching the
  teacher's predictions.

The trainable parts (PAD's variance estimator, SRD's connector) and SRD's
frozen copy of the teacher's classifier belong to the objective: trained
(the classifier is not) and saved with the Distiller, never part of the
student.
"""

import keras
from keras import ops

from keras_kd.adapters import make_adapter
from keras_kd.objectives.base import to_float32
from keras_kd.objectives.features import FeatureObjective


def _flat(x):
    x = to_float32(ops.convert_to_tensor(x))
    if len(x.shape) != 2:
        x = ops.reshape(x, (ops.shape(x)[0], -1))
    return x


def pad_l2_loss(teacher_features, student_features, log_variance, eps=1e-6):
    """Prime-aware adaptive distillation (PAD-L2), one value per sample.

        loss = mean_d ((t_d − s_d)² / (ε + exp(v_d)) + v_d)

    with ``v = log σ²`` predicted from the student (Zhang et al.,
    "Prime-Aware Adaptive Distillation", ECCV 2020, arXiv:2008.01458, eq. 7;
    the per-dimension variance and ε follow torchdistill's ``PADL2Loss``).
    Inputs are flattened per sample. The teacher's side is a constant.

    Args:
        teacher_features: ``(batch, ...)`` tensor.
        student_features: the student's (mapped) features, same size.
        log_variance: ``v``, the same size.
        eps: ε > 0.

    Returns:
        A ``(batch,)`` float32 tensor.

    Example:

    >>> import numpy as np
    >>> t = np.ones((1, 2)); s = np.zeros((1, 2))
    >>> [round(float(v), 4) for v in pad_l2_loss(t, s, np.zeros((1, 2)))]
    [1.0]
    """
    t = ops.stop_gradient(_flat(teacher_features))
    s = _flat(student_features)
    v = _flat(log_variance)
    return ops.mean(ops.square(t - s) / (eps + ops.exp(v)) + v, axis=-1)


@keras.saving.register_keras_serializable(package="keras_kd")
class PADL2(FeatureObjective):
    """PAD-L2: L2 regression weighted by a learned per-sample uncertainty.

    ``weight · mean_d ((t − r(f_s))² / (ε + exp(v)) + v)`` (:func:`pad_l2_loss`;
    Zhang et al., ECCV 2020) on flattened embeddings, where ``r`` is a
    ``Dense`` adapter made when the widths differ and ``v = BN(Dense(f_s))``
    is the variance estimator (torchdistill's ``Linear`` +
    ``BatchNorm1d``), both owned by the objective. Usual weight: 1, added
    to the cross-entropy (torchdistill's ImageNet setting).

    Args:
        teacher_layer: name of the teacher's embedding layer.
        student_layer: name of the student's embedding layer.
        eps: ε > 0 of the variance.
        weight: the term's weight in the total loss.

    Example:

    >>> import keras_kd as kd
    >>> kd.objectives.PADL2("teacher_pool", "student_pool").name
    'pad_l2'
    """

    def __init__(self, teacher_layer, student_layer, eps=1e-6, weight=1.0,
                 name="pad_l2", **kwargs):
        kwargs.pop("resize", None)
        super().__init__(teacher_layer, student_layer, weight=weight,
                         name=name, **kwargs)
        if not isinstance(eps, (int, float)) or isinstance(eps, bool) or \
                eps <= 0:
            raise ValueError(f"eps must be a number > 0, got {eps!r}.")
        self.eps = float(eps)
        self.adapter = None
        self.variance_estimator = None

    def build_for(self, teacher_shape, student_shape):
        for role, layer, shape in (("teacher", self.teacher_layer,
                                    teacher_shape),
                                   ("student", self.student_layer,
                                    student_shape)):
            if None in tuple(shape[1:]):
                raise ValueError(
                    f"PADL2: {role} layer '{layer}' has output shape "
                    f"{tuple(shape)}; PAD-L2 flattens each sample and needs "
                    "a fixed size. Tap the pooled embeddings, or give the "
                    "model a fixed input shape.")
        width = 1
        for d in teacher_shape[1:]:
            width *= d
        s_width = 1
        for d in student_shape[1:]:
            s_width *= d
        if self.variance_estimator is None:
            if s_width != width:
                self.adapter = make_adapter((None, s_width), width,
                                            name=f"{self.name}_adapter")
            self.variance_estimator = keras.Sequential([
                keras.layers.Dense(width, name=f"{self.name}_var_dense"),
                keras.layers.BatchNormalization(name=f"{self.name}_var_bn"),
            ], name=f"{self.name}_variance")
            self.variance_estimator.build((None, s_width))
        self.built = True

    def compute(self, teacher_features, student_features, training=False):
        s = _flat(student_features)
        v = self.variance_estimator(s, training=training)
        if self.adapter is not None:
            s = self.adapter(s, training=training)
        return pad_l2_loss(teacher_features, s, v, self.eps)

    def get_config(self):
        config = super().get_config()
        config.pop("resize", None)
        config["eps"] = self.eps
        return config


def srd_loss(teacher_features, student_features, kernel, bias,
             feature_weight=1.0, softmax_weight=1.0, temperature=1.0):
    """Softmax regression representation distillation (SRD), per sample.

    With the teacher's classifier ``z(h) = h W + b`` and the student's
    embedding already mapped to the teacher's width (``h_s = r(f_s)``):

        loss = α · mean_d (h_s − h_t)²
               + β · T² · KL(softmax(z(h_t)/T) ‖ softmax(z(h_s)/T))

    (Yang et al., "Knowledge Distillation via Softmax Regression
    Representation Learning", ICLR 2021, eq. 2-3: feature matching plus the
    teacher's classifier applied to the student's representation; the
    paper's L_SR is the cross-entropy against the teacher's soft
    predictions, which differs from this KL by the teacher's entropy, a
    constant; the T² factor as in KD). The teacher's side is a constant;
    the gradient flows through the (frozen) classifier to the student.

    Args:
        teacher_features: ``(batch, D)`` teacher embeddings.
        student_features: ``(batch, D)`` mapped student embeddings.
        kernel: the teacher classifier's ``(D, K)`` kernel.
        bias: its ``(K,)`` bias.
        feature_weight: α.
        softmax_weight: β.
        temperature: T > 0.

    Returns:
        A ``(batch,)`` float32 tensor.

    Example:

    >>> import numpy as np
    >>> h = np.random.rand(2, 3); w = np.random.rand(3, 4)
    >>> [abs(float(v)) < 1e-6 for v in srd_loss(h, h, w, np.zeros(4))]
    [True, True]
    """
    h_t = ops.stop_gradient(_flat(teacher_features))
    h_s = _flat(student_features)
    w = to_float32(ops.convert_to_tensor(kernel))
    b = to_float32(ops.convert_to_tensor(bias))
    loss = feature_weight * ops.mean(ops.square(h_s - h_t), axis=-1)
    if softmax_weight:
        log_p_t = ops.log_softmax((ops.matmul(h_t, w) + b) / temperature, -1)
        log_p_s = ops.log_softmax((ops.matmul(h_s, w) + b) / temperature, -1)
        kl = ops.sum(ops.exp(log_p_t) * (log_p_t - log_p_s), axis=-1)
        loss = loss + softmax_weight * temperature ** 2 * kl
    return loss


@keras.saving.register_keras_serializable(package="keras_kd")
class SRD(FeatureObjective):
    """SRD: the student's embedding through the teacher's classifier.

    :func:`srd_loss` on the teachers' and the students' penultimate
    embeddings (Yang et al., ICLR 2021), with the student's trainable
    connector ``r`` (``Dense``, made when the widths differ) and a frozen
    copy of the teacher's classifier (its kernel and bias, non-trainable
    weights of the objective, saved with the Distiller). Build it with
    :meth:`from_teacher`, which copies the classifier. Usual: α=1, β=1,
    T=1 with the cross-entropy (weight 1).

    This is SRD as Yang et al. define it (also called SRRL). torchdistill's
    ``SRDLoss`` is another method under the same initials (Miles &
    Mikolajczyk, "Understanding the Role of the Projector in Knowledge
    Distillation", AAAI 2024: ``2·log Σ|f_s − f_t| + KL`` of the two models'
    own logits), which keras-kd does not implement here.

    Args:
        teacher_layer: name of the teacher's embedding layer (the input of
            its classifier).
        student_layer: name of the student's embedding layer.
        classes: the classifier's output width K.
        feature_weight: α >= 0.
        softmax_weight: β >= 0.
        temperature: T > 0.
        weight: the term's weight in the total loss.

    Example:

    >>> import keras_kd as kd
    >>> kd.objectives.SRD("teacher_pool", "student_pool", classes=10).name
    'srd'
    """

    def __init__(self, teacher_layer, student_layer, classes,
                 feature_weight=1.0, softmax_weight=1.0, temperature=1.0,
                 weight=1.0, name="srd", **kwargs):
        kwargs.pop("resize", None)
        super().__init__(teacher_layer, student_layer, weight=weight,
                         name=name, **kwargs)
        if not isinstance(classes, int) or isinstance(classes, bool) or \
                classes < 1:
            raise ValueError(f"classes must be an integer >= 1, got "
                             f"{classes!r}; SRD.from_teacher reads it.")
        for arg, value in (("feature_weight", feature_weight),
                           ("softmax_weight", softmax_weight)):
            if not isinstance(value, (int, float)) or isinstance(
                    value, bool) or value < 0:
                raise ValueError(f"{arg} must be a number >= 0, got "
                                 f"{value!r}.")
        if not isinstance(temperature, (int, float)) or temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}.")
        self.classes = classes
        self.feature_weight = float(feature_weight)
        self.softmax_weight = float(softmax_weight)
        self.temperature = float(temperature)
        self.adapter = None
        self.kernel = None
        self.bias = None
        self._classifier_values = None

    @classmethod
    def from_teacher(cls, teacher, teacher_layer, student_layer,
                     classifier, **kwargs):
        """An SRD holding a frozen copy of the teacher's classifier.

        Args:
            teacher: the teacher model.
            teacher_layer: its embedding layer (the classifier's input).
            student_layer: the student's embedding layer.
            classifier: name of the teacher's ``Dense`` classifier layer.
            **kwargs: the other arguments of :class:`SRD`.

        Example:

        >>> import keras, keras_kd as kd
        >>> x = keras.Input((4,))
        >>> h = keras.layers.Dense(3, name="embed")(x)
        >>> teacher = keras.Model(x, keras.layers.Dense(5, name="fc")(h))
        >>> kd.objectives.SRD.from_teacher(teacher, "embed", "s_embed",
        ...                                "fc").classes
        5
        """
        layer = teacher.get_layer(classifier)
        if not isinstance(layer, keras.layers.Dense):
            raise ValueError(
                f"SRD.from_teacher: layer '{classifier}' is a "
                f"{type(layer).__name__}; name the teacher's Dense "
                "classifier (the layer that makes the logits).")
        kernel = ops.convert_to_numpy(layer.kernel)
        bias = (ops.convert_to_numpy(layer.bias) if layer.bias is not None
                else None)
        srd = cls(teacher_layer, student_layer, classes=int(kernel.shape[-1]),
                  **kwargs)
        srd._classifier_values = (kernel, bias)
        return srd

    def build_for(self, teacher_shape, student_shape):
        if len(teacher_shape) != 2 or len(student_shape) != 2:
            raise ValueError(
                f"SRD compares embeddings (batch, D): teacher layer "
                f"'{self.teacher_layer}' has shape {tuple(teacher_shape)} and"
                f" student layer '{self.student_layer}' "
                f"{tuple(student_shape)}. Tap the pooled features that feed "
                "the classifiers.")
        width = teacher_shape[-1]
        if self.kernel is None:
            if student_shape[-1] != width:
                self.adapter = make_adapter(student_shape, width,
                                            name=f"{self.name}_adapter")
            self.kernel = self.add_weight(
                shape=(width, self.classes), name="teacher_kernel",
                initializer="zeros", trainable=False)
            self.bias = self.add_weight(
                shape=(self.classes,), name="teacher_bias",
                initializer="zeros", trainable=False)
        if self._classifier_values is not None:
            kernel, bias = self._classifier_values
            if tuple(kernel.shape) != (width, self.classes):
                raise ValueError(
                    f"SRD: the teacher's classifier has kernel shape "
                    f"{tuple(kernel.shape)} but teacher layer "
                    f"'{self.teacher_layer}' has width {width}; tap the "
                    "classifier's input.")
            self.kernel.assign(kernel)
            if bias is not None:
                self.bias.assign(bias)
            self._classifier_values = None
        self.built = True

    def compute(self, teacher_features, student_features, training=False):
        s = _flat(student_features)
        if self.adapter is not None:
            s = self.adapter(s, training=training)
        return srd_loss(teacher_features, s, self.kernel, self.bias,
                        self.feature_weight, self.softmax_weight,
                        self.temperature)

    def get_config(self):
        config = super().get_config()
        config.pop("resize", None)
        config.update(classes=self.classes,
                      feature_weight=self.feature_weight,
                      softmax_weight=self.softmax_weight,
                      temperature=self.temperature)
        return config
