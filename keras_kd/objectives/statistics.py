"""Statistics objectives: the student imitates second-order statistics.

Instead of matching the teacher's activations value by value, these
objectives compare statistics of one teacher layer and one student layer:

* NST matches the distribution of the channels' spatial activation
  patterns (maximum mean discrepancy with a polynomial kernel);
* ICKD matches the channel-by-channel correlation matrix of each sample;
* CCKD matches the sample-by-sample kernel (correlation) matrix of a batch.

Feature maps are ``(batch, H, W, C)`` (``(batch, C, H, W)`` under
``channels_first``) or 1-D maps ``(batch, L, C)`` (a ``Conv1D`` or a
sequence); CCKD compares flattened embeddings of any shape.
"""

import math

import keras
from keras import ops

from keras_kd.objectives.base import to_float32
from keras_kd.objectives.features import FitNet
from keras_kd.objectives.relations import RelationObjective


def channel_axis(rank):
    """The channel axis of a rank-``rank`` feature: 1 for ``channels_first``
    images, else the last axis.

    Example:

    >>> channel_axis(3)
    -1
    """
    if rank == 4 and keras.config.image_data_format() == "channels_first":
        return 1
    return -1


def channel_maps(features, name="this objective"):
    """A feature map as ``(batch, C, N)``: one row of ``N`` positions per
    channel, float32.

    Args:
        features: ``(batch, H, W, C)``, ``(batch, C, H, W)`` under
            ``channels_first``, or ``(batch, L, C)``.
        name: the objective's name, for the error message.

    Example:

    >>> import numpy as np
    >>> tuple(channel_maps(np.ones((2, 3, 4, 5))).shape)
    (2, 5, 12)
    """
    f = to_float32(ops.convert_to_tensor(features))
    rank = len(f.shape)
    if rank not in (3, 4):
        raise ValueError(
            f"{name} needs feature maps (batch, H, W, C) or (batch, L, C), "
            f"got a tensor of shape {tuple(f.shape)}. Tap a convolutional "
            "layer, before global pooling."
        )
    if channel_axis(rank) == 1:
        return ops.reshape(f, (ops.shape(f)[0], ops.shape(f)[1], -1))
    f = ops.reshape(f, (ops.shape(f)[0], -1, ops.shape(f)[-1]))
    return ops.transpose(f, (0, 2, 1))


def _unit_rows(x, axis=-1):
    sq = ops.sum(ops.square(x), axis=axis, keepdims=True)
    return x / ops.sqrt(ops.maximum(sq, 1e-24))


def _poly_mean(a, b):
    """``mean_{i,j} (a_iᵀ b_j)²`` per sample, for ``(batch, C, N)`` inputs."""
    return ops.mean(ops.square(ops.matmul(a, ops.transpose(b, (0, 2, 1)))),
                    axis=(1, 2))


def nst_loss(teacher_features, student_features):
    """Neuron selectivity transfer (NST), one value per sample.

    Each channel's map over the ``N`` spatial positions is L2-normalised
    (``t_i``, ``s_j`` ∈ R^N); the squared maximum mean discrepancy between
    the teacher's ``C_t`` channel maps and the student's ``C_s`` ones, with
    the polynomial kernel ``k(a, b) = (aᵀb)²``:

        loss = mean_{i,i'} k(t_i, t_i') + mean_{j,j'} k(s_j, s_j')
               − 2 · mean_{i,j} k(t_i, s_j)

    (Huang & Wang, "Like What You Like: Knowledge Distill via Neuron
    Selectivity Transfer", 2017, arXiv:1707.01219, eq. 4 with d=2, c=0).
    The paper's ``λ/2`` factor is left to ``weight``; mdistiller computes the
    same means with weight 50. The channel counts may differ, the spatial
    sizes must agree; the teacher's side is a constant.

    Args:
        teacher_features: ``(batch, H, W, C_t)`` (or ``(batch, L, C_t)``).
        student_features: ``(batch, H, W, C_s)``, same positions.

    Returns:
        A ``(batch,)`` float32 tensor.

    Example:

    >>> import numpy as np
    >>> f = np.random.rand(2, 4, 4, 3)
    >>> [abs(float(v)) < 1e-6 for v in nst_loss(f, 2.0 * f)]
    [True, True]
    """
    t = ops.stop_gradient(_unit_rows(channel_maps(teacher_features, "NST")))
    s = _unit_rows(channel_maps(student_features, "NST"))
    if t.shape[-1] is not None and s.shape[-1] is not None and \
            t.shape[-1] != s.shape[-1]:
        raise ValueError(
            f"NST: the teacher's maps have {t.shape[-1]} positions and the "
            f"student's {s.shape[-1]}; the spatial sizes must agree. Tap "
            "layers with the same spatial size, or pass resize=True.")
    return _poly_mean(t, t) + _poly_mean(s, s) - 2.0 * _poly_mean(t, s)


