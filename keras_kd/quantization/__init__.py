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

Modules: :mod:`~keras_kd.quantization.layers` (the quantizer and the
quantized layer), :mod:`~keras_kd.quantization.rebuild` (:func:`quantize_model`)
and :mod:`~keras_kd.quantization.ranges` (:func:`calibrate`).
"""

from keras_kd.quantization.layers import (
    ActivationQuantizer,
    QuantizedLayer,
    is_quantization_aware,
    quantizers,
    uncalibrated,
)
from keras_kd.quantization.ranges import calibrate
from keras_kd.quantization.rebuild import (
    float_model_of,
    quantize_model,
    unsupported_layers,
)

__all__ = ["ActivationQuantizer", "QuantizedLayer", "calibrate",
           "float_model_of", "is_quantization_aware", "quantize_model",
           "quantizers", "uncalibrated", "unsupported_layers"]
