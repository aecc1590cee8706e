"""ReviewKD: knowledge review across stages (Chen et al., CVPR 2021).

"Distilling Knowledge via Knowledge Review" (arXiv:2104.09044; torchdistill
calls it KR). Each student stage is compared with the teacher's stage of the
same depth, but through a *residual review* path: the student's stages are
fused from the deepest to the shallowest by attention-based fusion (ABF)
modules, so that a shallow teacher stage supervises a mix of the student's
deep and shallow features. The loss is the hierarchical context loss (HCL):
an L2 at full resolution plus L2s between average-pooled pyramids.
"""

import keras
from keras import ops

from keras_kd.objectives.base import to_float32
from keras_kd.objectives.stages import StagesObjective


def _maps(f):
    """A channels-last rank-4 float32 map (``(batch, C)`` becomes 1×1)."""
    f = to_float32(ops.convert_to_tensor(f))
    if len(f.shape) == 2:
        return ops.reshape(f, (ops.shape(f)[0], 1, 1, f.shape[-1]))
    if len(f.shape) == 3:   # a 1-D map (batch, L, C): L × 1
        return ops.expand_dims(f, 2)
    if len(f.shape) != 4:
        raise ValueError(
            f"ReviewKD needs feature maps (batch, H, W, C), 1-D maps (batch, "
            f"L, C) or pooled vectors (batch, C), got a tensor of shape "
            f"{tuple(f.shape)}.")
    if keras.config.image_data_format() == "channels_first":
        f = ops.transpose(f, (0, 2, 3, 1))
    return f


