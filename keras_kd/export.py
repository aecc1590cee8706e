"""Ship the student: ``.keras``, SavedModel and TFLite (LiteRT) exports.

Every function here takes the trained student (a ``keras.Model``) or the
``keras_kd.Distiller`` that trained it, in which case only
``distiller.student`` is exported: the teacher never leaves the training
machine.

TFLite conversion needs TensorFlow's converter, which reads a TensorFlow
graph. On the TensorFlow backend keras-kd converts in the same process
(``model.export(..., format="tf_saved_model")`` then
``tf.lite.TFLiteConverter.from_saved_model``). On JAX and PyTorch it saves
the student to a temporary ``.keras`` file and converts it in a worker
process running ``KERAS_BACKEND=tensorflow`` (started by the first export,
reused by later ones): the ``.keras`` format stores weights,
not backend code, so the TensorFlow graph computes the same function. The
caller writes the same line on every backend; the returned
:class:`ExportReport` checks the result against the student on the caller's
own backend.

Files are written atomically: the export goes to a temporary file in the
target directory, is verified there, and only then replaces ``path`` with
``os.replace``. A failed or unverified export leaves an existing file as it
was.
"""

import argparse
import atexit
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import keras
import numpy as np

from keras_kd.callbacks import save_atomically

QUANTIZE_MODES = ("float32", "float16", "dynamic", "int8")

# Calibration samples used for full-integer quantization; TFLite's guide
# recommends a few hundred.
_REPRESENTATIVE_SAMPLES = 200
# Float32 exports must match the Keras student to this tolerance (relative
# to the largest output magnitude, floored at 1) or the export fails.
_FLOAT32_TOLERANCE = 1e-3


class FlexOpsError(ValueError):
    """The converted model needs TensorFlow (Flex / "select TF") ops.

    Such a model only runs with a LiteRT runtime linked with the Flex
    delegate (larger binary, not available on microcontrollers).
    """


class ExportError(RuntimeError):
    """The conversion failed or the converted model failed verification."""


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
        flex_ops: the TensorFlow (Flex) ops the file needs; empty unless
            ``allow_flex=True``.
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
    flex_ops: list = dataclasses.field(default_factory=list)
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
        if self.flex_ops:
            parts.append(f"flex ops {self.flex_ops}")
        return ", ".join(parts)


# ----------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------
def _student(model):
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


def _input_spec(model):
    """The single input's non-batch shape and dtype."""
    inputs = getattr(model, "inputs", None)
    if not inputs or len(inputs) != 1:
        raise ValueError(
            f"to_tflite exports models with exactly one input tensor; "
            f"'{model.name}' has "
            f"{'an unknown number of' if not inputs else len(inputs)} inputs. "
            "Build the student as a functional model with one keras.Input, "
            "or export it with model.export(path, format='litert').")
    shape = tuple(inputs[0].shape[1:])
    if any(d is None for d in shape):
        raise ValueError(
            f"Model '{model.name}' has input shape {(None,) + shape} with "
            "unknown non-batch dimensions; give keras.Input a fixed shape, "
            "e.g. keras.Input((32, 32, 3)), before exporting to TFLite.")
    return shape, str(inputs[0].dtype)


def _check_path(path, suffix):
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
    if not xs:
        raise ValueError(f"{what} is empty; pass at least one sample.")
    x = np.concatenate(xs)
    y = np.concatenate(ys) if len(ys) == len(xs) else None
    if np.issubdtype(x.dtype, np.floating) or "float" in dtype:
        x = x.astype(dtype if "float" in dtype else "float32")
    return x, y


def _subset(x, limit, seed=0):
    """At most ``limit`` samples, drawn at random (data may be class-sorted)."""
    if len(x) <= limit:
        return x
    index = np.sort(np.random.default_rng(seed).choice(len(x), limit,
                                                       replace=False))
    return x[index]


