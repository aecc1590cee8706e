"""The folder of an on-disk cache: keras-kd's own, or refused.

keras-kd writes only into folders it created (docs/guarantees.md). A cache
folder is keras-kd's when it holds the marker ``.keras-kd.json`` of kind
``"soft_labels"``, written when a build created the folder or took it while
empty (:func:`keras_kd.ownership.claim_folder`). Caches written before the
marker existed have none: their ``manifest.json``, a keras-kd soft-label
manifest (its ``"format"`` field), is their record, so such a folder counts
as the cache's and is marked by its next build (left unmarked in a
folder keras-kd cannot write, where it can only be reopened). Any other folder that holds
files (a user's ``inputs.bin``, ``labels.bin``, ``logits.bin``, or another
program's ``manifest.json``) is refused before anything is written there,
``overwrite=True`` or not.
"""

import json
import os

from keras_kd import ownership
from keras_kd.soft_labels import store

KIND = "soft_labels"


def has_cache_manifest(path):
    """True when folder ``path`` holds a keras-kd soft-label manifest (its
    ``"format"`` field; the rest is checked when the cache is opened).

    Example:

    >>> import tempfile
    >>> has_cache_manifest(tempfile.mkdtemp())
    False
    """
    try:
        with open(os.path.join(path, store.MANIFEST), encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("format") == \
        store.FORMAT


def claim(path):
    """Makes ``path`` a cache folder keras-kd may write: creates and marks
    a new folder, takes an empty one, reuses one marked as a cache's, and
    marks a cache written before markers existed.

    Returns:
        ``path``.

    Raises:
        FileExistsError: the folder holds files keras-kd did not write, or
            is another keras-kd folder (a run's, a search's), naming the fix.

    Example:

    >>> import os, tempfile
    >>> path = claim(os.path.join(tempfile.mkdtemp(), "cache"))
    >>> ownership.is_owned(path, "soft_labels")
    True
    """
    path = os.fspath(path)
    if os.path.isdir(path) and ownership.read_marker(path) is None \
            and has_cache_manifest(path):
        try:
            return ownership.mark_folder(path, KIND)
        except OSError:  # read-only: a complete cache is still reopened
            return path
    try:
        return ownership.claim_folder(path, KIND)
    except FileExistsError as error:
        raise FileExistsError(
            f"{error} A soft-label cache needs a folder of its own: pass "
            "compute_soft_labels(..., path=<a new or empty folder>) "
            "(overwrite=True replaces only a cache keras-kd wrote)."
        ) from None
