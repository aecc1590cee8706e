"""Building the quantization-aware copy of a student: :func:`quantize_model`.

The float graph is read with public Keras API (``model.operations``,
``layer.input`` / ``layer.output``) and rebuilt by
``keras.models.clone_model`` with a ``call_function`` that replaces each
layer call: a convolution with its BatchNorm and ReLU becomes one
:class:`~keras_kd.quantization.QuantizedLayer`, the fused layers' own calls
become nothing, and quantizers are inserted after the layers that compute new
values.
"""

import weakref

import keras

from keras_kd.quantization.layers import (
    FUSABLE,
    SAME_SCALE,
    WEIGHT_LAYERS,
    ActivationQuantizer,
    QuantizedLayer,
    is_quantization_aware,
)
from keras_kd.quantization.ranges import calibrate

__all__ = ["float_model_of", "quantize_model", "unsupported_layers"]

# quantization-aware copy -> its float model (weakly: neither is kept alive).
_FLOAT_MODELS = weakref.WeakKeyDictionary()


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
        return name if name in FUSABLE else None
    return None


def _copy(layer):
    """A new, unbuilt layer with ``layer``'s config (weights are set after
    it is called)."""
    return layer.__class__.from_config(layer.get_config())


# Layers whose int8 export keeps a float kernel (measured: the converter
# wraps them in DEQUANTIZE / QUANTIZE), with the way out.
_FLOAT_IN_TFLITE = (
    ((keras.layers.SeparableConv1D, keras.layers.SeparableConv2D),
     "its depthwise and pointwise kernels are not quantized and TFLite runs "
     "it in float; build it as DepthwiseConv2D followed by a 1x1 Conv2D "
     "(the same function)"),
    ((keras.layers.LayerNormalization, keras.layers.GroupNormalization),
     "TFLite has no int8 kernel for it and computes it in float; use "
     "BatchNormalization (folded into the layer before it) or keep the "
     "student float"),
    ((keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose,
      keras.layers.Conv3D, keras.layers.Conv3DTranspose),
     "its kernel is not quantized by quantize_model"),
)


def unsupported_layers(model):
    """The layers of ``model`` an int8 TFLite file would compute in float.

    Returns ``[(layer name, why and what to do), ...]``, empty when every
    layer has an int8 form: :func:`quantize_model` refuses a model with any
    of them, listing them all. Refused: ``SeparableConv1D`` /
    ``SeparableConv2D``, ``LayerNormalization`` / ``GroupNormalization``,
    transposed and 3-D convolutions, a ``ReLU`` with a ``max_value`` other
    than 6 (TFLite fuses only ReLU and ReLU6; ``ReLU(max_value=3)`` stays a
    float ``MINIMUM``), and layers whose dtype policy is not ``float32``
    (e.g. ``mixed_bfloat16``: the quantized arithmetic is simulated in
    float32). Dilated convolutions are supported (the converter's
    ``SPACE_TO_BATCH_ND`` / ``BATCH_TO_SPACE_ND`` stay int8).

    Example:

    >>> import keras, keras_kd as kd
    >>> inputs = keras.Input((8,))
    >>> h = keras.layers.LayerNormalization(name="norm")(inputs)
    >>> model = keras.Model(inputs, keras.layers.Dense(2)(h))
    >>> [name for name, _ in kd.quantization.unsupported_layers(model)]
    ['norm']
    """
    found = []
    for layer in _layers(model):
        policy = getattr(getattr(layer, "dtype_policy", None), "name",
                         "float32")
        if policy != "float32":
            found.append((layer.name, f"its dtype policy is '{policy}'; "
                          "quantize_model simulates int8 in float32: build "
                          "the student under keras.config.set_dtype_policy("
                          "'float32') (or dtype='float32' per layer)"))
            continue
        for types, why in _FLOAT_IN_TFLITE:
            if isinstance(layer, types):
                found.append((layer.name, f"{type(layer).__name__}: {why}"))
        if isinstance(layer, keras.layers.ReLU) and (
                layer.max_value is not None
                and float(layer.max_value) != 6.0):
            found.append((layer.name, f"ReLU(max_value={layer.max_value}) "
                          "runs in float in TFLite, which has int8 kernels "
                          "for ReLU and ReLU6 only: use ReLU() or "
                          "ReLU(6.0)"))
    return found


def _layers(model):
    """Every operation of a Functional or Sequential model but its inputs."""
    return [op for op in getattr(model, "operations", model.layers)
            if not isinstance(op, keras.layers.InputLayer)]


