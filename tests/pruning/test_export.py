"""Pruned models export to TFLite, float32 and int8, with parity, and the
file shrinks with the model (TensorFlow converts; one backend)."""

import numpy as np
import pytest

from keras_kd import export
from keras_kd.pruning import prune
from tests.pruning.blocks import images, randomize, resnet_block


@pytest.mark.one_backend("tensorflow")
def test_pruned_model_exports_float32_and_int8(tmp_path):
    model = randomize(resnet_block(width=32))
    small, report = prune(model, ratio=0.5)
    x = images(16)
    full = export.to_tflite(model, str(tmp_path / "full.tflite"), latency_runs=0)
    pruned = export.to_tflite(small, str(tmp_path / "pruned.tflite"),
                              latency_runs=0, representative_data=x)
    # float32 parity is checked by to_tflite (it raises above 1e-3 relative)
    assert pruned.max_abs_diff <= 1e-3 * max(1.0, np.abs(small.predict(x, verbose=0)).max())
    # parameters fall by ~4x; the file (weights plus a fixed overhead) too
    assert report["params_after"] < 0.3 * report["params_before"]
    assert pruned.size_bytes < 0.5 * full.size_bytes
    int8 = export.to_tflite(small, str(tmp_path / "int8.tflite"), quantize="int8",
                            representative_data=x, latency_runs=0)
    assert int8.size_bytes < pruned.size_bytes
    assert int8.max_abs_diff < 0.1 * max(1.0, np.abs(small.predict(x, verbose=0)).max())
