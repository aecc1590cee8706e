"""The on-disk format of a soft-label cache: raw column files and a manifest.

One raw file per per-sample array, read back with ``np.memmap``:

- ``inputs.bin`` (one input array), or ``inputs.<name>.bin`` per input of a
  dict (``inputs.token_ids.bin``, ``inputs.padding_mask.bin``; names are
  letters, digits and underscores);
- ``labels.bin``, ``sample_weight.bin`` (float32) when given;
- ``logits.bin`` (float32, ``(..., C)`` per sample: ``(C,)``, or
  ``(length, V)`` for a sequence model), or with top-k ``topk_values.bin``
  (``(..., k)``, float16 or float32), ``topk_indices.bin`` (``(..., k)``,
  uint16, int32 when C > 65535) and ``topk_fill.bin`` (``(...)``, float32);
- ``feature_<i>.bin`` (float32) per cached teacher layer;

and a JSON ``manifest.json`` holding the teacher fingerprint, the columns'
dtypes and per-sample shapes, the build options and its progress (rows and
batches done), and each column file's CRC-32 over the rows done
(``"checksums"``, updated with every finished batch). The manifest is
replaced atomically after each batch, so an interrupted build resumes from
the last finished one, after checking the bytes it continues from against
those checksums.

The directory also holds keras-kd's marker ``.keras-kd.json``
(:mod:`keras_kd.soft_labels.folder`): a build writes only into a folder
that is a cache's. While a build runs, it holds ``.lock`` there
(:class:`keras_kd.soft_labels.lock.BuildLock`), so a second build of the
same cache is refused.

Version 1 throughout: dict inputs, sample weights, logits of any rank and
the top-k value dtype only add columns and options (a manifest without them
reads as one array input, no sample weights and float16 top-k values).
"""

import json
import os
import re
import zlib

import numpy as np

FORMAT = "keras-kd soft labels"
VERSION = 1
MANIFEST = "manifest.json"
CHECKSUM = "crc32"
# The keys every manifest holds (older ones may lack "checksums").
MANIFEST_KEYS = ("teacher", "num_classes", "top_k", "feature_layers",
                 "options", "dataset", "columns", "rows_done", "batches_done",
                 "complete")
_CHUNK = 1 << 24  # bytes read at a time when checksumming a file


# A column's name is its file's name inside the cache directory.
_COLUMN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def check_column(name, dtype, row_shape):
    """Refuses a column that could reach outside the cache or misread memory.

    Column names become file names (``<name>.bin``) inside the cache
    directory, and dtypes are memory-mapped: a name with a path separator or
    ``..``, an object dtype (raw pointers) or a negative size never comes
    from keras-kd, only from an edited or corrupt manifest, or a dict input
    named so.
    """
    if (not isinstance(name, str) or not _COLUMN_NAME.fullmatch(name)
            or ".." in name):
        raise ValueError(
            f"Soft-label column name {name!r} is not a plain file name "
            "(letters, digits, '_', '.', '-'). Rename the dict input; if the "
            "cache's manifest.json was edited or is corrupt, rebuild the "
            "cache (overwrite=True).")
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        dtype = None
    if dtype is None or dtype.hasobject or dtype.kind not in "biufcSU":
        raise ValueError(
            f"Soft-label column {name!r} has dtype {dtype!r}, which is not a "
            "plain numeric or string type and cannot be memory-mapped safely. "
            "If the cache's manifest.json was edited or is corrupt, rebuild "
            "the cache (overwrite=True).")
    shape = tuple(row_shape)
    if not all(isinstance(d, (int, np.integer)) and d >= 0 for d in shape):
        raise ValueError(
            f"Soft-label column {name!r} has row shape {list(shape)}; sizes "
            "must be whole numbers >= 0. Rebuild the cache (overwrite=True).")
    return dtype, tuple(int(d) for d in shape)


