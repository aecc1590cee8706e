"""Quantization-aware students: simulated int8 for quantization-aware
distillation (QAD), exported as a fully int8 TFLite file.

:func:`quantize_model` returns a copy of a Functional or Sequential student
(same weights) whose forward pass computes what an int8 TFLite kernel
computes, in float ("fake quantization", Jacob et al. 2018):

* **weights** of ``Conv1D``, ``Conv2D``, ``DepthwiseConv2D`` and ``Dense``,
  per output channel ``c``, symmetric, narrow range::

      s_c = max |W[..., c]| / 127
      W_q[..., c] = s_c · clip(round(W[..., c] / s_c), -127, 127)

  (TFLite's int8 weight scheme: zero point 0, values in ``[-127, 127]``);
* **activations** per tensor, asymmetric 8-bit with the range ``[a, b]``
  (``a ≤ 0 ≤ b``) nudged so that 0 is exactly representable::

      s = (b - a) / 255,   z = round(-a / s),   a' = -z·s,   b' = (255 - z)·s
      x_q = a' + s · round((clip(x, a', b') - a') / s)

  The ranges start from calibration (:func:`calibrate`, or the first
  training batch) and then follow an exponential moving average of each
  training batch's minimum and maximum, ``a ← d·a + (1 - d)·min(x)``
  (``ema_decay`` d, default 0.99). They are non-trainable variables: saved
  in ``.keras`` files, read by the TFLite converter.

TFLite's fused patterns are simulated: a convolution or dense layer
followed by ``BatchNormalization`` and ``ReLU`` / ``ReLU6`` is one
:class:`QuantizedLayer` whose kernel and bias are the BatchNorm-folded ones
(Jacob et al. 2018, section 3.2)::

    γ' = γ / sqrt(σ² + ε),   W_fold = W · γ',   b_fold = β + (b - μ) · γ'

and the ReLU is applied before the single activation quantizer (no
quantization between the convolution and its activation). **BatchNorm
statistics are frozen**: ``μ`` and ``σ²`` are the moving statistics of the
float student in training as in inference, so training fine-tunes ``W``,
``b``, ``γ`` and ``β`` through the folded, quantized kernel. This is the
setting Krishnamoorthi (2018, section 3.2) recommends after the first steps,
and the natural one for fine-tuning an already trained float student; it
also makes training and the exported file compute the same function.

Gradients are straight-through (Bengio et al. 2013): ``round`` passes the
gradient unchanged inside the range and zero outside it, on TensorFlow, JAX
and PyTorch (``keras.quantizers.fake_quant_with_min_max_vars``). On
TensorFlow the op is ``FakeQuantWithMinMaxVars(PerChannel)``, which the TFLite
converter turns into int8 tensors: :func:`keras_kd.export.to_tflite` with
``quantize="int8"`` exports a quantization-aware student from its learned
ranges, without representative data, from any backend.

References:
    Jacob et al., "Quantization and Training of Neural Networks for
    Efficient Integer-Arithmetic-Only Inference", CVPR 2018.
    Krishnamoorthi, "Quantizing deep convolutional networks for efficient
    inference: A whitepaper", arXiv:1806.08342, 2018.
"""

import keras
import numpy as np
from keras import ops

__all__ = ["ActivationQuantizer", "QuantizedLayer", "calibrate",
           "is_quantization_aware", "quantize_model", "quantizers"]

# Layers whose output is int8 with the input's scale in TFLite (no new range):
# they need no quantizer after them.
_SAME_SCALE = (
    keras.layers.Flatten, keras.layers.Reshape, keras.layers.Dropout,
    keras.layers.MaxPooling1D, keras.layers.MaxPooling2D,
    keras.layers.GlobalMaxPooling1D, keras.layers.GlobalMaxPooling2D,
    keras.layers.ZeroPadding1D, keras.layers.ZeroPadding2D,
    keras.layers.Cropping1D, keras.layers.Cropping2D, keras.layers.Permute,
    keras.layers.SpatialDropout1D, keras.layers.SpatialDropout2D,
    keras.layers.GaussianNoise, keras.layers.GaussianDropout,
    keras.layers.AlphaDropout, keras.layers.Identity,
)
_WEIGHT_LAYERS = (keras.layers.Conv1D, keras.layers.Conv2D,
                  keras.layers.DepthwiseConv2D, keras.layers.Dense)
