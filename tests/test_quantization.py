"""Quantization-aware students: the fake-quantized forward pass against a
NumPy int8 simulation, save/load, QAD with fit(), and the int8 TFLite export
from the learned ranges (parity with Keras, int8 kernels only).

On JAX and PyTorch the export runs in the TensorFlow worker process, which
loads the quantization-aware layers from the ``.keras`` copy.
"""

import keras
import numpy as np
import pytest
from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.interpreter import Interpreter

import keras_kd as kd
from keras_kd import quantization
from keras_kd.data import load_digits
from tests.helpers import to_numpy


# ----------------------------------------------------------------------
# NumPy reference: TFLite int8 arithmetic simulated in float64
# ----------------------------------------------------------------------
def np_nudged(low, high, quant_min=0, quant_max=255):
    """TensorFlow's FakeQuant nudging: the range moved so that 0 is a level."""
    scale = (high - low) / (quant_max - quant_min)
    zero_from_min = quant_min - low / scale
    zero = np.clip(np.floor(zero_from_min + 0.5), quant_min, quant_max)
    return (quant_min - zero) * scale, (quant_max - zero) * scale, scale


def np_fake_quant(x, low, high, quant_min=0, quant_max=255):
    low, high, scale = np_nudged(low, high, quant_min, quant_max)
    clamped = np.clip(x, low, high)
    return np.floor((clamped - low) / scale + 0.5) * scale + low


def np_quantize_weights(w, per_channel=True):
    """Symmetric int8, zero point 0, [-127, 127]; scale = max|w| / 127 per
    output channel (last axis) or per tensor."""
    bound = (np.abs(w).reshape(-1, w.shape[-1]).max(axis=0) if per_channel
             else np.abs(w).max())
    scale = bound / 127.0
    return np.clip(np.round(w / scale), -127, 127) * scale


def np_fold(kernel, bias, bn, channel_axis=-1):
    """BatchNorm folded into the kernel (output channels on channel_axis)."""
    gamma, beta, mean, var = [np.asarray(v, "float64") for v in bn]
    factor = gamma / np.sqrt(var + 1e-3)
    shape = [1] * kernel.ndim
    shape[channel_axis] = -1
    return kernel * factor.reshape(shape), beta + (bias - mean) * factor


def np_conv_same(x, kernel, depthwise=False):
    """'same' stride-1 convolution, NHWC x, (kh, kw, cin, cout) kernel; with
    ``depthwise``, a depthwise one of multiplier 1 ((kh, kw, c, 1) kernel)."""
    kh, kw = kernel.shape[:2]
    padded = np.pad(x, [(0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)])
    h, w = x.shape[1:3]
    out = 0.0
    for i in range(kh):
        for j in range(kw):
            window = padded[:, i:i + h, j:j + w, :]
            out = out + (window * kernel[i, j, :, 0] if depthwise
                         else window @ kernel[i, j])
    return out


def ranges(model, name):
    layer = model.get_layer(f"{name}_quant")
    return float(to_numpy(layer.range_min)), float(to_numpy(layer.range_max))


# ----------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------
def depthwise_student(classes=5, shape=(8, 8, 2), name="student"):
    """Conv-BN-ReLU, depthwise-BN-ReLU6, GAP, Dense: TFLite's fused patterns."""
    inputs = keras.Input(shape, name="image")
    h = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    h = keras.layers.BatchNormalization(name="conv_bn")(h)
    h = keras.layers.ReLU(name="conv_relu")(h)
    h = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(h)
    h = keras.layers.BatchNormalization(name="dw_bn")(h)
    h = keras.layers.ReLU(6.0, name="dw_relu6")(h)
    h = keras.layers.GlobalAveragePooling2D(name="pool")(h)
    outputs = keras.layers.Dense(classes, name="logits")(h)
    model = keras.Model(inputs, outputs, name=name)
    rng = np.random.default_rng(1)
    for layer in model.layers:  # non-trivial BatchNorm statistics and biases
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape),
                               rng.normal(0, 0.2, beta.shape),
                               rng.normal(0, 0.2, mean.shape),
                               rng.uniform(0.5, 1.5, var.shape)])
        elif isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            kernel, bias = layer.get_weights()
            layer.set_weights([kernel, rng.normal(0, 0.1, bias.shape)])
    return model


@pytest.fixture
def images():
    return np.random.default_rng(0).normal(size=(32, 8, 8, 2)).astype(
        "float32")


