"""Ship the student: ``.keras``, SavedModel and TFLite (LiteRT) exports.

``to_tflite`` converts with TensorFlow's converter (in this process on the
TensorFlow backend, in a TensorFlow worker process on JAX and PyTorch),
verifies the file with the LiteRT interpreter and measures it; every file is
written atomically. ``lm_to_tflite`` does the same for a causal language
model's fixed-length forward pass, and ``LiteRTCausalLM`` /
``litert_generate`` generate greedily with the file. Needs the export extra:
``pip install "keras-kd[export]"``.

Modules: :mod:`~keras_kd.export.api` (the functions below),
:mod:`~keras_kd.export.convert` (the converter), :mod:`~keras_kd.export.worker`
(starts the TensorFlow process and sends it jobs),
:mod:`~keras_kd.export.worker_main` (the process's own side),
:mod:`~keras_kd.export.litert` (running and checking the file),
:mod:`~keras_kd.export.lm` (language models), :mod:`~keras_kd.export.lm_cache`
(their KV-cache file), :mod:`~keras_kd.export.litert_lm` (running either),
:mod:`~keras_kd.export.sampling` (choosing tokens),
:mod:`~keras_kd.export.weight_only` (weight-only int8),
:mod:`~keras_kd.export.cache_graph` (the KV-cache file's copies removed).
"""

from keras_kd.export.api import (
    QUANTIZE_MODES,
    ExportReport,
    to_keras,
    to_saved_model,
    to_tflite,
)
from keras_kd.export.errors import ExportError, FlexOpsError, FloatOpsError
from keras_kd.export.litert_lm import LiteRTCausalLM, litert_generate
from keras_kd.export.lm import LM_QUANTIZE_MODES, lm_to_tflite

# KV-cache language-model files (prefill/decode), weight-only int8, sampling.
from keras_kd.export import lm_cache, sampling, weight_only  # noqa: E402
from keras_kd.export.lm_cache import CACHE_QUANTIZE_MODES  # noqa: E402

# KV-cache file: the cache copies removed from the converted graph.
from keras_kd.export import cache_graph  # noqa: E402

__all__ = ["CACHE_QUANTIZE_MODES", "QUANTIZE_MODES", "LM_QUANTIZE_MODES", "ExportReport",
           "ExportError", "FlexOpsError", "FloatOpsError", "LiteRTCausalLM", "litert_generate",
           "lm_to_tflite", "to_keras", "to_saved_model", "to_tflite"]
