"""Feature objectives: the student imitates the teacher's intermediate layers."""

import keras
from keras import ops

from keras_kd.adapters import make_adapter
from keras_kd.objectives.base import Objective, to_float32


def fitnet_loss(teacher_features, student_features):
    """FitNet hint loss, one value per sample: ``mean((f_s − f_t)²)``.

    The mean runs over every axis but the batch axis. ``student_features`` are
    expected to be already mapped to the teacher's shape by the regressor
    ``r`` (see :class:`FitNet`, which applies it) (Romero et al., "FitNets:
    Hints for Thin Deep Nets", ICLR 2015, arXiv:1412.6550). Float32.

    Args:
        teacher_features: ``(batch, ...)`` tensor.
        student_features: tensor of the same shape.

    Returns:
        A ``(batch,)`` float32 tensor.

    Example:

    >>> import numpy as np
    >>> t = np.ones((2, 3)); s = np.zeros((2, 3))
    >>> [float(v) for v in fitnet_loss(t, s)]
    [1.0, 1.0]
    """
    diff = to_float32(student_features) - to_float32(teacher_features)
    sq = ops.square(diff)
    axes = tuple(range(1, len(sq.shape)))
    return ops.mean(sq, axis=axes) if axes else sq


def channels_last_maps(features, what):
    """``features`` as float32 maps ``(batch, H, W, C)``, transposed from
    ``channels_first`` when that is Keras's image data format; ``what`` (the
    objective's name) heads the error for any other rank."""
    f = to_float32(ops.convert_to_tensor(features))
    if len(f.shape) != 4:
        raise ValueError(
            f"{what} needs feature maps (batch, H, W, C), got a tensor of "
            f"shape {tuple(f.shape)}. Tap convolutional layers, before "
            "pooling.")
    if keras.config.image_data_format() == "channels_first":
        f = ops.transpose(f, (0, 2, 3, 1))
    return f


def spatial_axes():
    """The (H, W) axes of a rank-4 feature map under the image data format."""
    if keras.config.image_data_format() == "channels_first":
        return (2, 3)
    return (1, 2)


class FeatureObjective(Objective):
    """Base of objectives that compare two named intermediate layers.

    Args:
        teacher_layer: name of the teacher layer whose output is the target.
        student_layer: name of the student layer whose output imitates it.
        weight: the term's weight in the total loss.
        resize: when feature maps differ in spatial size, resize the
            student's map to the teacher's (bilinear) instead of raising.
    """

    kind = "features"

    def __init__(self, teacher_layer, student_layer, weight=1.0, resize=False,
                 name=None, **kwargs):
        super().__init__(weight=weight, name=name, **kwargs)
        for arg, value in (("teacher_layer", teacher_layer),
                           ("student_layer", student_layer)):
            if not isinstance(value, str) or not value:
                raise ValueError(
                    f"{arg} must be a layer name (a non-empty string), got "
                    f"{value!r}. Use model.summary() to see the layer names."
                )
        self.teacher_layer = teacher_layer
        self.student_layer = student_layer
        self.resize = bool(resize)
        self._target_hw = None

    def check_feature_maps(self, teacher_shape, student_shape):
        """Both taps are feature maps ``(batch, H, W, C)`` or sequences
        ``(batch, L, C)`` of the same spatial size (or resized, see
        :meth:`check_spatial`) and length."""
        for role, layer, shape in (("teacher", self.teacher_layer,
                                    teacher_shape),
                                   ("student", self.student_layer,
                                    student_shape)):
            if len(shape) not in (3, 4):
                raise ValueError(
                    f"{type(self).__name__}: {role} layer '{layer}' has "
                    f"output shape {tuple(shape)}; it needs feature maps "
                    "(batch, H, W, C) or sequences (batch, L, C). Tap a "
                    "convolutional layer, before global pooling.")
        self.check_spatial(teacher_shape, student_shape)
        self.check_same_length(teacher_shape, student_shape)

    def check_same_length(self, teacher_shape, student_shape):
        """Sequences ``(batch, L, C)``: the teacher's and the student's ``L``
        must agree (nothing resizes them)."""
        if len(teacher_shape) == 3 and teacher_shape[1] != student_shape[1]:
            raise ValueError(
                f"{type(self).__name__}: teacher layer '{self.teacher_layer}' "
                f"has {teacher_shape[1]} positions and student layer "
                f"'{self.student_layer}' has {student_shape[1]}; tap layers "
                "with the same length.")

    def check_spatial(self, teacher_shape, student_shape):
        """Checks (or arranges the resize of) rank-4 maps of different sizes."""
        if len(teacher_shape) != len(student_shape):
            raise ValueError(
                f"{type(self).__name__}: teacher layer '{self.teacher_layer}' "
                f"has output shape {tuple(teacher_shape)} and student layer "
                f"'{self.student_layer}' has {tuple(student_shape)}: their "
                "ranks differ. Tap layers of the same kind (two feature maps, "
                "or two vectors), or pool/flatten one of them in the model."
            )
        if len(teacher_shape) != 4:
            return
        axes = spatial_axes()
        t_hw = tuple(teacher_shape[a] for a in axes)
        s_hw = tuple(student_shape[a] for a in axes)
        if t_hw != s_hw:
            if not self.resize:
                raise ValueError(
                    f"{type(self).__name__}: teacher layer "
                    f"'{self.teacher_layer}' has spatial size {t_hw} and "
                    f"student layer '{self.student_layer}' has {s_hw}. Tap "
                    "layers with the same spatial size, or pass resize=True "
                    "to resize the student's map to the teacher's."
                )
            if None in t_hw:
                raise ValueError(
                    f"{type(self).__name__}: resize=True needs a static "
                    f"spatial size for teacher layer '{self.teacher_layer}' "
                    f"(got {t_hw}); give the models a fixed input shape."
                )
            self._target_hw = t_hw

    def resize_student(self, student_features):
        """Resizes a student map to the teacher's spatial size when needed."""
        if self._target_hw is None:
            return student_features
        if keras.config.image_data_format() == "channels_first":
            return ops.image.resize(student_features, self._target_hw,
                                    data_format="channels_first")
        return ops.image.resize(student_features, self._target_hw)

    def get_config(self):
        config = super().get_config()
        config.update(teacher_layer=self.teacher_layer,
                      student_layer=self.student_layer, resize=self.resize)
        return config


