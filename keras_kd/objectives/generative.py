"""Generative objectives: a trainable head predicts the teacher's features.

The head (VID's regressor and variance, MGD's alignment and generator) is a
set of Keras layers and weights owned by the objective: trained with the
student, saved with the Distiller (``.keras`` save and load restore it),
never exported with the student.

* VID maximises a Gaussian lower bound on the mutual information between
  the teacher's and the student's features, with a learned per-channel
  variance;
* MGD masks random positions of the student's map and trains a small
  generator to rebuild the teacher's whole map from what is left.
"""

import math

import keras
from keras import ops

from keras_kd.objectives.base import to_float32
from keras_kd.objectives.features import FeatureObjective, spatial_axes


def _channels_first_map(rank):
    return rank == 4 and keras.config.image_data_format() == "channels_first"


def _width(shape):
    return shape[1] if _channels_first_map(len(shape)) else shape[-1]


def _pointwise(units, rank, name, activation=None):
    """A 1×1 convolution for images, a Dense layer on the last axis else."""
    if rank == 4:
        return keras.layers.Conv2D(units, 1, activation=activation, name=name)
    return keras.layers.Dense(units, activation=activation, name=name)


def _check_same_positions(objective, teacher_shape, student_shape):
    objective.check_spatial(teacher_shape, student_shape)
    objective.check_same_length(teacher_shape, student_shape)
    if len(teacher_shape) not in (2, 3, 4):
        raise ValueError(
            f"{type(objective).__name__}: teacher layer "
            f"'{objective.teacher_layer}' has output shape "
            f"{tuple(teacher_shape)}; tap vectors (batch, D), sequences "
            "(batch, L, D) or feature maps (batch, H, W, C).")


def _student_shape_at_target(objective, student_shape):
    shape = list(student_shape)
    if objective._target_hw is not None:
        for axis, size in zip(spatial_axes(), objective._target_hw):
            shape[axis] = size
    return tuple(shape)


def vid_loss(teacher_features, mean, variance):
    """Variational information distillation (VID) loss, one value per sample.

    The negative log-likelihood of the teacher's features under a Gaussian
    whose mean ``μ = r(f_s)`` is regressed from the student's features and
    whose variance ``σ²_c`` is learned per channel (constant terms dropped):

        loss = mean_elements ½ · ((t − μ)² / σ²_c + log σ²_c)

    (Ahn et al., "Variational Information Distillation for Knowledge
    Transfer", CVPR 2019, arXiv:1904.05835, eq. 5; the mean over elements
    follows the authors' and mdistiller's code, the paper sums). The
    teacher's side is a constant.

    Args:
        teacher_features: ``(batch, ..., C)`` tensor (``(batch, C, H, W)``
            under ``channels_first``).
        mean: the predicted means ``μ``, same shape.
        variance: ``σ²``, one positive value per channel ``(C,)``.

    Returns:
        A ``(batch,)`` float32 tensor.

    Example:

    >>> import numpy as np
    >>> t = np.zeros((1, 2)); mu = np.ones((1, 2))
    >>> [float(v) for v in vid_loss(t, mu, np.ones(2))]
    [0.5]
    """
    t = ops.stop_gradient(to_float32(ops.convert_to_tensor(teacher_features)))
    mu = to_float32(ops.convert_to_tensor(mean))
    var = to_float32(ops.convert_to_tensor(variance))
    if len(t.shape) == 4 and _channels_first_map(4):
        var = ops.reshape(var, (-1, 1, 1))
    nll = 0.5 * (ops.square(t - mu) / var + ops.log(var))
    axes = tuple(range(1, len(nll.shape)))
    return ops.mean(nll, axis=axes)


