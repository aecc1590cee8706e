"""Running and checking a TFLite file with the LiteRT interpreter.

``ai_edge_litert``'s interpreter runs the file on the host CPU: outputs are
compared with the Keras model's, accuracy is measured on labeled data, and
latency at batch 1 (one thread). Files that need TensorFlow (Flex) ops run
with TensorFlow's interpreter, which carries the Flex delegate.
"""

import os
import time

import keras
import numpy as np

from keras_kd.export.native_logs import quiet_native_stderr
from keras_kd.extras import require


def flatbuffer(data, path=None):
    """The root ``Model`` table of a TFLite file's bytes, checked.

    A file that is not a TFLite flatbuffer (wrong identifier, cut short, a
    damaged offset) raises ``ExportError`` naming ``path``, instead of the
    ``struct.error`` or ``IndexError`` of a read past the end of the bytes.

    Example:

    >>> try:
    ...     flatbuffer(b"TFL3", "/tmp/cut.tflite")
    ... except Exception as error:
    ...     print(type(error).__name__)
    ExportError
    """
    import struct

    from keras_kd.export.errors import ExportError

    schema = require("ai_edge_litert.schema_py_generated")
    where = repr(os.fspath(path)) if path is not None else "The TFLite file"
    data = bytes(data)
    problem = None
    if len(data) < 8 or data[4:8] != b"TFL3":
        problem = (f"it has {len(data)} bytes and no TFLite identifier "
                   "('TFL3' at byte 4)")
    else:
        try:
            model = schema.Model.GetRootAsModel(data, 0)
            # Touch every table the checks read, so that a cut-off file
            # fails here and not halfway through a caller's loop.
            for i in range(model.OperatorCodesLength()):
                code = model.OperatorCodes(i)
                code.BuiltinCode(), code.DeprecatedBuiltinCode()
                code.CustomCode()
            for s in range(model.SubgraphsLength()):
                graph = model.Subgraphs(s)
                for i in range(graph.TensorsLength()):
                    graph.Tensors(i).Type()
                for i in range(graph.OperatorsLength()):
                    op = graph.Operators(i)
                    op.OpcodeIndex(), op.InputsAsNumpy(), op.OutputsAsNumpy()
            return model
        except (struct.error, IndexError, ValueError, TypeError) as error:
            problem = f"reading it failed ({type(error).__name__}: {error})"
    raise ExportError(
        f"{where} is not a complete TFLite "
        f"file: {problem}. It may have been cut short (an interrupted copy "
        "or download); export it again, e.g. with kd.export.to_tflite.")


def flex_ops(data, path=None):
    """Names of the TensorFlow (Flex) ops in a TFLite flatbuffer (``data``,
    the file's bytes; ``path`` names it in errors)."""
    model = flatbuffer(data, path)
    names = set()
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i).CustomCode()
        if code and code.decode().startswith("Flex"):
            names.add(code.decode()[len("Flex"):])
    return sorted(names)


def operators(data, path=None):
    """Every op of a TFLite file with the types of its tensors.

    Returns a list of ``(name, input_types, output_types)``, one per op in
    execution order (all subgraphs), e.g. ``("CONV_2D", ["INT8", "INT8",
    "INT32"], ["INT8"])``: the builtin op name (or the custom op's name,
    e.g. ``"FlexErf"``) and the schema's ``TensorType`` names of its inputs
    (omitted optional inputs skipped) and outputs.

    Example:

    >>> import keras, numpy as np, keras_kd as kd
    >>> inputs = keras.Input((4,))
    >>> dense = keras.layers.Dense(2, bias_initializer="ones")
    >>> model = keras.Model(inputs, dense(inputs))
    >>> _ = kd.export.to_tflite(model, "/tmp/ops.tflite", latency_runs=0)
    >>> operators(open("/tmp/ops.tflite", "rb").read())
    [('FULLY_CONNECTED', ['FLOAT32', 'FLOAT32', 'FLOAT32'], ['FLOAT32'])]
    """
    schema = require("ai_edge_litert.schema_py_generated")
    model = flatbuffer(data, path)
    names = {value: key for key, value in vars(schema.BuiltinOperator).items()
             if not key.startswith("_")}
    types = {value: key for key, value in vars(schema.TensorType).items()
             if not key.startswith("_")}
    result = []
    for s in range(model.SubgraphsLength()):
        graph = model.Subgraphs(s)

        def type_of(index, graph=graph):
            return types.get(graph.Tensors(int(index)).Type(), "UNKNOWN")

        for i in range(graph.OperatorsLength()):
            op = graph.Operators(i)
            code = model.OperatorCodes(op.OpcodeIndex())
            builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
            name = (code.CustomCode().decode() if code.CustomCode()
                    else names.get(builtin, f"BUILTIN_{builtin}"))
            result.append((
                name,
                [type_of(j) for j in op.InputsAsNumpy() if j >= 0],
                [type_of(j) for j in op.OutputsAsNumpy() if j >= 0]))
    return result