def _graph(model):
    """``model`` as a plain, uncompiled Functional model on the same layers
    (no layer is called: the graph is the same)."""
    if isinstance(model, keras.Sequential):
        if not model.built or not getattr(model, "inputs", None):
            raise ValueError(
                f"Sequential model '{model.name}' has no known input; build "
                "it with a keras.Input first, e.g. "
                "keras.Sequential([keras.Input((32, 32, 3)), ...]).")
        (inputs,), outputs = model.inputs, model.outputs
        return keras.Model(inputs, outputs[0] if len(outputs) == 1
                           else outputs, name=model.name)
    if not isinstance(model, keras.Model) or not getattr(
            model, "inputs", None) or not hasattr(model, "operations"):
        raise TypeError(
            f"quantize_model takes a Functional or Sequential model; "
            f"'{getattr(model, 'name', model)}' is a subclassed "
            f"{type(model).__name__}, whose graph cannot be read. Rebuild the "
            "student with the functional API (keras.Model(inputs, outputs)).")
    return keras.Model(model.input, model.output, name=model.name)


def float_model_of(model):
    """The float model a quantization-aware copy was made from, or None.

    Known for a copy made by :func:`quantize_model` in this process while
    the float model is alive (it is not saved with the copy); the export
    compares an int8 file's accuracy with it.

    Example:

    >>> import keras, keras_kd as kd
    >>> inputs = keras.Input((4,))
    >>> student = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    >>> qat = kd.quantization.quantize_model(student)
    >>> kd.quantization.float_model_of(qat) is student
    True
    """
    ref = _FLOAT_MODELS.get(model)
    return None if ref is None else ref()


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

    The graph is read and rebuilt with public Keras API only
    (``model.operations``, ``layer.input`` / ``layer.output`` and
    ``keras.models.clone_model(call_function=...)``, which lets each layer
    call be replaced by several layers or, for a fused BatchNorm or ReLU, by
    nothing).

    The float model is left untouched (:func:`float_model_of` returns it
    from the copy, for the export's accuracy comparison). Train the copy with ``fit()`` or with
    :class:`keras_kd.Distiller` (quantization-aware distillation from the
    float teacher), then export a fully int8 file from its learned ranges
    with ``kd.export.to_tflite(qat, path, quantize="int8")``. Methods: Jacob
    et al. 2018 (simulated quantization, BatchNorm folding); Krishnamoorthi
    2018 (per-channel weights, EMA ranges, frozen BatchNorm).

    Args:
        model: a built Functional or Sequential ``keras.Model``, channels
            last, float32, each layer used once; layers TFLite cannot run
            in int8 (:func:`unsupported_layers`) are refused with their
            list.
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
    refused = unsupported_layers(graph)
    if refused:
        raise ValueError(
            f"quantize_model cannot make '{model.name}' fully int8: "
            + "; ".join(f"layer '{name}' ({why})" for name, why in refused)
            + ". An int8 TFLite file would compute these layers in float.")
    operations = _layers(graph)

    # The float graph, read with public API: who consumes each tensor.
    produced = {id(t) for t in graph.inputs}
    for op in operations:
        produced.update(id(t) for t in keras.tree.flatten(op.output))
    consumers = {}
    for op in operations:
        for tensor in keras.tree.flatten(op.input):
            if id(tensor) not in produced:
                raise ValueError(
                    f"Layer '{op.name}' is also called outside "
                    f"'{model.name}' (its first call is in another model); "
                    "quantize_model needs each layer used once. Rebuild the "
                    "student with its own layers.")
            consumers.setdefault(id(tensor), []).append(op)
    outputs_ids = {id(t) for t in graph.outputs}

    def only_consumer(tensor):
        """The single layer consuming ``tensor`` (None if several, none or
        the tensor is a model output)."""
        ops = consumers.get(id(tensor), [])
        if len(ops) != 1 or id(tensor) in outputs_ids:
            return None
        return ops[0]

    # What each weight layer takes with it: (BatchNorm, fused activation).
    plan, fused = {}, set()
    for op in operations:
        if not isinstance(op, WEIGHT_LAYERS):
            continue
        if getattr(op, "lora_enabled", False) or getattr(
                op, "quantization_mode", None):
            raise ValueError(
                f"Layer '{op.name}' uses LoRA or Keras quantization; merge "
                "or remove it before quantize_model.")
        out, batch_norm, activation = op.output, None, None
        act = _activation_name(op.activation)
        # A dilated convolution runs as SPACE_TO_BATCH_ND, the kernel and
        # BATCH_TO_SPACE_ND: the converter cannot fuse a ReLU across the
        # last one and would keep the kernel float, so its ReLU is its own,
        # int8 op (quantized before and after), not fused.
        dilated = max(getattr(op, "dilation_rate", None) or (1,)) > 1
        if act in FUSABLE and not dilated:
            activation = act
        elif act == "linear":
            nxt = only_consumer(out)
            if (nxt is not None
                    and isinstance(nxt, keras.layers.BatchNormalization)
                    and nxt.axis in (-1, len(out.shape) - 1)):
                batch_norm, out = nxt, nxt.output
                fused.add(id(nxt))
            nxt = only_consumer(out)
            if nxt is not None and _fusable_activation(nxt) and not dilated:
                activation = _fusable_activation(nxt)
                fused.add(id(nxt))
        plan[id(op)] = (batch_norm, activation, act)

    def quantizer(name):
        # float32 whatever the global policy: the simulated int8 arithmetic
        # must not round again in bfloat16.
        return ActivationQuantizer(ema_decay=ema_decay, name=f"{name}_quant",
                                   dtype="float32")

    input_names = {id(op.output): op.name for op in graph.operations
                   if isinstance(op, keras.layers.InputLayer)}
    new_inputs = keras.tree.map_structure(
        lambda t: keras.Input(batch_shape=t.shape, dtype=t.dtype,
                              name=input_names.get(id(t), t.name)),
        graph.input)
    input_quantizers = {
        id(new): (new, input_names.get(id(original), original.name))
        for original, new in zip(graph.inputs, keras.tree.flatten(new_inputs))
        if "float" in str(new.dtype)}
    quantized_inputs, calls = {}, set()

    def quantize_input(value):
        """A float model input's quantized tensor (one quantizer per input,
        made at its first use); anything else as it is."""
        if id(value) not in input_quantizers:
            return value
        if id(value) not in quantized_inputs:
            new, name = input_quantizers[id(value)]
            quantized_inputs[id(value)] = quantizer(name)(new)
        return quantized_inputs[id(value)]

    def call(op, *args, **kwargs):
        if id(op) in calls:
            raise ValueError(
                f"Layer '{op.name}' is called more than once in "
                f"'{model.name}'; quantize_model needs each layer used once "
                "(its quantized copies would need a range per call).")
        calls.add(id(op))
        if isinstance(op, keras.Model):
            raise ValueError(
                f"'{op.name}' is a nested model; quantize_model reads one "
                "graph. Rebuild the student without nesting, e.g. "
                "keras.Model(inner.inputs, ...) on its layers.")
        args, kwargs = keras.tree.map_structure(quantize_input,
                                                (args, kwargs))
        if id(op) in fused:
            return args[0]  # computed inside the QuantizedLayer before it
        if id(op) in plan:
            batch_norm, activation, act = plan[id(op)]
            inner = _copy(op)
            bn = None if batch_norm is None else _copy(batch_norm)
            result = QuantizedLayer(inner, batch_norm=bn,
                                    activation=activation, name=op.name,
                                    dtype="float32")(*args, **kwargs)
            inner.set_weights(op.get_weights())
            if bn is not None:
                bn.set_weights(batch_norm.get_weights())
            result = quantizer(op.name)(result)
            if act != "linear" and activation is None:
                # A non-fusable activation (e.g. swish) is its own op.
                result = keras.layers.Activation(
                    act, name=f"{op.name}_activation")(result)
                result = quantizer(f"{op.name}_activation")(result)
            return result
        new_op = _copy(op) if isinstance(op, keras.layers.Layer) else op
        outputs = new_op(*args, **kwargs)
        if isinstance(op, keras.layers.Layer) and op.weights:
            new_op.set_weights(op.get_weights())
        if isinstance(op, SAME_SCALE):
            return outputs
        flat = keras.tree.flatten(outputs)
        flat = [quantizer(f"{op.name}_{i}" if len(flat) > 1 else op.name)(t)
                if "float" in str(t.dtype) else t
                for i, t in enumerate(flat)]
        return keras.tree.pack_sequence_as(outputs, flat)

    qat = keras.models.clone_model(graph, input_tensors=new_inputs,
                                   clone_function=lambda op: op,
                                   call_function=call)
    _FLOAT_MODELS[qat] = weakref.ref(model)
    if calibration_data is not None:
        calibrate(qat, calibration_data, batch_size=batch_size)
    return qat