# ----------------------------------------------------------------------
# Forward pass
# ----------------------------------------------------------------------
def test_activation_quantizer_is_tensorflows_fake_quant_with_ema_ranges():
    quantizer = quantization.ActivationQuantizer(ema_decay=0.9)
    first = np.array([[-1.0, 0.1, 0.37, 3.0]], "float32")
    out = to_numpy(quantizer(first, training=True))
    # The first training batch sets the range (it had no calibration).
    assert float(to_numpy(quantizer.range_min)) == -1.0
    assert float(to_numpy(quantizer.range_max)) == 3.0
    np.testing.assert_allclose(out, np_fake_quant(first, -1.0, 3.0),
                               atol=1e-6)
    # Only 256 levels: 0.1 and 0.37 are not kept exactly.
    assert abs(out[0, 1] - 0.1) > 1e-3
    second = np.array([[0.5, 2.0, 5.0]], "float32")  # min(x, 0) = 0
    out = to_numpy(quantizer(second, training=True))
    low, high = 0.9 * -1.0 + 0.1 * 0.0, 0.9 * 3.0 + 0.1 * 5.0
    np.testing.assert_allclose(
        [float(to_numpy(quantizer.range_min)),
         float(to_numpy(quantizer.range_max))], [low, high], rtol=1e-6)
    np.testing.assert_allclose(out, np_fake_quant(second, low, high),
                               atol=1e-6)
    assert out[0, 2] == pytest.approx(np_nudged(low, high)[1], abs=1e-6)
    # Inference leaves the range as it is.
    quantizer(np.array([[100.0]], "float32"), training=False)
    assert float(to_numpy(quantizer.range_max)) == pytest.approx(high)


def test_forward_equals_numpy_int8_simulation(images):
    model = depthwise_student()
    qat = quantization.quantize_model(model, calibration_data=images)
    assert [type(layer).__name__ for layer in qat.layers[1:]] == [
        "ActivationQuantizer", "QuantizedLayer", "ActivationQuantizer",
        "QuantizedLayer", "ActivationQuantizer", "GlobalAveragePooling2D",
        "ActivationQuantizer", "QuantizedLayer", "ActivationQuantizer"]
    x = np.random.default_rng(5).normal(size=(16, 8, 8, 2)).astype("float32")
    weights = {layer.name: [np.asarray(w, "float64")
                            for w in layer.get_weights()]
               for layer in model.layers}

    h = np_fake_quant(x.astype("float64"), *ranges(qat, "image"))
    kernel, bias = np_fold(*weights["conv"], weights["conv_bn"])
    h = np.maximum(np_conv_same(h, np_quantize_weights(kernel)) + bias, 0)
    h = np_fake_quant(h, *ranges(qat, "conv"))
    kernel, bias = np_fold(*weights["dw"], weights["dw_bn"], channel_axis=2)
    # Depthwise: one output channel per input channel (axis 2, multiplier 1).
    kernel_q = np_quantize_weights(kernel.transpose(0, 1, 3, 2)).transpose(
        0, 1, 3, 2)
    h = np.clip(np_conv_same(h, kernel_q, depthwise=True) + bias, 0, 6)
    h = np_fake_quant(h, *ranges(qat, "dw"))
    h = np_fake_quant(h.mean(axis=(1, 2)), *ranges(qat, "pool"))
    kernel, bias = weights["logits"]
    h = h @ np_quantize_weights(kernel, per_channel=False) + bias
    expected = np_fake_quant(h, *ranges(qat, "logits"))

    actual = to_numpy(qat(x, training=False))
    np.testing.assert_allclose(actual, expected, atol=1e-5)
    # Quantization changes the function: the float model differs.
    assert np.max(np.abs(to_numpy(model(x)) - actual)) > 1e-4
    # Calibration set the ranges to the min/max (with 0) of the activations
    # computed in float with int8 weights: close to the float model's.
    pooled = keras.Model(model.input, model.get_layer("pool").output)
    pooled = to_numpy(pooled(images))
    assert ranges(qat, "pool")[0] == min(pooled.min(), 0.0)
    assert ranges(qat, "pool")[1] == pytest.approx(pooled.max(), rel=1e-2)
    assert ranges(qat, "image") == pytest.approx(
        (images.min(), images.max()), rel=1e-6)


