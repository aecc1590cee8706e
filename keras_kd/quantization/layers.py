"""The quantization-aware layers: :class:`ActivationQuantizer` (an
activation's 8-bit range) and :class:`QuantizedLayer` (int8 weights, with
BatchNorm folded and ReLU fused), and the helpers that find them in a model.
"""

import keras
from keras import ops

__all__ = ["ActivationQuantizer", "QuantizedLayer", "is_quantization_aware",
           "quantizers", "uncalibrated"]


# Layers whose output is int8 with the input's scale in TFLite (no new range):
# they need no quantizer after them.
SAME_SCALE = (
    keras.layers.Flatten, keras.layers.Reshape, keras.layers.Dropout,
    keras.layers.MaxPooling1D, keras.layers.MaxPooling2D,
    keras.layers.GlobalMaxPooling1D, keras.layers.GlobalMaxPooling2D,
    keras.layers.ZeroPadding1D, keras.layers.ZeroPadding2D,
    keras.layers.Cropping1D, keras.layers.Cropping2D, keras.layers.Permute,
    keras.layers.SpatialDropout1D, keras.layers.SpatialDropout2D,
    keras.layers.GaussianNoise, keras.layers.GaussianDropout,
    keras.layers.AlphaDropout, keras.layers.Identity,
)
WEIGHT_LAYERS = (keras.layers.Conv1D, keras.layers.Conv2D,
                  keras.layers.DepthwiseConv2D, keras.layers.Dense)
FUSABLE = ("relu", "relu6")


def _serialize(layer):
    return None if layer is None else keras.layers.serialize(layer)


def _deserialize(config):
    if config is None or isinstance(config, keras.layers.Layer):
        return config
    return keras.layers.deserialize(config)


@keras.saving.register_keras_serializable(package="keras_kd")
class ActivationQuantizer(keras.layers.Layer):
    """Per-tensor, asymmetric 8-bit fake quantization of an activation.

    Holds the range ``[range_min, range_max]`` (non-trainable, always
    containing 0) and fake-quantizes its input to the 256 levels of that
    range after TensorFlow's nudging (so that 0 is exact)::

        s = (b - a) / 255,  z = round(-a / s),  a' = -z·s,  b' = (255 - z)·s
        y = a' + s · round((clip(x, a', b') - a') / s)

    In training (``training=True``) the range first takes the batch's
    ``[min(x, 0), max(x, 0)]`` if it was never calibrated, and otherwise
    moves by an exponential moving average, ``a ← d·a + (1 - d)·min(x, 0)``
    and ``b ← d·b + (1 - d)·max(x, 0)``; the batch is quantized with the
    updated range. In inference the stored range is used as it is. The
    gradient is straight-through: 1 inside ``[a', b']``, 0 outside (Jacob et
    al. 2018; Krishnamoorthi 2018, section 3).

    Args:
        ema_decay: ``d`` above, in ``[0, 1)``; 0 uses each batch's range.
        num_bits: bits of the quantized activation (8 for TFLite int8).

    Example:

    >>> import keras, numpy as np, keras_kd as kd
    >>> quantizer = kd.quantization.ActivationQuantizer()
    >>> y = quantizer(np.array([[-1.0, 0.1, 3.0]], "float32"), training=True)
    >>> # range [-1, 3]: s = 4/255, z = round(63.75) = 64, [a', b'] = [-64s, 191s]
    >>> [round(float(v), 4) for v in keras.ops.convert_to_numpy(y)[0]]
    [-1.0039, 0.0941, 2.9961]
    """

    def __init__(self, ema_decay=0.99, num_bits=8, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= float(ema_decay) < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay!r}; "
                             "e.g. 0.99.")
        self.ema_decay = float(ema_decay)
        self.num_bits = int(num_bits)
        self.calibrating = False  # set by calibrate(); eager only

    def build(self, input_shape):
        # Initial range (-6, 6), as tfmot; replaced by calibration or the
        # first training batch.
        self.range_min = self.add_weight(
            shape=(), initializer=keras.initializers.Constant(-6.0),
            trainable=False, name="range_min")
        self.range_max = self.add_weight(
            shape=(), initializer=keras.initializers.Constant(6.0),
            trainable=False, name="range_max")
        self.calibrated = self.add_weight(
            shape=(), initializer="zeros", trainable=False, name="calibrated")
        self.built = True

    def call(self, inputs, training=None):
        if self.calibrating:
            batch_min = ops.minimum(ops.min(inputs), 0.0)
            batch_max = ops.maximum(ops.max(inputs), 0.0)
            seen = self.calibrated > 0
            self.range_min.assign(ops.where(
                seen, ops.minimum(self.range_min, batch_min), batch_min))
            self.range_max.assign(ops.where(
                seen, ops.maximum(self.range_max, batch_max), batch_max))
            self.calibrated.assign(1.0)
            return inputs
        low, high = self.range_min, self.range_max
        if training:
            x = ops.stop_gradient(inputs)
            batch_min = ops.minimum(ops.min(x), 0.0)
            batch_max = ops.maximum(ops.max(x), 0.0)
            seen = self.calibrated > 0
            d = self.ema_decay
            low = ops.where(seen, d * self.range_min + (1 - d) * batch_min,
                            batch_min)
            high = ops.where(seen, d * self.range_max + (1 - d) * batch_max,
                             batch_max)
            self.range_min.assign(low)
            self.range_max.assign(high)
            self.calibrated.assign(1.0)
        low = ops.convert_to_tensor(low)
        # An all-zero tensor has no range; keep the scale positive.
        high = ops.maximum(ops.convert_to_tensor(high), low + 1e-6)
        return keras.quantizers.fake_quant_with_min_max_vars(
            inputs, ops.stop_gradient(low), ops.stop_gradient(high),
            num_bits=self.num_bits, narrow_range=False)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "ema_decay": self.ema_decay,
                "num_bits": self.num_bits}