# ----------------------------------------------------------------------
# Conversion (runs with the TensorFlow backend)
# ----------------------------------------------------------------------
def _converter_for(model, saved_model_dir, quantize, representative,
                   allow_flex):
    import tensorflow as tf

    model.export(saved_model_dir, format="tf_saved_model", verbose=False)
    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir)
    # SELECT_TF_OPS is always enabled so that a model needing TensorFlow ops
    # converts and the exact Flex ops can be named; without allow_flex the
    # caller then refuses the file (see _flex_ops).
    base = (tf.lite.OpsSet.TFLITE_BUILTINS_INT8 if quantize == "int8"
            else tf.lite.OpsSet.TFLITE_BUILTINS)
    converter.target_spec.supported_ops = [base, tf.lite.OpsSet.SELECT_TF_OPS]
    if quantize in ("float16", "dynamic", "int8"):
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if quantize == "int8":
        samples = representative

        def representative_dataset():
            for i in range(len(samples)):
                yield [samples[i:i + 1]]

        converter.representative_dataset = representative_dataset
        # Float inputs and outputs, int8 everywhere inside: callers feed the
        # same float tensors as to the Keras model (the quantize/dequantize
        # of the boundaries is part of the file).
        converter.inference_input_type = tf.float32
        converter.inference_output_type = tf.float32
    del allow_flex  # enforced after conversion, on the flatbuffer
    return converter


def _convert_in_process(model, quantize, representative, allow_flex):
    """TFLite bytes for ``model`` (TensorFlow backend only)."""
    with tempfile.TemporaryDirectory(prefix="keras_kd_export_") as tmp:
        converter = _converter_for(model, os.path.join(tmp, "saved_model"),
                                   quantize, representative, allow_flex)
        try:
            return converter.convert()
        except Exception as error:  # ConverterError and friends
            raise ExportError(_conversion_message(quantize, error)) from error


def _conversion_message(quantize, error):
    text = str(error).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    short = "\n".join(lines[-12:])
    hint = ""
    if quantize == "int8":
        hint = (" Full-integer quantization needs an int8 kernel for every "
                "op; try quantize='dynamic' (int8 weights, float "
                "activations) or quantize='float16'.")
    elif "custom op" in text:
        hint = (" The model uses an op that has neither a TFLite builtin nor "
                "a TensorFlow (Flex) kernel; replace the layer that uses it.")
    return f"TFLite conversion ({quantize}) failed:{hint}\n{short}"


def _worker(job_path):
    """Subprocess entry: convert the saved model described in ``job_path``."""
    with open(job_path) as f:
        job = json.load(f)
    import importlib

    for module in job["modules"]:
        importlib.import_module(module)
    import keras_kd  # noqa: F401  (registers keras-kd serializables)

    result = {}
    try:
        model = keras.models.load_model(job["keras_path"], compile=False)
        if job["kind"] == "saved_model":
            model.export(job["output"], format="tf_saved_model",
                         verbose=False)
        else:
            representative = (np.load(job["representative"])
                              if job["representative"] else None)
            data = _convert_in_process(model, job["quantize"],
                                       representative, job["allow_flex"])
            with open(job["output"], "wb") as f:
                f.write(data)
    except ExportError as error:
        result = {"error": str(error), "type": "ExportError"}
    except Exception as error:  # reported to the parent process
        result = {"error": f"{type(error).__name__}: {error}",
                  "type": "ExportError"}
    with open(job["result"], "w") as f:
        json.dump(result, f)


def _custom_modules(model):
    """Modules that define the model's non-Keras layers (to import there)."""
    modules = set()
    for layer in model._flatten_layers(include_self=True, recursive=True):
        module = type(layer).__module__
        if module.split(".")[0] == "keras":
            continue
        if module == "__main__":
            raise ValueError(
                f"Layer '{layer.name}' is an instance of "
                f"{type(layer).__name__}, defined in __main__. On the "
                f"{keras.backend.backend()} backend the export converts in a "
                "separate TensorFlow process, which cannot import __main__: "
                "move the class into an importable module (and register it "
                "with @keras.saving.register_keras_serializable()), or run "
                "with KERAS_BACKEND=tensorflow.")
        modules.add(module)
    return sorted(modules)