def test_sequential_conv1d_and_an_unfused_activation():
    model = keras.Sequential([
        keras.Input((12, 3)),
        keras.layers.Conv1D(4, 3, padding="causal", activation="swish",
                            name="conv"),
        keras.layers.Flatten(name="flat"),
        keras.layers.Dense(3, activation="relu", name="head")])
    x = np.random.default_rng(2).normal(size=(8, 12, 3)).astype("float32")
    qat = quantization.quantize_model(model, calibration_data=x)
    names = [layer.name for layer in qat.layers[1:]]
    # swish is not fused by TFLite: quantized before and after it; Flatten
    # keeps its input's quantization; Dense's ReLU is fused.
    assert names[1:] == ["conv", "conv_quant", "conv_activation",
                         "conv_activation_quant", "flat", "head",
                         "head_quant"]
    kernel, bias = [np.asarray(w, "float64")
                    for w in model.get_layer("conv").get_weights()]
    h = np_fake_quant(x.astype("float64"), *ranges(qat, names[0][:-6]))
    padded = np.pad(h, [(0, 0), (2, 0), (0, 0)])
    kernel_q = np_quantize_weights(kernel)
    h = sum(padded[:, i:i + 12] @ kernel_q[i] for i in range(3)) + bias
    h = np_fake_quant(h, *ranges(qat, "conv"))
    h = np_fake_quant(h / (1 + np.exp(-h)), *ranges(qat, "conv_activation"))
    kernel, bias = [np.asarray(w, "float64")
                    for w in model.get_layer("head").get_weights()]
    h = np.maximum(h.reshape(8, -1) @ np_quantize_weights(
        kernel, per_channel=False) + bias, 0)
    expected = np_fake_quant(h, *ranges(qat, "head"))
    np.testing.assert_allclose(to_numpy(qat(x)), expected, atol=1e-5)


def test_hard_swish_is_quantized_on_its_input_and_output():
    """MobileNetV3's hard-swish, x * relu6(x + 3) / 6, is one TFLite op
    (HARD_SWISH) with an int8 input and output: the Keras copy rounds the
    layer before it and its own output, nothing inside."""
    model = keras.Sequential([
        keras.Input((6,)),
        keras.layers.Dense(8, name="hidden"),
        keras.layers.Activation("hard_silu", name="hswish"),
        keras.layers.Dense(3, name="head")])
    x = np.random.default_rng(4).normal(size=(16, 6)).astype("float32")
    qat = quantization.quantize_model(model, calibration_data=3 * x)
    assert [layer.name for layer in qat.layers[1:]] == [
        qat.layers[1].name, "hidden", "hidden_quant", "hswish",
        "hswish_quant", "head", "head_quant"]
    h = np_fake_quant(x.astype("float64"), *ranges(qat, qat.layers[1].name[:-6]))
    for name in ("hidden", "head"):
        kernel, bias = [np.asarray(w, "float64")
                        for w in model.get_layer(name).get_weights()]
        h = h @ np_quantize_weights(kernel, per_channel=False) + bias
        h = np_fake_quant(h, *ranges(qat, name))
        if name == "hidden":
            h = np_fake_quant(h * np.clip(h + 3, 0, 6) / 6,
                              *ranges(qat, "hswish"))
    np.testing.assert_allclose(to_numpy(qat(x)), h, atol=1e-5)
    # Hard-swish's range: calibrated on its own output, negative part kept.
    low, high = ranges(qat, "hswish")
    assert -0.375 <= low < 0 < high


def test_refuses_subclassed_and_shared_layers():
    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(2)

        def call(self, x):
            return self.dense(x)

    model = Subclassed()
    model(np.zeros((1, 3), "float32"))
    with pytest.raises(TypeError, match="functional API"):
        quantization.quantize_model(model)
    shared = keras.layers.Dense(3)
    inputs = keras.Input((3,))
    with pytest.raises(ValueError, match="called more than once"):
        quantization.quantize_model(
            keras.Model(inputs, shared(shared(inputs))))


# ----------------------------------------------------------------------
# Saving, training
# ----------------------------------------------------------------------
def test_weights_and_ranges_survive_save_and_load(images, tmp_path):
    qat = quantization.quantize_model(depthwise_student())
    qat.compile("adam", "mse")
    qat.fit(images, np.zeros((32, 5), "float32"), epochs=2, batch_size=8,
            verbose=0)
    path = tmp_path / "qat.keras"
    qat.save(path)
    loaded = keras.models.load_model(path)
    assert quantization.is_quantization_aware(loaded)
    assert [type(layer) for layer in loaded.layers] == [
        type(layer) for layer in qat.layers]
    for a, b in zip(qat.weights, loaded.weights):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))
    # The ranges were learned (not the initial (-6, 6)) and kept.
    assert ranges(loaded, "logits") == ranges(qat, "logits") != (-6.0, 6.0)
    np.testing.assert_array_equal(to_numpy(loaded(images)),
                                  to_numpy(qat(images)))