def resize_nearest(f, size):
    """Nearest-neighbour resize of a ``(batch, H, W, C)`` map by integer
    factors: PyTorch's ``F.interpolate(mode="nearest")`` (repeat to
    upsample, take every k-th row and column from the first to downsample).
    """
    out = f
    for axis, target in ((1, size[0]), (2, size[1])):
        n = out.shape[axis]
        if n == target:
            continue
        if target % n == 0:
            out = ops.repeat(out, target // n, axis=axis)
        elif n % target == 0:
            k = n // target
            out = out[:, ::k] if axis == 1 else out[:, :, ::k]
        else:
            raise ValueError(
                f"ReviewKD resizes maps by integer factors; {n} and {target} "
                "do not divide each other. Tap stages whose spatial sizes "
                "do (e.g. 32, 16, 8).")
    return out


def hcl_loss(teacher_maps, student_maps, levels=(4, 2, 1)):
    """Hierarchical context loss of ReviewKD, one value per sample.

    For each stage pair ``(f_s, f_t)`` of size ``H × W``:

        hcl = [mse(f_s, f_t) + Σ_l 2^-k(l) · mse(pool_l(f_s), pool_l(f_t))]
              / (1 + Σ_l 2^-k(l))

    over the pyramid levels ``l`` in ``levels`` with ``l < H`` (``pool_l``
    averages to ``l × l``, to ``l × 1`` for 1-D maps ``(batch, L, C)``,
    keras-kd's extension; ``k`` counts the levels used so far, so the
    weights are 1/2, 1/4, ...), summed over the stages (Chen et al., CVPR
    2021, eq. 5 and the authors' ``hcl``; ``mse`` is the mean over the
    map's positions and channels). Teacher maps are constants.

    Args:
        teacher_maps: list of ``(batch, H, W, C)`` tensors.
        student_maps: the student's fused maps, the same shapes.
        levels: the pooled sizes (4, 2, 1 in the paper).

    Returns:
        A ``(batch,)`` float32 tensor.

    Example:

    >>> import numpy as np
    >>> t = [np.ones((2, 8, 8, 3))]
    >>> [float(v) for v in hcl_loss(t, [np.zeros((2, 8, 8, 3))])]
    [1.0, 1.0]
    """
    total = 0.0
    for t, s in zip(teacher_maps, student_maps):
        t = ops.stop_gradient(_maps(t))
        s = _maps(s)
        h, w = s.shape[1], s.shape[2]
        loss = ops.mean(ops.square(s - t), axis=(1, 2, 3))
        count, weight = 1.0, 1.0
        for level in levels:
            if level >= h:
                continue
            level_w = min(level, w)   # 1-D maps (width 1) pool to l × 1
            if h % level or w % level_w:
                raise ValueError(
                    f"ReviewKD pools a {h}x{w} map to {level}x{level_w}: the "
                    "sizes must divide; tap stages with power-of-two sizes.")
            pool = (h // level, w // level_w)
            ps = ops.average_pool(s, pool, strides=pool, padding="valid",
                                  data_format="channels_last")
            pt = ops.average_pool(t, pool, strides=pool, padding="valid",
                                  data_format="channels_last")
            weight /= 2.0
            loss = loss + weight * ops.mean(ops.square(ps - pt),
                                            axis=(1, 2, 3))
            count += weight
        total = total + loss / count
    return total


class _Fusion(keras.layers.Layer):
    """One attention-based fusion (ABF) module of ReviewKD.

    ``x = BN(conv1x1(f_s))``; with a deeper residual ``y`` (upsampled to
    ``x``'s size): ``x = x · a_0 + y · a_1`` where ``a = sigmoid(conv1x1([x,
    y]))`` has 2 channels; ``x`` is then resized to the teacher's size and
    ``out = BN(conv3x3(x))`` has the teacher's channels. Returns ``(out,
    x)``; ``x`` is the residual for the next, shallower stage.
    """

    def __init__(self, mid_channels, out_channels, fuse, **kwargs):
        super().__init__(**kwargs)
        conv = dict(data_format="channels_last", use_bias=False)
        self.conv1 = keras.layers.Conv2D(mid_channels, 1, name="conv1", **conv)
        self.bn1 = keras.layers.BatchNormalization(axis=-1, name="bn1")
        self.conv2 = keras.layers.Conv2D(out_channels, 3, padding="same",
                                         name="conv2", **conv)
        self.bn2 = keras.layers.BatchNormalization(axis=-1, name="bn2")
        self.attention = keras.layers.Conv2D(
            2, 1, activation="sigmoid", data_format="channels_last",
            name="attention") if fuse else None
        self.mid_channels = mid_channels

    def build(self, input_shape):
        self.conv1.build(input_shape)
        mid = tuple(input_shape[:-1]) + (self.mid_channels,)
        self.bn1.build(mid)
        if self.attention is not None:
            self.attention.build(tuple(input_shape[:-1]) +
                                 (2 * self.mid_channels,))
        self.conv2.build(mid)
        self.bn2.build(tuple(input_shape[:-1]) + (self.conv2.filters,))
        self.built = True

    def call(self, x, residual=None, out_size=None, training=False):
        x = self.bn1(self.conv1(x), training=training)
        if self.attention is not None:
            residual = resize_nearest(residual, (x.shape[1], x.shape[2]))
            a = self.attention(ops.concatenate([x, residual], axis=-1))
            x = x * a[..., 0:1] + residual * a[..., 1:2]
        x = resize_nearest(x, out_size)
        return self.bn2(self.conv2(x), training=training), x


@keras.saving.register_keras_serializable(package="keras_kd")
class ReviewKD(StagesObjective):
    """ReviewKD (knowledge review): fused student stages imitate the teacher's.

    ``weight · Σ_i HCL(F_t,i, ABF_i(f_s,i, r_i+1))`` per sample
    (:func:`hcl_loss`; Chen et al., CVPR 2021). The stages are listed from
    the shallowest to the deepest in both models (the same count); the
    deepest student stage passes through its ABF alone, and each shallower
    one is fused with the residual of the deeper one. The ABF modules (1×1
    conv + BN, the 2-channel attention, 3×3 conv + BN to the teacher's
    channels) are trained with the student, saved with the Distiller and
    never exported with the student. 1-D maps ``(batch, L, C)`` are taken
    as ``L × 1`` maps and pooled vectors ``(batch, C)`` as 1×1 maps (the authors tap the pooled feature as a last stage).
    The authors' settings: ``mid_channels`` 64 (CIFAR, 256 on ImageNet),
    weight 1.0 on CIFAR with a 20-epoch linear warm-up of the weight (use a
    schedule callback for it), next to the hard loss and no KD.

    Args:
        teacher_layers: teacher stage layers, shallow to deep.
        student_layers: student stage layers, as many, shallow to deep.
        weight: the term's weight in the total loss.
        mid_channels: the ABF modules' inner width.
        levels: the HCL pyramid's pooled sizes.

    Example:

    >>> import keras_kd as kd
    >>> review = kd.objectives.ReviewKD(["t_stage1", "t_stage2"],
    ...                                 ["s_stage1", "s_stage2"])
    >>> review.get_config()["mid_channels"]
    64
    """

    def __init__(self, teacher_layers, student_layers, weight=1.0,
                 mid_channels=64, levels=(4, 2, 1), name="reviewkd",
                 **kwargs):
        super().__init__(teacher_layers, student_layers, weight=weight,
                         name=name, **kwargs)
        if not isinstance(mid_channels, int) or mid_channels < 1:
            raise ValueError(f"mid_channels must be a positive integer, got "
                             f"{mid_channels!r}; the authors use 64 or 256.")
        self.mid_channels = mid_channels
        self.levels = tuple(int(v) for v in levels)
        self.fusions = None

    def build_for(self, teacher_shapes, student_shapes):
        if self.fusions is not None:
            return
        def last(shape):
            shape = tuple(shape)
            if len(shape) == 4 and keras.config.image_data_format() == (
                    "channels_first"):
                shape = (shape[0],) + shape[2:] + (shape[1],)
            if len(shape) == 2:
                shape = (shape[0], 1, 1, shape[1])
            if len(shape) == 3:
                shape = (shape[0], shape[1], 1, shape[2])
            if len(shape) != 4 or None in shape[1:]:
                raise ValueError(
                    f"ReviewKD needs feature maps with static shapes, got "
                    f"{tuple(shape)}; tap convolutional stages (or pooled "
                    "vectors) of models with a fixed input size.")
            return shape
        self.teacher_sizes = [last(s)[1:3] for s in teacher_shapes]
        deepest = len(student_shapes) - 1
        self.fusions = []
        for i, (t_shape, s_shape) in enumerate(zip(teacher_shapes,
                                                   student_shapes)):
            fusion = _Fusion(self.mid_channels, last(t_shape)[-1],
                             fuse=i < deepest, name=f"{self.name}_abf{i}")
            fusion.build(last(s_shape))
            self.fusions.append(fusion)
        self.built = True

    def fused(self, student_features, training=False):
        """The student's reviewed maps, shallow to deep (ABF outputs)."""
        maps = [_maps(f) for f in student_features]
        out = [None] * len(maps)
        residual = None
        for i in reversed(range(len(maps))):
            out[i], residual = self.fusions[i](
                maps[i], residual=residual, out_size=self.teacher_sizes[i],
                training=training)
        return out

    def compute(self, teacher_features, student_features, training=False):
        return hcl_loss(teacher_features,
                        self.fused(student_features, training), self.levels)

    def get_config(self):
        config = super().get_config()
        config.update(mid_channels=self.mid_channels,
                      levels=list(self.levels))
        return config