@keras.saving.register_keras_serializable(package="keras_kd")
class FitNet(FeatureObjective):
    """FitNet hint: a student layer regresses a teacher layer's output.

    ``weight · mean((r(f_s) − f_t)²)`` where ``r`` is a trainable adapter
    (1×1 conv + BatchNorm for feature maps, Dense for vectors and sequences)
    that keras-kd creates when the widths differ (``adapter="auto"``), always
    (``"always"``) or never (``"none"``, widths must then agree). The adapter
    is trained with the student and saved with the Distiller; it is not part
    of the student (Romero et al., ICLR 2015). Usual weight: 100 (CRD
    benchmark code).

    Args:
        teacher_layer: name of the teacher layer (the hint).
        student_layer: name of the student layer (the guided layer).
        weight: the term's weight in the total loss.
        adapter: ``"auto"``, ``"always"`` or ``"none"``.
        resize: resize the student's map to the teacher's spatial size when
            they differ (otherwise a ValueError says so).

    Example:

    >>> import keras_kd as kd
    >>> hint = kd.FitNet("teacher_block3", "student_block2", weight=100.0)
    >>> hint.get_config()["adapter"]
    'auto'
    """

    def __init__(self, teacher_layer, student_layer, weight=1.0,
                 adapter="auto", resize=False, name="fitnet", **kwargs):
        super().__init__(teacher_layer, student_layer, weight=weight,
                         resize=resize, name=name, **kwargs)
        if adapter not in ("auto", "always", "none"):
            raise ValueError(
                f"adapter must be 'auto', 'always' or 'none', got {adapter!r}."
            )
        self.adapter_mode = adapter
        self.adapter = None

    def build_for(self, teacher_shape, student_shape):
        self.check_spatial(teacher_shape, student_shape)
        t_width, s_width = teacher_shape[-1], student_shape[-1]
        if len(teacher_shape) == 4 and keras.config.image_data_format() == (
                "channels_first"):
            t_width, s_width = teacher_shape[1], student_shape[1]
        need = self.adapter_mode == "always" or (
            self.adapter_mode == "auto" and t_width != s_width)
        if t_width != s_width and self.adapter_mode == "none":
            raise ValueError(
                f"FitNet: teacher layer '{self.teacher_layer}' has width "
                f"{t_width} and student layer '{self.student_layer}' has "
                f"{s_width}, and adapter='none'. Use adapter='auto' to learn "
                "a projection between them."
            )
        if need and self.adapter is None:
            shape = list(student_shape)
            if self._target_hw is not None:
                for axis, size in zip(spatial_axes(), self._target_hw):
                    shape[axis] = size
            self.adapter = make_adapter(shape, t_width,
                                        name=f"{self.name}_adapter")
        self.built = True

    def compute(self, teacher_features, student_features, training=False):
        s = self.resize_student(student_features)
        if self.adapter is not None:
            s = self.adapter(s, training=training)
        return fitnet_loss(teacher_features, s)

    def get_config(self):
        config = super().get_config()
        config["adapter"] = self.adapter_mode
        return config


