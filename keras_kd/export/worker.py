"""The TensorFlow worker: converts on JAX and PyTorch, where the converter
cannot read the model's graph.

A ``KERAS_BACKEND=tensorflow`` process, started on the first export from a JAX
or PyTorch session and reused by later ones (importing TensorFlow costs
seconds, converting a small student well under one). Jobs are JSON files; the
process reads their paths on stdin and answers one line per job on a private
pipe, with everything it prints sent to a log file (whose tail goes into
errors). This module is the parent's side; the process runs
:func:`keras_kd.export.worker_main.serve`.
"""

import atexit
import json
import os
import subprocess
import sys
import tempfile
import threading

import keras

from keras_kd.export import native_logs
from keras_kd.export.errors import ExportError


def _custom_modules(model):
    """Modules that define the model's non-Keras objects (to import there).

    Read from the model's own Keras config: every serialized object names
    the module of its class. Refuses, naming what works instead, what the
    worker process cannot load from a ``.keras`` file: a class or function
    defined in ``__main__`` or not importable by name, and a
    ``keras.layers.Lambda`` holding a Python ``lambda`` (Keras loads its code
    only with ``safe_mode=False``, which the user cannot pass to that
    process).
    """
    modules = set()
    backend = keras.backend.backend()

    def walk(node, layer):
        if isinstance(node, dict):
            config = node.get("config")
            if isinstance(config, dict) and isinstance(config.get("name"),
                                                       str):
                layer = config["name"]
            if node.get("class_name") == "__lambda__":
                raise ValueError(
                    f"Layer '{layer}' is a keras.layers.Lambda running a "
                    f"Python lambda. On the {backend} backend the export "
                    "converts in a separate TensorFlow process, which loads "
                    "the model from a .keras file, and Keras does not load a "
                    "lambda's code from a file (passing safe_mode=False "
                    "cannot reach that process). Replace the Lambda with a "
                    "custom layer (a keras.layers.Layer subclass whose call() "
                    "does the same, in an importable module, registered with "
                    "@keras.saving.register_keras_serializable()), or give "
                    "the Lambda a named function defined in an importable "
                    "module and registered the same way, or export with "
                    "KERAS_BACKEND=tensorflow, which converts in this "
                    "process.")
            if node.get("class_name") == "function" and isinstance(
                    config, str):
                module = _function_module(node, layer, backend)
                if module.split(".")[0] != "keras":
                    modules.add(module)
            if "class_name" in node and "module" in node:
                module = node["module"]
                if module in (None, "__main__"):
                    # Unregistered (module None) or defined in __main__: the
                    # worker process could not import the class.
                    raise ValueError(
                        f"'{node['class_name']}' (in layer '{layer}') is not "
                        f"importable by name. On the {backend} backend the "
                        "export converts in a separate TensorFlow process, "
                        "which imports the model's classes: move the class "
                        "into an importable module and register it with "
                        "@keras.saving.register_keras_serializable(), or run "
                        "with KERAS_BACKEND=tensorflow.")
                if module.split(".")[0] not in ("keras", "builtins"):
                    modules.add(module)
            for value in node.values():
                walk(value, layer)
        elif isinstance(node, (list, tuple)):
            for value in node:
                walk(value, layer)

    walk(keras.saving.serialize_keras_object(model), model.name)
    return sorted(modules)


def _function_module(node, layer, backend):
    """The module of a function serialized by name (``{"class_name":
    "function", "config": "package>name"}``, e.g. a Lambda's), which the
    worker process must import to load it; refuses one that cannot be
    loaded by name there."""
    fix = (f"On the {backend} backend the export converts in a separate "
           "TensorFlow process, which loads the model from a .keras file: "
           "define the function in an importable module and register it with "
           "@keras.saving.register_keras_serializable(), or export with "
           "KERAS_BACKEND=tensorflow, which converts in this process.")
    name = node["config"]
    try:
        function = keras.saving.deserialize_keras_object(node)
    except Exception as error:
        raise ValueError(f"Function '{name}' (in layer '{layer}') cannot be "
                         f"loaded by name ({error}). {fix}") from None
    module = getattr(function, "__module__", None) or "builtins"
    if module == "__main__":
        raise ValueError(f"Function '{name}' (in layer '{layer}') is defined "
                         f"in __main__, which that process cannot import. "
                         + fix)
    return module