class Column:
    """One per-sample array, grown batch by batch (memory or a .bin file)."""

    def __init__(self, name, dtype, row_shape, directory=None, crc=0):
        self.name = name
        self.dtype, self.row_shape = check_column(name, dtype, row_shape)
        self.directory = directory
        self.crc = crc  # CRC-32 of the rows written to the file so far
        self._chunks = []
        self._array = None

    @property
    def row_bytes(self):
        return int(self.dtype.itemsize * np.prod(self.row_shape, dtype=np.int64))

    @property
    def file(self):
        return os.path.join(self.directory, f"{self.name}.bin")

    def spec(self):
        return {"dtype": self.dtype.str, "shape": list(self.row_shape)}

    def truncate(self, rows):
        """Drops what lies past ``rows`` (a batch torn by an interruption)."""
        if self.directory is None:
            return
        mode = "r+b" if os.path.exists(self.file) else "w+b"
        with open(self.file, mode) as f:
            f.truncate(rows * self.row_bytes)

    def encode(self, rows):
        """``rows`` as this column stores them (its dtype, C order)."""
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        if tuple(rows.shape[1:]) != self.row_shape:
            raise ValueError(
                f"'{self.name}' rows have shape {rows.shape[1:]} but the first "
                f"batch had {self.row_shape}: every batch must have the same "
                "per-sample shape (pad or resize the inputs)."
            )
        return rows

    def append(self, rows):
        rows = self.encode(rows)
        if self.directory is None:  # the cache's own copy, not a view of
            # the caller's array (changed in place later)
            self._chunks.append(rows if rows.flags.owndata else rows.copy())
        else:
            data = memoryview(rows).cast("B") if rows.size else b""
            with open(self.file, "ab") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            self.crc = zlib.crc32(data, self.crc)

    def check_file(self, rows, exact=True):
        """Refuses a column file shorter (or, with ``exact``, longer) than
        ``rows`` rows: truncated, or replaced by another file."""
        expected = rows * self.row_bytes
        try:
            size = os.path.getsize(self.file)
        except OSError:
            size = None
        if size is None or size < expected or (exact and size != expected):
            found = "is missing" if size is None else f"holds {size} bytes"
            raise ValueError(
                f"The soft-label cache file '{self.file}' {found}, but the "
                f"cache's {MANIFEST} records {rows} rows of {self.row_bytes} "
                f"bytes ({expected} bytes): the file was truncated, deleted "
                "or replaced. Rebuild the cache: kd.compute_soft_labels(..., "
                "overwrite=True) at this path (or another path).")

    def verify(self, rows, crc):
        """Refuses a column file whose bytes differ from the checksum the
        build recorded (``crc``, CRC-32 of its first ``rows`` rows)."""
        self.check_file(rows)
        found = file_crc32(self.file, rows * self.row_bytes)
        if found != crc:
            raise ValueError(
                f"The soft-label cache file '{self.file}' is corrupt: its "
                f"CRC-32 is {found:08x}, but the build recorded {crc:08x} in "
                f"{MANIFEST} (bytes changed on disk since it was written). "
                "Rebuild the cache: kd.compute_soft_labels(..., "
                "overwrite=True) at this path (or another path).")
        self.crc = crc

    def array(self, rows):
        """The column as an array: in memory, or a read-only memory map."""
        if self._array is not None:
            return self._array
        if self.directory is None:
            self._array = (np.concatenate(self._chunks) if self._chunks else
                           np.zeros((0,) + self.row_shape, self.dtype))
            self._chunks = [self._array]
        elif rows == 0:
            self._array = np.zeros((0,) + self.row_shape, self.dtype)
        else:
            self.check_file(rows, exact=False)
            self._array = np.memmap(self.file, dtype=self.dtype, mode="r",
                                    shape=(rows,) + self.row_shape)
        return self._array


def file_crc32(file, nbytes):
    """CRC-32 (``zlib.crc32``) of the first ``nbytes`` bytes of ``file``,
    read 16 MiB at a time."""
    crc = 0
    buffer = bytearray(_CHUNK)
    view = memoryview(buffer)
    with open(file, "rb", buffering=0) as f:
        left = nbytes
        while left > 0:
            n = f.readinto(view[:min(left, _CHUNK)])
            if not n:
                break
            crc = zlib.crc32(view[:n], crc)
            left -= n
    return crc


def read_manifest(path):
    """The manifest at ``path`` (a dict), or None when there is none.

    Raises:
        ValueError: naming the file and the fix when it is not JSON, not a
            keras-kd manifest, or lacks one of its keys.
    """
    file = os.path.join(path, MANIFEST)
    if not os.path.exists(file):
        return None
    fix = ("Rebuild the cache: kd.compute_soft_labels(..., overwrite=True) "
           "at this path (or another path).")
    try:
        with open(file, encoding="utf-8") as f:
            manifest = json.load(f)
    except (ValueError, UnicodeDecodeError) as error:  # JSONDecodeError too
        raise ValueError(
            f"The soft-label cache manifest '{file}' is not valid JSON "
            f"({error}): it was truncated or edited. {fix}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT \
            or manifest.get("version") != VERSION:
        raise ValueError(
            f"'{file}' is not a keras-kd soft-label manifest (version "
            f"{VERSION}). Pass an empty or new directory as path."
        )
    missing = [key for key in MANIFEST_KEYS if key not in manifest]
    if missing:
        raise ValueError(
            f"The soft-label cache manifest '{file}' lacks {missing}: it was "
            f"edited or is corrupt. {fix}")
    kinds = {"teacher": dict, "options": dict, "dataset": dict,
             "columns": dict, "rows_done": int, "batches_done": int,
             "complete": bool, "feature_layers": list,
             "checksums": (dict, type(None))}
    wrong = [key for key, kind in kinds.items()
             if not isinstance(manifest.get(key), kind)
             or (kind is int and isinstance(manifest[key], bool))]
    if wrong:
        raise ValueError(
            f"The soft-label cache manifest '{file}' has entries of the wrong "
            f"type: {wrong}. It was edited or is corrupt. {fix}")
    return manifest


def build_options(manifest):
    """A manifest's build options, with the values that caches written
    before an option existed were built with (one array input, no sample
    weights, float16 top-k values).

    Example:

    >>> build_options({"options": {"top_k": 3}, "top_k": 3})["top_k_dtype"]
    'float16'
    """
    options = dict(manifest["options"])
    options.setdefault("input_keys", None)
    options.setdefault("has_sample_weight", False)
    options.setdefault("top_k_dtype",
                       None if manifest["top_k"] is None else "float16")
    return options


def write_manifest(path, manifest):
    tmp = os.path.join(path, MANIFEST + ".tmp")
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(path, MANIFEST))


