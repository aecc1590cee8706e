"""Building the quantization-aware copy of a student: :func:`quantize_model`."""

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

__all__ = ["quantize_model"]


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
            if isinstance(op, WEIGHT_LAYERS):
                if getattr(op, "lora_enabled", False) or getattr(
                        op, "quantization_mode", None):
                    raise ValueError(
                        f"Layer '{op.name}' uses LoRA or Keras quantization; "
                        "merge or remove it before quantize_model.")
                out = node.outputs[0]
                batch_norm = activation = None
                act = _activation_name(op.activation)
                if act in FUSABLE:
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
                if act not in ("linear", *FUSABLE):
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
            if not isinstance(op, SAME_SCALE):
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
