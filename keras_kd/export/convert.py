"""TFLite conversion: TensorFlow's converter, in this process or a worker.

The converter reads a TensorFlow graph. On the TensorFlow backend keras-kd
converts in the same process (``model.export(..., format="tf_saved_model")``
then ``tf.lite.TFLiteConverter.from_saved_model``); on JAX and PyTorch the
student goes to a ``KERAS_BACKEND=tensorflow`` worker process
(:mod:`keras_kd.export.worker`) as a ``.keras`` file, which stores weights,
not backend code, so the TensorFlow graph computes the same function.
"""

import os
import tempfile

import keras
import numpy as np

from keras_kd.export import worker
from keras_kd.export.errors import ExportError
from keras_kd.export.native_logs import quiet_native_stderr
from keras_kd.extras import require


def _tensor_specs(input_signature):
    """``tf.TensorSpec`` s for ``{name: (shape, dtype)}`` (one dict input)."""
    tf = require("tensorflow")

    return [{name: tf.TensorSpec(tuple(shape), dtype, name=name)
             for name, (shape, dtype) in input_signature.items()}]


def _converter_for(model, saved_model_dir, quantize, representative,
                   allow_flex, input_signature=None):
    tf = require("tensorflow")

    # Without a signature the model's own inputs are traced (batch dynamic);
    # with one, its shapes are fixed in the file.
    signature = (None if input_signature is None
                 else _tensor_specs(input_signature))
    model.export(saved_model_dir, format="tf_saved_model", verbose=False,
                 input_signature=signature)
    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir)
    # SELECT_TF_OPS is always enabled so that a model needing TensorFlow ops
    # converts and the exact Flex ops can be named; without allow_flex the
    # caller then refuses the file (see _flex_ops).
    # A quantization-aware model (int8 without representative data) takes
    # the builtin op set: the converter's check for TFLITE_BUILTINS_INT8
    # wants a representative dataset. Its FakeQuant ops carry the ranges.
    base = (tf.lite.OpsSet.TFLITE_BUILTINS_INT8
            if quantize == "int8" and representative is not None
            else tf.lite.OpsSet.TFLITE_BUILTINS)
    converter.target_spec.supported_ops = [base, tf.lite.OpsSet.SELECT_TF_OPS]
    if quantize in ("float16", "dynamic", "int8"):
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if quantize == "int8" and representative is not None:
        samples = representative

        def representative_dataset():
            for i in range(len(samples)):
                yield [samples[i:i + 1]]

        converter.representative_dataset = representative_dataset
    if quantize == "int8":
        # Float inputs and outputs, int8 everywhere inside: callers feed the
        # same float tensors as to the Keras model (the quantize/dequantize
        # of the boundaries is part of the file).
        converter.inference_input_type = tf.float32
        converter.inference_output_type = tf.float32
    del allow_flex  # enforced after conversion, on the flatbuffer
    return converter


def convert_in_process(model, quantize, representative, allow_flex,
                       input_signature=None):
    """TFLite bytes for ``model`` (TensorFlow backend only).

    ``input_signature``: None (the model's own inputs, batch dynamic) or
    ``{name: (shape, dtype)}``, the fixed shapes of a model that takes one
    dict of tensors (e.g. ``{"token_ids": ((1, 128), "int32"), ...}``).

    TensorFlow's native log lines are left out of stderr unless the
    conversion fails (:func:`keras_kd.export.native_logs.quiet_native_stderr`;
    ``KERAS_KD_VERBOSE=1`` shows them).
    """
    # TensorFlow's native log lines of the export and conversion (some
    # fifteen) are left out of stderr, or shown if the conversion fails.
    with quiet_native_stderr(), tempfile.TemporaryDirectory(
            prefix="keras_kd_export_") as tmp:
        converter = _converter_for(model, os.path.join(tmp, "saved_model"),
                                   quantize, representative, allow_flex,
                                   input_signature)
        try:
            return converter.convert()
        except Exception as error:  # ConverterError and friends
            raise ExportError(_conversion_message(quantize, error)) from error


def _conversion_message(quantize, error):
    text = str(error).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    short = "\n".join(lines[-12:])
    hint = ""
    if quantize == "int8":
        hint = (" Full-integer quantization needs an int8 kernel for every "
                "op; try quantize='dynamic' (int8 weights, float "
                "activations) or quantize='float16'.")
    elif "custom op" in text:
        hint = (" The model uses an op that has neither a TFLite builtin nor "
                "a TensorFlow (Flex) kernel; replace the layer that uses it.")
    return f"TFLite conversion ({quantize}) failed:{hint}\n{short}"


def tflite_bytes(model, quantize, representative, allow_flex,
                 input_signature=None):
    """``(bytes, "process" | "subprocess")``: the converted file and where it
    was converted (see :func:`convert_in_process` for ``input_signature``)."""
    if keras.backend.backend() == "tensorflow":
        return convert_in_process(model, quantize, representative,
                                  allow_flex, input_signature), "process"
    with tempfile.TemporaryDirectory(prefix="keras_kd_export_") as tmp:
        rep_path = None
        if representative is not None:
            rep_path = os.path.join(tmp, "representative.npy")
            np.save(rep_path, representative)
        output = os.path.join(tmp, "model.tflite")
        worker.run_in_tensorflow(model, {
            "kind": "tflite", "output": output, "quantize": quantize,
            "representative": rep_path, "allow_flex": allow_flex,
            "input_signature": input_signature}, tmp)
        with open(output, "rb") as f:
            return f.read(), "subprocess"
