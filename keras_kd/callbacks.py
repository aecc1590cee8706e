"""Callbacks for distillation: student checkpoints and TFLite exports,
temperature and alpha schedules.

All of them work in any ``fit()`` (a :class:`~keras_kd.Distiller`'s, and for
:class:`StudentCheckpoint` and :class:`TFLiteExport` a plain model's too),
next to Keras's own callbacks. For exact resumption of a killed run, use them
together with ``keras.callbacks.BackupAndRestore``: the Distiller's temperature
and alpha (non-trainable variables), its FitNet adapters and the optimizer
state are all in the backup, and the schedules are pure functions of the epoch
index, so a resumed run continues exactly where the killed one stopped.
"""

import hashlib
import json
import math
import os

import keras
import numpy as np

from keras_kd import checks, inputs, saving
from keras_kd.saving import save_atomically

__all__ = ["StudentCheckpoint", "TFLiteExport", "TemperatureSchedule",
           "AlphaSchedule"]

# Metric names (without "val_") whose best value is the largest.
_MAX_HINTS = ("acc", "auc", "precision", "recall", "f1", "fbeta", "iou",
              "top_k", "r2")


def _student_of(model):
    """The Distiller's student, or the model itself for a plain model."""
    student = getattr(model, "student", None)
    return student if isinstance(student, keras.Model) else model


class _BestStudentCallback(keras.callbacks.Callback):
    """What :class:`StudentCheckpoint` and :class:`TFLiteExport` share: the
    monitored metric and its best value, and the file name of an epoch."""

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


