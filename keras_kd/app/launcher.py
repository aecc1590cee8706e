"""The ``keras-kd`` command's entry point: answers at once, then hands over.

The command is installed as ``keras-kd = "keras_kd.app.launcher:main"``.
``import keras_kd`` imports no Keras (its names load on first use, PEP 562),
so this module, the parser (:mod:`keras_kd.app.parser`) and its settings
(:mod:`keras_kd.app.options`) load with argparse alone: ``keras-kd --help``,
``keras-kd run --help``, ``keras-kd --version`` and bad options answer
without importing Keras. Only a command that runs imports the module that
runs it (:mod:`keras_kd.app.image_run`, :mod:`keras_kd.app.causal_lm_run`,
:mod:`keras_kd.app.search_command`, :mod:`keras_kd.app.export_command`).

Before that import, the Keras backend's package is looked for
(:func:`missing_backend`): ``KERAS_BACKEND=jax`` without JAX installed is a
one-line error naming the ``pip install`` line, not a traceback from inside
Keras. And TensorFlow's native (C++ and absl) log lines are silenced:
``TF_CPP_MIN_LOG_LEVEL=3``, ``GLOG_minloglevel=3`` and
``GRPC_VERBOSITY=ERROR`` unless already set, and the lines TensorFlow's
libraries print while they load (before their logging is set up: ``oneDNN
custom operations are on``, ``Could not find cuda drivers``) are left out of
stderr. ``keras-kd --verbose COMMAND`` leaves all of it alone.
"""

import contextlib
import importlib.util
import json
import os
import re
import sys
import threading

from keras_kd.app.parser import (
    PROG, build_parser, check_run_options, given_run_options)

# What TensorFlow's libraries print while they load, before absl's logging is
# initialised (TF_CPP_MIN_LOG_LEVEL does not reach those): absl/glog lines
# ("I0000 00:00:17.. 123 port.cc:153] ...") of severity I, W or E, the older
# TensorFlow format ("2025-01-01 10:00:00.1: I tensorflow/...] ..."), absl's
# header and cpu_feature_guard's second line. Fatal (F) lines are kept.
NATIVE_LOG_LINE = re.compile(
    rb"^(WARNING: All log messages before absl::InitializeLog\(\) is called"
    rb"|[IWE]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ \S+:\d+\] "
    rb"|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWE] \S+:\d+\] "
    rb"|To enable the following instructions: )")
# Set (when the user has not) before TensorFlow is imported, unless --verbose.
QUIET_ENVIRONMENT = {"TF_CPP_MIN_LOG_LEVEL": "3", "GLOG_minloglevel": "3",
                     "GRPC_VERBOSITY": "ERROR"}

# Each Keras backend: the module it imports, and the pip line that installs
# it (torch: the CPU build, as pyproject.toml's test extra pins it).
BACKENDS = {
    "tensorflow": ("tensorflow", 'pip install "keras-kd[export]" (or '
                   "pip install tensorflow)"),
    "jax": ("jax", 'pip install "keras-kd[jax]"'),
    "torch": ("torch", "pip install torch==2.13.0 --index-url "
              "https://download.pytorch.org/whl/cpu"),
    "numpy": ("numpy", "pip install numpy"),
    "openvino": ("openvino", "pip install openvino"),
}


def keras_backend(environ=None):
    """The backend Keras will use, found as Keras finds it, without importing
    it: ``KERAS_BACKEND``, else ``"backend"`` in ``$KERAS_HOME/keras.json``
    (``~/.keras/keras.json``), else ``"tensorflow"``.

    >>> keras_backend({"KERAS_BACKEND": "jax"})
    'jax'
    """
    environ = os.environ if environ is None else environ
    if environ.get("KERAS_BACKEND"):
        return environ["KERAS_BACKEND"]
    home = environ.get("KERAS_HOME") or os.path.join(
        os.path.expanduser("~"), ".keras")
    try:
        with open(os.path.join(home, "keras.json"), encoding="utf-8") as f:
            return json.load(f).get("backend") or "tensorflow"
    except (OSError, ValueError, AttributeError):
        return "tensorflow"


def missing_backend(environ=None):
    """The one-line error for a Keras backend that is not installed, naming
    the ``pip install`` line; None when its package is found
    (``importlib.util.find_spec``: nothing is imported).

    >>> missing_backend({"KERAS_BACKEND": "numpy"}) is None
    True
    >>> print(missing_backend({"KERAS_BACKEND": "no_such_backend"}))
    the Keras backend 'no_such_backend' is unknown: set KERAS_BACKEND to tensorflow, jax, torch, numpy or openvino
    """
    backend = keras_backend(environ)
    if backend not in BACKENDS:
        return (f"the Keras backend {backend!r} is unknown: set "
                "KERAS_BACKEND to " + ", ".join(list(BACKENDS)[:-1])
                + f" or {list(BACKENDS)[-1]}")
    module, install = BACKENDS[backend]
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    if found:
        return None
    return (f"the Keras backend is {backend} (KERAS_BACKEND or keras.json) "
            f"but {module} is not installed: {install}, or choose an "
            "installed backend, e.g. KERAS_BACKEND=tensorflow")