class _TensorFlowWorker:
    """A ``KERAS_BACKEND=tensorflow`` process that converts saved models.

    Started on the first export from a JAX or PyTorch session and reused by
    later ones (importing TensorFlow costs seconds, converting a small
    student well under one). Jobs are JSON files; the process reads their
    paths on stdin and answers one line per job on a private pipe, with
    everything it prints sent to a log file (whose tail goes into errors).
    """

    _lock = threading.Lock()
    _process = None
    _log = None

    @classmethod
    def run(cls, job_path):
        with cls._lock:
            for attempt in (0, 1):
                process = cls._start()
                try:
                    process.stdin.write(job_path + "\n")
                    process.stdin.flush()
                    answer = process.stdout.readline()
                except (BrokenPipeError, OSError):
                    answer = ""
                if answer.strip() == "done":
                    return
                tail = cls._log_tail()
                cls.close()
                if attempt or process.poll() is None:
                    break
            raise ExportError(
                "The TensorFlow conversion process failed (exit code "
                f"{process.poll()}). Check that tensorflow is installed in this "
                f"environment ({sys.executable}).\n{tail}")

    @classmethod
    def _start(cls):
        if cls._process is not None and cls._process.poll() is None:
            return cls._process
        cls.close()
        env = dict(os.environ, KERAS_BACKEND="tensorflow",
                   TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="-1")
        paths = [os.getcwd() if p == "" else p for p in sys.path]
        env["PYTHONPATH"] = os.pathsep.join(
            [p for p in paths if p] + [env.get("PYTHONPATH", "")]).rstrip(
                os.pathsep)
        cls._log = tempfile.NamedTemporaryFile(
            prefix="keras_kd_tf_worker_", suffix=".log", delete=False)
        read_fd, write_fd = os.pipe()
        cls._process = subprocess.Popen(
            [sys.executable, "-c",
             "import sys; from keras_kd.export import _serve; "
             "_serve(int(sys.argv[1]))", str(write_fd)],
            env=env, stdin=subprocess.PIPE, stdout=cls._log,
            stderr=subprocess.STDOUT, pass_fds=(write_fd,), text=True)
        os.close(write_fd)
        cls._process.stdout = os.fdopen(read_fd, "r")
        return cls._process

    @classmethod
    def _log_tail(cls, lines=15):
        if cls._log is None:
            return ""
        try:
            with open(cls._log.name, errors="replace") as f:
                return "\n".join(f.read().strip().splitlines()[-lines:])
        except OSError:
            return ""

    @classmethod
    def close(cls):
        """Stops the worker process (it also stops when Python exits)."""
        process, cls._process = cls._process, None
        if process is not None:
            try:
                process.stdin.close()
                process.wait(timeout=10)
            except Exception:
                process.kill()
                process.wait()
            process.stdout.close()
        if cls._log is not None:
            cls._log.close()
            try:
                os.remove(cls._log.name)
            except OSError:
                pass
            cls._log = None


atexit.register(_TensorFlowWorker.close)


def _serve(answer_fd):
    """Worker loop: one job path per stdin line, ``done`` on ``answer_fd``."""
    answers = os.fdopen(answer_fd, "w")
    for line in sys.stdin:
        job_path = line.strip()
        if not job_path:
            continue
        try:
            _worker(job_path)
        finally:
            keras.backend.clear_session()
        answers.write("done\n")
        answers.flush()


def _run_in_tensorflow(model, job, tmp):
    """Saves ``model`` as .keras and converts it in the TensorFlow worker."""
    modules = _custom_modules(model)
    keras_path = os.path.join(tmp, "model.keras")
    model.save(keras_path)
    job = dict(job, keras_path=keras_path, modules=modules,
               result=os.path.join(tmp, "result.json"))
    job_path = os.path.join(tmp, "job.json")
    with open(job_path, "w") as f:
        json.dump(job, f)
    _TensorFlowWorker.run(job_path)
    if not os.path.exists(job["result"]):
        raise ExportError("The TensorFlow conversion process wrote no "
                          "result; see the messages above.")
    with open(job["result"]) as f:
        result = json.load(f)
    if result.get("error"):
        raise ExportError(result["error"])


def _tflite_bytes(model, quantize, representative, allow_flex):
    if keras.backend.backend() == "tensorflow":
        return _convert_in_process(model, quantize, representative,
                                   allow_flex), "process"
    with tempfile.TemporaryDirectory(prefix="keras_kd_export_") as tmp:
        rep_path = None
        if representative is not None:
            rep_path = os.path.join(tmp, "representative.npy")
            np.save(rep_path, representative)
        output = os.path.join(tmp, "model.tflite")
        _run_in_tensorflow(model, {
            "kind": "tflite", "output": output, "quantize": quantize,
            "representative": rep_path, "allow_flex": allow_flex}, tmp)
        with open(output, "rb") as f:
            return f.read(), "subprocess"


