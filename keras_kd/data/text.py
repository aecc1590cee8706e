"""Offline text for language models: the Python standard library's own source.

Every Python installation carries a few megabytes of real, varied text, its
standard library, so language-model examples and tests need no download. The
text is turned into byte-level windows for next-token prediction.

Token ids are the bytes themselves: id ``b`` is byte ``b`` (0 to 255, a
vocabulary of 256), exactly what ``keras_hub.tokenizers.ByteTokenizer(
lowercase=False)`` gives (note that its default, ``lowercase=True``, case-folds
the text first). That tokenizer reserves no ids: it pads with id 0, the NUL
byte, and has no start or end token. Python source never contains NUL (the
compiler rejects it, and files that hold one are left out here), so id 0
appears only as padding, and ``padding_mask`` says which positions are real.

Only the standard library and NumPy are imported here.
"""

import dataclasses
import math
import os
import sysconfig

import numpy as np

VOCABULARY_SIZE = 256
"""Token ids are byte values: 0 to 255."""

PAD_ID = 0
"""The id of padding positions (the NUL byte, as in keras-hub's ByteTokenizer)."""

EXCLUDED_DIRS = frozenset({
    # Third-party packages, not the standard library.
    "site-packages", "dist-packages",
    # Test suites: deliberately odd files, and often not installed at all.
    "test", "tests", "idle_test",
    # GUI code that distributions often package separately (python3-tk,
    # idle), so the corpus would change with the installation.
    "idlelib", "tkinter", "turtledemo",
    # Generated text rather than written code: codec tables made by
    # gencodec.py, and the documentation topics as one string literal.
    "encodings", "pydoc_data",
})
"""Directory names whose ``.py`` files `python_source_files` leaves out."""

_EXCLUDED_PREFIXES = ("_sysconfigdata",)  # generated build configuration


def _stdlib_root(root):
    return os.path.abspath(root if root is not None
                           else sysconfig.get_paths()["stdlib"])


def _is_usable(path):
    try:
        with open(path, "rb") as f:
            data = f.read()
        data.decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    return len(data) > 0 and b"\x00" not in data


def python_source_files(root=None, exclude=EXCLUDED_DIRS):
    """The ``.py`` files of the running Python's standard library, sorted.

    Left out: files under a directory named in ``exclude`` (by default
    `EXCLUDED_DIRS`: ``site-packages``, test suites, the GUI packages
    ``idlelib``/``tkinter``/``turtledemo`` and the generated ``encodings``
    tables and ``pydoc_data`` topics), the generated ``_sysconfigdata*.py``,
    empty files, files that are not valid UTF-8 and files with a NUL byte.
    The order is that of the paths relative to ``root`` (``/``-separated), so
    it does not depend on where Python is installed or on the file system.

    Args:
        root: the directory to search; the standard library
            (``sysconfig.get_paths()["stdlib"]``) when None.
        exclude: directory names to skip, at any depth below ``root``.

    Returns:
        A list of absolute paths.

    Example:

    >>> files = python_source_files()
    >>> any(f.endswith(os.sep + "argparse.py") for f in files)
    True
    >>> any(os.sep + "site-packages" + os.sep in f for f in files)
    False
    """
    root = _stdlib_root(root)
    if not os.path.isdir(root):
        raise ValueError(f"root must be a directory, got {root!r}.")
    exclude = frozenset(exclude)
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in exclude]
        for name in filenames:
            if name.endswith(".py") and not name.startswith(_EXCLUDED_PREFIXES):
                path = os.path.join(dirpath, name)
                found.append((os.path.relpath(path, root).replace(os.sep, "/"),
                              path))
    found.sort()
    return [path for _, path in found if _is_usable(path)]