def test_qad_fine_tunes_a_distilled_student_and_moves_the_ranges():
    (x_train, y_train), (x_test, y_test) = load_digits(as_images=True)
    x_train, y_train = x_train[:512], y_train[:512]
    teacher = keras.Sequential([
        keras.Input((8, 8, 1)), keras.layers.Flatten(),
        keras.layers.Dense(64, activation="relu"), keras.layers.Dense(10)])
    teacher.compile("adam", keras.losses.SparseCategoricalCrossentropy(
        from_logits=True))
    teacher.fit(x_train, y_train, epochs=10, batch_size=64, verbose=0)
    student = depthwise_student(classes=10, shape=(8, 8, 1))
    distiller = kd.Distiller(teacher, student)
    distiller.compile("adam", loss=None, temperature=2.0)
    distiller.fit(x_train, y_train, epochs=2, batch_size=64, verbose=0)

    qat = quantization.quantize_model(student, calibration_data=x_train[:128])
    before = {name: ranges(qat, name) for name in ("conv", "dw", "logits")}
    kernel = to_numpy(qat.get_layer("dw").layer.kernel).copy()
    qad = kd.Distiller(teacher, qat)
    qad.compile(keras.optimizers.Adam(3e-3), loss=None, temperature=2.0)
    history = qad.fit(x_train, y_train, epochs=4, batch_size=64, verbose=0)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
    # Straight-through gradients reach the kernels under the quantizers.
    assert np.max(np.abs(to_numpy(qat.get_layer("dw").layer.kernel)
                         - kernel)) > 1e-4
    # The EMA moved every range during training.
    for name, old in before.items():
        assert ranges(qat, name) != pytest.approx(old, abs=1e-6), name
    # BatchNorm statistics are frozen (folded), the student's are intact.
    np.testing.assert_array_equal(
        to_numpy(qat.get_layer("dw").batch_norm.moving_mean),
        to_numpy(student.get_layer("dw_bn").moving_mean))
    # The float student was not modified by quantize_model or QAD.
    assert not any(isinstance(layer, quantization.QuantizedLayer)
                   for layer in student.layers)


# ----------------------------------------------------------------------
# Export
# ----------------------------------------------------------------------
def ops_and_types(data):
    """[(op name, input tensor types, output tensor types)] of a file."""
    model = schema.Model.GetRootAsModel(data, 0)
    graph = model.Subgraphs(0)
    names = {value: key for key, value in vars(schema.BuiltinOperator).items()
             if not key.startswith("_")}
    types = {value: key for key, value in vars(schema.TensorType).items()
             if not key.startswith("_")}
    ops = []
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        name = names[max(code.BuiltinCode(), code.DeprecatedBuiltinCode())]
        inputs = [types[graph.Tensors(op.Inputs(j)).Type()]
                  for j in range(op.InputsLength()) if op.Inputs(j) >= 0]
        outputs = [types[graph.Tensors(op.Outputs(j)).Type()]
                   for j in range(op.OutputsLength())]
        ops.append((name, inputs, outputs))
    return ops


def test_int8_export_uses_the_learned_ranges_and_only_int8_kernels(
        images, tmp_path):
    qat = quantization.quantize_model(depthwise_student(),
                                      calibration_data=images)
    qat.compile("adam", "mse")
    qat.fit(images, np.zeros((32, 5), "float32"), epochs=1, batch_size=8,
            verbose=0)
    path = tmp_path / "qat_int8.tflite"
    # No representative data: the ranges come from the model.
    report = kd.export.to_tflite(qat, path, quantize="int8", latency_runs=0)
    data = path.read_bytes()
    ops = ops_and_types(data)
    assert [name for name, _, _ in ops] == [
        "QUANTIZE", "CONV_2D", "DEPTHWISE_CONV_2D", "MEAN", "FULLY_CONNECTED",
        "DEQUANTIZE"]
    for name, inputs, outputs in ops[1:-1]:
        # int8 activations and weights, int32 biases (and MEAN's int32 axes).
        assert inputs[0] == "INT8" and outputs == ["INT8"], name
        if name != "MEAN":
            assert inputs[1] == "INT8", name
            assert all(t == "INT32" for t in inputs[2:]), name
    assert ops[0][1] == ["FLOAT32"] and ops[-1][2] == ["FLOAT32"]

    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    details = {d["name"]: d for d in interpreter.get_tensor_details()}
    # Per-channel weight scales for the convolutions: one per output channel.
    conv_weights = [d for d in details.values() if tuple(d["shape"]) in (
        (4, 3, 3, 2), (1, 3, 3, 4))]
    assert len(conv_weights) == 2
    for d in conv_weights:
        scales = d["quantization_parameters"]["scales"]
        assert d["dtype"] == np.int8 and len(scales) == 4
    # The file's input quantization is the learned input range, nudged.
    (inp,) = [d for d in details.values()
              if d["dtype"] == np.int8 and tuple(d["shape"]) == (1, 8, 8, 2)]
    low, high, scale = np_nudged(*ranges(qat, "image"))
    assert inp["quantization_parameters"]["scales"][0] == pytest.approx(
        scale, rel=1e-5)

    # Parity: within one step of the logits quantizer.
    x = np.random.default_rng(9).normal(size=(64, 8, 8, 2)).astype("float32")
    (source,), (out,) = (interpreter.get_input_details(),
                         interpreter.get_output_details())
    interpreter.resize_tensor_input(source["index"], [64, 8, 8, 2])
    interpreter.allocate_tensors()
    interpreter.set_tensor(source["index"], x)
    interpreter.invoke()
    tflite = interpreter.get_tensor(out["index"])
    expected = to_numpy(qat(x, training=False))
    step = np_nudged(*ranges(qat, "logits"))[2]
    diff = np.max(np.abs(tflite - expected))
    assert diff <= step * 1.001, (diff, step)
    assert report.max_abs_diff <= step * 1.001
    assert report.quantize == "int8"

    # representative_data does not re-calibrate a quantization-aware model.
    kd.export.to_tflite(qat, tmp_path / "again.tflite", quantize="int8",
                        representative_data=10 * images, latency_runs=0,
                        verify=False)
    again = Interpreter(model_path=str(tmp_path / "again.tflite"))
    (inp,) = [d for d in again.get_tensor_details()
              if d["dtype"] == np.int8 and tuple(d["shape"]) == (1, 8, 8, 2)]
    assert inp["quantization_parameters"]["scales"][0] == pytest.approx(
        scale, rel=1e-5)


