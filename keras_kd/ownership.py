"""What keras-kd may replace or delete: only what it created.

The rule (docs/guarantees.md): nothing keras-kd writes replaces or deletes a
file it did not create. Every folder keras-kd owns (a soft-label cache, a
search directory, a SavedModel export, a run folder) holds a marker file,
``.keras-kd.json``, written when keras-kd created or first claimed the folder
while it was empty. A folder without the marker that holds anything is the
user's: keras-kd refuses to write into it or delete it, naming the folder and
the fix. Single files keras-kd writes beside a user's own (a JSON report)
carry a ``"created_by": "keras-kd"`` field and are replaced only when they do.

Example:

>>> import os, tempfile
>>> root = tempfile.mkdtemp()
>>> run = claim_folder(os.path.join(root, "run"), "run")
>>> is_owned(run, "run")
True
>>> with open(os.path.join(root, "notes.txt"), "w") as f:
...     _ = f.write("mine")
>>> try:
...     claim_folder(root, "run")
... except FileExistsError as error:
...     print("refused")
refused
"""

import json
import os
import shutil

MARKER = ".keras-kd.json"
CREATED_BY = "keras-kd"


def _marker_path(path):
    return os.path.join(os.fspath(path), MARKER)


def read_marker(path):
    """The marker of folder ``path`` as a dict, or None where there is none.

    Example:

    >>> import tempfile
    >>> read_marker(tempfile.mkdtemp()) is None
    True
    """
    try:
        with open(_marker_path(path)) as f:
            marker = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or marker.get("created_by") != CREATED_BY:
        return None
    return marker


def is_owned(path, kind=None):
    """True when folder ``path`` holds keras-kd's marker (of ``kind``, if given).

    Example:

    >>> import tempfile
    >>> is_owned(tempfile.mkdtemp())
    False
    """
    marker = read_marker(path)
    return marker is not None and (kind is None or marker.get("kind") == kind)


def _write_marker(path, kind, exclusive=False):
    if exclusive:
        # O_EXCL: of two processes that found the folder empty (one of them
        # may have just made it), exactly one writes the marker.
        try:
            fd = os.open(_marker_path(path),
                         os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            raise FileExistsError(
                f"{os.fspath(path)!r} is already in use by another keras-kd "
                f"{kind}; choose another name (runs never share a "
                "folder).") from None
        with os.fdopen(fd, "w") as f:
            json.dump({"created_by": CREATED_BY, "kind": kind}, f)
        return
    tmp = _marker_path(path) + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"created_by": CREATED_BY, "kind": kind}, f)
    os.replace(tmp, _marker_path(path))


def _refusal(path, kind, what):
    return FileExistsError(
        f"{os.fspath(path)!r} already holds files that keras-kd did not write "
        f"({what}); keras-kd never writes into or deletes a folder it did not "
        f"create. Choose a new or empty folder for this {kind}, or move those "
        "files away.")


def claim_folder(path, kind, exclusive=False):
    """Create folder ``path`` for keras-kd, or take it over while empty.

    A new folder is created (with its parents) and marked as keras-kd's
    ``kind``. An existing empty folder is marked and taken. An existing folder
    marked with the same ``kind`` is reused, unless ``exclusive=True`` (two
    runs must never share one folder: then it is refused too). Anything else is
    refused with a ``FileExistsError`` that names the folder and the fix.

    Args:
        path: the folder.
        kind: what keras-kd keeps there (``"run"``, ``"soft_labels"``, ...).
        exclusive: refuse a folder that exists already, even keras-kd's own.

    Returns:
        ``path``.

    Example:

    >>> import os, tempfile
    >>> d = claim_folder(os.path.join(tempfile.mkdtemp(), "cache"), "soft_labels")
    >>> sorted(os.listdir(d))
    ['.keras-kd.json']
    """
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    try:
        os.mkdir(path)  # atomic: of two runs, one creates the folder
    except FileExistsError:
        if not os.path.isdir(path):
            raise FileExistsError(
                f"{path!r} is a file, not a folder; choose another path for "
                f"this {kind}.") from None
        marker = read_marker(path)
        if marker is not None:
            if marker.get("kind") != kind:
                raise _refusal(path, kind, f"it is keras-kd's {marker.get('kind')}")
            if exclusive:
                raise FileExistsError(
                    f"{path!r} is already in use by another keras-kd {kind}; "
                    "choose another name (runs never share a folder).") from None
            return path
        if os.listdir(path):
            raise _refusal(path, kind, "it is not empty") from None
    _write_marker(path, kind, exclusive)
    return path