@dataclasses.dataclass(frozen=True, repr=False, eq=False)
class TokenWindows:
    """Byte-level windows of text for next-token prediction.

    Window ``i`` holds the bytes ``token_ids[i]`` of one file (a window never
    spans two files); ``labels[i, j]`` is the byte that follows
    ``token_ids[i, j]`` in that file. A file's last window is padded with
    `PAD_ID`.

    Attributes:
        token_ids: int32 ``(n, sequence_length)`` byte values.
        padding_mask: bool ``(n, sequence_length)``, True on real bytes.
        labels: int32 ``(n, sequence_length)``, the next byte; `PAD_ID` where
            there is none.
        sample_weight: float32 ``(n, sequence_length)``: 1 where a next byte
            exists, 0 on padding and on a file's last byte.
        file_index: int32 ``(n,)``, the window's file in ``files``.
        files: the files' paths relative to the library root.
        texts: the text used from each file (a file can be cut short to keep
            within ``max_bytes``; the cut falls between characters).
        num_bytes: the UTF-8 bytes in ``texts``.
    """

    token_ids: np.ndarray
    padding_mask: np.ndarray
    labels: np.ndarray
    sample_weight: np.ndarray
    file_index: np.ndarray
    files: tuple
    texts: tuple
    num_bytes: int

    @property
    def x(self):
        """The model inputs: ``{"token_ids": ..., "padding_mask": ...}``."""
        return {"token_ids": self.token_ids, "padding_mask": self.padding_mask}

    @property
    def num_files(self):
        return len(self.files)

    @property
    def num_windows(self):
        return int(self.token_ids.shape[0])

    @property
    def num_targets(self):
        """The positions with a next byte to predict (weight 1)."""
        return int(self.sample_weight.sum())

    def shuffled(self, seed=0):
        """The same windows in a random order (``files`` and ``texts`` kept).

        keras-hub's ``Task.fit`` does not shuffle arrays (it builds an
        unshuffled dataset and Keras ignores ``shuffle=True``), so shuffle
        the training windows before fitting a keras-hub model on them.
        """
        order = np.random.default_rng(seed).permutation(self.num_windows)
        return dataclasses.replace(
            self, token_ids=self.token_ids[order],
            padding_mask=self.padding_mask[order], labels=self.labels[order],
            sample_weight=self.sample_weight[order],
            file_index=self.file_index[order])

    def as_bytes(self):
        """Each window as the ``bytes`` it was cut from: inputs, then last label.

        A keras-hub ``CausalLMPreprocessor`` with a ``ByteTokenizer
        (lowercase=False)``, ``sequence_length`` equal to this one and no
        start or end token turns these back into exactly ``x``, ``labels``
        and ``sample_weight`` (it drops the label of the last real byte, as
        here).

        Returns:
            A list of ``bytes``, at most ``sequence_length + 1`` long each.
        """
        out = []
        for ids, mask, labels, weights in zip(self.token_ids, self.padding_mask,
                                              self.labels, self.sample_weight):
            n = int(mask.sum())
            tail = [int(labels[n - 1])] if n and weights[n - 1] else []
            out.append(bytes(ids[:n].astype(np.uint8).tolist() + tail))
        return out

    def __repr__(self):
        return (f"TokenWindows(num_windows={self.num_windows}, "
                f"sequence_length={self.token_ids.shape[1]}, "
                f"num_files={self.num_files}, num_bytes={self.num_bytes}, "
                f"num_targets={self.num_targets})")


@dataclasses.dataclass(frozen=True, eq=False)
class TextSplits:
    """Train and held-out `TokenWindows`, split by file, and how they were made.

    Attributes:
        train: the training windows, in file order (see
            `TokenWindows.shuffled`).
        held_out: the held-out windows; no file is in both.
        sequence_length: the window length.
        stride: the distance between the starts of a file's windows.
        vocabulary_size: 256, one id per byte value.
        seed: the seed of the file order.
        root: the directory the files were read from.
    """

    train: TokenWindows
    held_out: TokenWindows
    sequence_length: int
    stride: int
    vocabulary_size: int
    seed: int
    root: str


def _truncate_utf8(data, limit):
    """``data[:limit]``, moved back so that no character is cut in two."""
    if limit >= len(data):
        return data
    while limit > 0 and (data[limit] & 0xC0) == 0x80:
        limit -= 1
    return data[:limit]


def _windows(chunks, files, sequence_length, stride):
    """Cuts each file's bytes into windows; see `TokenWindows`."""
    length = sequence_length
    parts = []
    for index, data in enumerate(chunks):
        n = len(data)
        if n < 2:
            continue
        # Windows start every `stride` bytes until one reaches the last byte.
        count = max(0, math.ceil((n - 1 - length) / stride)) + 1
        starts = np.arange(count, dtype=np.int64) * stride
        positions = starts[:, None] + np.arange(length + 1)[None, :]
        padded = np.zeros(int(positions.max()) + 1, np.int32)
        padded[:n] = np.frombuffer(data, np.uint8)
        real = positions < n
        parts.append((padded[positions], real,
                      np.full(count, index, np.int32)))
    if parts:
        ids = np.concatenate([p[0] for p in parts])
        real = np.concatenate([p[1] for p in parts])
        file_index = np.concatenate([p[2] for p in parts])
    else:
        ids = np.zeros((0, length + 1), np.int32)
        real = np.zeros((0, length + 1), bool)
        file_index = np.zeros((0,), np.int32)
    texts = tuple(data.decode("utf-8") for data in chunks)
    return TokenWindows(
        token_ids=np.ascontiguousarray(ids[:, :-1]),
        padding_mask=np.ascontiguousarray(real[:, :-1]),
        labels=np.ascontiguousarray(ids[:, 1:]),
        sample_weight=real[:, 1:].astype(np.float32),
        file_index=file_index, files=tuple(files), texts=texts,
        num_bytes=sum(len(data) for data in chunks))