def _fake_quant_weights(kernel, channel_axis, num_bits=8):
    """Symmetric, narrow-range fake quantization of a kernel, per channel
    along ``channel_axis`` (None: per tensor)."""
    axes = (None if channel_axis is None else
            [i for i in range(len(kernel.shape)) if i != channel_axis])
    bound = ops.stop_gradient(ops.maximum(
        ops.max(ops.abs(kernel), axis=axes), 1e-8))
    return keras.quantizers.fake_quant_with_min_max_vars(
        kernel, -bound, bound, num_bits=num_bits, narrow_range=True,
        axis=channel_axis)


@keras.saving.register_keras_serializable(package="keras_kd")
class QuantizedLayer(keras.layers.Layer):
    """A convolution or dense layer (+ BatchNorm + ReLU/ReLU6) with int8
    weights, as one TFLite kernel computes it.

    Wraps ``layer`` (``Conv1D``, ``Conv2D``, ``DepthwiseConv2D`` or
    ``Dense``, channels last) and an optional ``batch_norm`` that follows it,
    keeping their variables. The forward pass folds the BatchNorm into the
    kernel and bias with its moving statistics (frozen),
    ``W_fold = W · γ / sqrt(σ² + ε)``, ``b_fold = β + (b - μ) · γ / sqrt(σ²
    + ε)``, fake-quantizes ``W_fold`` per output channel ``c`` to
    ``s_c · clip(round(W_fold / s_c), -127, 127)`` with
    ``s_c = max |W_fold[..., c]| / 127`` (straight-through gradient),
    applies the operation, adds ``b_fold`` and then ``activation`` (None,
    ``"relu"`` or ``"relu6"``). The output is float; an
    :class:`ActivationQuantizer` after the layer quantizes it (Jacob et al.
    2018, section 3.2; Krishnamoorthi 2018, section 3.2).

    Built by :func:`quantize_model`; it serializes with its wrapped layers.

    Example:

    >>> import keras, numpy as np, keras_kd as kd
    >>> dense = keras.layers.Dense(2, use_bias=False)
    >>> dense.build((None, 2))
    >>> dense.set_weights([np.array([[1.0, 0.3], [0.003, 0.0]], "float32")])
    >>> layer = kd.quantization.QuantizedLayer(dense)
    >>> y = layer(np.array([[1.0, 1.0]], "float32"))
    >>> # s = 1/127 (Dense: per tensor): 0.3 -> 38 s, 0.003 -> 0
    >>> [round(float(v), 4) for v in keras.ops.convert_to_numpy(y)[0]]
    [1.0, 0.2992]
    """

    def __init__(self, layer, batch_norm=None, activation=None, **kwargs):
        super().__init__(**kwargs)
        self.layer = _deserialize(layer)
        self.batch_norm = _deserialize(batch_norm)
        if not isinstance(self.layer, WEIGHT_LAYERS):
            raise TypeError(
                "QuantizedLayer wraps Conv1D, Conv2D, DepthwiseConv2D or "
                f"Dense layers, got {type(self.layer).__name__}.")
        if getattr(self.layer, "data_format", "channels_last") != \
                "channels_last":
            raise ValueError(
                f"Layer '{self.layer.name}' uses data_format="
                f"'{self.layer.data_format}'; quantization-aware students "
                "need channels_last (TFLite's layout).")
        if activation not in (None, *FUSABLE):
            raise ValueError(f"activation must be None, 'relu' or 'relu6', "
                             f"got {activation!r}.")
        self.activation = activation

    def build(self, input_shape):
        if not self.layer.built:
            self.layer.build(input_shape)
        if self.batch_norm is not None and not self.batch_norm.built:
            self.batch_norm.build(self.layer.compute_output_shape(input_shape))
        self.built = True

    def folded_weights(self):
        """``(W_fold, b_fold)``: the float kernel and bias with the BatchNorm
        folded in, before quantization (kernel in the layer's layout)."""
        layer = self.layer
        kernel = ops.convert_to_tensor(layer.kernel)
        channels = (kernel.shape[-2] * kernel.shape[-1]
                    if isinstance(layer, keras.layers.DepthwiseConv2D)
                    else kernel.shape[-1])
        bias = (ops.convert_to_tensor(layer.bias) if layer.use_bias
                else ops.zeros((channels,), kernel.dtype))
        bn = self.batch_norm
        if bn is not None:
            factor = ops.rsqrt(ops.convert_to_tensor(bn.moving_variance)
                               + bn.epsilon)
            if bn.scale:
                factor = factor * bn.gamma
            bias = (bias - bn.moving_mean) * factor
            if bn.center:
                bias = bias + bn.beta
            kernel = kernel * ops.reshape(factor, kernel.shape[-2:]) \
                if isinstance(layer, keras.layers.DepthwiseConv2D) \
                else kernel * factor
        return kernel, bias

    def quantized_kernel(self):
        """The fake-quantized, folded kernel ``W_q`` (per output channel)."""
        kernel, _ = self.folded_weights()
        if isinstance(self.layer, keras.layers.DepthwiseConv2D):
            # Output channel = (input channel, multiplier): quantize over a
            # (kh, kw, 1, channels) view, TFLite's depthwise filter layout.
            shape = kernel.shape
            flat = ops.reshape(kernel, (*shape[:-2], 1,
                                        shape[-2] * shape[-1]))
            return ops.reshape(_fake_quant_weights(flat, len(shape) - 1),
                               shape)
        if isinstance(self.layer, keras.layers.Dense):
            # Per tensor: the converter cannot move a per-channel range from
            # the (in, out) kernel to TFLite's (out, in) FULLY_CONNECTED
            # weights ("tfl.transpose op has mismatched quantized axes").
            return _fake_quant_weights(kernel, None)
        return _fake_quant_weights(kernel, len(kernel.shape) - 1)

    def call(self, inputs):
        layer = self.layer
        kernel = self.quantized_kernel()
        _, bias = self.folded_weights()
        if isinstance(layer, keras.layers.Dense):
            outputs = ops.matmul(inputs, kernel)
        elif isinstance(layer, keras.layers.DepthwiseConv2D):
            outputs = ops.depthwise_conv(
                inputs, kernel, strides=layer.strides, padding=layer.padding,
                data_format=layer.data_format,
                dilation_rate=layer.dilation_rate)
        elif len(kernel.shape) == 3:
            # Conv1D as TFLite runs it, a CONV_2D of height 1, with the kernel
            # quantized in that (1, k, in, out) layout: a per-channel range on
            # the 3-D kernel does not survive the converter's ExpandDims.
            padding = layer.padding
            if padding == "causal":
                left = layer.dilation_rate[0] * (layer.kernel_size[0] - 1)
                inputs = ops.pad(inputs, [[0, 0], [left, 0], [0, 0]])
                padding = "valid"
            folded, _ = self.folded_weights()
            kernel = _fake_quant_weights(ops.expand_dims(folded, 0), 3)
            outputs = ops.squeeze(ops.conv(
                ops.expand_dims(inputs, 1), kernel,
                strides=[1, layer.strides[0]], padding=padding,
                dilation_rate=[1, layer.dilation_rate[0]],
                data_format=layer.data_format), 1)
        else:
            outputs = ops.conv(inputs, kernel, strides=list(layer.strides),
                               padding=layer.padding,
                               dilation_rate=layer.dilation_rate,
                               data_format=layer.data_format)
        outputs = outputs + bias
        if self.activation == "relu":
            outputs = ops.relu(outputs)
        elif self.activation == "relu6":
            outputs = ops.relu6(outputs)
        return outputs

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    def get_config(self):
        return {**super().get_config(), "layer": _serialize(self.layer),
                "batch_norm": _serialize(self.batch_norm),
                "activation": self.activation}


