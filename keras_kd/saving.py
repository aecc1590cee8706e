"""Writing models to files: atomically, and without what does not belong.

Every file keras-kd writes (checkpoints, ``.keras`` students, TFLite files,
SavedModel directories) goes to a temporary path beside its target first and
replaces the target with ``os.replace`` only once complete, so a crash or a
kill never leaves a half-written file where a good one was.
"""

import contextlib
import os
import re
import shutil
import tempfile

import keras


@contextlib.contextmanager
def replacing(path, suffix="", directory=False):
    """Yields a temporary path beside ``path``; on success it replaces ``path``.

    The temporary file (or directory, with ``directory=True``) is created in
    the target's own directory, so the final ``os.replace`` is an atomic
    rename. If the ``with`` block raises, the temporary path is removed and
    ``path`` keeps its previous content.

    Args:
        path: the final file or directory.
        suffix: the temporary name's suffix (some writers check it, e.g.
            ``.keras``).
        directory: the target is a directory (replaced as a whole).

    Example:

    >>> import tempfile, os
    >>> target = os.path.join(tempfile.mkdtemp(), "out.txt")
    >>> with replacing(target) as tmp:
    ...     _ = open(tmp, "w").write("done")
    >>> open(target).read()
    'done'
    """
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    prefix = f".{os.path.basename(path)}."
    _recover_leftovers(path, parent, prefix, suffix)
    if directory:
        tmp = tempfile.mkdtemp(prefix=prefix, suffix=f".tmp{suffix}",
                               dir=parent)
    else:
        fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=f".tmp{suffix}",
                                   dir=parent)
        os.close(fd)
    try:
        yield tmp
        # mkstemp/mkdtemp create 0600/0700; the result gets the mode a plain
        # open() or mkdir would give it (the umask), as distiller.save does.
        _chmod_as_umask(tmp, directory)
        if directory:
            _replace_dir(tmp, path)
        else:
            os.replace(tmp, path)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
        elif os.path.exists(tmp):
            os.remove(tmp)


def _recover_leftovers(path, parent, prefix, suffix):
    """Cleans up after an earlier write to ``path`` that was killed.

    A killed write leaves its temporary ``.<name>.*.tmp<suffix>`` beside the
    target: it is removed. A directory write killed between moving the old
    directory aside (``.<name>.old.*``) and moving the new one in leaves no
    ``path`` at all: the old directory, the last good one, is moved back.
    (Two processes writing the same path at once are not supported.)
    """
    # tempfile's names: the prefix, 8 random characters, the suffix.
    temporary = re.compile(re.escape(prefix) + r"[a-z0-9_]{8}"
                           + re.escape(f".tmp{suffix}"))
    backup = re.compile(re.escape(prefix) + r"old\.[a-z0-9_]{8}")
    names = os.listdir(parent)
    for name in filter(temporary.fullmatch, names):
        full = os.path.join(parent, name)
        if os.path.isdir(full):
            shutil.rmtree(full, ignore_errors=True)
        else:
            os.remove(full)
    backups = sorted(filter(backup.fullmatch, names))
    if backups and not os.path.exists(path):
        os.replace(os.path.join(parent, backups[-1]), path)
        backups = backups[:-1]
    for name in backups:
        shutil.rmtree(os.path.join(parent, name), ignore_errors=True)


def _chmod_as_umask(path, directory):
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if directory else 0o666) & ~umask)


def _replace_dir(tmp_dir, path):
    """Moves ``tmp_dir`` onto ``path``; an old ``path`` survives a failure."""
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


def save_atomically(model, filepath):
    """Saves ``model`` to ``filepath`` (``.keras``) so that a crash never corrupts it.

    The model is written to a temporary ``.keras`` file in the same directory,
    then moved over ``filepath`` with ``os.replace`` (an atomic rename on
    POSIX and Windows when both paths are on the same file system). Until the
    rename, ``filepath`` holds its previous content; after it, the new model.

    Args:
        model: a ``keras.Model``.
        filepath: destination path ending in ``.keras``.

    Example:

    >>> import keras, tempfile, os
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> path = os.path.join(tempfile.mkdtemp(), "model.keras")
    >>> save_atomically(model, path)
    >>> keras.models.load_model(path).output_shape
    (None, 2)
    """
    with replacing(filepath, suffix=".keras") as tmp:
        keras.saving.save_model(model, tmp, overwrite=True)


def serialize_uncompiled(model):
    """``model``'s Keras config without its own compile options."""
    config = keras.saving.serialize_keras_object(model)
    config.pop("compile_config", None)
    return config


def save_model_only(model, path):
    """Saves a model's architecture and weights, without optimizer or compile
    options (atomically); returns the file size in bytes.

    ``model.save`` of a compiled model also stores its optimizer's variables
    (Adam: two per weight), which triples the file; comparing or shipping
    architectures needs the model alone.

    Example:

    >>> import keras, tempfile, os
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    >>> model.compile("adam", "mse")
    >>> path = os.path.join(tempfile.mkdtemp(), "model.keras")
    >>> save_model_only(model, path) > 0
    True
    """
    copy = keras.saving.deserialize_keras_object(serialize_uncompiled(model))
    copy.set_weights(model.get_weights())
    save_atomically(copy, path)
    return os.path.getsize(path)


@contextlib.contextmanager
def optimizers_detached(models):
    """Detaches the models' own optimizers (compiled models) while saving.

    A teacher compiled and trained on its own keeps its optimizer; saving a
    Distiller would store that optimizer's slots too (for Adam on a ResNet50,
    about 200 MB) although it plays no part in distillation.
    """
    held = [(model, model.optimizer) for model in models
            if getattr(model, "optimizer", None) is not None]
    try:
        for model, _ in held:
            model.optimizer = None
        yield
    finally:
        for model, optimizer in held:
            model.optimizer = optimizer


def load_model(filepath, compile=False):
    """``keras.saving.load_model`` with errors that name the file and the fix.

    Keras reports a truncated or corrupt ``.keras`` file (one that is not a
    zip archive) as "File not found"; here a missing file is a
    ``FileNotFoundError`` and an unreadable one a ``ValueError`` that says to
    re-save it. keras-kd's classes (a Distiller, its objectives) are
registered with Keras first (:func:`keras_kd.registration.register`).

    Example:

    >>> import tempfile, os
    >>> bad = os.path.join(tempfile.mkdtemp(), "student.keras")
    >>> _ = open(bad, "wb").write(b"not a zip")
    >>> load_model(bad)
    Traceback (most recent call last):
    ...
    ValueError: ... is not a readable .keras archive ...
    """
    import zipfile

    from keras_kd import registration

    registration.register()  # keras-kd's classes, for a Distiller's file
    filepath = os.fspath(filepath)
    if not os.path.exists(filepath):
        raise FileNotFoundError(f"No such model file: {filepath!r}.")
    if filepath.endswith(".keras") and not zipfile.is_zipfile(filepath):
        raise ValueError(
            f"{filepath!r} ({os.path.getsize(filepath)} bytes) is not a "
            "readable .keras archive (a zip file): it is truncated or "
            "corrupt, e.g. a copy that did not finish. Save the model again "
            "(model.save(path)) or use a StudentCheckpoint's last good file.")
    return keras.saving.load_model(filepath, compile=compile)
