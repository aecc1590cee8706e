"""Callbacks for distillation: student checkpoints, temperature and alpha schedules.

All of them work in any ``fit()`` (a :class:`~keras_kd.Distiller`'s, and for
:class:`StudentCheckpoint` a plain model's too), next to Keras's own
callbacks. For exact resumption of a killed run, use them together with
``keras.callbacks.BackupAndRestore``: the Distiller's temperature and alpha
(non-trainable variables), its FitNet adapters and the optimizer state are all
in the backup, and the schedules are pure functions of the epoch index, so a
resumed run continues exactly where the killed one stopped.
"""

import math
import os

import keras
import numpy as np

from keras_kd import checks
from keras_kd.saving import save_atomically

__all__ = ["StudentCheckpoint", "TemperatureSchedule", "AlphaSchedule"]

# Metric names (without "val_") whose best value is the largest.
_MAX_HINTS = ("acc", "auc", "precision", "recall", "f1", "fbeta", "iou",
              "top_k", "r2")


def _student_of(model):
    """The Distiller's student, or the model itself for a plain model."""
    student = getattr(model, "student", None)
    return student if isinstance(student, keras.Model) else model


class _BestStudentCallback(keras.callbacks.Callback):
    """What the callbacks that keep the best student share: the monitored
    metric and its best value, and the file name of an epoch."""

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

    def _resolve_mode(self, monitor, mode):
        if mode != "auto":
            return mode
        name = monitor.lower().removeprefix("val_")
        if name.endswith(("loss", "error", "crossentropy", "divergence")):
            return "min"
        if any(hint in name for hint in _MAX_HINTS):
            return "max"
        raise ValueError(
            f"{type(self).__name__} cannot tell whether {monitor!r} is better "
            "high or low. Pass mode='max' (e.g. for an accuracy) or "
            "mode='min' (e.g. for a loss)."
        )

    def _path(self, epoch, logs):
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

    def _monitored(self, epoch, logs, fix):
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

    def _is_improvement(self, value):
        if not np.isfinite(value):  # a diverged epoch is never the best one
            return False
        if self.best is None:
            return True
        return value < self.best if self.mode == "min" else value > self.best

    def _no_improvement(self, epoch, value, action):
        if self.verbose:
            best = "None" if self.best is None else f"{self.best:.5f}"
            print(f"\nEpoch {epoch + 1}: {self.monitor} is {value:.5f}, "
                  f"no improvement on {best}; {action}")

    def _improvement(self, epoch, value, action):
        if self.verbose:
            before = "None" if self.best is None else f"{self.best:.5f}"
            print(f"\nEpoch {epoch + 1}: {self.monitor} improved from "
                  f"{before} to {value:.5f}, {action}")


