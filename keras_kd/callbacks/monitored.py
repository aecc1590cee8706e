"""The monitored metric, its best value and the file name of an epoch: what
the callbacks that write the student share."""

import os
import weakref

import keras
import numpy as np

__all__ = ["BestStudentCallback", "student_of"]

# Every BestStudentCallback that has begun a fit(): the callbacks of one fit()
# share Keras's `params` dict, which is how a second writer of a file in the
# same fit() is recognised (callbacks of earlier fits, even of a fit() that
# crashed, hold another dict).
_WRITERS = weakref.WeakSet()

# Metric names (without "val_") whose best value is the largest.
MAX_HINTS = ("acc", "auc", "precision", "recall", "f1", "fbeta", "iou",
             "top_k", "r2")


def student_of(model):
    """The Distiller's student, or the model itself for a plain model.

    Example:

    >>> import keras
    >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    >>> student_of(model) is model
    True
    """
    student = getattr(model, "student", None)
    return student if isinstance(student, keras.Model) else model


class BestStudentCallback(keras.callbacks.Callback):
    """What :class:`~keras_kd.callbacks.StudentCheckpoint` and
    :class:`~keras_kd.callbacks.TFLiteExport` share: the monitored metric and
    its best value, and the file name of an epoch.

    ``mode="auto"`` minimises names ending in ``loss``, ``error``,
    ``crossentropy`` or ``divergence`` and maximises names holding ``acc``,
    ``auc``, ``precision``, ``recall``, ``f1``, ``fbeta``, ``iou``,
    ``top_k`` or ``r2``; a non-finite value is never an improvement.
    Subclasses set ``filepath`` and ``verbose``.

    Example:

    >>> callback = BestStudentCallback("val_accuracy", "auto", None)
    >>> callback.mode, callback.is_improvement(0.5), callback.best
    ('max', True, None)
    """

    def __init__(self, monitor, mode, initial_value_threshold):
        super().__init__()
        if mode not in ("auto", "min", "max"):
            raise ValueError(
                f"mode must be 'auto', 'min' or 'max', got {mode!r}."
            )
        self.monitor = monitor
        self.mode = None if monitor is None else self._resolve_mode(monitor,
                                                                    mode)
        self.best = (None if initial_value_threshold is None
                     else float(initial_value_threshold))
        self.best_epoch = None

    def targets(self):
        """The files this callback writes, as absolute paths (``str.format``
        fields left unfilled)."""
        return {os.path.abspath(self.filepath)}

    def on_train_begin(self, logs=None):
        self.claim_targets()

    def claim_targets(self):
        """Refuses a second callback of this ``fit()`` writing one of this
        callback's files (see the class docstring)."""
        _WRITERS.add(self)
        if self.params is None:  # not in a fit(): nothing to compare with
            return
        for other in list(_WRITERS):
            if other is self or other.params is not self.params:
                continue
            shared = sorted(self.targets() & other.targets())
            if shared:
                raise ValueError(
                    f"{type(other).__name__} and {type(self).__name__} in one "
                    f"fit() both write {shared[0]!r}: each keeps its own best "
                    "epoch, so the file would hold whichever wrote last. Give "
                    "each callback its own filepath, or keep one of them.")

    def _resolve_mode(self, monitor, mode):
        if mode != "auto":
            return mode
        name = monitor.lower().removeprefix("val_")
        if name.endswith(("loss", "error", "crossentropy", "divergence")):
            return "min"
        if any(hint in name for hint in MAX_HINTS):
            return "max"
        raise ValueError(
            f"{type(self).__name__} cannot tell whether {monitor!r} is better "
            "high or low. Pass mode='max' (e.g. for an accuracy) or "
            "mode='min' (e.g. for a loss)."
        )

    def path_of_epoch(self, epoch, logs):
        """The file path of ``epoch``: ``{epoch}`` and logged names are
        filled into the file name only (a directory is used as given, braces
        and all)."""
        owner = type(self).__name__
        directory, name = os.path.split(self.filepath)
        try:
            name = name.format(epoch=epoch + 1, **logs)
        except KeyError as error:
            missing = error.args[0]
            hint = (" Validation metrics ('val_*') need validation_data= in "
                    "fit()." if str(missing).startswith("val_") else "")
            raise ValueError(
                f"{owner}'s file name {name!r} uses {{{missing}}}, "
                f"which epoch {epoch + 1} did not log (it logged "
                f"{sorted(logs)}).{hint} Use {{epoch}} or a logged name, or "
                "write a literal brace as '{{' or '}}'.") from None
        except (ValueError, IndexError) as error:
            raise ValueError(
                f"{owner}'s file name {name!r} is not a valid format "
                f"string ({error}). Write literal braces as '{{{{' and "
                f"'}}}}', e.g. 'student_{{epoch:02d}}"
                f"{os.path.splitext(name)[1]}'.") from None
        return os.path.join(directory, name)

    def monitored(self, epoch, logs, fix):
        """``logs[monitor]`` as a float; a missing name raises, naming the
        logged ones and ``fix`` (the other way to use the callback)."""
        if self.monitor not in logs:
            hint = (" Validation metrics ('val_*') need validation_data= "
                    "in fit()." if self.monitor.startswith("val_") else "")
            raise ValueError(
                f"{type(self).__name__} monitors {self.monitor!r}, which is "
                f"not in the logs of epoch {epoch + 1}: "
                f"{sorted(logs)}.{hint} Pass one of the logged names as "
                f"monitor=, or {fix}."
            )
        return float(np.asarray(logs[self.monitor]))

    def is_improvement(self, value):
        if not np.isfinite(value):  # a diverged epoch is never the best one
            return False
        if self.best is None:
            return True
        return value < self.best if self.mode == "min" else value > self.best

    def say_no_improvement(self, epoch, value, action):
        if self.verbose:
            best = "None" if self.best is None else f"{self.best:.5f}"
            print(f"\nEpoch {epoch + 1}: {self.monitor} is {value:.5f}, "
                  f"no improvement on {best}; {action}")

    def say_improvement(self, epoch, value, action):
        if self.verbose:
            before = "None" if self.best is None else f"{self.best:.5f}"
            print(f"\nEpoch {epoch + 1}: {self.monitor} improved from "
                  f"{before} to {value:.5f}, {action}")
