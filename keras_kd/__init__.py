"""keras-kd: knowledge distillation as a first-class part of Keras 3.

Public API only; see the README for a tour and docs/ for each capability.
"""

from keras_kd import calibration, callbacks, data, objectives, quantization
from keras_kd.distiller import Distiller
from keras_kd.on_policy import OnPolicy
from keras_kd.search import search
from keras_kd.objectives import (
    DIST,
    DKD,
    KD,
    LS,
    PKT,
    RKD,
    AttentionTransfer,
    CosineEmbedding,
    FitNet,
    HardDistillation,
    SimilarityPreserving,
)

__version__ = "0.1.0"


def __getattr__(name):
    # `export` and `soft_labels` are imported on first use: `export` brings in
    # the TFLite converter, and `python -m keras_kd.export` must not find the
    # module already imported.
    import importlib

    if name in ("export", "soft_labels"):
        return importlib.import_module(f"keras_kd.{name}")
    if name in ("SoftLabels", "compute_soft_labels"):
        return getattr(importlib.import_module("keras_kd.soft_labels"), name)
    raise AttributeError(f"module 'keras_kd' has no attribute {name!r}")

__all__ = [
    "Distiller",
    "KD",
    "DKD",
    "LS",
    "DIST",
    "HardDistillation",
    "FitNet",
    "AttentionTransfer",
    "CosineEmbedding",
    "RKD",
    "SimilarityPreserving",
    "PKT",
    "callbacks",
    "data",
    "export",
    "objectives",
    "quantization",
    "soft_labels",
    "SoftLabels",
    "compute_soft_labels",
    "__version__",
]