@keras.saving.register_keras_serializable(package="keras_kd")
class VID(FeatureObjective):
    """Variational information distillation (VID) on one layer pair.

    ``weight · mean ½((t − r(f_s))²/σ²_c + log σ²_c)`` (:func:`vid_loss`;
    Ahn et al., CVPR 2019). ``r`` is three 1×1 convolutions (``Dense``
    layers for vectors and sequences) with ReLU between them, ``hidden``
    channels wide (the teacher's width by default, as in the CRD benchmark
    code); ``σ²_c = softplus(α_c) + ε`` with ``α_c`` a trainable weight
    initialised so that ``σ²_c`` = ``init_variance`` (5). The spatial sizes
    must agree, or pass ``resize=True`` (the authors pool the larger map).
    Usual weight: 1 per stage.

    Args:
        teacher_layer: name of the teacher layer.
        student_layer: name of the student layer.
        hidden: width of ``r``'s hidden layers (None: the teacher's).
        init_variance: the variance at initialisation, > ε.
        eps: the variance's floor ε (1e-5).
        weight: the term's weight in the total loss.
        resize: resize the student's map to the teacher's spatial size.

    Example:

    >>> import keras_kd as kd
    >>> kd.objectives.VID("teacher_conv2", "student_conv2").get_config()[
    ...     "init_variance"]
    5.0
    """

    def __init__(self, teacher_layer, student_layer, hidden=None,
                 init_variance=5.0, eps=1e-5, weight=1.0, resize=False,
                 name="vid", **kwargs):
        super().__init__(teacher_layer, student_layer, weight=weight,
                         resize=resize, name=name, **kwargs)
        if hidden is not None and (not isinstance(hidden, int) or
                                   isinstance(hidden, bool) or hidden < 1):
            raise ValueError(f"hidden must be None or an integer >= 1, got "
                             f"{hidden!r}.")
        if not isinstance(eps, (int, float)) or eps <= 0 or not isinstance(
                init_variance, (int, float)) or init_variance <= eps:
            raise ValueError(
                f"VID needs eps > 0 and init_variance > eps, got eps={eps!r},"
                f" init_variance={init_variance!r} (usual: 1e-5 and 5).")
        self.hidden = hidden
        self.init_variance = float(init_variance)
        self.eps = float(eps)
        self.regressor = None
        self.log_scale = None

    def build_for(self, teacher_shape, student_shape):
        _check_same_positions(self, teacher_shape, student_shape)
        if self.regressor is None:
            rank, width = len(teacher_shape), _width(teacher_shape)
            hidden = self.hidden or width
            self.regressor = keras.Sequential([
                _pointwise(hidden, rank, f"{self.name}_r1", "relu"),
                _pointwise(hidden, rank, f"{self.name}_r2", "relu"),
                _pointwise(width, rank, f"{self.name}_r3"),
            ], name=f"{self.name}_regressor")
            self.regressor.build(_student_shape_at_target(self,
                                                          student_shape))
            start = math.log(math.expm1(self.init_variance - self.eps))
            self.log_scale = self.add_weight(
                shape=(width,), name="log_scale",
                initializer=keras.initializers.Constant(start))
        self.built = True

    def variance(self):
        """The per-channel variance ``softplus(α) + ε``, a ``(C,)`` tensor."""
        return ops.softplus(self.log_scale) + self.eps

    def compute(self, teacher_features, student_features, training=False):
        mean = self.regressor(self.resize_student(student_features),
                              training=training)
        return vid_loss(teacher_features, mean, self.variance())

    def get_config(self):
        config = super().get_config()
        config.update(hidden=self.hidden, init_variance=self.init_variance,
                      eps=self.eps)
        return config


def mgd_loss(teacher_features, generated):
    """Masked generative distillation (MGD) loss, one value per sample.

        loss = Σ_elements (G(M ⊙ align(f_s)) − t)²

    where ``generated`` is ``G(M ⊙ align(f_s))``: the generator's output on
    the aligned student map whose masked positions are zeroed (Yang et al.,
    "Masked Generative Distillation", ECCV 2022, arXiv:2205.01529, eq. 3;
    the authors' code sums and divides by the batch). The teacher's side is
    a constant.

    Example:

    >>> import numpy as np
    >>> [float(v) for v in mgd_loss(np.ones((1, 2, 2, 1)),
    ...                              np.zeros((1, 2, 2, 1)))]
    [4.0]
    """
    t = ops.stop_gradient(to_float32(ops.convert_to_tensor(teacher_features)))
    g = to_float32(ops.convert_to_tensor(generated))
    sq = ops.square(g - t)
    return ops.sum(sq, axis=tuple(range(1, len(sq.shape))))