@keras.saving.register_keras_serializable(package="keras_kd")
class NST(FitNet):
    """Neuron selectivity transfer between one teacher and one student layer.

    ``weight · MMD²`` between the L2-normalised channel maps, polynomial
    kernel ``(aᵀb)²`` (:func:`nst_loss`; Huang & Wang 2017). No adapter:
    the channel counts may differ. Spatial sizes must agree, or pass
    ``resize=True``. Usual weight: 50 (mdistiller).

    Args:
        teacher_layer: name of the teacher layer (a feature map).
        student_layer: name of the student layer (a feature map).
        weight: the term's weight in the total loss.
        resize: resize the student's map to the teacher's spatial size.

    Example:

    >>> import keras_kd as kd
    >>> kd.objectives.NST("teacher_conv2", "student_conv2", weight=50.0).name
    'nst'
    """

    def __init__(self, teacher_layer, student_layer, weight=1.0, resize=False,
                 name="nst", **kwargs):
        kwargs.pop("adapter", None)
        super().__init__(teacher_layer, student_layer, weight=weight,
                         adapter="none", resize=resize, name=name, **kwargs)

    def build_for(self, teacher_shape, student_shape):
        self.check_feature_maps(teacher_shape, student_shape)
        self.built = True

    def compute(self, teacher_features, student_features, training=False):
        return nst_loss(teacher_features,
                        self.resize_student(student_features))

    def get_config(self):
        config = super().get_config()
        config.pop("adapter", None)
        return config


def ickd_loss(teacher_features, student_features):
    """Inter-channel correlation (ICKD) loss, one value per sample.

    With ``F`` the ``(C, N)`` matrix of a sample's channels over positions,
    the inter-channel correlation ``G = F Fᵀ`` (``C × C``) with each row
    L2-normalised (``Ĝ``):

        loss = ‖Ĝ_s − Ĝ_t‖²_F / C

    (Liu et al., "Exploring Inter-Channel Correlation for Diversity-preserved
    Knowledge Distillation", ICCV 2021). The paper writes
    ``‖G_s − G_t‖²_F / C²`` on un-normalised matrices; keras-kd follows the
    authors' code, which normalises the rows and divides by ``C``. The
    student's map must already have the teacher's channels (the
    :class:`ICKD` class applies its 1×1 convolution). The teacher's side is
    a constant.

    Args:
        teacher_features: ``(batch, H, W, C)`` or ``(batch, L, C)``.
        student_features: the same shape.

    Returns:
        A ``(batch,)`` float32 tensor.

    Example:

    >>> import numpy as np
    >>> f = np.random.rand(2, 4, 4, 3)
    >>> [abs(float(v)) < 1e-6 for v in ickd_loss(f, 3.0 * f)]
    [True, True]
    """
    t = ops.stop_gradient(channel_maps(teacher_features, "ICKD"))
    s = channel_maps(student_features, "ICKD")
    if t.shape[1] is not None and s.shape[1] is not None and \
            t.shape[1] != s.shape[1]:
        raise ValueError(
            f"ICKD: the teacher has {t.shape[1]} channels and the student "
            f"{s.shape[1]}; map the student's to the teacher's first (the "
            "ICKD class does, with adapter='auto').")
    g_t = _unit_rows(ops.matmul(t, ops.transpose(t, (0, 2, 1))))
    g_s = _unit_rows(ops.matmul(s, ops.transpose(s, (0, 2, 1))))
    channels = ops.cast(ops.shape(t)[1], "float32")
    return ops.sum(ops.square(g_s - g_t), axis=(1, 2)) / channels