def test_a_quantization_aware_student_exports_as_int8_or_float32_only(
        images, tmp_path):
    qat = quantization.quantize_model(depthwise_student(),
                                      calibration_data=images)
    for mode in ("float16", "dynamic"):
        with pytest.raises(ValueError, match="quantization-aware"):
            kd.export.to_tflite(qat, tmp_path / f"{mode}.tflite",
                                quantize=mode)
        assert not (tmp_path / f"{mode}.tflite").exists()


def test_residual_add_and_max_pooling_export_as_int8_within_one_step(
        tmp_path):
    inputs = keras.Input((6, 6, 3), name="image")
    h = keras.layers.Conv2D(8, 3, padding="same", use_bias=False,
                            name="stem")(inputs)
    h = keras.layers.BatchNormalization(name="stem_bn")(h)
    h = keras.layers.ReLU(6.0, name="stem_relu")(h)
    r = keras.layers.Conv2D(8, 1, name="branch")(h)
    r = keras.layers.BatchNormalization(name="branch_bn")(r)
    h = keras.layers.Add(name="add")([h, r])
    h = keras.layers.MaxPooling2D(2, name="pool")(h)
    h = keras.layers.Flatten(name="flat")(h)
    model = keras.Model(inputs, keras.layers.Dense(4, name="logits")(h))
    x = np.random.default_rng(0).normal(size=(64, 6, 6, 3)).astype("float32")
    qat = quantization.quantize_model(model, calibration_data=x)
    # The stem's output feeds two layers: its ReLU6 is still fused, the
    # branch's BatchNorm is folded, Add is quantized, max pooling is not.
    assert [layer.name for layer in qat.layers[1:]] == [
        "image_quant", "stem", "stem_quant", "branch", "branch_quant", "add",
        "add_quant", "pool", "flat", "logits", "logits_quant"]
    path = tmp_path / "residual.tflite"
    report = kd.export.to_tflite(qat, path, quantize="int8", latency_runs=0,
                                 representative_data=x)
    ops = ops_and_types(path.read_bytes())
    kernels = [op for op in ops
               if op[0] in ("CONV_2D", "ADD", "MAX_POOL_2D",
                            "FULLY_CONNECTED")]
    assert [op[0] for op in kernels] == [
        "CONV_2D", "CONV_2D", "ADD", "MAX_POOL_2D", "FULLY_CONNECTED"]
    for name, inputs_types, outputs_types in kernels:
        assert inputs_types[:2] == (["INT8", "INT8"] if name != "MAX_POOL_2D"
                                    else ["INT8"]), name
        assert outputs_types == ["INT8"], name
    assert not any(op[0] == "DEQUANTIZE" for op in ops[:-1])
    step = np_nudged(*ranges(qat, "logits"))[2]
    assert report.max_abs_diff <= step * 1.001, (report.max_abs_diff, step)


