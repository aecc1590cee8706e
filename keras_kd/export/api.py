"""Ship the student: ``.keras``, SavedModel and TFLite (LiteRT) exports.

Every function here takes the trained student (a ``keras.Model``) or the
``keras_kd.Distiller`` that trained it, in which case only
``distiller.student`` is exported: the teacher never leaves the training
machine. Files are written atomically (:func:`keras_kd.saving.replacing`):
a failed or unverified export leaves an existing file as it was.
"""

import contextlib
import dataclasses
import os
import tempfile
import warnings

import keras
import numpy as np

from keras_kd import inputs, ownership, saving
from keras_kd.export import convert, litert, worker
from keras_kd.export.errors import FlexOpsError, FloatOpsError

QUANTIZE_MODES = ("float32", "float16", "dynamic", "int8")

# Calibration samples used for full-integer quantization; TFLite's guide
# recommends a few hundred.
REPRESENTATIVE_SAMPLES = 200


@dataclasses.dataclass
class ExportReport:
    """What :func:`to_tflite` wrote and how it compares to the Keras model.

    Attributes:
        path: the ``.tflite`` file written.
        quantize: ``"float32"``, ``"float16"``, ``"dynamic"`` or ``"int8"``.
        size_bytes: size of the file.
        latency_ms_median: median single-sample (batch 1) latency over
            ``latency_runs`` invocations of the LiteRT interpreter on the host
            CPU (one thread), or None when ``latency_runs=0``.
        max_abs_diff: ``max |tflite(x) - keras(x)|`` over the verification
            inputs (None when ``verify=False``).
        keras_accuracy, tflite_accuracy: top-1 accuracy of the Keras student
            and of the exported model on ``eval_data`` (None without it).
        accuracy_change: ``tflite_accuracy - keras_accuracy`` (negative: the
            export lost accuracy).
        float_model_accuracy: for a quantization-aware student whose float
            model is known (:func:`keras_kd.quantization.float_model_of`),
            that float model's top-1 accuracy on ``eval_data``; else None.
        accuracy_change_vs_float: ``tflite_accuracy - float_model_accuracy``:
            what quantization cost in all (None without a float model).
        flex_ops: the TensorFlow (Flex) ops the file needs; empty unless
            ``allow_flex=True``.
        float_ops: for an ``"int8"`` file, its ops that compute in float
            (:func:`keras_kd.export.litert.float_ops`), e.g.
            ``["NEG(FLOAT32 -> FLOAT32)"]``; empty for a fully int8 file,
            and non-empty only with ``allow_float_ops=True``.
        converted_in: ``"process"`` (TensorFlow backend) or ``"subprocess"``
            (JAX / PyTorch backends).
    """

    path: str
    quantize: str
    size_bytes: int
    latency_ms_median: float | None = None
    max_abs_diff: float | None = None
    keras_accuracy: float | None = None
    tflite_accuracy: float | None = None
    accuracy_change: float | None = None
    float_model_accuracy: float | None = None
    accuracy_change_vs_float: float | None = None
    flex_ops: list = dataclasses.field(default_factory=list)
    float_ops: list = dataclasses.field(default_factory=list)
    converted_in: str = "process"

    def as_dict(self):
        """The report as a plain, JSON-serialisable dict."""
        return dataclasses.asdict(self)

    def summary(self):
        """One line for logs, e.g. ``student_int8.tflite [int8], 8.8 KiB, ...``."""
        parts = [f"{os.path.basename(self.path)} [{self.quantize}]",
                 f"{self.size_bytes / 1024:.1f} KiB"]
        if self.latency_ms_median is not None:
            ms = self.latency_ms_median
            parts.append(f"latency {ms * 1000:.1f} µs (median)" if ms < 1
                         else f"latency {ms:.2f} ms (median)")
        if self.max_abs_diff is not None:
            parts.append(f"max |tflite - keras| {self.max_abs_diff:.2e}")
        if self.tflite_accuracy is not None:
            parts.append(
                f"accuracy keras {self.keras_accuracy:.4f} -> tflite "
                f"{self.tflite_accuracy:.4f} ({self.accuracy_change:+.4f})")
        if self.float_model_accuracy is not None:
            parts.append(
                f"float model {self.float_model_accuracy:.4f} -> tflite "
                f"({self.accuracy_change_vs_float:+.4f})")
        if self.flex_ops:
            parts.append(f"flex ops {self.flex_ops}")
        if self.float_ops:
            parts.append(f"FLOAT OPS in an int8 file: {self.float_ops}")
        return ", ".join(parts)