class _TensorFlowWorker:
    """A ``KERAS_BACKEND=tensorflow`` process that converts saved models.

    Started on the first export from a JAX or PyTorch session and reused by
    later ones (importing TensorFlow costs seconds, converting a small
    student well under one). Jobs are JSON files; the process reads their
    paths on stdin and answers one line per job on a private pipe, with
    everything it prints sent to a log file (whose tail goes into errors).
    Its environment is this process's with ``KERAS_BACKEND=tensorflow``, no
    GPU, and TensorFlow's native logs quiet where the user has not set them
    (:func:`keras_kd.export.native_logs.worker_environment`); under
    ``KERAS_KD_VERBOSE=1`` its output is also copied to stderr after each
    job.
    """

    _lock = threading.Lock()
    _process = None
    _log = None

    @classmethod
    def run(cls, job_path):
        with cls._lock:
            for attempt in (0, 1):
                process = cls._start()
                start = cls._log_size()
                try:
                    process.stdin.write(job_path + "\n")
                    process.stdin.flush()
                    answer = process.stdout.readline()
                except (BrokenPipeError, OSError):
                    answer = ""
                if native_logs.verbose():
                    cls._echo_log(start)
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
        env = native_logs.worker_environment(dict(
            os.environ, KERAS_BACKEND="tensorflow", CUDA_VISIBLE_DEVICES="-1"))
        paths = [os.getcwd() if p == "" else p for p in sys.path]
        env["PYTHONPATH"] = os.pathsep.join(
            [p for p in paths if p] + [env.get("PYTHONPATH", "")]).rstrip(
                os.pathsep)
        cls._log = tempfile.NamedTemporaryFile(
            prefix="keras_kd_tf_worker_", suffix=".log", delete=False)
        read_fd, write_fd = os.pipe()
        cls._process = subprocess.Popen(
            [sys.executable, "-c",
             "import sys; from keras_kd.export.worker_main import serve; "
             "serve(int(sys.argv[1]))", str(write_fd)],
            env=env, stdin=subprocess.PIPE, stdout=cls._log,
            stderr=subprocess.STDOUT, pass_fds=(write_fd,), text=True)
        os.close(write_fd)
        cls._process.stdout = os.fdopen(read_fd, "r")
        return cls._process

    @classmethod
    def _log_size(cls):
        try:
            return os.path.getsize(cls._log.name)
        except (AttributeError, OSError):
            return 0

    @classmethod
    def _echo_log(cls, start):
        """Copies what the process wrote to its log since ``start`` to
        stderr (``KERAS_KD_VERBOSE=1``)."""
        try:
            with open(cls._log.name, errors="replace") as f:
                f.seek(start)
                text = f.read()
        except (AttributeError, OSError):
            return
        sys.stderr.write(text)
        sys.stderr.flush()

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


def run_in_tensorflow(model, job, tmp):
    """Saves ``model`` as .keras and converts it in the TensorFlow worker.

    Keras loads TensorFlow in this process too when it serializes the model
    (if TensorFlow is installed): its native load-time lines are left out of
    stderr (:func:`keras_kd.export.native_logs.quiet_native_stderr`).
    """
    with native_logs.quiet_native_stderr(show_on_failure=False):
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
                          "result. Its last lines:\n"
                          + _TensorFlowWorker._log_tail())
    with open(job["result"]) as f:
        result = json.load(f)
    if result.get("error"):
        raise ExportError(result["error"])