FLOAT_TYPES = ("FLOAT32", "FLOAT16", "FLOAT64", "BFLOAT16")


def float_ops(data, path=None):
    """The ops of an int8 file that compute in float.

    Every op other than ``QUANTIZE`` and ``DEQUANTIZE`` (the file's own
    conversions at its float inputs and outputs) with a float input or
    output tensor, as ``"NAME(in types -> out types)"`` strings: in a fully
    int8 file the list is empty. A layer the converter could not make int8
    (it kept the float kernel and wrapped it in DEQUANTIZE / QUANTIZE) shows
    up here.

    Example:

    >>> import keras, numpy as np, keras_kd as kd
    >>> inputs = keras.Input((4,))
    >>> dense = keras.layers.Dense(2, bias_initializer="ones")
    >>> model = keras.Model(inputs, dense(inputs))
    >>> _ = kd.export.to_tflite(model, "/tmp/f32.tflite", latency_runs=0)
    >>> float_ops(open("/tmp/f32.tflite", "rb").read())
    ['FULLY_CONNECTED(FLOAT32, FLOAT32, FLOAT32 -> FLOAT32)']
    """
    found = []
    for name, ins, outs in operators(data, path):
        if name in ("QUANTIZE", "DEQUANTIZE"):
            continue
        if any(t in FLOAT_TYPES for t in ins + outs):
            found.append(f"{name}({', '.join(ins)} -> {', '.join(outs)})")
    return found


def interpreter(path, flex):
    """A LiteRT interpreter for the file at ``path``, tensors allocated
    (TensorFlow's, which carries the Flex delegate, when ``flex``).

    A file that is not a complete TFLite model raises ``ExportError`` naming
    it (see :func:`flatbuffer`).
    """
    with open(path, "rb") as f:
        flatbuffer(f.read(), path)
    # LiteRT prints "INFO: Created TensorFlow Lite XNNPACK delegate" here.
    with quiet_native_stderr():
        return _interpreter(path, flex)


def _interpreter(path, flex):
    if flex:
        # The Flex delegate ships with TensorFlow's interpreter, not with
        # ai_edge_litert's.
        tf = require("tensorflow")

        interpreter = tf.lite.Interpreter(model_path=path, num_threads=1)
    else:
        Interpreter = require("ai_edge_litert.interpreter").Interpreter

        interpreter = Interpreter(model_path=path, num_threads=1)
    interpreter.allocate_tensors()
    return interpreter


def _rows(x, start, stop):
    """Rows ``start:stop`` of an array or of every array in a dict."""
    if isinstance(x, dict):
        return {name: value[start:stop] for name, value in x.items()}
    return x[start:stop]


def _length(x):
    return len(next(iter(x.values()))) if isinstance(x, dict) else len(x)


def invoke(interpreter, x):
    """Runs the interpreter on a batch ``x`` (resizing its batch dimension).

    ``x`` is an array (a one-input file) or a dict of arrays keyed by the
    file's signature input names (e.g. ``token_ids`` and ``padding_mask``);
    a dict is fed at the file's own, fixed shapes.
    """
    if isinstance(x, dict):
        details = interpreter.get_signature_runner().get_input_details()
        missing = sorted(set(details) - set(x))
        if missing:
            raise ValueError(f"The file's inputs {sorted(details)} are not "
                             f"all given: {missing} missing.")
        for name, detail in details.items():
            interpreter.set_tensor(detail["index"],
                                   np.asarray(x[name]).astype(detail["dtype"]))
    else:
        (inp,) = interpreter.get_input_details()
        if tuple(inp["shape"]) != x.shape:
            interpreter.resize_tensor_input(inp["index"], list(x.shape))
            interpreter.allocate_tensors()
        interpreter.set_tensor(inp["index"], x.astype(inp["dtype"]))
    interpreter.invoke()
    return [interpreter.get_tensor(o["index"]).astype("float32")
            for o in interpreter.get_output_details()]


def predict_tflite(interpreter, x, batch_size=256):
    chunks = [invoke(interpreter, _rows(x, i, i + batch_size))
              for i in range(0, _length(x), batch_size)]
    return [np.concatenate([c[j] for c in chunks])
            for j in range(len(chunks[0]))]


