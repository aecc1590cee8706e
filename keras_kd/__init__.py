"""keras-kd: knowledge distillation as a first-class part of Keras 3.

Public API only; see the README for a tour.
"""

from keras_kd import objectives
from keras_kd.distiller import Distiller
from keras_kd.objectives import KD, FitNet

__version__ = "0.1.0"

__all__ = ["Distiller", "FitNet", "KD", "objectives", "__version__"]