# ----------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------
def student_of(model):
    """The model to export: ``model`` itself, or a Distiller's student."""
    from keras_kd.distiller import Distiller

    if isinstance(model, Distiller):
        return model.student
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"Expected a keras.Model or a keras_kd.Distiller, got "
            f"{type(model).__name__}. Pass the trained student "
            "(e.g. distiller.student) or the Distiller itself.")
    if not model.built or not model.weights:
        raise ValueError(
            f"Model '{model.name}' is not built. Call it on a batch or train "
            "it (fit) before exporting.")
    return model


def input_spec(model):
    """The single input's non-batch shape and dtype."""
    inputs = getattr(model, "inputs", None)
    if not inputs or len(inputs) != 1:
        raise ValueError(
            f"to_tflite exports models with exactly one input tensor; "
            f"'{model.name}' has "
            f"{'an unknown number of' if not inputs else len(inputs)} inputs. "
            "Build the student as a functional model with one keras.Input, "
            "or export it with model.export(path, format='litert'); a "
            "language model on token_ids and padding_mask exports with "
            "kd.export.lm_to_tflite.")
    shape = tuple(inputs[0].shape[1:])
    if any(d is None for d in shape):
        raise ValueError(
            f"Model '{model.name}' has input shape {(None,) + shape} with "
            "unknown non-batch dimensions; give keras.Input a fixed shape, "
            "e.g. keras.Input((32, 32, 3)), before exporting to TFLite.")
    return shape, str(inputs[0].dtype)


def check_path(path, suffix):
    """``path`` as a string, refused unless it ends with ``suffix`` (when
    given), and the folder it goes into, created if missing.

    Example:

    >>> import os, tempfile
    >>> path, folder = check_path(os.path.join(tempfile.mkdtemp(), "s.tflite"),
    ...                           ".tflite")
    >>> os.path.isdir(folder)
    True
    """
    path = os.fspath(path)
    if suffix and not path.endswith(suffix):
        raise ValueError(
            f"The export path must end with '{suffix}', got {path!r}; e.g. "
            f"'saved_models/student{suffix}'.")
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    return path, directory


def _collect(data, shape, dtype, limit=None, what="representative_data"):
    """Inputs (and labels, when present) from an array, (x, y) or tf.data."""
    xs, ys = [], []
    count = 0

    def add(x, y):
        nonlocal count
        x = np.asarray(x)
        if x.ndim == len(shape):  # a single, unbatched sample
            x = x[None]
            y = None if y is None else np.asarray(y)[None]
        if tuple(x.shape[1:]) != shape:
            raise ValueError(
                f"{what} has samples of shape {tuple(x.shape[1:])}, but the "
                f"model takes inputs of shape {shape}; reshape the data "
                f"(e.g. x.reshape(-1, {', '.join(map(str, shape))})).")
        xs.append(x)
        if y is not None:
            ys.append(np.asarray(y))
        count += len(x)

    if isinstance(data, np.ndarray) or (
            hasattr(data, "__array__") and not isinstance(data, (tuple, list))
            and not hasattr(data, "as_numpy_iterator")):
        add(data, None)
    elif isinstance(data, tuple) and len(data) == 2 and hasattr(
            data[0], "__array__") and hasattr(data[1], "__array__"):
        add(data[0], data[1])
    elif hasattr(data, "as_numpy_iterator") or hasattr(data, "__iter__"):
        iterator = (data.as_numpy_iterator()
                    if hasattr(data, "as_numpy_iterator") else iter(data))
        if limit is None:
            inputs.refuse_infinite(data, what)
        else:  # at most `limit` elements, even if they are empty batches
            iterator = inputs.bounded(iterator, limit, what)
        for element in iterator:
            if isinstance(element, dict):
                raise ValueError(
                    f"{what} yields dicts; map it to (x, y) or x first, "
                    "e.g. ds.map(lambda d: (d['image'], d['label'])).")
            if isinstance(element, (tuple, list)):
                add(element[0], element[1] if len(element) > 1 else None)
            else:
                add(element, None)
            if limit is not None and count >= limit:
                break
    else:
        raise TypeError(
            f"{what} must be a NumPy array, an (x, y) tuple of arrays or a "
            f"tf.data.Dataset, got {type(data).__name__}.")
    if count == 0:
        raise ValueError(f"{what} is empty (0 samples); pass at least one "
                         "sample, e.g. a few hundred training inputs.")
    x = np.concatenate(xs)
    y = np.concatenate(ys) if len(ys) == len(xs) else None
    if np.issubdtype(x.dtype, np.floating) or "float" in dtype:
        x = x.astype(dtype if "float" in dtype else "float32")
    if np.issubdtype(x.dtype, np.floating) and not np.all(np.isfinite(x)):
        bad = int(np.sum(~np.all(np.isfinite(x.reshape(len(x), -1)), axis=1)))
        raise ValueError(
            f"{what} holds NaN or infinite values ({bad} of {len(x)} "
            "samples): int8 ranges calibrated or checked on them would be "
            "meaningless. Drop those samples, e.g. "
            "x = x[np.isfinite(x).reshape(len(x), -1).all(axis=1)].")
    return x, y


