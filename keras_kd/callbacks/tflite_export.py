"""TFLiteExport: a verified TFLite file of the student, and its report,
written during ``fit()``."""

import hashlib
import json
import math
import os

import keras
import numpy as np

from keras_kd import inputs, ownership, saving
from keras_kd.callbacks.monitored import BestStudentCallback, student_of

__all__ = ["TFLiteExport"]


class TFLiteExport(BestStudentCallback):
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
    with its file), ``epoch`` (1-based), ``monitor``, ``logs`` (the
    epoch's logged values; non-finite ones as ``null``) and ``created_by``
    (``"keras-kd"``). A ``.json`` of that name that keras-kd did not write
    (no ``"created_by": "keras-kd"``: the user's own ``model.json`` beside
    ``model.tflite``) is never replaced: a ``FileExistsError`` names it, at
    the start of ``fit()`` for a fixed name, before the export for a name
    with format fields. Two callbacks of one ``fit()`` that write the same
    file are refused at its start (``ValueError``). The last report is
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

    def targets(self):
        """The ``.tflite`` file and its report (absolute paths)."""
        return {os.path.abspath(self.filepath),
                os.path.abspath(self.report_path_of(self.filepath))}

    def _check_report_path(self, report_path):
        try:
            ownership.check_replaceable_json(report_path)
        except FileExistsError as error:
            raise FileExistsError(
                f"TFLiteExport writes its export report beside the .tflite "
                f"file, to {report_path!r}, but {error} E.g. filepath="
                f"{os.path.splitext(self.filepath)[0] + '_student.tflite'!r}."
            ) from None

    def on_train_begin(self, logs=None):
        # What to_tflite would refuse at the first export, which may come
        # only at the end of training, fails now.
        super().on_train_begin(logs)
        self._last = None
        directory, name = os.path.split(self.filepath)
        try:
            fixed = os.path.join(directory, name.format())
        except (KeyError, IndexError, ValueError):
            fixed = None  # format fields: checked before each export
        if fixed is not None:
            self._check_report_path(self.report_path_of(fixed))
        student = student_of(self.model)
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
        value = self.monitored(
            epoch, logs, "monitor=None to export once at the end of fit()")
        if not self.is_improvement(value):
            self.say_no_improvement(epoch, value, "nothing exported")
            return
        path = self.path_of_epoch(epoch, logs)
        self.say_improvement(epoch, value, f"exporting the student to {path}")
        self._export(epoch, logs, path)
        self.best, self.best_epoch = value, epoch

    def on_train_end(self, logs=None):
        if self.monitor is not None or self._last is None:
            return
        epoch, last_logs = self._last
        path = self.path_of_epoch(epoch, last_logs)
        if self.verbose:
            print(f"\nEnd of training (epoch {epoch + 1}): exporting the "
                  f"student to {path}")
        self._export(epoch, last_logs, path)

    def _export(self, epoch, logs, path):
        from keras_kd.export import to_tflite

        report_path = self.report_path_of(path)
        self._check_report_path(report_path)
        # The report's temporary file is opened first and replaced last, so
        # both targets change only after the file is verified and the report
        # written.
        with saving.replacing(report_path, suffix=".json") as tmp_report, \
                saving.replacing(path, suffix=".tflite") as tmp_file:
            try:
                report = to_tflite(
                    student_of(self.model), tmp_file, quantize=self.quantize,
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
                          monitor=self.monitor, logs=_json_logs(logs),
                          created_by=ownership.CREATED_BY)
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