class TFLiteExport(_BestStudentCallback):
    """Exports the student to a verified TFLite (LiteRT) file during ``fit()``.

    Each export is :func:`keras_kd.export.to_tflite` on the Distiller's
    ``student`` (the model itself when used on a plain ``keras.Model``): the
    same conversion, precisions, checks and errors as calling it after
    training. The teacher is never exported.

    When it exports:

    * ``monitor=None`` (default): once, at the end of ``fit()``, the student
      as training left it. Put it after
      ``keras.callbacks.EarlyStopping(restore_best_weights=True)`` in the
      callback list to export the restored weights. A ``fit()`` that ran no
      epoch exports nothing.
    * ``monitor="val_loss"`` (any logged name): at the end of each epoch whose
      ``logs[monitor]`` improves on the best value so far, as in
      :class:`StudentCheckpoint` (same ``mode``, ``initial_value_threshold``,
      NaN handling, and a ``ValueError`` at the end of the first epoch when
      the name is not logged). On JAX and PyTorch each export runs in a
      TensorFlow worker process (about a second for a small student, a few
      seconds for the first), so expect early epochs, which improve often,
      to take longer.

    What it writes: ``filepath`` (``.tflite``) and the export report beside
    it, same stem, ``.json`` (``student.tflite`` → ``student.json``): the
    fields of :class:`~keras_kd.export.ExportReport` (``path``, ``quantize``,
    ``size_bytes``, ``max_abs_diff``, accuracies with ``eval_data``, ...)
    plus ``sha256`` (of the ``.tflite`` file, so the report can be matched
    with its file), ``epoch`` (1-based), ``monitor`` and ``logs`` (the
    epoch's logged values; non-finite ones as ``null``). The last report is
    also kept as :attr:`report` (an ``ExportReport``), its JSON path as
    :attr:`report_path`.

    Verification: with ``verify=True`` (default) the file is run in LiteRT
    and compared with the Keras student before anything is written; a float32
    file that differs raises :class:`~keras_kd.export.ExportError`. The
    report's ``max_abs_diff`` gives the difference at every precision.

    Atomicity: the file and the report are both written to temporary files
    in the target folder; only when the export is verified and the report
    written are they moved onto ``filepath`` and its ``.json`` with
    ``os.replace`` (file first, then report). A failed export (a conversion
    error, a failed check, :class:`~keras_kd.export.FlexOpsError`, a full
    disk) raises, stops ``fit()`` and leaves the previous file and report
    byte for byte as they were, with no temporary file left behind. Only a
    kill between the two renames can leave a new file beside the previous
    report; its ``sha256`` then does not match the file.

    ``filepath`` may hold ``str.format`` fields filled with the 1-based epoch
    and the logs, as in :class:`StudentCheckpoint`, e.g.
    ``"student_{epoch:02d}.tflite"`` keeps one file per export; a fixed name
    keeps the latest (with a monitor: the best).

    A quantization-aware student (:func:`keras_kd.quantization.quantize_model`,
    trained by quantization-aware distillation) exports the same way: the
    callback only calls ``to_tflite`` on the student with the options given
    here, so ``quantize="int8"`` writes a fully int8 file from its learned
    ranges, without ``representative_data``.

    Args:
        filepath: the ``.tflite`` file (folders are created).
        quantize: ``"float32"``, ``"float16"``, ``"dynamic"`` or ``"int8"``
            (see :func:`~keras_kd.export.to_tflite`).
        monitor: None (export once, at the end of ``fit()``) or the logged
            metric whose improvements trigger an export, e.g. ``"val_loss"``.
        mode: ``"auto"``, ``"min"`` or ``"max"``, as in
            :class:`StudentCheckpoint`.
        representative_data: calibration inputs, required for ``"int8"``
            unless the student is quantization-aware
            (:func:`keras_kd.quantization.quantize_model`), whose learned
            ranges are used.
        eval_data: optional ``(x, y)``; the report then holds the Keras and
            TFLite top-1 accuracy.
        allow_flex: accept TensorFlow (Flex) ops in the file.
        allow_float_ops: accept (with a warning) an ``"int8"`` file with ops
            that compute in float; without it such an export fails.
        latency_runs: batch-1 invocations timed for the report (0, the
            default, skips timing: it would run at every export).
        verify: run the file and compare it with the student before writing.
        initial_value_threshold: with a monitor, a best value to beat from
            the start.
        verbose: 1 prints a line on each export (and on each epoch without
            improvement), with the report's summary.

    Example:

    >>> import keras, numpy as np, keras_kd as kd, json, os, tempfile
    >>> inputs = keras.Input((8,))
    >>> student = keras.Model(inputs, keras.layers.Dense(3)(inputs))
    >>> student.compile("sgd", "mse")
    >>> x = np.random.rand(32, 8).astype("float32")
    >>> y = np.random.rand(32, 3).astype("float32")
    >>> path = os.path.join(tempfile.mkdtemp(), "student.tflite")
    >>> export = kd.callbacks.TFLiteExport(path, quantize="float16")
    >>> _ = student.fit(x, y, epochs=2, verbose=0, callbacks=[export])
    >>> sorted(os.listdir(os.path.dirname(path)))
    ['student.json', 'student.tflite']
    >>> report = json.load(open(export.report_path))
    >>> report["quantize"], report["epoch"], report["max_abs_diff"] < 1e-2
    ('float16', 2, True)
    """

    def __init__(self, filepath, quantize="float32", monitor=None,
                 mode="auto", representative_data=None, eval_data=None,
                 allow_flex=False, latency_runs=0, verify=True,
                 initial_value_threshold=None, verbose=0,
                 allow_float_ops=False):
        from keras_kd.export import QUANTIZE_MODES

        filepath = os.fspath(filepath)
        if not isinstance(filepath, str) or not filepath.endswith(".tflite"):
            raise ValueError(
                f"TFLiteExport writes a TFLite file, so filepath must end in "
                f"'.tflite', got {filepath!r}; e.g. "
                "'saved_models/student.tflite' (for a .keras file, use "
                "kd.callbacks.StudentCheckpoint).")
        if monitor is not None and (not isinstance(monitor, str)
                                    or not monitor):
            raise ValueError(
                f"monitor must be None (export once, at the end of fit()) "
                f"or a metric name such as 'val_loss', got {monitor!r}.")
        if quantize not in QUANTIZE_MODES:
            raise ValueError(
                f"quantize must be one of {list(QUANTIZE_MODES)}, got "
                f"{quantize!r}.")
        if isinstance(latency_runs, bool) or not isinstance(
                latency_runs, int) or latency_runs < 0:
            raise ValueError(f"latency_runs must be an int >= 0, got "
                             f"{latency_runs!r}; e.g. 50, or 0 to skip "
                             "timing.")
        super().__init__(monitor, mode, initial_value_threshold)
        self.filepath = filepath
        self.quantize = quantize
        self.representative_data = representative_data
        # Refused now, not at the first export (maybe after all epochs).
        inputs.refuse_infinite(eval_data, "eval_data")
        self.eval_data = eval_data
        self.allow_flex = bool(allow_flex)
        self.allow_float_ops = bool(allow_float_ops)
        self.latency_runs = latency_runs
        self.verify = bool(verify)
        self.verbose = verbose
        self.report = None
        self.report_path = None
        self._last = None  # (epoch, logs) of the last epoch of this fit()

    @staticmethod
    def report_path_of(path):
        """The report beside a ``.tflite`` file: same stem, ``.json``."""
        return os.path.splitext(path)[0] + ".json"

    def on_train_begin(self, logs=None):
        # What to_tflite would refuse at the first export, which may come
        # only at the end of training, fails now.
        self._last = None
        student = _student_of(self.model)
        if student.built and student.weights:
            from keras_kd.export.api import input_spec

            input_spec(student)  # one input, fixed non-batch dimensions
        if self.quantize == "int8" and self.representative_data is None:
            from keras_kd.quantization import is_quantization_aware

            # A quantization-aware student exports from its learned ranges.
            if not is_quantization_aware(student):
                raise ValueError(
                    "TFLiteExport(quantize='int8') calibrates the student's "
                    "activation ranges on sample inputs: pass "
                    "representative_data (e.g. representative_data="
                    "x_train[:200]), make the student quantization-aware "
                    "(kd.quantization.quantize_model), or use "
                    "quantize='dynamic', which needs no data.")

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        self._last = (epoch, logs)
        if self.monitor is None:
            return
        value = self._monitored(
            epoch, logs, "monitor=None to export once at the end of fit()")
        if not self._is_improvement(value):
            self._no_improvement(epoch, value, "nothing exported")
            return
        path = self._path(epoch, logs)
        self._improvement(epoch, value, f"exporting the student to {path}")
        self._export(epoch, logs, path)
        self.best, self.best_epoch = value, epoch

    def on_train_end(self, logs=None):
        if self.monitor is not None or self._last is None:
            return
        epoch, last_logs = self._last
        path = self._path(epoch, last_logs)
        if self.verbose:
            print(f"\nEnd of training (epoch {epoch + 1}): exporting the "
                  f"student to {path}")
        self._export(epoch, last_logs, path)

    def _export(self, epoch, logs, path):
        from keras_kd.export import to_tflite

        report_path = self.report_path_of(path)
        # The report's temporary file is opened first and replaced last, so
        # both targets change only after the file is verified and the report
        # written.
        with saving.replacing(report_path, suffix=".json") as tmp_report, \
                saving.replacing(path, suffix=".tflite") as tmp_file:
            try:
                report = to_tflite(
                    _student_of(self.model), tmp_file, quantize=self.quantize,
                    representative_data=self.representative_data,
                    eval_data=self.eval_data, allow_flex=self.allow_flex,
                    latency_runs=self.latency_runs, verify=self.verify,
                    allow_float_ops=self.allow_float_ops)
            except Exception as error:
                # Name the target, not the temporary file, in the message.
                message = str(error).replace(tmp_file, path)
                if message != str(error) and len(error.args) == 1:
                    error.args = (message,)
                raise
            report.path = path
            with open(tmp_file, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
            record = dict(report.as_dict(), sha256=digest, epoch=epoch + 1,
                          monitor=self.monitor, logs=_json_logs(logs))
            _write_report(record, tmp_report)
        self.report, self.report_path = report, report_path
        if self.verbose:
            print(f"TFLiteExport: {report.summary()}")


def _write_report(record, path):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=2, allow_nan=False)
        f.write("\n")


def _json_logs(logs):
    """The scalar values of ``logs`` as floats (non-finite ones as None)."""
    values = {}
    for name, value in logs.items():
        try:
            value = float(np.asarray(keras.ops.convert_to_numpy(value)))
        except (TypeError, ValueError):
            continue  # not a scalar
        values[name] = value if math.isfinite(value) else None
    return values


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