def predict_keras(model, x, batch_size=256):
    outputs = []
    for i in range(0, _length(x), batch_size):
        y = model(_rows(x, i, i + batch_size), training=False)
        y = y if isinstance(y, (list, tuple)) else [y]
        outputs.append([np.asarray(keras.ops.convert_to_numpy(t),
                                   dtype="float32") for t in y])
    return [np.concatenate([o[j] for o in outputs])
            for j in range(len(outputs[0]))]


def latency_ms(interpreter, sample, runs):
    invoke(interpreter, sample)
    for _ in range(3):  # warm-up
        interpreter.invoke()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        interpreter.invoke()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000.0)


def accuracy(logits, y):
    """Top-1 accuracy of ``logits`` (n, ..., classes) against integer labels
    of shape (n, ...) or (n, ..., 1) (``keras.datasets.cifar10``'s), or
    one-hot labels of the logits' shape."""
    y = np.asarray(y)
    logits = np.asarray(logits)
    if y.shape == logits.shape and logits.shape[-1] > 1:  # one-hot labels
        y = np.argmax(y, axis=-1)
    elif y.ndim == logits.ndim and y.shape[-1] == 1:  # (n, 1) integer labels
        y = y[..., 0]
    predicted = np.argmax(logits, axis=-1)
    if y.size != predicted.size:
        raise ValueError(
            f"eval_data labels of shape {y.shape} do not match the model's "
            f"outputs {logits.shape}: pass integer labels of shape "
            f"{predicted.shape} (or one-hot labels of shape {logits.shape}).")
    classes = logits.shape[-1]
    if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(
            y.dtype, np.bool_)):
        if not np.issubdtype(y.dtype, np.number) or not np.all(
                np.isfinite(y)) or np.any(y != np.round(y)):
            bad = y[~(np.isfinite(y) & (y == np.round(y)))] if \
                np.issubdtype(y.dtype, np.number) else y.ravel()
            raise ValueError(
                f"eval_data labels must be class indices (integers) or "
                f"one-hot rows, got {bad.ravel()[:3].tolist()}: fractional "
                "labels would never equal a predicted class. Pass integer "
                "labels, e.g. y.astype('int64'), or one-hot labels of shape "
                f"{logits.shape}.")
    if y.size and (y.min() < 0 or y.max() >= classes):
        raise ValueError(
            f"eval_data labels must be in [0, {classes}) for a model with "
            f"{classes} outputs, got labels from {y.min()} to {y.max()}; "
            "check that they are class indices of this model (e.g. not "
            "1-based).")
    return float(np.mean(predicted == y.reshape(predicted.shape)))


# Float32 exports must match the Keras student to this tolerance (relative
# to the largest output magnitude, floored at 1) or the export fails.
FLOAT32_TOLERANCE = 1e-3


def max_abs_diff(interpreter, model, sample, quantize, path,
                 batch_size=256):
    """``max |tflite(x) − keras(x)|`` over ``sample``; refuses a float32 file
    that differs by more than ``FLOAT32_TOLERANCE · max(1, max |keras(x)|)``.

    ``sample`` is an array or a dict of arrays (see :func:`invoke`); the file
    runs ``batch_size`` rows at a time (1 for a file of fixed batch 1).
    """
    from keras_kd.export.errors import ExportError

    expected = predict_keras(model, sample)
    actual = predict_tflite(interpreter, sample, batch_size)
    if len(expected) != len(actual) or any(
            e.shape != a.shape for e, a in zip(expected, actual)):
        raise ExportError(
            "The TFLite file's outputs "
            f"{[a.shape for a in actual]} do not match the Keras "
            f"model's {[e.shape for e in expected]}.")
    diff = float(max(np.max(np.abs(e - a)) for e, a in zip(expected, actual)))
    scale = max(1.0, max(float(np.max(np.abs(e))) for e in expected))
    if quantize == "float32" and (
            not np.isfinite(diff) or diff > FLOAT32_TOLERANCE * scale):
        raise ExportError(
            f"The float32 TFLite file differs from the Keras model by up to "
            f"{diff:.3g} (tolerance {FLOAT32_TOLERANCE * scale:.3g}); the "
            f"file was not written to {path!r}. Check for layers that behave "
            "differently at inference (custom call() using `training`), or "
            "pass verify=False to keep it anyway.")
    return diff


def accuracies(interpreter, model, x, y):
    """Top-1 accuracy of the Keras model and of the file on ``(x, y)``."""
    return (accuracy(predict_keras(model, x)[0], y),
            accuracy(predict_tflite(interpreter, x)[0], y))