def load_python_source(sequence_length=128, max_bytes=2_000_000,
                       held_out_fraction=0.1, seed=0, stride=None, root=None):
    """Next-byte windows of the standard library's source, split by file.

    The files of `python_source_files` are put in a random order (fixed by
    ``seed``). Held-out files are taken from the front of that order until
    they hold ``held_out_fraction`` of the bytes, training files from the
    rest until all ``max_bytes`` are used; the last file of each split is cut
    short to fit. A file is wholly in one split, never in both. Each file is
    then cut into windows of ``sequence_length`` bytes, one every ``stride``
    bytes, each labelled with the bytes that follow (see `TokenWindows`).

    With the default ``stride`` (``sequence_length``) every byte of a file
    but its first is predicted exactly once, so a model's mean loss over the
    weighted positions, in bits, is its bits per byte on that text. A
    smaller stride gives overlapping windows (more training positions; a
    byte then counts once per window that predicts it).

    Memory: about 13 bytes per window position, e.g. 26 MB for the default
    2 MB of text at the default stride; the whole library is about 9 MB
    (Python 3.11).

    Args:
        sequence_length: bytes per window, at least 2.
        max_bytes: the most bytes to read, all splits together; None reads
            every file.
        held_out_fraction: the share of the bytes held out, in [0, 1).
        seed: fixes the file order, hence which files are held out.
        stride: bytes between window starts, in [1, sequence_length];
            ``sequence_length`` (no overlap) when None.
        root: the directory to read; the standard library when None.

    Returns:
        A `TextSplits` with ``train`` and ``held_out`` `TokenWindows`.

    Example:

    >>> data = load_python_source(sequence_length=64, max_bytes=20000)
    >>> data.train.token_ids.shape[1], data.vocabulary_size
    (64, 256)
    >>> data.train.num_bytes + data.held_out.num_bytes <= 20000
    True
    >>> set(data.train.files) & set(data.held_out.files)
    set()
    >>> w = data.train
    >>> real = w.sample_weight[:, :-1] > 0  # the label is the next input
    >>> bool((w.labels[:, :-1] == w.token_ids[:, 1:])[real].all())
    True
    """
    if isinstance(sequence_length, bool) or not isinstance(
            sequence_length, (int, np.integer)) or sequence_length < 2:
        raise ValueError(
            f"sequence_length must be an int of at least 2, got "
            f"{sequence_length!r}; e.g. sequence_length=128.")
    sequence_length = int(sequence_length)
    if stride is None:
        stride = sequence_length
    if isinstance(stride, bool) or not isinstance(
            stride, (int, np.integer)) or not 1 <= stride <= sequence_length:
        raise ValueError(
            f"stride must be an int in [1, sequence_length={sequence_length}], "
            f"got {stride!r}; None means sequence_length (no overlap).")
    stride = int(stride)
    if max_bytes is not None and (
            isinstance(max_bytes, bool)
            or not isinstance(max_bytes, (int, np.integer)) or max_bytes < 2):
        raise ValueError(
            f"max_bytes must be None or an int of at least 2, got "
            f"{max_bytes!r}; e.g. max_bytes=2_000_000.")
    if not isinstance(held_out_fraction, (int, float, np.floating)) or not (
            0.0 <= held_out_fraction < 1.0):
        raise ValueError(
            f"held_out_fraction must be in [0, 1), got {held_out_fraction!r}; "
            f"e.g. 0.1.")

    root = _stdlib_root(root)
    paths = python_source_files(root)
    if not paths:
        raise ValueError(f"No usable .py files under {root!r}.")
    sizes = [os.path.getsize(p) for p in paths]
    order = np.random.default_rng(seed).permutation(len(paths))
    budget = sum(sizes) if max_bytes is None else min(int(max_bytes), sum(sizes))
    held_budget = int(round(held_out_fraction * budget))
    if held_out_fraction > 0:
        held_budget = max(held_budget, 2)  # at least one prediction
    budgets = {"held_out": held_budget, "train": budget - held_budget}

    picked = {"held_out": ([], []), "train": ([], [])}
    position = 0
    for split in ("held_out", "train"):
        chunks, names = picked[split]
        left = budgets[split]
        while left > 0 and position < len(order):
            path = paths[order[position]]
            position += 1
            with open(path, "rb") as f:
                data = _truncate_utf8(f.read(), left)
            if not data:
                continue
            chunks.append(data)
            names.append(os.path.relpath(path, root).replace(os.sep, "/"))
            left -= len(data)
            if left < 4:  # a cut file, or too little left for another
                break
    train = _windows(*picked["train"], sequence_length, stride)
    held_out = _windows(*picked["held_out"], sequence_length, stride)
    return TextSplits(train=train, held_out=held_out,
                      sequence_length=sequence_length, stride=stride,
                      vocabulary_size=VOCABULARY_SIZE, seed=seed, root=root)


