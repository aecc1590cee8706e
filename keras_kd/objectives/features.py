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

    def _lock_state(self):
        # Adapters are created in `build_for`, once the Distiller knows the
        # tapped shapes, after the layer's construction.
        pass

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