@keras.saving.register_keras_serializable(package="keras_kd")
class MGD(FeatureObjective):
    """Masked generative distillation (MGD) on one feature-map pair.

    During training each position of the aligned student map is zeroed with
    probability ``mask_ratio`` (the same mask for every channel), and the
    generator ``G`` (3×3 conv, ReLU, 3×3 conv; kernel-3 ``Conv1D`` for
    ``(batch, L, C)`` maps) rebuilds the teacher's map:
    ``weight · Σ (G(M ⊙ align(f_s)) − t)²`` (:func:`mgd_loss`; Yang et al.,
    ECCV 2022). ``align`` is a 1×1 convolution, made when the widths differ.
    At evaluation nothing is masked. Settings for classification: weight
    7e-5 and ``mask_ratio`` 0.5 (the paper, and the docstring of the
    authors' classification ``MGDLoss``, whose signature defaults to 0.15);
    detection uses 2e-5 and 0.65.

    Args:
        teacher_layer: name of the teacher layer (a feature map).
        student_layer: name of the student layer (a feature map).
        mask_ratio: the probability of masking a position, in [0, 1).
        weight: the term's weight in the total loss.
        resize: resize the student's map to the teacher's spatial size.
        seed: seed of the masks.

    Example:

    >>> import keras_kd as kd
    >>> kd.objectives.MGD("teacher_conv2", "student_conv2",
    ...                   weight=7e-5).get_config()["mask_ratio"]
    0.5
    """

    def __init__(self, teacher_layer, student_layer, mask_ratio=0.5,
                 weight=1.0, resize=False, seed=None, name="mgd", **kwargs):
        super().__init__(teacher_layer, student_layer, weight=weight,
                         resize=resize, name=name, **kwargs)
        if not isinstance(mask_ratio, (int, float)) or isinstance(
                mask_ratio, bool) or not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got "
                             f"{mask_ratio!r}; the paper uses 0.5.")
        self.mask_ratio = float(mask_ratio)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.align = None
        self.generator = None

    def build_for(self, teacher_shape, student_shape):
        _check_same_positions(self, teacher_shape, student_shape)
        rank = len(teacher_shape)
        if rank not in (3, 4):
            raise ValueError(
                f"MGD: teacher layer '{self.teacher_layer}' has output shape "
                f"{tuple(teacher_shape)}; MGD needs feature maps (batch, H, "
                "W, C) or (batch, L, C).")
        if self.generator is None:
            width = _width(teacher_shape)
            shape = _student_shape_at_target(self, student_shape)
            if _width(student_shape) != width:
                self.align = _pointwise(width, rank, f"{self.name}_align")
                self.align.build(shape)
            conv = keras.layers.Conv2D if rank == 4 else keras.layers.Conv1D
            self.generator = keras.Sequential([
                conv(width, 3, padding="same", activation="relu",
                     name=f"{self.name}_g1"),
                conv(width, 3, padding="same", name=f"{self.name}_g2"),
            ], name=f"{self.name}_generator")
            self.generator.build(tuple(teacher_shape))
        self.built = True

    def mask(self, features):
        """A random 0/1 mask of the positions, shared by the channels."""
        shape = list(ops.shape(features))
        shape[1 if _channels_first_map(len(shape)) else -1] = 1
        u = keras.random.uniform(tuple(shape), seed=self.seed_generator)
        return ops.cast(u >= self.mask_ratio, "float32")

    def generate(self, student_features, mask=None, training=False):
        """``G(mask ⊙ align(f_s))`` (no mask when ``mask`` is None)."""
        s = to_float32(ops.convert_to_tensor(
            self.resize_student(student_features)))
        if self.align is not None:
            s = self.align(s, training=training)
        if mask is not None:
            s = s * mask
        return self.generator(s, training=training)

    def compute(self, teacher_features, student_features, training=False):
        mask = None
        if training and self.mask_ratio > 0:
            mask = self.mask(teacher_features)
        return mgd_loss(teacher_features,
                        self.generate(student_features, mask, training))

    def get_config(self):
        config = super().get_config()
        config.update(mask_ratio=self.mask_ratio, seed=self.seed)
        return config