def _subset(x, limit, seed=0):
    """At most ``limit`` samples, drawn at random (data may be class-sorted)."""
    if len(x) <= limit:
        return x
    index = np.sort(np.random.default_rng(seed).choice(len(x), limit,
                                                       replace=False))
    return x[index]


@contextlib.contextmanager
def converted(model, path, quantize, representative=None, allow_flex=False,
              input_signature=None, allow_float_ops=False):
    """Converts ``model`` and writes the file beside ``path``, atomically.

    Converts (:func:`keras_kd.export.convert.tflite_bytes`), refuses Flex ops
    unless ``allow_flex``, reads an ``"int8"`` file's own op list and refuses
    any op in it that computes in float (:class:`FloatOpsError`) unless
    ``allow_float_ops`` (then it warns and the report lists them), writes the bytes to a temporary file beside
    ``path`` and yields ``(report, tmp)``: the ``with`` block checks
    ``tmp`` and fills in the :class:`ExportReport`. The file replaces
    ``path`` only when the block returns; an exception leaves ``path`` as it
    was.
    """
    data, converted_in = convert.tflite_bytes(model, quantize, representative,
                                              allow_flex, input_signature)
    flex = litert.flex_ops(data)
    if flex and not allow_flex:
        raise FlexOpsError(
            f"The converted model needs TensorFlow (Flex) ops {flex}, which "
            "the standard LiteRT runtime does not have. Replace the layers "
            "that use them (a custom layer calling e.g. keras.ops.erf or "
            "keras.ops.cumprod) with TFLite builtin ops, or pass "
            "allow_flex=True and ship the app with the LiteRT Flex delegate "
            "(select TF ops). Nothing was written to " + repr(path) + ".")
    float_ops = litert.float_ops(data) if quantize == "int8" else []
    if float_ops:
        message = (
            f"The int8 file for '{model.name}' computes {len(float_ops)} "
            f"op(s) in float: {float_ops}. The converter keeps a layer's "
            "float kernel when it has no int8 form (or no range to quantize "
            "it with). Replace the layers behind them "
            "(kd.quantization.unsupported_layers(model) lists the known "
            "ones), export with quantize='dynamic', or pass "
            "allow_float_ops=True to accept a partly float file")
        if not allow_float_ops:
            raise FloatOpsError(f"{message}. Nothing was written to "
                                f"{path!r}.")
        warnings.warn(f"{message}; writing it to {path!r} as asked "
                      "(allow_float_ops=True).", stacklevel=4)
    report = ExportReport(path=path, quantize=quantize, size_bytes=len(data),
                          flex_ops=flex, float_ops=float_ops,
                          converted_in=converted_in)
    with saving.replacing(path, suffix=".tflite") as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
        yield report, tmp