def cosine_loss(teacher_features, student_features):
    """Cosine distance per position: ``1 − cos(f_s, f_t)`` over the last axis.

    DistilBERT aligns the directions of the student's and the teacher's
    hidden states with this loss (Sanh et al., "DistilBERT, a distilled
    version of BERT", 2019, arXiv:1910.01108), per token:

        loss_i = 1 − ⟨f_s,i, f_t,i⟩ / (‖f_s,i‖ · ‖f_t,i‖)

    Float32; norms are floored at 1e-12.

    Args:
        teacher_features: ``(batch, ..., D)`` tensor.
        student_features: tensor of the same shape.

    Returns:
        A float32 tensor of shape ``features.shape[:-1]``: one value per
        token for hidden states ``(batch, length, D)``.

    Example:

    >>> import numpy as np
    >>> t = np.array([[1.0, 0.0], [0.0, 2.0]])
    >>> [round(float(v), 4) for v in cosine_loss(t, np.array([[3.0, 0.0],
    ...                                                       [1.0, 0.0]]))]
    [0.0, 1.0]
    """
    t = to_float32(ops.convert_to_tensor(teacher_features))
    s = to_float32(ops.convert_to_tensor(student_features))
    dot = ops.sum(t * s, axis=-1)
    norms = ops.sqrt(ops.maximum(ops.sum(t * t, axis=-1), 1e-24)) * ops.sqrt(
        ops.maximum(ops.sum(s * s, axis=-1), 1e-24))
    return 1.0 - dot / norms


@keras.saving.register_keras_serializable(package="keras_kd")
class CosineEmbedding(FitNet):
    """Cosine distance between hidden states, DistilBERT's third loss.

    ``weight · (1 − cos(r(f_s), f_t))`` per position (:func:`cosine_loss`),
    with the adapter ``r`` of :class:`FitNet` when the widths differ (a
    DistilBERT student has the teacher's width, so none is made). On hidden
    states ``(batch, length, D)`` the loss is per token, so padding weights
    (``sample_weight``) apply to it as to the logit terms. DistilBERT's
    recipe: ``5 · KD(T=2) + 2 · MLM + 1 · cosine``.

    Args:
        teacher_layer: name of the teacher layer (e.g. its last transformer
            layer; nested layers by path, ``"bert_backbone/transformer_layer_11"``).
        student_layer: name of the student layer.
        weight: the term's weight in the total loss.
        adapter: ``"auto"``, ``"always"`` or ``"none"``.

    Example:

    >>> import keras_kd as kd
    >>> kd.CosineEmbedding("transformer_layer_11", "transformer_layer_5").name
    'cosine'
    """

    def __init__(self, teacher_layer, student_layer, weight=1.0,
                 adapter="auto", name="cosine", **kwargs):
        kwargs.pop("resize", None)
        super().__init__(teacher_layer, student_layer, weight=weight,
                         adapter=adapter, name=name, **kwargs)

    def compute(self, teacher_features, student_features, training=False):
        s = student_features
        if self.adapter is not None:
            s = self.adapter(s, training=training)
        return cosine_loss(teacher_features, s)


def _channel_axis(rank):
    if rank == 4 and keras.config.image_data_format() == "channels_first":
        return 1
    return -1


def attention_map(features, p=2):
    """Spatial attention map of AT: ``normalize(flatten(mean_c |f|^p))``.

    For a feature map ``(batch, H, W, C)`` (or ``(batch, C, H, W)`` under
    ``channels_first``) the map averages ``|f|^p`` over channels, flattens the
    ``H·W`` positions and L2-normalises each sample's vector
    (``x / max(‖x‖, 1e-12)``). A sequence ``(batch, L, D)`` gives a map over
    its ``L`` positions. Float32.

    Args:
        features: a rank-3 or rank-4 tensor.
        p: the power applied to the activations (the paper uses 2).

    Returns:
        A ``(batch, positions)`` float32 tensor of unit rows.

    Example:

    >>> import numpy as np
    >>> a = attention_map(np.ones((1, 2, 2, 3)))
    >>> [round(float(v), 2) for v in a[0]]
    [0.5, 0.5, 0.5, 0.5]
    """
    f = to_float32(ops.convert_to_tensor(features))
    rank = len(f.shape)
    if rank not in (3, 4):
        raise ValueError(
            f"Attention transfer needs feature maps (batch, H, W, C) or "
            f"sequences (batch, L, D), got a tensor of shape {tuple(f.shape)}."
            " Tap a convolutional (or sequence) layer, before any pooling."
        )
    if p == 2:
        powered = ops.square(f)
    else:
        powered = ops.power(ops.abs(f), p)
    a = ops.mean(powered, axis=_channel_axis(rank))
    a = ops.reshape(a, (ops.shape(a)[0], -1))
    norm = ops.sqrt(ops.maximum(ops.sum(ops.square(a), axis=-1,
                                        keepdims=True), 1e-24))
    return a / norm