def test_conv1d_student_exports_fully_int8_within_one_step(tmp_path):
    """Conv1D runs as TFLite's CONV_2D of height 1: its per-channel kernel
    ranges survive the conversion (strided, 'same' and 'causal')."""
    model = keras.Sequential([
        keras.Input((16, 2)),
        keras.layers.Conv1D(4, 3, strides=2, padding="same",
                            activation="relu", name="conv"),
        keras.layers.Conv1D(4, 3, padding="causal", dilation_rate=2,
                            name="causal"),
        keras.layers.Flatten(name="flat"),
        keras.layers.Dense(3, name="head")])
    x = np.random.default_rng(3).normal(size=(32, 16, 2)).astype("float32")
    qat = quantization.quantize_model(model, calibration_data=x)
    path = tmp_path / "conv1d.tflite"
    report = kd.export.to_tflite(qat, path, quantize="int8", latency_runs=0,
                                 representative_data=x)
    kernels = [op for op in ops_and_types(path.read_bytes())
               if op[0] in ("CONV_2D", "FULLY_CONNECTED")]
    assert [op[0] for op in kernels] == ["CONV_2D", "CONV_2D",
                                         "FULLY_CONNECTED"]
    for name, inputs_types, outputs_types in kernels:
        assert inputs_types[:2] == ["INT8", "INT8"], name
        assert outputs_types == ["INT8"], name
    step = np_nudged(*ranges(qat, "head"))[2]
    assert report.max_abs_diff <= step * 1.001, (report.max_abs_diff, step)


def test_hard_swish_student_exports_hard_swish_as_int8_within_one_step(
        tmp_path):
    inputs = keras.Input((12, 1, 1), name="signal")
    h = keras.layers.Conv2D(4, (3, 1), padding="same", name="stem")(inputs)
    h = keras.layers.Activation("hard_silu", name="stem_hswish")(h)
    b = keras.layers.DepthwiseConv2D((3, 1), padding="same", name="dw")(h)
    b = keras.layers.Activation("hard_silu", name="dw_hswish")(b)
    h = keras.layers.Add(name="add")([h, keras.layers.Conv2D(4, 1)(b)])
    h = keras.layers.GlobalAveragePooling2D(name="pool")(h)
    model = keras.Model(inputs, keras.layers.Dense(3, name="logits")(h))
    x = np.random.default_rng(5).normal(size=(64, 12, 1, 1)).astype("float32")
    qat = quantization.quantize_model(model, calibration_data=x)
    path = tmp_path / "hswish.tflite"
    report = kd.export.to_tflite(qat, path, quantize="int8", latency_runs=0,
                                 representative_data=x)
    ops = ops_and_types(path.read_bytes())
    kernels = [op for op in ops if op[0] in (
        "CONV_2D", "DEPTHWISE_CONV_2D", "HARD_SWISH", "ADD",
        "FULLY_CONNECTED")]
    assert [op[0] for op in kernels] == [
        "CONV_2D", "HARD_SWISH", "DEPTHWISE_CONV_2D", "HARD_SWISH", "CONV_2D",
        "ADD", "FULLY_CONNECTED"]
    for name, inputs_types, outputs_types in kernels:
        assert inputs_types[0] == "INT8" and outputs_types == ["INT8"], name
    # No float op between the input's QUANTIZE and the logits' DEQUANTIZE.
    assert not any(op[0] in ("DEQUANTIZE", "LOGISTIC", "MUL")
                   for op in ops[:-1])
    step = np_nudged(*ranges(qat, "logits"))[2]
    assert report.max_abs_diff <= step * 1.001, (report.max_abs_diff, step)


# ----------------------------------------------------------------------
# What quantize_model refuses, how the graph is read
# ----------------------------------------------------------------------
def test_the_package_reads_no_private_keras_api():
    """Issue 27: the graph is read with model.operations, layer.input /
    layer.output and keras.models.clone_model(call_function=...); the
    private fields it used to read must not come back."""
    import pathlib

    package = pathlib.Path(quantization.__file__).parent
    sources = {p.name: p.read_text() for p in package.glob("*.py")}
    assert set(sources) == {"__init__.py", "layers.py", "rebuild.py",
                            "ranges.py"}
    for name, text in sources.items():
        assert len(text.splitlines()) < 600, name
        for private in ("_nodes_by_depth", "_inbound_nodes",
                        "_outputs_struct", "_keras_history", "keras.src",
                        "._name"):
            assert private not in text, (name, private)