def _flex_ops(data):
    """Names of the TensorFlow (Flex) ops in a TFLite flatbuffer."""
    from ai_edge_litert import schema_py_generated as schema

    flatbuffer = schema.Model.GetRootAsModel(data, 0)
    names = set()
    for i in range(flatbuffer.OperatorCodesLength()):
        code = flatbuffer.OperatorCodes(i).CustomCode()
        if code and code.decode().startswith("Flex"):
            names.add(code.decode()[len("Flex"):])
    return sorted(names)


# ----------------------------------------------------------------------
# Running the LiteRT interpreter
# ----------------------------------------------------------------------
def _interpreter(path, flex):
    if flex:
        # The Flex delegate ships with TensorFlow's interpreter, not with
        # ai_edge_litert's.
        import tensorflow as tf

        interpreter = tf.lite.Interpreter(model_path=path, num_threads=1)
    else:
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=path, num_threads=1)
    interpreter.allocate_tensors()
    return interpreter


def _invoke(interpreter, x):
    """Runs the interpreter on a batch ``x`` (resizing its batch dimension)."""
    (inp,) = interpreter.get_input_details()
    outs = interpreter.get_output_details()
    if tuple(inp["shape"]) != x.shape:
        interpreter.resize_tensor_input(inp["index"], list(x.shape))
        interpreter.allocate_tensors()
    interpreter.set_tensor(inp["index"], x.astype(inp["dtype"]))
    interpreter.invoke()
    return [interpreter.get_tensor(o["index"]).astype("float32")
            for o in outs]


def _predict_tflite(interpreter, x, batch_size=256):
    chunks = [_invoke(interpreter, x[i:i + batch_size])
              for i in range(0, len(x), batch_size)]
    return [np.concatenate([c[j] for c in chunks])
            for j in range(len(chunks[0]))]


def _predict_keras(model, x, batch_size=256):
    outputs = []
    for i in range(0, len(x), batch_size):
        y = model(x[i:i + batch_size], training=False)
        y = y if isinstance(y, (list, tuple)) else [y]
        outputs.append([np.asarray(keras.ops.convert_to_numpy(t),
                                   dtype="float32") for t in y])
    return [np.concatenate([o[j] for o in outputs])
            for j in range(len(outputs[0]))]


def _latency_ms(interpreter, sample, runs):
    _invoke(interpreter, sample)
    for _ in range(3):  # warm-up
        interpreter.invoke()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        interpreter.invoke()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000.0)


def _accuracy(logits, y):
    y = np.asarray(y)
    if y.ndim == logits.ndim and y.ndim > 1:  # one-hot labels
        y = np.argmax(y, axis=-1)
    return float(np.mean(np.argmax(logits, axis=-1) == y.reshape(-1)))


# ----------------------------------------------------------------------
# Atomic writes
# ----------------------------------------------------------------------
def _temp_path(directory, path, suffix):
    fd, tmp = tempfile.mkstemp(
        prefix=f".{os.path.basename(path)}.", suffix=f".tmp{suffix}",
        dir=directory)
    os.close(fd)
    return tmp


def _replace_dir(tmp_dir, path):
    """Moves directory ``tmp_dir`` to ``path``, replacing it atomically-ish."""
    backup = None
    if os.path.exists(path):
        backup = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.old.",
                                  dir=os.path.dirname(os.path.abspath(path)))
        os.rmdir(backup)
        os.replace(path, backup)
    try:
        os.replace(tmp_dir, path)
    except BaseException:
        if backup is not None:
            os.replace(backup, path)
        raise
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)


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
    model = _student(model)
    path, _ = _check_path(path, ".keras")
    save_atomically(model, path)
    return path


