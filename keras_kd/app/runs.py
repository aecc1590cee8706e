"""What every run of the ``keras-kd`` command shares: its folder, its
temporary files and its progress lines.

A run writes into ``OUTPUT/RUN_NAME/``, a folder it creates for itself
(:func:`make_run_dir`): never one that exists already, so two runs started
in the same second, or a rerun under an old ``--run-name``, cannot mix their
files in one folder. While it runs, temporary files (the export's
``keras_kd_export_*`` folders, the TensorFlow worker's logs) go to
``RUN_DIR/.tmp`` (:func:`temporary_files_in`): a run killed midway leaves
them with the run, not in the system's temporary folder.
"""

import contextlib
import datetime
import os
import tempfile

from keras_kd import ownership

# The folder of a run's temporary files, inside the run's folder.
TEMP_FOLDER = ".tmp"
# Suffixes tried after a default run name that exists: NAME-2 ... NAME-999.
MAX_SUFFIX = 999


def stage(message):
    """Prints one progress line: ``[keras-kd HH:MM:SS] message``."""
    stamp = datetime.datetime.now().strftime("%H:%M:%S")
    print(f"[keras-kd {stamp}] {message}", flush=True)


def timestamp():
    """The time as it goes into default run names: ``20260101-120000``."""
    return datetime.datetime.now().strftime("%Y%m%d-%H%M%S")


def make_run_dir(output, run_name, default_name, command="run"):
    """Creates the run's folder ``output/name`` for this run alone; returns
    ``(name, path)``.

    The folder is claimed exclusively
    (``ownership.claim_folder(path, "run", exclusive=True)``): with
    ``run_name`` given, a folder of that name that exists already (an earlier
    run's, or anything not empty) stops the command with a message naming
    the fix; with ``run_name`` None, ``default_name`` is used, and when it
    exists (another run started in the same second) ``default_name-2``,
    ``-3``, ... A folder that cannot be made stops the command too, before
    any training.

    Example:

    >>> import tempfile
    >>> out = tempfile.mkdtemp()
    >>> make_run_dir(out, None, "digits-cnn")[0], make_run_dir(out, None, "digits-cnn")[0]
    ('digits-cnn', 'digits-cnn-2')
    >>> make_run_dir(out, "digits-cnn", "x")
    Traceback (most recent call last):
    ...
    SystemExit: keras-kd run: ... is already in use by another keras-kd run; ...
    """
    names = [run_name] if run_name is not None else [default_name] + [
        f"{default_name}-{i}" for i in range(2, MAX_SUFFIX + 1)]
    for name in names:
        path = os.path.join(output, name)
        try:
            return name, ownership.claim_folder(path, "run", exclusive=True)
        except FileExistsError as error:
            if run_name is not None:
                raise SystemExit(
                    f"keras-kd {command}: {error} Pass a new --run-name, or "
                    "move the old run's folder away.") from None
        except OSError as error:
            raise SystemExit(
                f"keras-kd {command}: cannot make the run directory {path!r} "
                f"({error.strerror or error}); pass a directory you can "
                "write to, e.g. --output ~/keras-kd-runs") from None
    raise SystemExit(
        f"keras-kd {command}: {default_name!r} and its suffixes up to "
        f"-{MAX_SUFFIX} exist under {output!r}; pass --run-name or another "
        "--output")


@contextlib.contextmanager
def temporary_files_in(run_dir):
    """Sends this process's temporary files to ``run_dir/.tmp`` while the
    block runs (:data:`tempfile.tempdir`): the export's ``keras_kd_export_*``
    folders and the TensorFlow worker's ``keras_kd_tf_worker_*.log``, which
    this process creates.

    On the way out ``tempfile.tempdir`` is restored and the folder removed
    (left in place where the system refuses, e.g. a log file still open on
    Windows): what a run killed midway leaves is inside its own folder. The
    environment (``TMPDIR``) is left alone: the export's worker process
    outlives one run (it is reused by the next export in this process), so
    it must not hold a folder that goes away with the run.

    Example:

    >>> import os, tempfile
    >>> run_dir = tempfile.mkdtemp()
    >>> with temporary_files_in(run_dir):
    ...     os.path.dirname(tempfile.mkdtemp()) == os.path.join(run_dir, ".tmp")
    True
    >>> os.listdir(run_dir)
    []
    """
    path = ownership.claim_folder(os.path.join(run_dir, TEMP_FOLDER), "temp")
    saved = tempfile.tempdir
    tempfile.tempdir = path
    try:
        yield path
    finally:
        tempfile.tempdir = saved
        try:
            ownership.remove_owned(path, "temp")
        except OSError:  # kept with the run
            pass


def export_failed(run, error, runtime="TFLite"):
    """Reports a failed export (the trained models are kept): a stage line,
    and the error as the run's ``export_info``."""
    stage(f"{runtime} export failed: {type(error).__name__}: {error}")
    run.export_info = {"error": f"{type(error).__name__}: {error}"}