def _native_logs_wanted(argv):
    """Whether ``--verbose``/``-v`` comes before the command in ``argv``."""
    for token in argv:
        if token in ("--verbose", "-v"):
            return True
        if not token.startswith("-"):
            return False
    return False


def quiet_native_logs(environ=None):
    """Sets :data:`QUIET_ENVIRONMENT`'s variables that are not set yet.

    Must run before TensorFlow is imported; returns the names it set.

    >>> env = {"TF_CPP_MIN_LOG_LEVEL": "1"}
    >>> quiet_native_logs(env), env["TF_CPP_MIN_LOG_LEVEL"]
    (['GLOG_minloglevel', 'GRPC_VERBOSITY'], '1')
    """
    environ = os.environ if environ is None else environ
    added = [name for name in QUIET_ENVIRONMENT if name not in environ]
    for name in added:
        environ[name] = QUIET_ENVIRONMENT[name]
    return added


@contextlib.contextmanager
def without_native_log_lines():
    """Leaves TensorFlow's load-time native log lines out of stderr.

    While the block runs, file descriptor 2 goes through a pipe; a thread
    passes on every line but those :data:`NATIVE_LOG_LINE` matches (Python's
    own warnings and errors go through).
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no usable stderr
        yield
        return
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    out_fd = os.dup(saved)  # the thread's own: `saved` closes on the way out

    def forward():
        with os.fdopen(read_end, "rb") as pipe, \
                os.fdopen(out_fd, "wb", buffering=0) as out:
            for line in pipe:
                if not NATIVE_LOG_LINE.match(line):
                    out.write(line)

    thread = threading.Thread(target=forward, name="keras-kd-stderr",
                              daemon=True)
    thread.start()
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os.dup2(saved, 2)  # the pipe's last write end closes: the thread ends
        os.close(saved)
        thread.join(timeout=10)


def _import_tensorflow_if_installed():
    """Both commands use TensorFlow (tf.data, the TFLite converter) when it is
    installed: importing it here, inside :func:`without_native_log_lines`,
    keeps its load-time lines out on every backend."""
    from importlib import util

    if util.find_spec("tensorflow") is not None:
        import tensorflow  # noqa: F401




def command_module(args):
    """The module that runs ``args.command`` (imported here: it imports
    Keras) and the name of its function that takes the parsed ``args``."""
    import importlib

    if args.command == "run":
        name, function = (("causal_lm_run", "run") if args.task == "causal-lm"
                          else ("image_run", "run"))
    else:
        name, function = {"export": ("export_command", "run_export"),
                          "search": ("search_command", "run_search")}[
                              args.command]
    return importlib.import_module(f"keras_kd.app.{name}"), function


def execute(args):
    """Runs the command of parsed ``keras-kd`` arguments; returns the exit
    status (``run`` returns its report: 0)."""
    from keras_kd import registration

    check_run_options(args)
    module, function = command_module(args)
    registration.register()  # keras-kd's classes, for the .keras files read
    result = getattr(module, function)(args)
    return 0 if result is None or isinstance(result, dict) else int(result)


def main(argv=None):
    """Entry point of the ``keras-kd`` command; returns the exit status.

    ``--help``, ``--version``, no command and bad options answer from the
    parser alone; a missing backend package answers in one line (exit
    status 1); a command runs through :func:`execute`.

    From Python: ``main(["run", "--quick"])``.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    verbose = _native_logs_wanted(argv)
    if not verbose:
        quiet_native_logs()
    quiet = contextlib.nullcontext() if verbose else without_native_log_lines()
    with quiet:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        if args.command == "run":
            args.given_options = given_run_options(argv)
        check_run_options(args)
        missing = missing_backend()
        if missing:
            sys.stderr.write(f"{PROG}: error: {missing}\n")
            return 1
        _import_tensorflow_if_installed()
        command_module(args)  # Keras loads here, its lines filtered
    # --verbose shows the library's hidden lines too (the export's).
    show = verbose and "KERAS_KD_VERBOSE" not in os.environ
    if show:
        os.environ["KERAS_KD_VERBOSE"] = "1"
    try:
        return execute(args)
    except ImportError as error:
        # A missing optional dependency (keras_kd.extras.require names its
        # pip line): one line, as for a missing backend; --verbose keeps the
        # traceback.
        if verbose or 'pip install "keras-kd[' not in str(error):
            raise
        sys.stderr.write(f"{PROG}: error: {error}\n")
        return 1
    finally:
        if show:
            os.environ.pop("KERAS_KD_VERBOSE", None)


if __name__ == "__main__":
    sys.exit(main())
