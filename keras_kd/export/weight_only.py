"""Weight-only int8: int8 weights dequantized once, float32 arithmetic.

TensorFlow's converter offers dynamic-range quantization (``"dynamic"``):
int8 weights consumed by *hybrid* kernels, which quantize the float
activations to int8 on the fly and multiply in int8. Weight-only int8
(LiteRT-LM's ``weight_only_int8``) keeps the same int8 storage but computes
in float32: :func:`rewrite` takes a dynamic-range file and, for every op
that reads an int8 weight and writes a float result (a hybrid op), inserts a
``DEQUANTIZE`` of that weight to float32 (``w = scale · (q − zero_point)``,
per channel where the weight has per-channel scales) and feeds the op the
float tensor. The ``DEQUANTIZE`` ops have constant inputs: LiteRT computes
them once, at the first run, so the file stays a quarter the size while
its matmuls compute as in float32 (no activation rounding). Ops that already
dequantize their int8 weight themselves (e.g. an embedding ``GATHER``
followed by ``DEQUANTIZE``) are left as they are.
"""

from keras_kd.extras import require


def rewrite(data):
    """The weight-only int8 file made from a dynamic-range file's bytes.

    Returns the new file's bytes (the same weights, int8, and the same
    signatures). A file without hybrid ops is returned unchanged.

    Example:

    >>> import keras, numpy as np, keras_kd as kd
    >>> from keras_kd.export import litert
    >>> inputs = keras.Input((64,))
    >>> model = keras.Model(inputs, keras.layers.Dense(32)(inputs))
    >>> _ = kd.export.to_tflite(model, "/tmp/d.tflite", quantize="dynamic",
    ...                         latency_runs=0)
    >>> data = rewrite(open("/tmp/d.tflite", "rb").read())
    >>> [name for name, _, _ in litert.operators(data)]
    ['DEQUANTIZE', 'FULLY_CONNECTED']
    """
    schema = require("ai_edge_litert.schema_py_generated")
    flatbuffers = require("flatbuffers")
    model = schema.ModelT.InitFromPackedBuf(bytes(data), 0)
    float32, int8 = schema.TensorType.FLOAT32, schema.TensorType.INT8
    dequantize = None
    changed = False
    for graph in model.subgraphs:
        new_ops, made = [], {}
        for op in graph.operators:
            ins = [] if op.inputs is None else list(op.inputs)
            outs = [] if op.outputs is None else list(op.outputs)
            if not any(j >= 0 and graph.tensors[j].type == float32
                       for j in outs):
                continue
            for position, j in enumerate(ins):
                tensor = graph.tensors[j] if j >= 0 else None
                if tensor is None or tensor.type != int8 or not _constant(
                        model, tensor) or tensor.quantization is None or \
                        tensor.quantization.scale is None:
                    continue
                if j not in made:
                    if dequantize is None:
                        dequantize = _opcode(model, schema)
                    out = schema.TensorT()
                    out.shape = tensor.shape
                    out.type = float32
                    out.buffer = 0  # the empty buffer: computed, not stored
                    out.name = (tensor.name or b"weight") + b"/dequantized"
                    graph.tensors.append(out)
                    made[j] = len(graph.tensors) - 1
                    deq = schema.OperatorT()
                    deq.opcodeIndex = dequantize
                    deq.inputs = [j]
                    deq.outputs = [made[j]]
                    new_ops.append(deq)
                ins[position] = made[j]
                op.inputs = ins
                changed = True
        graph.operators = new_ops + list(graph.operators)
    if not changed:
        return bytes(data)
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _constant(model, tensor):
    buffer = model.buffers[tensor.buffer] if tensor.buffer else None
    return buffer is not None and (
        (buffer.data is not None and len(buffer.data)) or buffer.size)


def _opcode(model, schema):
    """The index of the DEQUANTIZE operator code (added if missing)."""
    code_of = schema.BuiltinOperator.DEQUANTIZE
    for index, code in enumerate(model.operatorCodes):
        if max(code.builtinCode, code.deprecatedBuiltinCode) == code_of:
            return index
    code = schema.OperatorCodeT()
    code.builtinCode = code_of
    code.deprecatedBuiltinCode = code_of
    code.version = 1
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1