def remove_owned(path, kind):
    """Delete folder ``path`` only if keras-kd created it as ``kind``.

    A missing folder is fine; a folder without keras-kd's marker is refused
    (``FileExistsError``) and left as it is.

    Example:

    >>> import os, tempfile
    >>> d = claim_folder(os.path.join(tempfile.mkdtemp(), "trials"), "search")
    >>> remove_owned(d, "search"); os.path.exists(d)
    False
    """
    path = os.fspath(path)
    if not os.path.lexists(path):
        return
    if not os.path.isdir(path) or not is_owned(path, kind):
        raise _refusal(path, kind, "it has no keras-kd marker")
    shutil.rmtree(path)


def check_replaceable_json(path):
    """Refuse to replace ``path`` unless it is missing or a keras-kd JSON file.

    keras-kd's own JSON reports carry ``"created_by": "keras-kd"``; a user's
    file of the same name (a ``model.json`` beside ``model.tflite``) is never
    overwritten.

    Example:

    >>> import os, tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "model.json")
    >>> check_replaceable_json(p)   # missing: fine
    >>> with open(p, "w") as f:
    ...     _ = f.write('{"mine": 1}')
    >>> try:
    ...     check_replaceable_json(p)
    ... except FileExistsError:
    ...     print("refused")
    refused
    """
    path = os.fspath(path)
    if not os.path.lexists(path):
        return
    try:
        with open(path) as f:
            record = json.load(f)
    except (OSError, ValueError):
        record = None
    if not (isinstance(record, dict) and record.get("created_by") == CREATED_BY):
        raise FileExistsError(
            f"{path!r} exists and keras-kd did not write it; keras-kd never "
            "replaces a file it did not create. Move it away or choose another "
            "path.")


def write_json(path, record):
    """Write a JSON report atomically, marked as keras-kd's, refusing to
    replace a file keras-kd did not write (see :func:`check_replaceable_json`).

    Example:

    >>> import os, tempfile
    >>> p = os.path.join(tempfile.mkdtemp(), "report.json")
    >>> write_json(p, {"accuracy": 0.9}); write_json(p, {"accuracy": 0.95})
    >>> json.load(open(p))["accuracy"]
    0.95
    """
    path = os.fspath(path)
    check_replaceable_json(path)
    record = {"created_by": CREATED_BY, **record}
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w") as f:
            json.dump(record, f, indent=2, allow_nan=False)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def mark_folder(path, kind):
    """Mark existing folder ``path`` as keras-kd's ``kind``, whatever it holds.

    For a folder keras-kd wrote before markers existed, which the caller has
    recognised by its own record there (a soft-label cache's manifest): it is
    then keras-kd's like a folder :func:`claim_folder` took. A folder marked
    as another kind is refused (``FileExistsError``); never call this on a
    folder whose contents keras-kd has not recognised as its own.

    Example:

    >>> import os, tempfile
    >>> d = tempfile.mkdtemp()
    >>> with open(os.path.join(d, "manifest.json"), "w") as f:
    ...     _ = f.write("{}")  # recognised by the caller as its own
    >>> is_owned(mark_folder(d, "soft_labels"), "soft_labels")
    True
    """
    path = os.fspath(path)
    marker = read_marker(path)
    if marker is not None and marker.get("kind") != kind:
        raise _refusal(path, kind, f"it is keras-kd's {marker.get('kind')}")
    _write_marker(path, kind)
    return path