def bits_per_byte(logits, labels, sample_weight=None, chunk_size=65536):
    """Mean negative log2-likelihood of the labels: bits per byte.

    ``-log2(softmax(logits)[label])`` averaged over the positions, weighted by
    ``sample_weight``, computed in float64 with a stable log-softmax. With
    byte-level tokens (one token per byte) this is the model's bits per byte;
    uniform logits over 256 ids give exactly 8.

    Args:
        logits: ``(..., vocabulary_size)`` unnormalised scores, e.g. a
            causal LM's ``(n, sequence_length, 256)`` output (any array-like).
        labels: ``(...)`` int ids. Where the weight is 0 they are ignored, so
            padding may hold any value.
        sample_weight: ``(...)`` non-negative weights, e.g.
            `TokenWindows.sample_weight`; every position counts when None.
        chunk_size: positions converted to float64 at a time (bounds memory).

    Returns:
        A Python float.

    Example:

    >>> logits = np.zeros((2, 3, 256))
    >>> bits_per_byte(logits, np.ones((2, 3), int), np.ones((2, 3)))
    8.0
    >>> certain = np.where(np.arange(256) == 7, 100.0, 0.0) * np.ones((2, 3, 1))
    >>> round(bits_per_byte(certain, np.full((2, 3), 7)), 6)
    0.0
    """
    logits = np.asarray(logits)
    labels = np.asarray(labels)
    if logits.ndim < 1 or logits.shape[:-1] != labels.shape:
        raise ValueError(
            f"logits must have shape labels.shape + (vocabulary_size,), got "
            f"logits {logits.shape} and labels {labels.shape}.")
    if sample_weight is None:
        weights = np.ones(labels.shape, np.float64)
    else:
        weights = np.asarray(sample_weight, np.float64)
        if weights.shape != labels.shape:
            raise ValueError(
                f"sample_weight must have the shape of labels {labels.shape}, "
                f"got {weights.shape}.")
        if (weights < 0).any():
            raise ValueError("sample_weight must not be negative.")
    vocabulary_size = logits.shape[-1]
    logits = logits.reshape(-1, vocabulary_size)
    labels = labels.reshape(-1)
    weights = weights.reshape(-1)
    counted = weights > 0
    if not counted.any():
        raise ValueError("sample_weight is 0 everywhere: no position to score.")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}.")
    bad = counted & ((labels < 0) | (labels >= vocabulary_size))
    if bad.any():
        raise ValueError(
            f"labels must be in [0, {vocabulary_size}) where the weight is "
            f"not 0, got {labels[bad][:5].tolist()}.")
    total = 0.0
    for start in range(0, labels.shape[0], chunk_size):
        rows = slice(start, start + chunk_size)
        z = logits[rows].astype(np.float64)
        peak = z.max(axis=-1, keepdims=True)
        log_norm = peak[:, 0] + np.log(np.exp(z - peak).sum(axis=-1))
        picked = np.take_along_axis(
            z, np.clip(labels[rows], 0, vocabulary_size - 1)[:, None], -1)[:, 0]
        nll = np.where(counted[rows], log_norm - picked, 0.0)
        total += float(np.dot(weights[rows], nll))
    return total / float(weights.sum()) / math.log(2.0)
