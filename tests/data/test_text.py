"""keras_kd.data.text: standard-library source as byte windows, bits per byte."""

import ast
import math
import os

import numpy as np
import pytest

from keras_kd.data import text
from keras_kd.data.text import (
    PAD_ID,
    VOCABULARY_SIZE,
    bits_per_byte,
    load_python_source,
    python_source_files,
)

L = 32


@pytest.fixture(scope="module")
def data():
    return load_python_source(sequence_length=L, max_bytes=120_000, seed=0)


@pytest.fixture
def fake_root(tmp_path):
    """A small library tree with every kind of file that must be left out."""
    files = {
        "a.py": b"import os\nprint('caf\xc3\xa9')\n" * 20,
        "pkg/__init__.py": b"",                        # empty
        "pkg/b.py": b"def f(x):\n    return x + 1\n" * 30,
        "pkg/c.txt": b"not python\n",
        "pkg/test/t.py": b"assert True\n",
        "tests/t.py": b"assert True\n",
        "site-packages/third.py": b"x = 1\n",
        "idlelib/idle.py": b"x = 1\n",
        "encodings/cp0.py": b"x = 1\n",
        "_sysconfigdata_x.py": b"build = {}\n",
        "latin1.py": b"s = '\xe9'\n",                  # not UTF-8
        "nul.py": b"x = 1\x00\n",                      # NUL byte
        "z/deep/d.py": "# \u00fcber\n".encode() * 40,
    }
    for name, content in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return tmp_path, files


def _rel(paths, root):
    return [os.path.relpath(p, root).replace(os.sep, "/") for p in paths]


# ----------------------------------------------------------------------
# python_source_files
# ----------------------------------------------------------------------
def test_source_files_leave_out_what_they_should(fake_root):
    root, _ = fake_root
    assert _rel(python_source_files(root), root) == [
        "a.py", "pkg/b.py", "z/deep/d.py"]
    # `exclude` replaces the default set of directory names
    assert "tests/t.py" in _rel(python_source_files(root, exclude=()), root)


def test_source_files_of_the_standard_library():
    files = python_source_files()
    rel = _rel(files, text._stdlib_root(None))
    assert rel == sorted(rel) and len(rel) > 100
    assert "argparse.py" in rel and "json/decoder.py" in rel
    for r in rel:
        parts = r.split("/")
        assert not set(parts[:-1]) & text.EXCLUDED_DIRS, r
        assert r.endswith(".py") and not parts[-1].startswith("_sysconfigdata")
    assert python_source_files() == files  # deterministic


def test_source_files_root_must_be_a_directory(tmp_path):
    with pytest.raises(ValueError, match="root must be a directory"):
        python_source_files(tmp_path / "missing")


# ----------------------------------------------------------------------
# load_python_source
# ----------------------------------------------------------------------
def test_split_by_file(data):
    train, held_out = data.train, data.held_out
    assert train.num_files > 0 and held_out.num_files > 0
    assert not set(train.files) & set(held_out.files)
    for windows in (train, held_out):
        assert len(set(windows.files)) == windows.num_files
        assert set(np.unique(windows.file_index)) <= set(
            range(windows.num_files))
        # every window is cut from the file it says, so no text crosses
        for i in range(0, windows.num_windows, 7):
            window = bytes(windows.token_ids[i][windows.padding_mask[i]]
                           .astype(np.uint8).tolist())
            assert window in windows.texts[windows.file_index[i]].encode()


def test_budget_and_held_out_share(data):
    total = data.train.num_bytes + data.held_out.num_bytes
    assert 120_000 - 8 <= total <= 120_000
    assert abs(data.held_out.num_bytes - 12_000) <= 3
    for windows in (data.train, data.held_out):
        assert windows.num_bytes == sum(len(t.encode()) for t in windows.texts)


