"""Callbacks for distillation: student checkpoints and TFLite exports,
temperature and alpha schedules.

All of them work in any ``fit()`` (a :class:`~keras_kd.Distiller`'s, and for
:class:`StudentCheckpoint` and :class:`TFLiteExport` a plain model's too),
next to Keras's own callbacks. For exact resumption of a killed run, use them
together with ``keras.callbacks.BackupAndRestore``: the Distiller's temperature
and alpha (non-trainable variables), its FitNet adapters and the optimizer
state are all in the backup, and the schedules are pure functions of the epoch
index, so a resumed run continues exactly where the killed one stopped.

One concept a module: :mod:`~keras_kd.callbacks.monitored` (the monitored
metric and the file name of an epoch), :mod:`~keras_kd.callbacks.checkpoint`,
:mod:`~keras_kd.callbacks.tflite_export`,
:mod:`~keras_kd.callbacks.schedules`.
"""

from keras_kd.callbacks.checkpoint import StudentCheckpoint
from keras_kd.callbacks.schedules import AlphaSchedule, TemperatureSchedule
from keras_kd.callbacks.tflite_export import TFLiteExport

__all__ = ["StudentCheckpoint", "TFLiteExport", "TemperatureSchedule",
           "AlphaSchedule"]
