"""TensorFlow's native log lines, hidden where keras-kd starts TensorFlow.

TensorFlow's C++ code (and LiteRT's) writes straight to file descriptor 2,
past Python's ``sys.stderr``: loading it prints ``oneDNN custom operations
are on`` and ``Could not find cuda drivers``, and one TFLite conversion some
fifteen lines (``Reading SavedModel from ...``, ``fully_quantize: 0,
inference_type: 6 ...``). An export is one call of the user's script, so
keras-kd hides those lines where it starts that code itself, without changing
the user's own logging settings:

* the TensorFlow worker process (:mod:`keras_kd.export.worker`) gets
  :data:`QUIET_ENVIRONMENT`'s variables in its own environment, each one only
  when the user has not set it (:func:`worker_environment`);
* in this process, :func:`quiet_native_stderr` sends descriptor 2 to a
  temporary file for the call only; afterwards it passes on every line that
  is not a native log line (:func:`is_native_log_line`: Python's warnings go
  through), and on an exception every line, the native ones included.

``KERAS_KD_VERBOSE=1`` (any value but ``""``, ``0``, ``false``, ``no``)
leaves everything as it is: the worker's environment is the user's, nothing
is captured, and the worker's own output is copied to stderr.
"""

import contextlib
import os
import re
import sys
import tempfile

VERBOSE_VARIABLE = "KERAS_KD_VERBOSE"
"""The environment variable that shows every native log line."""

QUIET_ENVIRONMENT = {"TF_CPP_MIN_LOG_LEVEL": "3", "GLOG_minloglevel": "3",
                     "GRPC_VERBOSITY": "ERROR"}
"""Set in the worker process's environment where the user has not set them
(``keras-kd``'s launcher sets the same in its own process)."""

# absl / glog lines (``I0000 00:00:1796613578.541181   16299 reader.cc:83]``,
# the older ``2024-01-01 10:00:00.000000: I tensorflow/...:12]``), the lines
# printed before absl is set up, and the converter's and LiteRT's bare prints.
_NATIVE_LOG_LINE = re.compile(
    rb"^(WARNING: All log messages before absl::InitializeLog\(\) is called"
    rb"|[IWEF]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ \S+:\d+\] "
    rb"|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWEF] \S+:\d+\] "
    rb"|To enable the following instructions: "
    rb"|fully_quantize: \d"
    rb"|INFO: (Created|Initialized) TensorFlow Lite "
    rb"|Estimated count of arithmetic ops: )")


def verbose(environ=None):
    """Whether ``KERAS_KD_VERBOSE`` asks for every native log line.

    >>> verbose({}), verbose({"KERAS_KD_VERBOSE": "1"})
    (False, True)
    >>> verbose({"KERAS_KD_VERBOSE": "0"})
    False
    """
    environ = os.environ if environ is None else environ
    value = environ.get(VERBOSE_VARIABLE, "").strip().lower()
    return value not in ("", "0", "false", "no")


def worker_environment(environ=None):
    """A copy of ``environ`` (default ``os.environ``) for a process that runs
    TensorFlow: :data:`QUIET_ENVIRONMENT`'s variables added where unset,
    unless :func:`verbose`. The user's own values always stay.

    >>> env = worker_environment({"TF_CPP_MIN_LOG_LEVEL": "1"})
    >>> env["TF_CPP_MIN_LOG_LEVEL"], env["GLOG_minloglevel"]
    ('1', '3')
    >>> worker_environment({"KERAS_KD_VERBOSE": "1"})
    {'KERAS_KD_VERBOSE': '1'}
    """
    environ = dict(os.environ if environ is None else environ)
    if not verbose(environ):
        for name, value in QUIET_ENVIRONMENT.items():
            environ.setdefault(name, value)
    return environ


def is_native_log_line(line):
    """Whether ``line`` (bytes or str) is one of TensorFlow's or LiteRT's
    native log lines.

    >>> is_native_log_line("I0000 00:00:1796613578.541181   16299 "
    ...                    "reader.cc:83] Reading SavedModel from: /tmp/x")
    True
    >>> is_native_log_line("fully_quantize: 0, inference_type: 6")
    True
    >>> is_native_log_line("UserWarning: the model is not built")
    False
    """
    if isinstance(line, str):
        line = line.encode("utf-8", "replace")
    return bool(_NATIVE_LOG_LINE.match(line))


def _write_all(fd, data):
    while data:
        data = data[os.write(fd, data):]


@contextlib.contextmanager
def quiet_native_stderr(show_on_failure=True):
    """Leaves TensorFlow's native log lines of the block out of stderr.

    File descriptor 2 goes to a temporary file while the block runs. When it
    ends, the lines that are not native log lines (:func:`is_native_log_line`)
    are written to stderr; when it raises, all of them are if
    ``show_on_failure``, so that a failed conversion shows what TensorFlow
    said (``show_on_failure=False``: a block whose errors are keras-kd's own,
    where TensorFlow's load-time lines would only bury them). Does nothing under
    ``KERAS_KD_VERBOSE=1`` or without a usable descriptor 2. Python code that
    writes to ``sys.stderr`` in the block is not lost, only delayed to its
    end.

    Example:

    >>> import os
    >>> with quiet_native_stderr():
    ...     _ = os.write(2, b"I0000 00:00:1.5  7 loader.cc:1] Restoring\\n")
    ...     print("converted")
    converted
    """
    if verbose():
        yield
        return
    try:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        saved = os.dup(2)
    except OSError:
        yield
        return
    capture = tempfile.TemporaryFile(prefix="keras_kd_stderr_")
    failed = True
    try:
        os.dup2(capture.fileno(), 2)
        yield
        failed = False
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        capture.seek(0)
        lines = capture.read().splitlines(keepends=True)
        capture.close()
        kept = lines if failed and show_on_failure else [
            line for line in lines if not _NATIVE_LOG_LINE.match(line)]
        with contextlib.suppress(OSError):
            _write_all(2, b"".join(kept))