class StudentCheckpoint(_BestStudentCallback):
    """Saves the student alone as a ``.keras`` file, the best by a metric.

    At the end of each epoch, when ``logs[monitor]`` improves on the best value
    seen so far (``mode="min"``: lower is better; ``"max"``: higher), the
    Distiller's ``student`` (the model itself when used on a plain
    ``keras.Model``) is written to ``filepath`` with
    ``keras.saving.save_model``. The teacher, adapters and optimizer are not in
    the file: it is an ordinary Keras model, ready for
    ``keras.models.load_model`` and export.

    The write is atomic: the model is saved to a temporary file in the same
    directory, then moved over ``filepath`` with ``os.replace``. A crash or a
    kill during the write leaves the last good checkpoint untouched.

    ``filepath`` may hold ``str.format`` fields filled with the 1-based epoch
    and the logs, e.g. ``"student_{epoch:02d}_{val_loss:.3f}.keras"``.

    A ``monitor`` absent from the logs raises a ``ValueError`` at the end of
    the first epoch, listing the names that are there (Keras's
    ``ModelCheckpoint`` only warns and then saves every epoch, which silently
    defeats ``save_best_only``; failing after one epoch costs less than
    discovering after training that no best model was kept). ``val_*``
    metrics need ``validation_data`` in ``fit()``.

    With ``mode="auto"``, names ending in ``loss`` or ``error`` (and
    ``crossentropy``/``divergence``) are minimised, names containing ``acc``,
    ``auc``, ``precision``, ``recall``, ``f1``, ``iou`` or ``top_k`` are
    maximised, and any other name asks for an explicit ``mode``.

    Args:
        filepath: path of the ``.keras`` file (directories are created).
        monitor: the logged metric to compare, e.g. ``"val_loss"`` or
            ``"val_accuracy"``.
        mode: ``"auto"``, ``"min"`` or ``"max"``.
        save_best_only: save only on improvement (default); ``False`` saves
            every epoch (the latest model).
        verbose: 1 prints a line on each save.
        initial_value_threshold: a best value to beat from the start, e.g.
            the last best value of a run being resumed with
            ``BackupAndRestore`` (the callback's own best is not part of the
            backup).

    Example:

    >>> import keras, numpy as np, keras_kd as kd, tempfile, os
    >>> def mlp(width, name):
    ...     inputs = keras.Input((64,))
    ...     h = keras.layers.Dense(width, activation="relu")(inputs)
    ...     return keras.Model(inputs, keras.layers.Dense(10)(h), name=name)
    >>> distiller = kd.Distiller(teacher=mlp(64, "teacher"),
    ...                          student=mlp(16, "student"))
    >>> distiller.compile(optimizer="adam", metrics=["accuracy"],
    ...     loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    >>> x = np.random.rand(16, 64).astype("float32")
    >>> y = np.random.randint(0, 10, 16)
    >>> path = os.path.join(tempfile.mkdtemp(), "student.keras")
    >>> _ = distiller.fit(x, y, validation_data=(x, y), epochs=2, verbose=0,
    ...     callbacks=[kd.callbacks.StudentCheckpoint(path)])
    >>> keras.models.load_model(path).name
    'student'
    """

    def __init__(self, filepath, monitor="val_loss", mode="auto",
                 save_best_only=True, verbose=0, initial_value_threshold=None):
        filepath = os.fspath(filepath)
        if not isinstance(filepath, str) or not filepath.endswith(".keras"):
            raise ValueError(
                f"StudentCheckpoint saves a whole Keras model, so filepath "
                f"must end in '.keras', got {filepath!r}. Use e.g. "
                "'saved_models/student.keras' (for weights only, use "
                "keras.callbacks.ModelCheckpoint(..., save_weights_only=True) "
                "with a '.weights.h5' path)."
            )
        if not isinstance(monitor, str) or not monitor:
            raise ValueError(
                f"monitor must be a metric name such as 'val_loss', got "
                f"{monitor!r}."
            )
        super().__init__(monitor, mode, initial_value_threshold)
        self.filepath = filepath
        self.save_best_only = bool(save_best_only)
        self.verbose = verbose

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        path = self._path(epoch, logs)
        if self.save_best_only:
            value = self._monitored(
                epoch, logs, "save_best_only=False to save every epoch")
            if not self._is_improvement(value):
                self._no_improvement(epoch, value, "nothing saved")
                return
            self._improvement(epoch, value,
                              f"saving the student to {path}")
            self.best, self.best_epoch = value, epoch
        elif self.verbose:
            print(
                f"\nEpoch {epoch + 1}: saving the student to {path}")
        save_atomically(_student_of(self.model), path)


# ----------------------------------------------------------------------
# Schedules
# ----------------------------------------------------------------------
_KINDS = ("linear", "cosine", "exponential", "constant")


class _ParameterSchedule(keras.callbacks.Callback):
    """Sets one Distiller option each epoch from ``start`` to ``end``."""

    attribute = None  # "temperature" or "alpha"

    def __init__(self, start, end=None, epochs=1, kind="linear"):
        super().__init__()
        end = start if end is None else end
        self.start = self._check(start, "start")
        self.end = self._check(end, "end")
        if isinstance(epochs, bool) or not isinstance(
                epochs, (int, np.integer)) or epochs < 1:
            raise ValueError(
                f"{type(self).__name__}: epochs must be an integer >= 1 (the "
                f"length of the ramp in epochs), got {epochs!r}."
            )
        self.epochs = int(epochs)
        if kind not in _KINDS:
            raise ValueError(
                f"{type(self).__name__}: kind must be one of {_KINDS}, got "
                f"{kind!r}."
            )
        if kind == "exponential" and (self.start <= 0 or self.end <= 0):
            raise ValueError(
                f"{type(self).__name__}: kind='exponential' interpolates "
                f"geometrically and needs start and end > 0, got "
                f"start={self.start}, end={self.end}. Use kind='linear' or "
                "'cosine'."
            )
        self.kind = kind
        self.current = None

    def _check(self, value, arg):
        raise NotImplementedError

    def value_at(self, epoch):
        """The value used during (0-based) ``epoch``.

        With progress ``p = min(epoch / epochs, 1)``:

        * ``linear``: ``start + (end − start) · p``
        * ``cosine``: ``start + (end − start) · (1 − cos(π p)) / 2``
        * ``exponential``: ``start · (end / start) ** p``
        * ``constant``: ``start``

        so epoch 0 uses ``start`` and every epoch from ``epochs`` on uses
        ``end``.
        """
        if self.kind == "constant":
            return self.start
        p = min(max(float(epoch), 0.0) / self.epochs, 1.0)
        if self.kind == "linear":
            value = self.start + (self.end - self.start) * p
        elif self.kind == "cosine":
            value = self.start + (self.end - self.start) * (
                1.0 - math.cos(math.pi * p)) / 2.0
        else:
            value = self.start * (self.end / self.start) ** p
        # Keep rounding from stepping outside the validated range.
        low, high = sorted((self.start, self.end))
        return min(max(value, low), high)

    def _check_model(self):
        model = self.model
        if not hasattr(type(model), self.attribute) or not hasattr(
                model, f"_{self.attribute}"):
            raise ValueError(
                f"{type(self).__name__} sets the Distiller's "
                f"{self.attribute}, but fit() was called on a "
                f"{type(model).__name__} without one. Use it in "
                "kd.Distiller(...).fit(..., callbacks=[...])."
            )

    def on_train_begin(self, logs=None):
        self._check_model()

    def on_epoch_begin(self, epoch, logs=None):
        self.current = self.value_at(epoch)
        # The Distiller's property setter assigns its non-trainable variable;
        # every backend's trainer reads variables afresh at the first step of
        # an epoch, so the new value is used for the whole epoch.
        setattr(self.model, self.attribute, self.current)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and self.current is not None:
            logs[self.attribute] = self.current

    def get_config(self):
        return {"start": self.start, "end": self.end, "epochs": self.epochs,
                "kind": self.kind}