# ----------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------
def to_keras(model, path):
    """Saves the student as a ``.keras`` file (atomically).

    A Distiller saves only its student; the file loads with
    ``keras.models.load_model`` on any backend, without keras-kd.

    Args:
        model: the student ``keras.Model``, or a ``keras_kd.Distiller``.
        path: the target, ending in ``.keras``.

    Returns:
        ``path``.

    Example:

    >>> import keras, keras_kd as kd
    >>> inputs = keras.Input((64,))
    >>> student = keras.Model(inputs, keras.layers.Dense(10)(inputs))
    >>> kd.export.to_keras(student, "/tmp/student.keras")
    '/tmp/student.keras'
    """
    model = student_of(model)
    path, _ = check_path(path, ".keras")
    saving.save_atomically(model, path)
    return path


def to_saved_model(model, path):
    """Exports the student as a TensorFlow SavedModel directory (atomically).

    The SavedModel has one ``serve`` endpoint running the student with
    ``training=False`` (TF Serving, TF.js and TFLite converters read it).
    On JAX and PyTorch the export runs in a TensorFlow subprocess from a
    temporary ``.keras`` copy, so the graph holds plain TensorFlow ops.

    Args:
        model: the student ``keras.Model``, or a ``keras_kd.Distiller``.
        path: the target directory: new, empty, or a SavedModel keras-kd
            wrote (its folder holds keras-kd's ``.keras-kd.json`` marker, kind
            ``"saved_model"``), which is replaced only once the new export
            succeeded. Any other non-empty folder is refused
            (``FileExistsError``) and left as it is: keras-kd never deletes
            files it did not write.

    The export is written to a temporary folder beside ``path`` and moved
    onto it when complete, so no half-written SavedModel replaces a good one.

    Returns:
        ``path``.

    Example:

    >>> import os, tempfile, keras, keras_kd as kd
    >>> inputs = keras.Input((64,))
    >>> student = keras.Model(inputs, keras.layers.Dense(10)(inputs))
    >>> path = os.path.join(tempfile.mkdtemp(), "student_savedmodel")
    >>> kd.export.to_saved_model(student, path) == path
    True
    """
    model = student_of(model)
    path, directory = check_path(path, None)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{path!r} is a file; a SavedModel is a directory. "
                         "Pass a directory path such as 'saved_models/student'.")
    if os.path.isdir(path) and os.listdir(path) and not ownership.is_owned(
            path, "saved_model"):
        raise FileExistsError(
            f"{path!r} is a folder that holds files keras-kd did not write "
            "(it is not a SavedModel exported by keras-kd); replacing it "
            "would delete them. Choose a new or empty folder, e.g. "
            f"{os.path.join(path, 'student')!r}, or move those files away.")
    with saving.replacing(path, directory=True) as tmp_dir:
        ownership.claim_folder(tmp_dir, "saved_model")
        target = os.path.join(tmp_dir, "saved_model")
        if keras.backend.backend() == "tensorflow":
            model.export(target, format="tf_saved_model", verbose=False)
        else:
            with tempfile.TemporaryDirectory(prefix="keras_kd_export_") as tmp:
                worker.run_in_tensorflow(model, {"kind": "saved_model",
                                                 "output": target}, tmp)
        # The export is the directory itself (what `replacing` moves).
        for name in os.listdir(target):
            os.replace(os.path.join(target, name), os.path.join(tmp_dir, name))
        os.rmdir(target)
    return path