_FUSABLE = ("relu", "relu6")


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
        if not isinstance(self.layer, _WEIGHT_LAYERS):
            raise TypeError(
                "QuantizedLayer wraps Conv1D, Conv2D, DepthwiseConv2D or "
                f"Dense layers, got {type(self.layer).__name__}.")
        if getattr(self.layer, "data_format", "channels_last") != \
                "channels_last":
            raise ValueError(
                f"Layer '{self.layer.name}' uses data_format="
                f"'{self.layer.data_format}'; quantization-aware students "
                "need channels_last (TFLite's layout).")
        if activation not in (None, *_FUSABLE):
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


# ----------------------------------------------------------------------
# Building the quantization-aware copy
# ----------------------------------------------------------------------
def _activation_name(fn):
    """'relu', 'relu6', 'linear' or another name for an activation fn."""
    name = getattr(fn, "__name__", None) or keras.activations.serialize(fn)
    return name if isinstance(name, str) else str(name)


def _fusable_activation(op):
    """'relu' / 'relu6' when ``op`` is a ReLU TFLite fuses, else None."""
    if isinstance(op, keras.layers.ReLU):
        if op.negative_slope or op.threshold:
            return None
        if op.max_value is None:
            return "relu"
        return "relu6" if float(op.max_value) == 6.0 else None
    if isinstance(op, keras.layers.Activation):
        name = _activation_name(op.activation)
        return name if name in _FUSABLE else None
    return None


def _copy(layer):
    """A new, unbuilt layer with ``layer``'s config (weights are set after
    it is called)."""
    return layer.__class__.from_config(layer.get_config())


# Private Keras API, on purpose: a Functional model's `_nodes_by_depth`,
# `_inbound_nodes` and `_outputs_struct` are the only way to walk its graph
# in order and rebuild it with layers fused and quantizers inserted
# (keras.models.clone_model maps layers one to one and cannot fuse
# Conv + BatchNorm + ReLU). Keras's own cloning reads the same fields;
# tests/test_quantization.py fails on every backend if they change.
def _graph(model):
    if isinstance(model, keras.Sequential):
        if not model.built or not getattr(model, "inputs", None):
            raise ValueError(
                f"Sequential model '{model.name}' has no known input; build "
                "it with a keras.Input first, e.g. "
                "keras.Sequential([keras.Input((32, 32, 3)), ...]).")
        return keras.Model(model.inputs, model.outputs, name=model.name)
    if not hasattr(model, "_nodes_by_depth") or not getattr(
            model, "inputs", None):
        raise TypeError(
            f"quantize_model takes a Functional or Sequential model; "
            f"'{model.name}' is a subclassed {type(model).__name__}, whose "
            "graph cannot be read. Rebuild the student with the functional "
            "API (keras.Model(inputs, outputs)).")
    return model