@keras.saving.register_keras_serializable(package="keras_kd")
class ICKD(FitNet):
    """Inter-channel correlation distillation (ICKD) on one layer pair.

    ``weight · ‖Ĝ(r(f_s)) − Ĝ(f_t)‖²_F / C`` (:func:`ickd_loss`; Liu et al.,
    ICCV 2021), where ``r`` is the student's trainable 1×1 convolution to
    the teacher's channels (1×1 ``Conv2D`` + BatchNorm for images, ``Dense``
    for ``(batch, L, C)`` maps), owned by the objective and saved with the
    Distiller. The paper always learns ``r`` (``adapter="always"``, the
    default; 1×1 conv without bias + BatchNorm, the authors' ``Embed``);
    ``"auto"`` makes it only when the widths differ. The paper adds it to
    KD.

    Args:
        teacher_layer: name of the teacher layer (a feature map).
        student_layer: name of the student layer (a feature map).
        weight: the term's weight in the total loss.
        adapter: ``"always"``, ``"auto"`` or ``"none"``.
        resize: resize the student's map to the teacher's spatial size.

    Example:

    >>> import keras_kd as kd
    >>> kd.objectives.ICKD("teacher_conv2", "student_conv2").adapter_mode
    'always'
    """

    def __init__(self, teacher_layer, student_layer, weight=1.0,
                 adapter="always", resize=False, name="ickd", **kwargs):
        super().__init__(teacher_layer, student_layer, weight=weight,
                         adapter=adapter, resize=resize, name=name, **kwargs)

    def build_for(self, teacher_shape, student_shape):
        self.check_feature_maps(teacher_shape, student_shape)
        super().build_for(teacher_shape, student_shape)

    def compute(self, teacher_features, student_features, training=False):
        s = self.resize_student(student_features)
        if self.adapter is not None:
            s = self.adapter(s, training=training)
        return ickd_loss(teacher_features, s)


def _flat_unit(features, name):
    f = to_float32(ops.convert_to_tensor(features))
    batch = f.shape[0]
    if batch is not None and batch < 2:
        raise ValueError(
            f"{name} compares the samples of a batch with each other and got "
            f"a batch of {batch}. Use batches of at least 2 samples.")
    f = ops.reshape(f, (ops.shape(f)[0], -1))
    return _unit_rows(f)


def cc_matrix(embeddings, kernel="gaussian", gamma=0.4, order=2):
    """The correlation matrix of CCKD over a batch of unit embeddings.

    ``"bilinear"``: ``K_ij = e_iᵀ e_j``. ``"gaussian"``: the order-``P``
    Taylor expansion of the Gaussian RBF ``exp(−γ‖e_i − e_j‖²)`` for unit
    vectors, ``K_ij = exp(−2γ) Σ_{p=0}^{P} (2γ)^p / p! · (e_iᵀ e_j)^p``
    (Peng et al., ICCV 2019, eq. 9).

    Example:

    >>> import numpy as np
    >>> e = np.eye(2)
    >>> [float(v) for v in cc_matrix(e, "bilinear")[0]]
    [1.0, 0.0]
    """
    e = to_float32(ops.convert_to_tensor(embeddings))
    dot = ops.matmul(e, ops.transpose(e))
    if kernel == "bilinear":
        return dot
    total = ops.ones_like(dot)
    term = ops.ones_like(dot)
    for p in range(1, int(order) + 1):
        term = term * dot * (2.0 * gamma / p)
        total = total + term
    return total * math.exp(-2.0 * gamma)


