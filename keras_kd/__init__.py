"""keras-kd: knowledge distillation as a first-class part of Keras 3.

Public API only; see the README for a tour and docs/ for each capability.

``import keras_kd`` imports no Keras: each name below loads on first use
(PEP 562), so that ``keras-kd --help`` answers at once. keras-kd's classes
are registered with Keras all the same, for ``keras.models.load_model``
(:mod:`keras_kd.registration`).

>>> import keras_kd as kd
>>> kd.KD.__name__, kd.Distiller.__module__
('KD', 'keras_kd.distiller')
"""

import importlib
import sys
import types
from typing import TYPE_CHECKING

from keras_kd import registration

if TYPE_CHECKING:  # what type checkers and the API docs (griffe) read
    from keras_kd import (calibration, callbacks, data, export, objectives,
                          pruning, quantization, soft_labels)
    from keras_kd.distiller import Distiller
    from keras_kd.objectives import (
        DIST, DKD, KD, LS, PKT, RKD, AttentionTransfer, CosineEmbedding,
        FitNet, HardDistillation, SimilarityPreserving)
    from keras_kd.on_policy import OnPolicy
    from keras_kd.pairing import pair_layers
    from keras_kd.search import search
    from keras_kd.soft_labels import SoftLabels, compute_soft_labels

__version__ = "0.1.0"

# Public name -> the module that defines it.
_NAMES = {
    "Distiller": "keras_kd.distiller",
    "OnPolicy": "keras_kd.on_policy",
    "search": "keras_kd.search",
    "SoftLabels": "keras_kd.soft_labels",
    "compute_soft_labels": "keras_kd.soft_labels",
    **dict.fromkeys(
        ("DIST", "DKD", "KD", "LS", "PKT", "RKD", "AttentionTransfer",
         "CosineEmbedding", "FitNet", "HardDistillation",
         "SimilarityPreserving"), "keras_kd.objectives"),
    **dict.fromkeys(("TfKD", "MLKD", "CTKD"), "keras_kd.objectives"),
    # Single-pair feature methods.
    **dict.fromkeys(("NST", "ICKD", "CCKD", "ActivationBoundaries", "OFD",
                     "VID", "MGD", "PADL2", "SRD"), "keras_kd.objectives"),
    "MutualLearning": "keras_kd.schemes",
    # Automatic layer pairing (feature methods).
    "pair_layers": "keras_kd.pairing",
}
# Public submodules, imported on first use (`export` brings in the TFLite
# converter, and `python -m keras_kd.export` must not find it imported).
_MODULES = ("calibration", "callbacks", "data", "export", "objectives",
            "pruning", "quantization", "soft_labels", "schemes")


def __getattr__(name):
    if name in _NAMES:
        value = getattr(importlib.import_module(_NAMES[name]), name)
    elif name in _MODULES:
        value = importlib.import_module(f"keras_kd.{name}")
    else:
        raise AttributeError(f"module 'keras_kd' has no attribute {name!r}")
    registration.register()
    if name in _NAMES:
        globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_NAMES) | set(_MODULES))


class _Package(types.ModuleType):
    """keras_kd's module type: ``kd.search`` stays the function
    (:func:`keras_kd.search.search`) when the import system sets the
    attribute to the submodule ``keras_kd.search`` on its first import."""

    def __setattr__(self, name, value):
        if (name in _NAMES and isinstance(value, types.ModuleType)
                and value.__name__ == f"{__name__}.{name}"):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


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
    "TfKD",
    "MLKD",
    "CTKD",
    # Single-pair feature methods.
    "NST",
    "ICKD",
    "CCKD",
    "ActivationBoundaries",
    "OFD",
    "VID",
    "MGD",
    "PADL2",
    "SRD",
    "MutualLearning",
    "pair_layers",
    "callbacks",
    "data",
    "export",
    "objectives",
    "pruning",
    "quantization",
    "soft_labels",
    "schemes",
    "SoftLabels",
    "compute_soft_labels",
    "__version__",
]

registration.register_when_keras_loads()