def quantizers(model):
    """The :class:`ActivationQuantizer` layers of a model, in order."""
    return [layer for layer in model.layers
            if isinstance(layer, ActivationQuantizer)]


def is_quantization_aware(model):
    """Whether ``model`` (a Keras model) holds activation quantizers, i.e.
    was made by :func:`quantize_model`; its int8 export then uses the
    learned ranges.

    Example:

    >>> import keras, keras_kd as kd
    >>> inputs = keras.Input((4,))
    >>> model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    >>> kd.quantization.is_quantization_aware(model)
    False
    >>> kd.quantization.is_quantization_aware(
    ...     kd.quantization.quantize_model(model))
    True
    """
    return isinstance(model, keras.Model) and bool(quantizers(model))


def uncalibrated(model):
    """Names of ``model``'s activation quantizers that never saw data.

    A quantizer's range starts at ``(-6, 6)`` (a placeholder) with its
    ``calibrated`` flag at 0; :func:`~keras_kd.quantization.calibrate` or a
    training step sets the range from data and the flag to 1. The export
    refuses a model for which this list is not empty: its file would
    quantize with the placeholder ranges.

    Example:

    >>> import keras, numpy as np, keras_kd as kd
    >>> inputs = keras.Input((3,), name="x")
    >>> qat = kd.quantization.quantize_model(
    ...     keras.Model(inputs, keras.layers.Dense(2, name="d")(inputs)))
    >>> kd.quantization.uncalibrated(qat)
    ['x_quant', 'd_quant']
    >>> _ = kd.quantization.calibrate(qat, np.ones((4, 3), "float32"))
    >>> kd.quantization.uncalibrated(qat)
    []
    """
    return [layer.name for layer in quantizers(model)
            if not layer.built or float(keras.ops.convert_to_numpy(
                layer.calibrated)) == 0.0]
