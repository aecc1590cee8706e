"""Ship the student: ``.keras``, SavedModel and TFLite (LiteRT) exports.

``to_tflite`` converts with TensorFlow's converter (in this process on the
TensorFlow backend, in a TensorFlow worker process on JAX and PyTorch),
verifies the file with the LiteRT interpreter and measures it; every file is
written atomically. Needs the export extra: ``pip install "keras-kd[export]"``.

Modules: :mod:`~keras_kd.export.api` (the functions below),
:mod:`~keras_kd.export.convert` (the converter), :mod:`~keras_kd.export.worker`
(the TensorFlow process), :mod:`~keras_kd.export.litert` (running and
checking the file).
"""

from keras_kd.export.api import (
    QUANTIZE_MODES,
    ExportReport,
    to_keras,
    to_saved_model,
    to_tflite,
)
from keras_kd.export.errors import ExportError, FlexOpsError

__all__ = ["QUANTIZE_MODES", "ExportReport", "ExportError", "FlexOpsError",
           "to_keras", "to_saved_model", "to_tflite"]
