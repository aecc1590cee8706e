"""Removing the cache copies of a KV-cache file: :func:`bypass_packs`.

keras-hub's cached attention takes each layer's cache as one tensor
``(batch, 2, L, heads, head_dim)``: :func:`keras_kd.export.lm_cache.step`
stacks ``kv_cache_k_i`` and ``kv_cache_v_i`` into it (``PACK``), the
attention slices the keys and the values back out (two ``STRIDED_SLICE``),
updates them (``DYNAMIC_UPDATE_SLICE``) and stacks them again (``PACK``),
and ``step`` unstacks the result (``UNPACK``). Each of these ops copies a
whole layer's cache, at every decode step, and LiteRT's ``STRIDED_SLICE``
kernel is a slow element-by-element loop. Their results are the tensors
they were made of: :func:`bypass_packs` rewires every consumer of such a
slice to the stacked tensor itself and drops the ops left unused, so each
layer keeps only its two ``DYNAMIC_UPDATE_SLICE`` copies.
"""

import numpy as np

from keras_kd.extras import require


def bypass_packs(data):
    """The bytes of the file ``data`` with ``PACK`` → ``STRIDED_SLICE`` /
    ``UNPACK`` round trips removed.

    A ``STRIDED_SLICE`` of the output of ``PACK(x_0, ..., x_{n-1},
    axis=a)`` that takes index ``k`` along ``a`` (shrinking it, strides 1,
    every other axis whole) equals ``x_k``; an ``UNPACK`` along ``a`` of it
    gives ``x_0, ..., x_{n-1}``. Their consumers read ``x_k`` instead; an
    output of the graph (e.g. ``kv_cache_k_0``) then points to ``x_k``,
    renamed to the output's name, so signatures and names are unchanged.
    ``PACK``, ``STRIDED_SLICE`` and ``UNPACK`` ops whose results nothing
    reads any more are dropped. Values are not changed: only copies go. A
    file without such round trips is returned unchanged.

    Example:

    >>> import keras, keras_kd as kd
    >>> from keras_kd.export import litert
    >>> x = keras.Input((3,), batch_size=1)
    >>> a, b = keras.layers.Dense(3)(x), keras.layers.Dense(3)(x)
    >>> both = keras.ops.stack([a, b], axis=1)
    >>> model = keras.Model(x, both[:, 0] * both[:, 1])
    >>> _ = kd.export.to_tflite(model, "/tmp/pack.tflite", latency_runs=0)
    >>> data = open("/tmp/pack.tflite", "rb").read()
    >>> [name for name, _, _ in litert.operators(data)]
    ['FULLY_CONNECTED', 'FULLY_CONNECTED', 'PACK', 'STRIDED_SLICE', \
'STRIDED_SLICE', 'MUL']
    >>> [name for name, _, _ in litert.operators(bypass_packs(data))]
    ['FULLY_CONNECTED', 'FULLY_CONNECTED', 'MUL']
    """
    schema = require("ai_edge_litert.schema_py_generated")
    flatbuffers = require("flatbuffers")
    model = schema.ModelT.InitFromPackedBuf(bytes(data), 0)
    codes = [max(c.builtinCode, c.deprecatedBuiltinCode)
             for c in model.operatorCodes]
    op = schema.BuiltinOperator
    changed = False
    for s, graph in enumerate(model.subgraphs):
        alias = _aliases(model, graph, codes, op)
        if not alias:
            continue
        for j in alias:  # a PACK input may itself be a slice of a PACK
            while alias[j] in alias:
                alias[j] = alias[alias[j]]
        changed = True
        graph_inputs = set(_ints(graph.inputs))
        outputs = _ints(graph.outputs)
        renames = {}
        for position, j in enumerate(outputs):
            if j in alias and alias[j] not in graph_inputs and (
                    alias[j] not in outputs):
                renames[j] = alias[j]
                outputs[position] = alias[j]
                name = graph.tensors[j].name
                graph.tensors[j].name = name + b"/bypassed"
                graph.tensors[alias[j]].name = name
        graph.outputs = outputs
        for signature in model.signatureDefs or []:
            if signature.subgraphIndex == s:
                for entry in signature.outputs or []:
                    entry.tensorIndex = renames.get(entry.tensorIndex,
                                                    entry.tensorIndex)
        for operator in graph.operators:
            operator.inputs = [alias.get(j, j) for j in _ints(
                operator.inputs)]
        graph.operators = _without_unused(graph, codes, op)
    if not changed:
        return bytes(data)
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _ints(values):
    return [] if values is None else [int(v) for v in values]


def _constant(model, graph, j):
    buffer = model.buffers[graph.tensors[j].buffer]
    if buffer is None or buffer.data is None or not len(buffer.data):
        return None
    return np.frombuffer(bytes(bytearray(buffer.data)), "<i4")


def _aliases(model, graph, codes, op):
    """``{tensor: the PACK input it equals}`` of the slices and unpacks."""
    packs = {}
    for operator in graph.operators:
        if codes[operator.opcodeIndex] == op.PACK:
            (out,) = _ints(operator.outputs)
            packs[out] = (_ints(operator.inputs),
                          int(operator.builtinOptions.axis))
    alias = {}
    for operator in graph.operators:
        code, ins = codes[operator.opcodeIndex], _ints(operator.inputs)
        outs = _ints(operator.outputs)
        if not ins or ins[0] not in packs:
            continue
        parts, axis = packs[ins[0]]
        shape = [int(d) for d in graph.tensors[ins[0]].shape]
        axis = axis % len(shape)
        if code == op.UNPACK and int(operator.builtinOptions.axis) % len(
                shape) == axis and len(outs) == len(parts):
            alias.update(zip(outs, parts))
        elif code == op.STRIDED_SLICE and len(ins) == 4:
            k = _slice_index(model, graph, operator, shape, axis)
            if k is not None and k < len(parts) and list(
                    graph.tensors[outs[0]].shape) == list(
                        graph.tensors[parts[k]].shape):
                alias[outs[0]] = parts[k]
    return alias


def _slice_index(model, graph, operator, shape, axis):
    """``k`` when the ``STRIDED_SLICE`` takes ``[..., k, ...]`` (index
    ``k`` of ``axis`` shrunk, every other axis whole, strides 1), else
    ``None``."""
    options = operator.builtinOptions
    begin, end, strides = (_constant(model, graph, j)
                           for j in _ints(operator.inputs)[1:])
    if begin is None or end is None or strides is None or any(
            len(v) != len(shape) for v in (begin, end, strides)):
        return None
    if (options.ellipsisMask or options.newAxisMask or getattr(
            options, "offset", False) or options.shrinkAxisMask != 1 << axis
            or not np.all(strides == 1)):
        return None
    for d, size in enumerate(shape):
        if d == axis:
            continue
        if not (options.beginMask >> d & 1 or begin[d] == 0):
            return None
        if not (options.endMask >> d & 1 or end[d] >= size):
            return None
    k = int(begin[axis])
    return k if 0 <= k < shape[axis] else None


def _without_unused(graph, codes, op):
    """The operators without the copies nothing reads (repeated until none
    is left)."""
    operators = list(graph.operators)
    copies = (op.PACK, op.STRIDED_SLICE, op.UNPACK)
    while True:
        read = set(_ints(graph.outputs))
        for operator in operators:
            read.update(_ints(operator.inputs))
        kept = [o for o in operators if codes[o.opcodeIndex] not in copies
                or any(j in read for j in _ints(o.outputs))]
        if len(kept) == len(operators):
            return kept
        operators = kept