def cckd_loss(teacher_features, student_features, kernel="gaussian",
              gamma=0.4, order=2):
    """Correlation congruence (CCKD) loss over a batch, a scalar.

    Each sample's features are flattened and L2-normalised; with ``K`` the
    ``b × b`` correlation matrix of :func:`cc_matrix`:

        loss = ‖K_s − K_t‖²_F / b²

    (Peng et al., "Correlation Congruence for Knowledge Distillation", ICCV
    2019, arXiv:1904.01802, eq. 6, Gaussian kernel with γ=0.4 and a
    2nd-order expansion as in torchdistill's configuration). torchdistill
    returns the unsquared norm ``‖K_s − K_t‖_F / b²``; keras-kd follows the
    paper's squared one. The widths may differ.

    Returns:
        A float32 scalar.

    Example:

    >>> import numpy as np
    >>> e = np.random.rand(4, 8)
    >>> float(cckd_loss(e, 2.0 * e)) < 1e-6
    True
    """
    t = ops.stop_gradient(_flat_unit(teacher_features, "CCKD"))
    s = _flat_unit(student_features, "CCKD")
    k_t = cc_matrix(t, kernel, gamma, order)
    k_s = cc_matrix(s, kernel, gamma, order)
    b = ops.cast(ops.shape(s)[0], "float32")
    return ops.sum(ops.square(k_s - k_t)) / (b * b)


@keras.saving.register_keras_serializable(package="keras_kd")
class CCKD(RelationObjective):
    """Correlation congruence distillation (CCKD) on embeddings.

    ``weight · ‖K_s − K_t‖²_F / b²`` over the batch's kernel matrices of
    L2-normalised embeddings (:func:`cckd_loss`; Peng et al., ICCV 2019).
    A scalar per batch (batches of at least 2); no adapter. The paper adds
    it to KD; torchdistill's configuration uses ``kernel="gaussian"``, γ=0.4,
    P=2 (the defaults). The kernel entries lie in [0, 1], so the term is
    small: weigh it so that it is comparable with the other terms.

    Args:
        teacher_layer: name of the teacher's embedding layer.
        student_layer: name of the student's embedding layer.
        kernel: ``"gaussian"`` (Taylor-expanded RBF) or ``"bilinear"``.
        gamma: the RBF's γ > 0.
        order: the expansion's order P >= 1.
        weight: the term's weight in the total loss.

    Example:

    >>> import keras_kd as kd
    >>> kd.objectives.CCKD("teacher_pool", "student_pool").get_config()["gamma"]
    0.4
    """

    def __init__(self, teacher_layer, student_layer, kernel="gaussian",
                 gamma=0.4, order=2, weight=1.0, name="cckd", **kwargs):
        super().__init__(teacher_layer, student_layer, weight=weight,
                         name=name, **kwargs)
        if kernel not in ("gaussian", "bilinear"):
            raise ValueError(f"kernel must be 'gaussian' or 'bilinear', got "
                             f"{kernel!r}.")
        if not isinstance(gamma, (int, float)) or isinstance(gamma, bool) \
                or gamma <= 0:
            raise ValueError(f"gamma must be a number > 0, got {gamma!r}; "
                             "the usual value is 0.4.")
        if not isinstance(order, int) or isinstance(order, bool) or order < 1:
            raise ValueError(f"order must be an integer >= 1, got {order!r};"
                             " the usual value is 2.")
        self.kernel, self.gamma, self.order = kernel, float(gamma), order

    def compute(self, teacher_features, student_features, training=False):
        return cckd_loss(teacher_features, student_features, self.kernel,
                         self.gamma, self.order)

    def get_config(self):
        config = super().get_config()
        config.update(kernel=self.kernel, gamma=self.gamma, order=self.order)
        return config