def attention_transfer_loss(teacher_features, student_features, p=2):
    """Attention transfer (AT) loss for one stage pair, one value per sample.

        loss_i = mean_j (a(f_s)_ij − a(f_t)_ij)²,
        a(f) = normalize(flatten(mean_c f^p))

    (Zagoruyko & Komodakis, "Paying More Attention to Attention", ICLR 2017,
    arXiv:1612.03928; the mean over positions follows the CRD benchmark
    code). The channel counts may differ; the spatial sizes must agree. The
    teacher's map is treated as a constant (``stop_gradient``). Several
    stage pairs are summed by the Distiller, one :class:`AttentionTransfer`
    per pair.

    Args:
        teacher_features: ``(batch, H, W, C_t)`` tensor.
        student_features: ``(batch, H, W, C_s)`` tensor.
        p: the power of the attention map (2 in the paper).

    Returns:
        A ``(batch,)`` float32 tensor.

    Example:

    >>> import numpy as np
    >>> t = np.random.rand(2, 4, 4, 8); s = np.random.rand(2, 4, 4, 3)
    >>> tuple(attention_transfer_loss(t, s).shape)
    (2,)
    """
    a_t = ops.stop_gradient(attention_map(teacher_features, p))
    a_s = attention_map(student_features, p)
    if a_t.shape[-1] is not None and a_s.shape[-1] is not None and \
            a_t.shape[-1] != a_s.shape[-1]:
        raise ValueError(
            f"Attention transfer: the teacher's map has {a_t.shape[-1]} "
            f"positions and the student's {a_s.shape[-1]}; the spatial sizes "
            "must agree. Tap layers with the same spatial size, or use "
            "AttentionTransfer(..., resize=True)."
        )
    return ops.mean(ops.square(a_s - a_t), axis=-1)


@keras.saving.register_keras_serializable(package="keras_kd")
class AttentionTransfer(FeatureObjective):
    """Attention transfer (AT) between one teacher layer and one student layer.

    ``weight · mean_j (a(f_s) − a(f_t))²`` with ``a(f) = normalize(flatten(
    mean_c f^p))`` (Zagoruyko & Komodakis, ICLR 2017); see
    :func:`attention_transfer_loss`. One instance compares one stage pair;
    to transfer attention at several stages (the paper's setting), pass one
    instance per pair with distinct names, the Distiller sums them:

        feature_losses=[
            kd.objectives.AttentionTransfer("t_block1", "s_block1",
                                            weight=1000.0, name="at1"),
            kd.objectives.AttentionTransfer("t_block2", "s_block2",
                                            weight=1000.0, name="at2"),
        ]

    Channel counts may differ (no adapter is needed). Spatial sizes must
    agree; with ``resize=True`` the student's map is resized (bilinear) to
    the teacher's instead of raising an error. Usual weight: 1000 (CRD
    benchmark code; the paper's β/2 = 500 per stage with a sum instead of a
    mean over positions differs only by a constant).

    Args:
        teacher_layer: name of the teacher layer (a feature map).
        student_layer: name of the student layer (a feature map).
        weight: the term's weight in the total loss.
        p: the power of the attention map (2).
        resize: resize the student's map to the teacher's spatial size.

    Example:

    >>> import keras_kd as kd
    >>> at = kd.objectives.AttentionTransfer("teacher_conv2", "student_conv2",
    ...                                      weight=1000.0)
    >>> at.get_config()["p"]
    2.0
    """

    def __init__(self, teacher_layer, student_layer, weight=1.0, p=2,
                 resize=False, name="at", **kwargs):
        super().__init__(teacher_layer, student_layer, weight=weight,
                         resize=resize, name=name, **kwargs)
        if not isinstance(p, (int, float)) or isinstance(p, bool) or p <= 0:
            raise ValueError(f"p must be a number > 0, got {p!r}; the paper "
                             "uses p=2.")
        self.p = float(p)

    def build_for(self, teacher_shape, student_shape):
        self.check_feature_maps(teacher_shape, student_shape)
        self.built = True

    def compute(self, teacher_features, student_features, training=False):
        p = int(self.p) if self.p == int(self.p) else self.p
        return attention_transfer_loss(
            teacher_features, self.resize_student(student_features), p)

    def get_config(self):
        config = super().get_config()
        config["p"] = self.p
        return config