def test_deterministic_given_seed(data):
    again = load_python_source(sequence_length=L, max_bytes=120_000, seed=0)
    for a, b in ((data.train, again.train), (data.held_out, again.held_out)):
        assert a.files == b.files
        for name in ("token_ids", "padding_mask", "labels", "sample_weight",
                     "file_index"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    other = load_python_source(sequence_length=L, max_bytes=120_000, seed=1)
    assert other.held_out.files != data.held_out.files


def test_shapes_and_dtypes(data):
    w = data.train
    n = w.num_windows
    assert data.vocabulary_size == VOCABULARY_SIZE == 256
    assert data.sequence_length == L and data.stride == L
    for name, dtype in (("token_ids", np.int32), ("labels", np.int32),
                        ("padding_mask", np.bool_),
                        ("sample_weight", np.float32)):
        array = getattr(w, name)
        assert array.shape == (n, L) and array.dtype == dtype, name
    assert w.file_index.shape == (n,)
    assert set(w.x) == {"token_ids", "padding_mask"}
    assert w.token_ids.min() >= 0 and w.token_ids.max() < 256


def test_ids_are_the_bytes_and_labels_the_next_byte(data):
    w = data.train
    real = w.sample_weight > 0
    # inside a window: the label is the next input
    np.testing.assert_array_equal(w.labels[:, :-1][real[:, :-1]],
                                  w.token_ids[:, 1:][real[:, :-1]])
    # without overlap, a file's windows put together give back its bytes,
    # and every byte but the first is predicted exactly once
    for index, content in enumerate(w.texts):
        rows = np.flatnonzero(w.file_index == index)
        ids = w.token_ids[rows][w.padding_mask[rows]]
        raw = np.frombuffer(content.encode("utf-8"), np.uint8)
        np.testing.assert_array_equal(ids, raw)
        labels = w.labels[rows][w.sample_weight[rows] > 0]
        np.testing.assert_array_equal(labels, raw[1:])
    assert w.num_targets == sum(len(t.encode()) - 1 for t in w.texts)


def test_padding_and_last_byte_have_weight_zero(data):
    w = data.train
    pad = ~w.padding_mask
    assert pad.any()  # files' last windows are padded
    assert (w.sample_weight[pad] == 0).all()
    assert (w.token_ids[pad] == PAD_ID).all() and (w.labels[pad] == PAD_ID).all()
    # NUL is never a real byte, so id 0 only ever means padding
    assert (w.token_ids[w.padding_mask] != PAD_ID).all()
    # a file's last window: its last real byte has no next byte
    for index in range(w.num_files):
        last = np.flatnonzero(w.file_index == index)[-1]
        n = int(w.padding_mask[last].sum())
        assert w.sample_weight[last, n - 1] == 0
        assert (w.sample_weight[last, :n - 1] == 1).all()
    assert set(np.unique(w.sample_weight)) == {0.0, 1.0}


def test_overlapping_stride():
    d = load_python_source(sequence_length=L, max_bytes=30_000, stride=L // 4)
    w = d.train
    assert d.stride == L // 4
    real = w.sample_weight > 0
    np.testing.assert_array_equal(w.labels[:, :-1][real[:, :-1]],
                                  w.token_ids[:, 1:][real[:, :-1]])
    for index, content in enumerate(w.texts):
        raw = np.frombuffer(content.encode(), np.uint8)
        rows = np.flatnonzero(w.file_index == index)
        for k, row in enumerate(rows):  # window k starts at byte k * stride
            n = int(w.padding_mask[row].sum())
            np.testing.assert_array_equal(
                w.token_ids[row, :n], raw[k * d.stride:k * d.stride + n])
        # the last window reaches the file's last byte, the one before not
        assert (len(rows) - 1) * d.stride + L >= len(raw) - 1
        if len(rows) > 1:
            assert (len(rows) - 2) * d.stride + L < len(raw) - 1


def test_fake_root_and_cut_files(fake_root):
    root, files = fake_root
    d = load_python_source(sequence_length=8, max_bytes=None,
                           held_out_fraction=0.3, root=root)
    assert set(d.train.files) | set(d.held_out.files) <= {
        "a.py", "pkg/b.py", "z/deep/d.py"}
    assert not set(d.train.files) & set(d.held_out.files)
    # a file cut to fit the budget is cut between characters, and is a
    # prefix of the file
    d = load_python_source(sequence_length=8, max_bytes=101,
                           held_out_fraction=0.5, root=root)
    for w in (d.train, d.held_out):
        for name, content in zip(w.files, w.texts):
            assert files[name].decode().startswith(content)
    assert d.train.num_bytes + d.held_out.num_bytes <= 101


def test_no_held_out():
    d = load_python_source(sequence_length=L, max_bytes=5_000,
                           held_out_fraction=0.0)
    assert d.held_out.num_windows == 0 and d.held_out.num_files == 0
    assert d.held_out.token_ids.shape == (0, L)
    assert d.train.num_bytes <= 5_000


def test_shuffled_and_as_bytes(data):
    w = data.train
    s = w.shuffled(seed=3)
    assert s.files == w.files
    order = np.lexsort(s.token_ids.T[::-1])
    np.testing.assert_array_equal(s.token_ids[order],
                                  w.token_ids[np.lexsort(w.token_ids.T[::-1])])
    for i in range(0, s.num_windows, 11):  # rows stay whole
        j = np.flatnonzero((w.token_ids == s.token_ids[i]).all(1)
                           & (w.labels == s.labels[i]).all(1))
        assert len(j) and w.file_index[j[0]] == s.file_index[i]
    chunks = w.as_bytes()
    assert len(chunks) == w.num_windows
    for i, chunk in enumerate(chunks[:50]):
        n = int(w.padding_mask[i].sum())
        assert chunk[:n] == bytes(w.token_ids[i, :n].tolist())
        assert len(chunk) == n + int(w.sample_weight[i, n - 1])
    assert "num_windows" in repr(w)


@pytest.mark.parametrize("kwargs, message", [
    (dict(sequence_length=1), "sequence_length must be an int of at least 2"),
    (dict(sequence_length=0), "sequence_length must be an int of at least 2"),
    (dict(sequence_length=16.0), "sequence_length must be an int"),
    (dict(sequence_length=True), "sequence_length must be an int"),
    (dict(stride=0), r"stride must be an int in \[1, sequence_length=128\]"),
    (dict(stride=129), r"stride must be an int in \[1, sequence_length=128\]"),
    (dict(max_bytes=1), "max_bytes must be None or an int of at least 2"),
    (dict(max_bytes=-5), "max_bytes must be None or an int of at least 2"),
    (dict(max_bytes="1MB"), "max_bytes must be None or an int"),
    (dict(held_out_fraction=1.0), r"held_out_fraction must be in \[0, 1\)"),
    (dict(held_out_fraction=-0.1), r"held_out_fraction must be in \[0, 1\)"),
    (dict(root="/nonexistent/dir"), "root must be a directory"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        load_python_source(**kwargs)


def test_a_root_without_source(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="No usable .py files"):
        load_python_source(root=tmp_path)


# ----------------------------------------------------------------------
# bits_per_byte
# ----------------------------------------------------------------------
def _reference_bits(logits, labels, weights):
    """Plain Python: -log2 softmax(logits)[label], weighted mean."""
    total = count = 0.0
    for z, y, w in zip(logits.reshape(-1, logits.shape[-1]).tolist(),
                       labels.reshape(-1).tolist(), weights.reshape(-1).tolist()):
        if w == 0:
            continue
        top = max(z)
        log_norm = top + math.log(math.fsum(math.exp(v - top) for v in z))
        total += w * (log_norm - z[y]) / math.log(2)
        count += w
    return total / count


def test_uniform_logits_give_8_bits_per_byte(data):
    w = data.held_out
    logits = np.zeros(w.labels.shape + (256,), np.float32)
    assert bits_per_byte(logits, w.labels, w.sample_weight) == pytest.approx(
        8.0, abs=1e-12)
    # any constant shift, any scale of equal logits: still uniform
    assert bits_per_byte(logits + 1e4, w.labels, w.sample_weight) == (
        pytest.approx(8.0, abs=1e-9))


def test_bits_per_byte_against_plain_python():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (3, 5, 256)).astype(np.float32)
    labels = rng.integers(0, 256, (3, 5))
    weights = rng.integers(0, 2, (3, 5)).astype(np.float32)
    weights[0, 0] = 1
    labels[weights == 0] = -1  # padding labels are never looked at
    expected = _reference_bits(logits.astype(np.float64),
                               np.where(labels < 0, 0, labels), weights)
    assert bits_per_byte(logits, labels, weights) == pytest.approx(
        expected, rel=1e-12)
    # chunking changes nothing; non-binary weights are a weighted mean
    assert bits_per_byte(logits, labels, weights, chunk_size=2) == (
        pytest.approx(expected, rel=1e-12))
    soft = weights * rng.uniform(0.5, 2.0, weights.shape)
    assert bits_per_byte(logits, labels, soft) == pytest.approx(
        _reference_bits(logits.astype(np.float64),
                        np.where(labels < 0, 0, labels), soft), rel=1e-12)
    # no weights: every position counts
    labels = np.abs(labels)
    assert bits_per_byte(logits, labels) == pytest.approx(
        _reference_bits(logits.astype(np.float64), labels,
                        np.ones(labels.shape)), rel=1e-12)


def test_bits_per_byte_is_stable_for_large_logits():
    logits = np.zeros((1, 2, 256))
    logits[0, :, 65] = 1e6  # overflows a naive softmax
    assert bits_per_byte(logits, np.array([[65, 65]])) == 0.0
    assert bits_per_byte(logits, np.array([[66, 66]])) == pytest.approx(
        1e6 / math.log(2))


def test_bits_per_byte_errors():
    logits = np.zeros((2, 3, 256))
    labels = np.zeros((2, 3), int)
    with pytest.raises(ValueError, match="logits must have shape"):
        bits_per_byte(logits, np.zeros((2, 4), int))
    with pytest.raises(ValueError, match="sample_weight must have the shape"):
        bits_per_byte(logits, labels, np.ones((2,)))
    with pytest.raises(ValueError, match="0 everywhere"):
        bits_per_byte(logits, labels, np.zeros((2, 3)))
    with pytest.raises(ValueError, match="must not be negative"):
        bits_per_byte(logits, labels, -np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 256\)"):
        bits_per_byte(logits, labels + 256, np.ones((2, 3)))
    with pytest.raises(ValueError, match="labels must be integers"):
        bits_per_byte(logits, labels.astype(float))


def test_module_imports_only_the_standard_library_and_numpy():
    tree = ast.parse(open(text.__file__, encoding="utf-8").read())
    names = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            names.add(node.module.split(".")[0])
    assert names <= {"dataclasses", "math", "os", "sysconfig", "numpy"}, names