def to_tflite(model, path, quantize="float32", representative_data=None,
              eval_data=None, allow_flex=False, latency_runs=50,
              verify=True, allow_float_ops=False):
    """Converts the student to a TFLite (LiteRT) file, verified and timed.

    Precisions (weights / activations / file inputs and outputs):

    * ``"float32"``: float32 / float32 / float32; the reference.
    * ``"float16"``: float16 weights dequantized at load / float32 / float32;
      about half the size.
    * ``"dynamic"``: int8 weights / float32 with int8 matmuls where kernels
      exist (dynamic-range quantization) / float32; about a quarter of the
      size, no data needed.
    * ``"int8"``: full-integer quantization, int8 weights and activations,
      calibrated on ``representative_data``; inputs and outputs stay float32
      (the file quantizes the input and dequantizes the logits itself) so the
      file takes the same tensors as the Keras student. A
      quantization-aware student (:func:`keras_kd.quantization.quantize_model`)
      is converted with the ranges it learned: no ``representative_data``
      needed (if given, it only supplies verification inputs). Such a
      student exports as ``"int8"`` or ``"float32"`` (the simulated
      arithmetic in float), not ``"float16"`` or ``"dynamic"``; it must be
      calibrated (:func:`keras_kd.quantization.calibrate`) or trained first,
      or its placeholder ranges would be exported (refused).

    The int8 export checks its own file: it reads the op list of the
    converted file (:func:`keras_kd.export.litert.float_ops`) and refuses
    it (:class:`FloatOpsError`, nothing written) when any op between the
    input's QUANTIZE and the outputs' DEQUANTIZE computes in float, unless
    ``allow_float_ops=True`` (then it warns and ``report.float_ops`` lists
    them).

    Conversion is done by TensorFlow: in-process on the TensorFlow backend,
    in a ``KERAS_BACKEND=tensorflow`` subprocess (from a temporary ``.keras``
    copy) on JAX and PyTorch. The file is written to a temporary file beside
    ``path``, checked, and then moved onto ``path``; any failure leaves an
    existing ``path`` untouched.

    Verification (``verify=True``): the file must load and run in
    ``ai_edge_litert``'s interpreter; its outputs on up to 64 sample inputs
    (from ``representative_data``, else ``eval_data``, else standard normal
    noise) are compared to the Keras student's on the caller's backend,
    ``max_abs_diff = max |tflite(x) - keras(x)|``. A float32 export whose
    ``max_abs_diff`` exceeds ``1e-3 · max(1, max |keras(x)|)`` raises
    :class:`ExportError`. A file needing TensorFlow (Flex) ops raises
    :class:`FlexOpsError` unless ``allow_flex=True``.

    Accuracy (``eval_data``): the file's and its Keras model's top-1
    accuracy; for a quantization-aware student made in this process, also
    the accuracy of the float model it was made from
    (``report.float_model_accuracy``), so that the report shows what
    quantization cost in all, not only the conversion.

    Args:
        model: the student ``keras.Model`` (one input), or a
            ``keras_kd.Distiller`` (its student is exported).
        path: the target file, ending in ``.tflite``.
        quantize: ``"float32"``, ``"float16"``, ``"dynamic"`` or ``"int8"``.
        representative_data: calibration inputs, required for ``"int8"``
            unless the student is quantization-aware: a
            NumPy array of inputs, an ``(x, y)`` tuple, or a ``tf.data``
            dataset of ``x`` or ``(x, y)`` (batched or not). At most 2000
            samples (and 2000 elements) are read, so an infinite dataset is
            fine; up to 200 are drawn from them at random (seed 0).
        eval_data: optional ``(x, y)`` (or a finite dataset of ``(x, y)``;
            an infinite one is refused) with integer labels in
            ``[0, classes)`` or one-hot labels; the report then holds both
            models' top-1 accuracy and ``accuracy_change``.
        allow_flex: accept TensorFlow (Flex) ops in the file.
        allow_float_ops: accept (with a warning) an ``"int8"`` file with
            ops that compute in float.
        latency_runs: invocations timed at batch 1 (one thread); 0 skips.
        verify: run and compare the file before writing it.

    Returns:
        An :class:`ExportReport`.

    Example:

    >>> import keras, numpy as np, keras_kd as kd
    >>> inputs = keras.Input((64,))
    >>> student = keras.Model(inputs, keras.layers.Dense(10)(inputs))
    >>> x = np.random.rand(100, 64).astype("float32")
    >>> report = kd.export.to_tflite(student, "/tmp/student.tflite",
    ...                              quantize="int8", representative_data=x)
    >>> report.quantize, report.size_bytes > 0
    ('int8', True)
    """
    model = student_of(model)
    if quantize not in QUANTIZE_MODES:
        raise ValueError(
            f"quantize must be one of {list(QUANTIZE_MODES)}, got "
            f"{quantize!r}.")
    if not isinstance(latency_runs, int) or latency_runs < 0:
        raise ValueError(f"latency_runs must be an int >= 0, got "
                         f"{latency_runs!r}; e.g. 50, or 0 to skip timing.")
    shape, dtype = input_spec(model)
    path, directory = check_path(path, ".tflite")

    representative = None
    if representative_data is not None:
        representative, _ = _collect(representative_data, shape, dtype,
                                     limit=None if isinstance(
                                         representative_data, np.ndarray)
                                     else 10 * REPRESENTATIVE_SAMPLES)
        representative = _subset(representative, REPRESENTATIVE_SAMPLES)
    # A quantization-aware student (keras_kd.quantization) carries its int8
    # ranges: they are converted as learned, never re-calibrated.
    from keras_kd.quantization import (
        float_model_of,
        is_quantization_aware,
        uncalibrated,
    )

    quantization_aware = is_quantization_aware(model)
    if quantization_aware and uncalibrated(model):
        names = uncalibrated(model)
        raise ValueError(
            f"'{model.name}' is quantization-aware but {len(names)} of its "
            f"activation quantizers never saw data ({names[:5]}"
            f"{' ...' if len(names) > 5 else ''}): the file would quantize "
            "with their placeholder (-6, 6) ranges. Calibrate it first, "
            "kd.quantization.calibrate(model, x_train[:512]) (or "
            "quantize_model(student, calibration_data=...)), or train it "
            "(fit() sets the ranges). Nothing was written.")
    if quantization_aware and quantize in ("float16", "dynamic"):
        # The converter would make its FakeQuant ops int8 anyway.
        raise ValueError(
            f"'{model.name}' is quantization-aware: it exports as "
            "quantize='int8' (from its learned ranges) or as 'float32' (its "
            f"fake-quantized arithmetic in float), not as {quantize!r}. "
            "Export the float student for float16 or dynamic-range files.")
    if quantize == "int8" and representative is None and not \
            quantization_aware:
        raise ValueError(
            "quantize='int8' calibrates activation ranges on sample inputs: "
            "pass representative_data (e.g. a few hundred training inputs, "
            "representative_data=x_train[:200]), or use quantize='dynamic', "
            "which needs no data.")
    eval_x = eval_y = None
    if eval_data is not None:
        inputs.refuse_infinite(eval_data, "eval_data")
        eval_x, eval_y = _collect(eval_data, shape, dtype, what="eval_data")
        if eval_y is None:
            raise ValueError("eval_data must hold labels: pass (x, y), "
                             "e.g. eval_data=(x_test, y_test).")

    calibration = None if quantization_aware else representative
    with converted(model, path, quantize, calibration, allow_flex,
                   allow_float_ops=allow_float_ops) as (report, tmp):
        if verify or latency_runs or eval_x is not None:
            interpreter = litert.interpreter(tmp, bool(report.flex_ops))
        if verify:
            # Held-out data when given: calibration samples are the ones an
            # int8 file fits best, so they understate its error.
            if eval_x is not None:
                sample = eval_x[:64]
            elif representative is not None:
                sample = representative[:64]
            else:
                sample = np.random.default_rng(0).standard_normal(
                    (16,) + shape).astype(dtype)
            report.max_abs_diff = litert.max_abs_diff(
                interpreter, model, sample, quantize, path)
        if eval_x is not None:
            report.keras_accuracy, report.tflite_accuracy = \
                litert.accuracies(interpreter, model, eval_x, eval_y)
            report.accuracy_change = (report.tflite_accuracy
                                      - report.keras_accuracy)
            float_model = (float_model_of(model) if quantization_aware
                           else None)
            if float_model is not None:
                report.float_model_accuracy = litert.accuracy(
                    litert.predict_keras(float_model, eval_x)[0], eval_y)
                report.accuracy_change_vs_float = (
                    report.tflite_accuracy - report.float_model_accuracy)
        if latency_runs:
            report.latency_ms_median = litert.latency_ms(
                interpreter, np.zeros((1,) + shape, dtype=dtype), latency_runs)
    return report