def test_a_layer_first_called_in_another_model_is_refused():
    dense = keras.layers.Dense(2, name="shared")
    first = keras.Input((3,))
    keras.Model(first, dense(first))
    second = keras.Input((3,))
    model = keras.Model(second, keras.layers.Dense(4)(dense(second)))
    with pytest.raises(ValueError, match="'shared' is also called outside"):
        quantization.quantize_model(model)


def test_layers_tflite_runs_in_float_are_refused_with_their_list():
    """Issue 28 #12: SeparableConv2D (its kernels were not even fake-
    quantized), LayerNormalization, ReLU(max_value=3) and a bfloat16 layer
    exported as float ops inside an 'int8' file."""
    inputs = keras.Input((8, 8, 2))
    h = keras.layers.SeparableConv2D(4, 3, name="separable")(inputs)
    h = keras.layers.LayerNormalization(name="norm")(h)
    h = keras.layers.ReLU(max_value=3.0, name="relu3")(h)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(4, dtype="mixed_bfloat16", name="half")(h)
    model = keras.Model(inputs, keras.layers.Dense(2, name="head")(h))
    found = dict(quantization.unsupported_layers(model))
    assert sorted(found) == ["half", "norm", "relu3", "separable"]
    with pytest.raises(ValueError) as error:
        quantization.quantize_model(model)
    message = str(error.value)
    for name, fix in (("separable", "DepthwiseConv2D followed by a 1x1"),
                      ("norm", "BatchNormalization"),
                      ("relu3", "ReLU(6.0)"),
                      ("half", "mixed_bfloat16")):
        assert f"layer '{name}'" in message and fix in message, name
    assert "'head'" not in message
    # Under a global mixed_bfloat16 policy, a float32 student's copy still
    # simulates int8 in float32.
    float_student = depthwise_student()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        qat = quantization.quantize_model(float_student)
    finally:
        keras.config.set_dtype_policy("float32")
    assert {layer.dtype_policy.name for layer in qat.layers[1:]} == {
        "float32"}
    # ReLU6 is fused, not refused.
    ok = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3),
                           keras.layers.ReLU(6.0)])
    assert quantization.unsupported_layers(ok) == []


def test_dilated_convolutions_export_fully_int8(tmp_path):
    """Dilated Conv2D, DepthwiseConv2D and Conv1D: the converter's
    SPACE_TO_BATCH_ND / BATCH_TO_SPACE_ND around the kernel stay int8, and
    the export's own op-list check finds no float op."""
    inputs = keras.Input((12, 12, 2), name="image")
    h = keras.layers.Conv2D(4, 3, padding="same", dilation_rate=2,
                            activation="relu", name="conv")(inputs)
    h = keras.layers.DepthwiseConv2D(3, padding="same", dilation_rate=2,
                                     name="dw")(h)
    h = keras.layers.BatchNormalization(name="dw_bn")(h)
    h = keras.layers.ReLU(6.0, name="dw_relu6")(h)
    h = keras.layers.Reshape((12 * 12, 4))(h)
    h = keras.layers.Conv1D(4, 3, padding="same", dilation_rate=3)(h)
    h = keras.layers.GlobalAveragePooling1D()(h)
    model = keras.Model(inputs, keras.layers.Dense(3, name="head")(h))
    x = np.random.default_rng(6).normal(size=(32, 12, 12, 2)).astype(
        "float32")
    qat = quantization.quantize_model(model, calibration_data=x)
    # The converter cannot fuse a ReLU into a dilated kernel (it would keep
    # the kernel float): the ReLUs stay separate int8 ops, quantized before
    # and after; the BatchNorm is still folded.
    assert [layer.name for layer in qat.layers[1:7]] == [
        "image_quant", "conv", "conv_quant", "conv_activation",
        "conv_activation_quant", "dw"]
    assert qat.get_layer("dw").batch_norm is not None
    assert qat.get_layer("dw").activation is None
    assert qat.get_layer("dw_relu6_quant") is not None
    path = tmp_path / "dilated.tflite"
    report = kd.export.to_tflite(qat, path, quantize="int8", latency_runs=0)
    ops = ops_and_types(path.read_bytes())
    assert kd.export.litert.operators(path.read_bytes()) == [
        tuple(op) for op in ops]
    names = [name for name, _, _ in ops]
    assert names.count("SPACE_TO_BATCH_ND") == 3
    for name, inputs_types, outputs_types in ops[1:-1]:
        assert "FLOAT32" not in inputs_types + outputs_types, name
    for name, inputs_types, outputs_types in ops:
        if name in ("CONV_2D", "DEPTHWISE_CONV_2D", "SPACE_TO_BATCH_ND",
                    "BATCH_TO_SPACE_ND"):
            assert inputs_types[0] == "INT8" and outputs_types == ["INT8"]
    assert report.float_ops == []
    step = np_nudged(*ranges(qat, "head"))[2]
    assert report.max_abs_diff <= step * 1.001, (report.max_abs_diff, step)