def quantize_model(model, calibration_data=None, ema_decay=0.99,
                   batch_size=64):
    """A quantization-aware copy of a student, with the same weights.

    Rebuilds a Functional or Sequential ``model`` layer by layer:

    * every ``Conv1D``, ``Conv2D``, ``DepthwiseConv2D`` and ``Dense`` becomes a
      :class:`QuantizedLayer` (int8 per-channel symmetric weights), taking
      with it the ``BatchNormalization`` that directly follows it (folded,
      statistics frozen) and then a ``ReLU`` / ``ReLU6`` (fused), as TFLite
      fuses them;
    * an :class:`ActivationQuantizer` (per-tensor asymmetric 8-bit, EMA
      range) follows the input, each such fused layer and every other layer
      that computes new values (``Add``, pooling by averaging,
      activations, ...). Layers that only move or select values
      (``Flatten``, ``Reshape``, ``MaxPooling``, ``Dropout``, padding) keep
      their input's quantization, as in TFLite.

    The float model is left untouched. Train the copy with ``fit()`` or with
    :class:`keras_kd.Distiller` (quantization-aware distillation from the
    float teacher), then export a fully int8 file from its learned ranges
    with ``kd.export.to_tflite(qat, path, quantize="int8")``. Methods: Jacob
    et al. 2018 (simulated quantization, BatchNorm folding); Krishnamoorthi
    2018 (per-channel weights, EMA ranges, frozen BatchNorm).

    Args:
        model: a built Functional or Sequential ``keras.Model``, channels
            last, each layer used once.
        calibration_data: optional inputs (array or iterable of batches)
            whose running min/max start the activation ranges
            (:func:`calibrate`); otherwise the first training batch does.
        ema_decay: the activation ranges' moving-average decay.
        batch_size: batch size of the calibration passes.

    Returns:
        A new Functional ``keras.Model`` named like ``model``.

    Example:

    >>> import keras, numpy as np, keras_kd as kd
    >>> inputs = keras.Input((8, 8, 1))
    >>> h = keras.layers.Conv2D(4, 3)(inputs)
    >>> h = keras.layers.BatchNormalization()(h)
    >>> h = keras.layers.ReLU()(h)
    >>> h = keras.layers.GlobalAveragePooling2D()(h)
    >>> student = keras.Model(inputs, keras.layers.Dense(10)(h))
    >>> x = np.random.default_rng(0).random((32, 8, 8, 1), "float32")
    >>> qat = kd.quantization.quantize_model(student, calibration_data=x)
    >>> [type(layer).__name__ for layer in qat.layers[1:]]  # doctest: +NORMALIZE_WHITESPACE
    ['ActivationQuantizer', 'QuantizedLayer', 'ActivationQuantizer',
     'GlobalAveragePooling2D', 'ActivationQuantizer', 'QuantizedLayer',
     'ActivationQuantizer']
    """
    graph = _graph(model)
    if is_quantization_aware(graph):
        raise ValueError(f"Model '{model.name}' is already quantization-aware.")

    consumers = {}
    for depth_nodes in graph._nodes_by_depth.values():
        for node in depth_nodes:
            for tensor in node.input_tensors:
                consumers.setdefault(id(tensor), []).append(node)
    outputs_ids = {id(t) for t in graph.outputs}
    for op in graph.operations:
        if len(getattr(op, "_inbound_nodes", ())) > 1:
            raise ValueError(
                f"Layer '{op.name}' is called {len(op._inbound_nodes)} times; "
                "quantize_model needs each layer used once (its quantized "
                "copies would need a range per call).")

    def only_consumer(tensor):
        """The single node consuming ``tensor`` (None if several, none or
        the tensor is a model output)."""
        nodes = consumers.get(id(tensor), [])
        if len(nodes) != 1 or id(tensor) in outputs_ids:
            return None
        return nodes[0]

    def quantizer(name):
        return ActivationQuantizer(ema_decay=ema_decay, name=f"{name}_quant")

    def input_name(tensor):
        history = getattr(tensor, "_keras_history", None)
        return history.operation.name if history else tensor.name

    new_inputs = [keras.Input(batch_shape=t.shape, dtype=t.dtype,
                              name=input_name(t)) for t in graph.inputs]
    tensors = {}
    for original, new in zip(graph.inputs, new_inputs):
        tensors[id(original)] = (
            quantizer(input_name(original))(new)
            if "float" in str(new.dtype) else new)
    fused = set()
    for depth in sorted(graph._nodes_by_depth, reverse=True):
        for node in graph._nodes_by_depth[depth]:
            op = node.operation
            if node.is_input or id(node) in fused:
                continue
            args, kwargs = node.arguments.fill_in(tensors)
            if isinstance(op, _WEIGHT_LAYERS):
                if getattr(op, "lora_enabled", False) or getattr(
                        op, "quantization_mode", None):
                    raise ValueError(
                        f"Layer '{op.name}' uses LoRA or Keras quantization; "
                        "merge or remove it before quantize_model.")
                out = node.outputs[0]
                batch_norm = activation = None
                act = _activation_name(op.activation)
                if act in _FUSABLE:
                    activation = act
                elif act == "linear":
                    nxt = only_consumer(out)
                    if (nxt is not None and isinstance(
                            nxt.operation, keras.layers.BatchNormalization)
                            and nxt.operation.axis in (-1, len(out.shape) - 1)):
                        batch_norm = _copy(nxt.operation)
                        batch_norm_source = nxt.operation
                        fused.add(id(nxt))
                        out = nxt.outputs[0]
                    nxt = only_consumer(out)
                    if nxt is not None and _fusable_activation(nxt.operation):
                        activation = _fusable_activation(nxt.operation)
                        fused.add(id(nxt))
                        out = nxt.outputs[0]
                inner = _copy(op)
                if act not in ("linear", *_FUSABLE):
                    inner_activation = act
                else:
                    inner_activation = None
                layer = QuantizedLayer(inner, batch_norm=batch_norm,
                                       activation=activation, name=op.name)
                result = layer(*args, **kwargs)
                inner.set_weights(op.get_weights())
                if batch_norm is not None:
                    batch_norm.set_weights(batch_norm_source.get_weights())
                result = quantizer(op.name)(result)
                if inner_activation is not None:
                    # A non-fusable activation (e.g. swish) is its own op.
                    result = keras.layers.Activation(
                        inner_activation, name=f"{op.name}_activation")(result)
                    result = quantizer(f"{op.name}_activation")(result)
                tensors[id(out)] = result
                continue
            if isinstance(op, keras.Model):
                raise ValueError(
                    f"'{op.name}' is a nested model; quantize_model reads "
                    "one graph. Rebuild the student without nesting, e.g. "
                    "keras.Model(inner.inputs, ...) on its layers.")
            new_op = op
            if isinstance(op, keras.layers.Layer):
                new_op = _copy(op)
            outputs = new_op(*args, **kwargs)
            if isinstance(op, keras.layers.Layer) and op.weights:
                new_op.set_weights(op.get_weights())
            flat = keras.tree.flatten(outputs)
            if not isinstance(op, _SAME_SCALE):
                flat = [quantizer(f"{op.name}_{i}" if len(flat) > 1
                                  else op.name)(t)
                        if "float" in str(t.dtype) else t
                        for i, t in enumerate(flat)]
            for original, new in zip(node.outputs, flat):
                tensors[id(original)] = new
    outputs = keras.tree.pack_sequence_as(
        graph._outputs_struct, [tensors[id(t)] for t in graph.outputs])
    qat = keras.Model(new_inputs[0] if len(new_inputs) == 1 else new_inputs,
                      outputs, name=model.name)
    if calibration_data is not None:
        calibrate(qat, calibration_data, batch_size=batch_size)
    return qat


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