def to_saved_model(model, path):
    """Exports the student as a TensorFlow SavedModel directory (atomically).

    The SavedModel has one ``serve`` endpoint running the student with
    ``training=False`` (TF Serving, TF.js and TFLite converters read it).
    On JAX and PyTorch the export runs in a TensorFlow subprocess from a
    temporary ``.keras`` copy, so the graph holds plain TensorFlow ops.

    Args:
        model: the student ``keras.Model``, or a ``keras_kd.Distiller``.
        path: the target directory; an existing one is replaced only once
            the new export succeeded.

    Returns:
        ``path``.

    Example:

    >>> import keras, keras_kd as kd
    >>> inputs = keras.Input((64,))
    >>> student = keras.Model(inputs, keras.layers.Dense(10)(inputs))
    >>> kd.export.to_saved_model(student, "/tmp/student_savedmodel")
    '/tmp/student_savedmodel'
    """
    model = _student(model)
    path, directory = _check_path(path, None)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{path!r} is a file; a SavedModel is a directory. "
                         "Pass a directory path such as 'saved_models/student'.")
    tmp_dir = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.",
                               suffix=".tmp", dir=directory)
    try:
        target = os.path.join(tmp_dir, "saved_model")
        if keras.backend.backend() == "tensorflow":
            model.export(target, format="tf_saved_model", verbose=False)
        else:
            with tempfile.TemporaryDirectory(prefix="keras_kd_export_") as tmp:
                _run_in_tensorflow(model, {"kind": "saved_model",
                                           "output": target}, tmp)
        _replace_dir(target, path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return path


def to_tflite(model, path, quantize="float32", representative_data=None,
              eval_data=None, allow_flex=False, latency_runs=50,
              verify=True):
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
      file takes the same tensors as the Keras student.

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

    Args:
        model: the student ``keras.Model`` (one input), or a
            ``keras_kd.Distiller`` (its student is exported).
        path: the target file, ending in ``.tflite``.
        quantize: ``"float32"``, ``"float16"``, ``"dynamic"`` or ``"int8"``.
        representative_data: calibration inputs, required for ``"int8"``: a
            NumPy array of inputs, an ``(x, y)`` tuple, or a ``tf.data``
            dataset of ``x`` or ``(x, y)`` (batched or not). Up to 200
            samples are drawn from it at random (seed 0).
        eval_data: optional ``(x, y)`` (or a dataset of ``(x, y)``) with
            integer or one-hot labels; the report then holds both models'
            top-1 accuracy and ``accuracy_change``.
        allow_flex: accept TensorFlow (Flex) ops in the file.
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
    model = _student(model)
    if quantize not in QUANTIZE_MODES:
        raise ValueError(
            f"quantize must be one of {list(QUANTIZE_MODES)}, got "
            f"{quantize!r}.")
    if not isinstance(latency_runs, int) or latency_runs < 0:
        raise ValueError(f"latency_runs must be an int >= 0, got "
                         f"{latency_runs!r}; e.g. 50, or 0 to skip timing.")
    shape, dtype = _input_spec(model)
    path, directory = _check_path(path, ".tflite")

    representative = None
    if representative_data is not None:
        representative, _ = _collect(representative_data, shape, dtype,
                                     limit=None if isinstance(
                                         representative_data, np.ndarray)
                                     else 10 * _REPRESENTATIVE_SAMPLES)
        representative = _subset(representative, _REPRESENTATIVE_SAMPLES)
    if quantize == "int8" and representative is None:
        raise ValueError(
            "quantize='int8' calibrates activation ranges on sample inputs: "
            "pass representative_data (e.g. a few hundred training inputs, "
            "representative_data=x_train[:200]), or use quantize='dynamic', "
            "which needs no data.")
    eval_x = eval_y = None
    if eval_data is not None:
        eval_x, eval_y = _collect(eval_data, shape, dtype, what="eval_data")
        if eval_y is None:
            raise ValueError("eval_data must hold labels: pass (x, y), "
                             "e.g. eval_data=(x_test, y_test).")

    data, converted_in = _tflite_bytes(model, quantize, representative,
                                       allow_flex)
    flex = _flex_ops(data)
    if flex and not allow_flex:
        raise FlexOpsError(
            f"The converted model needs TensorFlow (Flex) ops {flex}, which "
            "the standard LiteRT runtime does not have. Replace the layers "
            "that use them (a custom layer calling e.g. keras.ops.erf or "
            "keras.ops.cumprod) with TFLite builtin ops, or pass "
            "allow_flex=True and ship the app with the LiteRT Flex delegate "
            "(select TF ops). Nothing was written to " + repr(path) + ".")

    tmp = _temp_path(directory, path, ".tflite")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        report = ExportReport(path=path, quantize=quantize,
                              size_bytes=len(data), flex_ops=flex,
                              converted_in=converted_in)
        if verify or latency_runs or eval_x is not None:
            interpreter = _interpreter(tmp, bool(flex))
        if verify:
            if representative is not None:
                sample = representative[:64]
            elif eval_x is not None:
                sample = eval_x[:64]
            else:
                sample = np.random.default_rng(0).standard_normal(
                    (16,) + shape).astype(dtype)
            expected = _predict_keras(model, sample)
            actual = _predict_tflite(interpreter, sample)
            if len(expected) != len(actual) or any(
                    e.shape != a.shape for e, a in zip(expected, actual)):
                raise ExportError(
                    "The TFLite file's outputs "
                    f"{[a.shape for a in actual]} do not match the Keras "
                    f"model's {[e.shape for e in expected]}.")
            report.max_abs_diff = float(max(
                np.max(np.abs(e - a)) for e, a in zip(expected, actual)))
            scale = max(1.0, max(float(np.max(np.abs(e))) for e in expected))
            if quantize == "float32" and (
                    not np.isfinite(report.max_abs_diff)
                    or report.max_abs_diff > _FLOAT32_TOLERANCE * scale):
                raise ExportError(
                    f"The float32 TFLite file differs from the Keras model by "
                    f"up to {report.max_abs_diff:.3g} (tolerance "
                    f"{_FLOAT32_TOLERANCE * scale:.3g}); the file was not "
                    f"written to {path!r}. Check for layers that behave "
                    "differently at inference (custom call() using "
                    "`training`), or pass verify=False to keep it anyway.")
        if eval_x is not None:
            keras_logits = _predict_keras(model, eval_x)[0]
            tflite_logits = _predict_tflite(interpreter, eval_x)[0]
            report.keras_accuracy = _accuracy(keras_logits, eval_y)
            report.tflite_accuracy = _accuracy(tflite_logits, eval_y)
            report.accuracy_change = (report.tflite_accuracy
                                      - report.keras_accuracy)
        if latency_runs:
            report.latency_ms_median = _latency_ms(
                interpreter, np.zeros((1,) + shape, dtype=dtype), latency_runs)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return report


# ----------------------------------------------------------------------
# Command line: `keras-kd export` and `python -m keras_kd.export`
# ----------------------------------------------------------------------
def _add_arguments(parser):
    parser.add_argument(
        "model", help="a .keras file: a student, or a Distiller (its student "
        "is exported)")
    parser.add_argument(
        "--output", "-o", default=None,
        help="the .tflite file; with several --quantize modes, '_<mode>' is "
        "added before '.tflite' (a path without '.tflite' is a directory). "
        "Default: beside the model, <name>_<mode>.tflite")
    parser.add_argument(
        "--quantize", "-q", action="append", default=None,
        help="float32, float16, dynamic, int8 (repeatable or a comma list; "
        "default float32)")
    parser.add_argument(
        "--representative-data", default=None,
        help="'digits' (the bundled dataset's training inputs) or an .npz "
        "file (array 'x', 'x_train' or its first array); required for int8")
    parser.add_argument(
        "--eval-data", default=None,
        help="'digits' (the bundled test split) or an .npz file with 'x' and "
        "'y' arrays: reports the accuracy change")
    parser.add_argument("--allow-flex", action="store_true",
                        help="accept TensorFlow (Flex) ops in the file")
    parser.add_argument("--latency-runs", type=int, default=50,
                        help="batch-1 invocations timed (default 50)")
    return parser


def add_export_parser(subparsers):
    """Registers the ``export`` sub-command on an argparse ``subparsers``.

    Example:

    >>> import argparse
    >>> parser = argparse.ArgumentParser(prog="keras-kd")
    >>> add_export_parser(parser.add_subparsers(dest="command"))  # doctest: +ELLIPSIS
    ArgumentParser(prog='keras-kd export', ...)
    """
    parser = subparsers.add_parser(
        "export", help="export a trained student to TFLite",
        description="Export a .keras student (or a Distiller's student) to "
        "TFLite at one or more precisions, verified against the Keras model.")
    _add_arguments(parser)
    parser.set_defaults(func=run_export)
    return parser


def _load_array_source(source, model, labels):
    """``digits`` or an .npz path -> x (and y) shaped for ``model``."""
    shape, _ = _input_spec(model)
    if source == "digits":
        from keras_kd.data import load_digits

        (x_train, y_train), (x_test, y_test) = load_digits()
        x, y = (x_test, y_test) if labels else (x_train, y_train)
        if int(np.prod(shape)) != x.shape[1]:
            raise ValueError(
                f"The digits data has 64 features per sample but the model "
                f"takes inputs of shape {shape}; pass an .npz file instead.")
        return x.reshape((-1,) + shape), y
    if not os.path.exists(source):
        raise ValueError(f"{source!r} is neither 'digits' nor an existing "
                         ".npz file.")
    with np.load(source) as archive:
        keys = list(archive.keys())
        xkey = next((k for k in ("x", "x_train", "x_test") if k in keys),
                    keys[0])
        x = archive[xkey]
        y = None
        if labels:
            ykey = next((k for k in ("y", "y_train", "y_test") if k in keys),
                        None)
            if ykey is None:
                raise ValueError(f"{source} has no 'y' array of labels "
                                 f"(arrays: {keys}).")
            y = archive[ykey]
    return x, y


def _output_paths(args, modes):
    stem = os.path.splitext(os.path.basename(args.model))[0]
    if args.output is None:
        base = os.path.dirname(os.path.abspath(args.model))
        return {m: os.path.join(base, f"{stem}_{m}.tflite") for m in modes}
    if not args.output.endswith(".tflite"):
        return {m: os.path.join(args.output, f"{stem}_{m}.tflite")
                for m in modes}
    if len(modes) == 1:
        return {modes[0]: args.output}
    root = args.output[:-len(".tflite")]
    return {m: f"{root}_{m}.tflite" for m in modes}


def run_export(args):
    """Runs ``keras-kd export`` for parsed ``args``; prints one line per file.

    Returns the exit status: 0 when every export succeeded, 1 (after printing
    the error to stderr) when one failed; a bad option exits with a message.
    """
    import keras_kd  # noqa: F401  (registers the Distiller for loading)

    modes = []
    for value in args.quantize or ["float32"]:
        modes.extend(m.strip() for m in value.split(",") if m.strip())
    unknown = [m for m in modes if m not in QUANTIZE_MODES]
    if unknown:
        raise SystemExit(f"keras-kd export: unknown --quantize {unknown}; "
                         f"choose from {', '.join(QUANTIZE_MODES)}.")
    if "int8" in modes and args.representative_data is None:
        raise SystemExit("keras-kd export: --quantize int8 needs "
                         "--representative-data (digits or an .npz file).")
    try:
        _export_files(args, modes)
    except (ValueError, TypeError, OSError, ExportError) as error:
        print(f"keras-kd export: error: {error}", file=sys.stderr)
        return 1
    return 0


def _export_files(args, modes):
    if not os.path.isfile(args.model):
        raise ValueError(f"No model file at {args.model!r}; pass the path of "
                         "a .keras file saved with model.save(...).")
    model = _student(keras.models.load_model(args.model, compile=False))
    representative = eval_data = None
    if args.representative_data:
        representative = _load_array_source(args.representative_data, model,
                                            labels=False)[0]
    if args.eval_data:
        eval_data = _load_array_source(args.eval_data, model, labels=True)
    for mode, path in _output_paths(args, modes).items():
        report = to_tflite(model, path, quantize=mode,
                           representative_data=representative,
                           eval_data=eval_data, allow_flex=args.allow_flex,
                           latency_runs=args.latency_runs)
        print(report.summary())


def main(argv=None):
    """``python -m keras_kd.export MODEL.keras [options]``."""
    parser = _add_arguments(argparse.ArgumentParser(
        prog="python -m keras_kd.export",
        description="Export a .keras student to TFLite."))
    return run_export(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