def remove_cache_files(path):
    """Removes a cache's own files at ``path``: its manifest and the .bin
    files of the columns it lists. Other files in the directory are kept."""
    try:
        manifest = read_manifest(path)
    except (ValueError, OSError):  # unreadable: only the manifest goes
        manifest = None
    names = []
    for name in (manifest or {}).get("columns", {}):
        if isinstance(name, str) and _COLUMN_NAME.fullmatch(name) \
                and ".." not in name:
            names.append(f"{name}.bin")
    for name in names + [MANIFEST, MANIFEST + ".tmp"]:
        file = os.path.join(path, name)
        if os.path.isfile(file):
            os.remove(file)


def open_columns(manifest, path):
    """The columns a manifest lists (refused first by :func:`check_column`
    when a name, dtype or shape could misread memory or files)."""
    columns = {}
    for name, spec in manifest["columns"].items():
        if not isinstance(spec, dict) or "dtype" not in spec or \
                not isinstance(spec.get("shape"), list):
            file = os.path.join(path, MANIFEST)
            raise ValueError(
                f"The soft-label cache manifest '{file}' describes column "
                f"{name!r} as {spec!r}, not "
                '{"dtype": ..., "shape": [...]}. Rebuild the cache: '
                "kd.compute_soft_labels(..., overwrite=True).")
        columns[name] = Column(name, spec["dtype"], spec["shape"], path)
    return columns


def checksums(columns):
    """The manifest's ``"checksums"``: each column's CRC-32 so far."""
    return {name: column.crc for name, column in columns.items()}


def verify_columns(manifest, columns, path):
    """Checks every column file against the manifest: its size, and its
    CRC-32 when the manifest records one (caches written before checksums
    only get the size check; returns False for them)."""
    rows = manifest["rows_done"]
    stored = manifest.get("checksums")
    for name, column in columns.items():
        crc = None if stored is None else stored.get(name)
        if crc is None:
            if stored is not None:
                raise ValueError(
                    f"The soft-label cache manifest "
                    f"'{os.path.join(path, MANIFEST)}' records no checksum "
                    f"for column {name!r}: it was edited or is corrupt. "
                    "Rebuild the cache: kd.compute_soft_labels(..., "
                    "overwrite=True).")
            column.check_file(rows)
            continue
        column.verify(rows, int(crc))
    return stored is not None


def is_data_column(name):
    """True for the columns that hold the data rather than teacher outputs:
    inputs, labels and sample weights (their checksums fingerprint the
    data)."""
    return name == "inputs" or name.startswith("inputs.") or \
        name in ("labels", "sample_weight")


def input_column(key):
    """The column of one input: ``inputs``, or ``inputs.<key>`` in a dict."""
    return "inputs" if key is None else f"inputs.{key}"


def make_columns(xb, yb, wb, outputs, top_k, top_k_dtype, store_inputs,
                 directory):
    """The columns of a new cache, from its first batch.

    Args:
        xb: the first input batch: an array, or a dict of arrays.
        yb: its labels, or None.
        wb: its sample weights, or None.
        outputs: ``(logits, features)`` of the teacher on ``xb``.
        top_k: k, or None to keep all logits.
        top_k_dtype: the dtype of the kept values with top-k.
        store_inputs: store the inputs too.
        directory: the cache directory, or None in memory.
    """
    logits, features = outputs
    cols = []
    if store_inputs:
        if isinstance(xb, dict):
            cols += [(input_column(k), v.dtype, v.shape[1:])
                     for k, v in xb.items()]
        else:
            cols.append((input_column(None), xb.dtype, xb.shape[1:]))
    if yb is not None:
        cols.append(("labels", yb.dtype, yb.shape[1:]))
    if wb is not None:
        cols.append(("sample_weight", "float32", wb.shape[1:]))
    classes = logits.shape[-1]
    if top_k is None:
        cols.append(("logits", "float32", logits.shape[1:]))
    else:
        positions = tuple(logits.shape[1:-1])
        index_dtype = "uint16" if classes <= 65535 else "int32"
        cols += [("topk_values", top_k_dtype, positions + (top_k,)),
                 ("topk_indices", index_dtype, positions + (top_k,)),
                 ("topk_fill", "float32", positions)]
    cols += [(f"feature_{i}", "float32", f.shape[1:])
             for i, f in enumerate(features)]
    return {name: Column(name, dtype, shape, directory)
            for name, dtype, shape in cols}