def calibrate(model, data, batch_size=64, steps=None):
    """Sets each activation range to the min and max seen on ``data``.

    Runs the quantization-aware ``model`` on ``data`` with float
    activations (quantizers pass values through while they record; weights
    are already int8), so that every range
    ``[a, b]`` becomes ``[min(x, 0), max(x, 0)]`` over all the batches, as
    post-training calibration does; training then moves the ranges by their
    moving average (Krishnamoorthi 2018, section 3). Runs eagerly.

    Args:
        model: a model from :func:`quantize_model`.
        data: inputs: an array (split into ``batch_size`` batches), or an
            iterable of batches (``x`` or ``(x, y)``), e.g. a ``tf.data``
            dataset.
        batch_size: batch size for an array.
        steps: at most this many batches (None: all).

    Returns:
        ``model``.

    Example:

    >>> import keras, numpy as np, keras_kd as kd
    >>> inputs = keras.Input((3,))
    >>> qat = kd.quantization.quantize_model(
    ...     keras.Model(inputs, keras.layers.Dense(2)(inputs)))
    >>> x = np.array([[-1.0, 0.5, 2.0]], "float32")
    >>> _ = kd.quantization.calibrate(qat, x)
    >>> [float(v) for v in kd.quantization.quantizers(qat)[0].get_weights()]
    [-1.0, 2.0, 1.0]
    """
    layers = quantizers(model)
    if not layers:
        raise ValueError(f"Model '{model.name}' has no activation quantizers; "
                         "make it with kd.quantization.quantize_model first.")
    if isinstance(data, np.ndarray) or hasattr(data, "__array__") and not \
            hasattr(data, "as_numpy_iterator"):
        data = np.asarray(data)
        batches = (data[i:i + batch_size]
                   for i in range(0, len(data), batch_size))
    else:
        batches = (data.as_numpy_iterator()
                   if hasattr(data, "as_numpy_iterator") else iter(data))
    for layer in layers:
        layer.calibrated.assign(0.0)
        layer.calibrating = True
    try:
        for step, batch in enumerate(batches):
            if steps is not None and step >= steps:
                break
            if isinstance(batch, (tuple, list)):
                batch = batch[0]
            model(batch, training=False)
    finally:
        for layer in layers:
            layer.calibrating = False
    return model