class TemperatureSchedule(_ParameterSchedule):
    """Changes the Distiller's temperature T from epoch to epoch.

    At the start of each epoch sets ``distiller.temperature`` to
    :meth:`value_at` ``(epoch)`` and at its end logs it as
    ``logs["temperature"]`` (seen by ``History``, and by ``CSVLogger`` /
    ``TensorBoard`` when they come after the schedule in the callback list).
    Epoch 0 uses ``start``; the value moves to ``end`` over ``epochs`` epochs
    (``linear``, ``cosine`` or ``exponential``) and stays there. Annealing T
    from high to low, or the reverse curriculum, is studied in e.g. Li et
    al., "Curriculum Temperature for Knowledge Distillation" (AAAI 2023,
    arXiv:2211.16231).

    A logit objective given its own ``temperature`` (``kd.objectives.KD(
    temperature=...)``) ignores the Distiller's, so the schedule raises for it.

    Args:
        start: T during epoch 0, > 0.
        end: T from epoch ``epochs`` on, > 0 (default: ``start``).
        epochs: length of the ramp in epochs, >= 1.
        kind: ``"linear"``, ``"cosine"``, ``"exponential"`` or ``"constant"``.

    Example:

    >>> import keras_kd as kd
    >>> schedule = kd.callbacks.TemperatureSchedule(8.0, 2.0, epochs=4)
    >>> [schedule.value_at(e) for e in range(6)]
    [8.0, 6.5, 5.0, 3.5, 2.0, 2.0]
    """

    attribute = "temperature"

    def _check(self, value, arg):
        return checks.check_temperature(
            value, strict=True, what=f"TemperatureSchedule: {arg}")

    def _check_model(self):
        super()._check_model()
        objective = getattr(self.model, "distillation_objective", None)
        own = getattr(objective, "temperature", None)
        if own is not None:
            raise ValueError(
                f"TemperatureSchedule sets the Distiller's temperature, but "
                f"the distillation objective {objective.name!r} has its own "
                f"temperature={own}, which takes precedence. Create it "
                "without temperature= (it then follows the Distiller's)."
            )


class AlphaSchedule(_ParameterSchedule):
    """Changes the Distiller's alpha (weight of the hard-label loss) per epoch.

    The step loss is ``alpha · hard + (1 − alpha) · soft + Σ feature terms``;
    at the start of each epoch ``distiller.alpha`` is set to
    :meth:`value_at` ``(epoch)`` and at its end logged as ``logs["alpha"]``.
    A typical use leans on the teacher early and on the labels later, e.g.
    ``AlphaSchedule(0.0, 0.5, epochs=10)``.

    Args:
        start: alpha during epoch 0, in [0, 1].
        end: alpha from epoch ``epochs`` on, in [0, 1] (default: ``start``).
        epochs: length of the ramp in epochs, >= 1.
        kind: ``"linear"``, ``"cosine"``, ``"exponential"`` (start, end > 0)
            or ``"constant"``.

    Example:

    >>> import keras_kd as kd
    >>> schedule = kd.callbacks.AlphaSchedule(0.0, 0.5, epochs=2,
    ...                                       kind="cosine")
    >>> [round(schedule.value_at(e), 3) for e in range(3)]
    [0.0, 0.25, 0.5]
    """

    attribute = "alpha"

    def _check(self, value, arg):
        return checks.check_alpha(value, what=f"AlphaSchedule: {arg}")