# ----------------------------------------------------------------------
# Calibration: bounded, all or nothing
# ----------------------------------------------------------------------
def test_calibrate_on_empty_data_is_an_error_that_changes_nothing(images):
    """Issue #20: an empty data set reset the calibrated flags."""
    qat = quantization.quantize_model(depthwise_student(),
                                      calibration_data=images)
    before = [layer.get_weights() for layer in quantization.quantizers(qat)]
    for empty in (images[:0], [], iter([images[:0]])):
        with pytest.raises(ValueError, match="empty"):
            quantization.calibrate(qat, empty)
        after = [layer.get_weights() for layer in quantization.quantizers(qat)]
        for old, new in zip(before, after):
            np.testing.assert_array_equal(old, new)
    assert quantization.uncalibrated(qat) == []
    # A batch that fails halfway leaves the ranges as they were too.
    with pytest.raises(Exception):
        quantization.calibrate(qat, [images[:8], np.zeros((2, 3), "float32")])
    for old, layer in zip(before, quantization.quantizers(qat)):
        np.testing.assert_array_equal(old, layer.get_weights())


def test_calibrate_reads_at_most_steps_batches(images):
    """Issue #11: calibrate(q, ds.repeat()) never returned."""
    import itertools

    inputs = keras.Input((3,), name="x")
    qat = quantization.quantize_model(
        keras.Model(inputs, keras.layers.Dense(2)(inputs)))
    batches = [np.array([[-1.0, 0.0, 1.0]], "float32") * (i + 1)
               for i in range(5)]
    endless = itertools.chain(batches, itertools.repeat(batches[-1] * 100))
    quantization.calibrate(qat, endless, steps=3)
    assert ranges(qat, "x") == (-3.0, 3.0)  # batches 0-2 only
    with pytest.raises(ValueError, match="steps must be"):
        quantization.calibrate(qat, batches, steps=0)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        ds = tf.data.Dataset.from_tensor_slices(np.stack(batches)).repeat()
        with pytest.raises(ValueError, match="infinite.*steps="):
            quantization.calibrate(qat, ds)
        quantization.calibrate(qat, ds, steps=7)  # 5 batches, then 2 again
        assert ranges(qat, "x") == (-5.0, 5.0)


# ----------------------------------------------------------------------
# The export of a quantization-aware student
# ----------------------------------------------------------------------
def test_an_uncalibrated_student_is_not_exported(images, tmp_path):
    """Issue #13: it exported silently with the placeholder (-6, 6)."""
    qat = quantization.quantize_model(depthwise_student())
    assert quantization.uncalibrated(qat) == [
        "image_quant", "conv_quant", "dw_quant", "pool_quant", "logits_quant"]
    path = tmp_path / "qat.tflite"
    for mode in ("int8", "float32"):
        with pytest.raises(ValueError,
                           match="never saw data.*kd.quantization.calibrate"):
            kd.export.to_tflite(qat, path, quantize=mode)
        assert not path.exists()
    quantization.calibrate(qat, images)
    report = kd.export.to_tflite(qat, path, quantize="int8", latency_runs=0)
    assert report.float_ops == []


def test_int8_report_compares_with_the_float_model(images, tmp_path):
    student = depthwise_student()
    qat = quantization.quantize_model(student, calibration_data=images)
    assert quantization.float_model_of(qat) is student
    x = np.random.default_rng(8).normal(size=(200, 8, 8, 2)).astype("float32")
    # Labels the float model gets right, so that the three numbers differ.
    y = np.argmax(to_numpy(student(x)), -1)
    y[::7] = (y[::7] + 1) % 5
    report = kd.export.to_tflite(qat, tmp_path / "qat.tflite",
                                 quantize="int8", eval_data=(x, y),
                                 latency_runs=0)
    float_acc = float(np.mean(np.argmax(to_numpy(student(x)), -1) == y))
    qat_acc = float(np.mean(np.argmax(to_numpy(qat(x)), -1) == y))
    assert report.float_model_accuracy == pytest.approx(float_acc)
    assert report.keras_accuracy == pytest.approx(qat_acc)
    assert report.accuracy_change_vs_float == pytest.approx(
        report.tflite_accuracy - float_acc)
    assert "float model" in report.summary()
    # A copy loaded from a file has no known float model.
    qat.save(tmp_path / "qat.keras")
    loaded = keras.models.load_model(tmp_path / "qat.keras")
    assert quantization.float_model_of(loaded) is None
