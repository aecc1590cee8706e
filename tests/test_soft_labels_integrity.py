"""Integrity of on-disk soft-label caches: checksums, the build lock, the
full-data and teacher fingerprints, non-finite outputs, damaged files."""

import json
import os
import signal
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_kd as kd
from keras_kd import ownership
from keras_kd.soft_labels import SoftLabels, compute_soft_labels, lock
from tests.helpers import Interrupted, Rows, cnn, mlp, to_numpy

# The soft-label files' checksums and locks: no backend-specific path of its own (the Keras
# and keras-kd calls it makes are tested on every backend elsewhere), so CI runs
# this file under one backend (tests/conftest.py, `one_backend`; a test's own
# mark wins).
pytestmark = [pytest.mark.filterwarnings("ignore:The teacher"),
              pytest.mark.one_backend("tensorflow")]


def _data(n=40, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.random((n, 64)).astype("float32"),
            rng.integers(0, 10, n).astype("int32"))


def _flip(file, offset):
    with open(file, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x01]))


def _manifest(path):
    with open(os.path.join(path, "manifest.json")) as f:
        return json.load(f)


# ----------------------------------------------------------------------
# Checksums
# ----------------------------------------------------------------------
def test_a_flipped_byte_is_refused_on_load_and_rerun(tmp_path):
    x, y = _data()
    path = str(tmp_path / "c")
    teacher = mlp(32, "teacher")
    built = compute_soft_labels(teacher, x, y, batch_size=16, path=path,
                                top_k=3)
    manifest = _manifest(path)
    assert sorted(manifest["checksums"]) == sorted(manifest["columns"])
    SoftLabels.load(path, teacher=teacher)  # intact: opens
    expected = built.teacher_logits()
    _flip(os.path.join(path, "topk_values.bin"), 37)
    for open_it in (lambda: SoftLabels.load(path),
                    lambda: compute_soft_labels(teacher, x, y, batch_size=16,
                                                path=path, top_k=3)):
        with pytest.raises(ValueError, match=r"topk_values\.bin' is corrupt"
                                             r".*overwrite=True"):
            open_it()
    # verify=False skips the checksums: the damage then reaches the data.
    assert not np.array_equal(
        SoftLabels.load(path, verify=False).teacher_logits(), expected)
    rebuilt = compute_soft_labels(teacher, x, y, batch_size=16, path=path,
                                  top_k=3, overwrite=True)
    np.testing.assert_array_equal(rebuilt.teacher_logits(), expected)
    SoftLabels.load(path)


def test_a_resume_checks_the_bytes_it_continues_from(tmp_path):
    x, y = _data(100)
    path = str(tmp_path / "c")
    teacher = mlp(32, "teacher")
    with pytest.raises(Interrupted):
        compute_soft_labels(teacher, Rows(x, fail_at=48), y, batch_size=16,
                            path=path)
    _flip(os.path.join(path, "logits.bin"), 4 * 10 * 20 + 2)  # row 20
    with pytest.raises(ValueError, match=r"logits\.bin' is corrupt"):
        compute_soft_labels(teacher, x, y, batch_size=16, path=path)
    assert _manifest(path)["rows_done"] == 48  # nothing added to it


# ----------------------------------------------------------------------
# Damaged files: a truncated column, an invalid manifest
# ----------------------------------------------------------------------
def test_a_truncated_column_file_is_named(tmp_path):
    x, y = _data()
    path = str(tmp_path / "c")
    compute_soft_labels(mlp(32, "teacher"), x, y, batch_size=16, path=path)
    labels = os.path.join(path, "labels.bin")
    with open(labels, "r+b") as f:
        f.truncate(100)
    for verify in (True, False):
        with pytest.raises(ValueError, match=r"labels\.bin' holds 100 bytes"
                                             r".*160 bytes.*overwrite=True"):
            SoftLabels.load(path, verify=verify)
    os.remove(labels)
    with pytest.raises(ValueError, match=r"labels\.bin' is missing"):
        SoftLabels.load(path)


@pytest.mark.parametrize("damage, match", [
    (lambda text: text[:len(text) // 2], "is not valid JSON"),
    (lambda text: json.dumps({k: v for k, v in json.loads(text).items()
                              if k != "rows_done"}), r"lacks \['rows_done'\]"),
    (lambda text: json.dumps(dict(json.loads(text), columns=[])),
     r"has entries of the wrong type: \[.columns.\]"),
], ids=["not-json", "missing-key", "wrong-type"])
def test_an_invalid_manifest_is_named(tmp_path, damage, match):
    x, y = _data()
    path = str(tmp_path / "c")
    teacher = mlp(32, "teacher")
    compute_soft_labels(teacher, x, y, batch_size=16, path=path)
    file = os.path.join(path, "manifest.json")
    with open(file) as f:
        text = f.read()
    with open(file, "w") as f:
        f.write(damage(text))
    pattern = rf"manifest '{file}' {match}.*overwrite=True"
    with pytest.raises(ValueError, match=pattern):
        SoftLabels.load(path)
    with pytest.raises(ValueError, match=pattern):
        compute_soft_labels(teacher, x, y, batch_size=16, path=path)
    compute_soft_labels(teacher, x, y, batch_size=16, path=path,
                        overwrite=True)
    assert SoftLabels.load(path).num_samples == 40


def test_caches_written_before_checksums_open_with_a_warning(tmp_path):
    x, y = _data()
    path = str(tmp_path / "c")
    teacher = mlp(32, "teacher")
    built = compute_soft_labels(teacher, x, y, batch_size=16, path=path)
    manifest = _manifest(path)
    del manifest["checksums"]
    with open(os.path.join(path, "manifest.json"), "w") as f:
        json.dump(manifest, f)
    with pytest.warns(UserWarning, match="no checksums"):
        cache = SoftLabels.load(path)
    np.testing.assert_array_equal(cache.teacher_logits(),
                                  built.teacher_logits())
    # A rerun takes the files as they are for the data fingerprint.
    again = compute_soft_labels(teacher, x, y, batch_size=16, path=path)
    assert again.num_samples == 40
    y2 = y.copy()
    y2[30] = (y2[30] + 1) % 10
    with pytest.raises(ValueError, match=r"\['labels'\]"):
        compute_soft_labels(teacher, x, y2, batch_size=16, path=path)


# ----------------------------------------------------------------------
# Concurrent builders
# ----------------------------------------------------------------------
_HOLD = """
import sys, time
from keras_kd.soft_labels import folder, lock
folder.claim(sys.argv[1])  # as a build does first
held = lock.BuildLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(120)
"""


def test_a_second_builder_is_refused_and_a_killed_ones_lock_taken_over(
        tmp_path):
    x, y = _data()
    path = str(tmp_path / "c")
    os.makedirs(path)
    teacher = mlp(32, "teacher")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep
               + os.environ.get("PYTHONPATH", ""))
    other = subprocess.Popen([sys.executable, "-c", _HOLD, path], env=env,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "locked"
        lock_file = os.path.join(path, ".lock")
        with pytest.raises(RuntimeError, match=(
                rf"pid {other.pid} on .*is building.*lock file "
                rf"'{lock_file}'")):
            compute_soft_labels(teacher, x, y, batch_size=16, path=path)
        assert not os.path.exists(os.path.join(path, "manifest.json"))
    finally:
        other.send_signal(signal.SIGKILL)
        other.wait()
        other.stdout.close()
    assert os.path.exists(lock_file)  # a killed build leaves its lock...
    cache = compute_soft_labels(teacher, x, y, batch_size=16, path=path)
    assert cache.manifest["complete"]  # ...and the next build takes it over
    assert not os.path.exists(lock_file)
    # Two builds in one process (another thread's) are refused too.
    with lock.BuildLock(path):
        with pytest.raises(RuntimeError, match="is building"):
            compute_soft_labels(teacher, x, y, batch_size=16, path=path,
                                overwrite=True)
    assert SoftLabels.load(path).num_samples == 40


# ----------------------------------------------------------------------
# The whole data is fingerprinted, not only its first batch
# ----------------------------------------------------------------------
def test_later_rows_or_labels_that_differ_are_refused(tmp_path):
    x, y = _data()
    path = str(tmp_path / "c")
    teacher = mlp(32, "teacher")
    compute_soft_labels(teacher, x, y, batch_size=16, path=path)
    x2 = x.copy()
    x2[35, 3] += 1.0  # the third batch
    with pytest.raises(ValueError, match=r"other data: the \['inputs'\] of "
                                         r"its first 40 rows differ"):
        compute_soft_labels(teacher, x2, y, batch_size=16, path=path)
    y2 = y.copy()
    y2[20] = (y2[20] + 1) % 10
    with pytest.raises(ValueError, match=r"\['labels'\]"):
        compute_soft_labels(teacher, x, y2, batch_size=16, path=path)
    # The same data reopens the cache.
    assert compute_soft_labels(teacher, x, y, batch_size=16,
                               path=path).num_samples == 40

    # A resume over data that changed in the rows already stored.
    resumed = str(tmp_path / "r")
    with pytest.raises(Interrupted):
        compute_soft_labels(teacher, Rows(x, fail_at=32), y, batch_size=16,
                            path=resumed)
    x3 = x.copy()
    x3[20] = 0.0
    with pytest.raises(ValueError, match=r"\['inputs'\] of its first 32"):
        compute_soft_labels(teacher, x3, y, batch_size=16, path=resumed)
    assert _manifest(resumed)["rows_done"] == 32


def test_a_dataset_longer_than_its_cache_is_refused(tmp_path):
    tf = pytest.importorskip("tensorflow")
    x, y = _data(56)
    path = str(tmp_path / "c")
    teacher = mlp(32, "teacher")

    def dataset(n):  # unknown cardinality: the batch count is not compared
        return tf.data.Dataset.from_tensor_slices((x[:n], y[:n])).batch(
            16).filter(lambda a, b: True)

    compute_soft_labels(teacher, dataset(48), path=path)
    assert compute_soft_labels(teacher, dataset(48),
                               path=path).num_samples == 48
    with pytest.raises(ValueError, match="more than the cache's 3 batches"):
        compute_soft_labels(teacher, dataset(56), path=path)
    with pytest.raises(ValueError, match="it has 2 batches, the cache 3"):
        compute_soft_labels(teacher, dataset(32), path=path)


# ----------------------------------------------------------------------
# The teacher of a cache loaded without one
# ----------------------------------------------------------------------
def test_a_distiller_with_another_teacher_is_refused(tmp_path):
    pytest.importorskip("tensorflow")
    x, y = _data(32)
    path = str(tmp_path / "c")
    teacher = mlp(32, "teacher")
    compute_soft_labels(teacher, x, y, batch_size=16, path=path)
    cache = SoftLabels.load(path)  # no teacher given
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    other = kd.Distiller(mlp(32, "teacher"), mlp(8, "student"))
    other.compile("sgd", loss)
    for data in ((cache.as_dataset(8),), cache.as_numpy()):
        with pytest.raises(ValueError, match=r"at '.*c' was built for another "
                                             r"teacher: its weights checksum"):
            other.fit(*data, epochs=1, verbose=0)
        with pytest.raises(ValueError, match="another teacher"):
            other.evaluate(*data, verbose=0)
    own = kd.Distiller(teacher, mlp(8, "student"))
    own.compile("sgd", loss)
    before = to_numpy(own.student.weights[0])
    history = own.fit(cache.as_dataset(8, seed=0), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert not np.allclose(to_numpy(own.student.weights[0]), before)


# ----------------------------------------------------------------------
# Non-finite teacher outputs
# ----------------------------------------------------------------------
def test_non_finite_teacher_outputs_stop_the_build(tmp_path):
    x, y = _data(64)
    x[37, 5] = np.nan  # batch 2 (rows 32 to 47): NaN logits
    inputs = keras.Input((64,))  # linear: NaN inputs reach the logits
    teacher = keras.Model(inputs, keras.layers.Dense(10)(inputs))
    path = str(tmp_path / "c")
    message = r"logits for batch 2 \(rows 32 to 47\) hold 10 NaN"
    with pytest.raises(ValueError, match=message):
        compute_soft_labels(teacher, x, y, batch_size=16, path=path)
    manifest = _manifest(path)
    assert (manifest["rows_done"], manifest["complete"]) == (32, False)
    assert os.path.getsize(os.path.join(path, "logits.bin")) == 32 * 40
    with pytest.raises(ValueError, match="incomplete"):
        SoftLabels.load(path)
    with pytest.raises(ValueError, match=message):  # in memory too
        compute_soft_labels(teacher, x, y, batch_size=16)
    x[37, 5] = 0.0
    x[0, 0] = np.inf  # the first batch, with top-k
    with pytest.raises(ValueError, match=r"batch 0 \(rows 0 to 15\)"):
        compute_soft_labels(teacher, x, y, batch_size=16, top_k=3)


# ----------------------------------------------------------------------
# The cache folder: keras-kd's own, or refused (issue 28 #5)
# ----------------------------------------------------------------------
def _read_all(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_a_folder_keras_kd_did_not_create_is_refused(tmp_path):
    x, y = _data()
    teacher = mlp(32, "teacher")
    mine = tmp_path / "mine"
    mine.mkdir()
    for name in ("inputs.bin", "labels.bin", "logits.bin"):
        (mine / name).write_bytes(b"the user's own " + name.encode())
    before = _read_all(mine)
    for overwrite in (False, True):
        with pytest.raises(FileExistsError, match=(
                r"'.*mine' already holds files that keras-kd did not write.*"
                r"new or empty folder")):
            compute_soft_labels(teacher, x, y, batch_size=16, path=str(mine),
                                overwrite=overwrite)
        assert _read_all(mine) == before  # nothing written, nothing removed
    # Another keras-kd folder (a run's) is not a cache's either.
    run = ownership.claim_folder(str(tmp_path / "run"), "run")
    with pytest.raises(FileExistsError, match="keras-kd's run"):
        compute_soft_labels(teacher, x, y, batch_size=16, path=run)
    # A new or empty folder is claimed, then reused as the cache's.
    for name in ("new", "empty"):
        if name == "empty":
            (tmp_path / name).mkdir()
        path = str(tmp_path / name)
        built = compute_soft_labels(teacher, x, y, batch_size=16, path=path)
        assert ownership.is_owned(path, "soft_labels")
        again = compute_soft_labels(teacher, x, y, batch_size=16, path=path)
        np.testing.assert_array_equal(again.teacher_logits(),
                                      built.teacher_logits())


def test_caches_written_before_folder_markers_are_still_theirs(tmp_path):
    """A valid soft-label manifest is keras-kd's record: its folder counts as
    the cache's (and is marked on the next build); any other manifest.json
    does not."""
    x, y = _data()
    teacher = mlp(32, "teacher")
    folder = tmp_path / "old"
    built = compute_soft_labels(teacher, x, y, batch_size=16,
                                path=str(folder))
    os.remove(folder / ownership.MARKER)  # as an older keras-kd left it
    (folder / "notes.txt").write_text("kept")
    np.testing.assert_array_equal(SoftLabels.load(str(folder)).teacher_logits(),
                                  built.teacher_logits())
    again = compute_soft_labels(teacher, x, y, batch_size=16,
                                path=str(folder))
    np.testing.assert_array_equal(again.teacher_logits(),
                                  built.teacher_logits())
    assert ownership.is_owned(str(folder), "soft_labels")
    os.remove(folder / ownership.MARKER)
    other = mlp(32, "teacher")
    rebuilt = compute_soft_labels(other, x, y, batch_size=16,
                                  path=str(folder), overwrite=True)
    np.testing.assert_allclose(rebuilt.teacher_logits(), to_numpy(other(x)),
                               rtol=1e-5, atol=1e-5)
    assert (folder / "notes.txt").read_text() == "kept"
    # A manifest.json that is not a soft-label manifest proves nothing.
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "manifest.json").write_text('{"format": "my data"}')
    (foreign / "logits.bin").write_bytes(b"mine")
    before = _read_all(foreign)
    with pytest.raises(FileExistsError, match="did not write"):
        compute_soft_labels(teacher, x, y, batch_size=16, path=str(foreign),
                            overwrite=True)
    assert _read_all(foreign) == before


# ----------------------------------------------------------------------
# A complete cache in a read-only folder (issue 28 #25)
# ----------------------------------------------------------------------
_WRITES = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


@pytest.fixture
def read_only(monkeypatch):
    """Makes folders read-only: their modes (which stop a non-root user),
    and, since tests may run as root (whom modes do not stop), every call
    that writes, creates, renames or removes a file in them raises
    PermissionError, as on a read-only mount."""
    import builtins

    folders, modes = [], {}
    real_open, real_os_open = builtins.open, os.open

    def inside(file):
        file = os.path.abspath(os.fspath(file)) if isinstance(
            file, (str, bytes, os.PathLike)) else ""
        return any(file == f or file.startswith(f + os.sep) for f in folders)

    def refuse(file):
        raise PermissionError(13, "Permission denied (read-only)", file)

    def guarded_open(file, mode="r", *args, **kwargs):
        if inside(file) and set(mode) & set("wax+"):
            refuse(file)
        return real_open(file, mode, *args, **kwargs)

    def guarded_os_open(file, flags, *args, **kwargs):
        if inside(file) and flags & _WRITES:
            refuse(file)
        return real_os_open(file, flags, *args, **kwargs)

    def guard(name):
        real = getattr(os, name)

        def call(file, *args, **kwargs):
            if name == "mkdir" and inside(file) and os.path.exists(file):
                raise FileExistsError(17, "File exists", file)  # as Linux
            if inside(file) or (args and inside(args[0])):
                refuse(file)
            return real(file, *args, **kwargs)
        monkeypatch.setattr(os, name, call)

    monkeypatch.setattr(builtins, "open", guarded_open)
    monkeypatch.setattr(os, "open", guarded_os_open)
    for name in ("replace", "rename", "remove", "unlink", "mkdir", "rmdir",
                 "truncate"):
        guard(name)

    def make(folder):
        folder = os.path.abspath(folder)
        for root, dirs, files in os.walk(folder):
            for name in files:
                modes[os.path.join(root, name)] = 0o644
                os.chmod(os.path.join(root, name), 0o444)
        modes[folder] = 0o755
        os.chmod(folder, 0o555)
        folders.append(folder)

    yield make
    folders.clear()
    for file, mode in modes.items():
        os.chmod(file, mode)


def test_a_complete_cache_in_a_read_only_folder_reopens(tmp_path, read_only):
    x, y = _data()
    teacher = mlp(32, "teacher")
    path, old, part = (str(tmp_path / n) for n in ("c", "old", "part"))
    built = compute_soft_labels(teacher, x, y, batch_size=16, path=path)
    compute_soft_labels(teacher, x, y, batch_size=16, path=old)
    os.remove(os.path.join(old, ownership.MARKER))  # an older keras-kd's
    with pytest.raises(Interrupted):
        compute_soft_labels(teacher, Rows(x, fail_at=16), y, batch_size=16,
                            path=part)
    files = {p: _read_all(tmp_path / p) for p in ("c", "old", "part")}
    for folder in (path, old, part):
        read_only(folder)
    for folder in (path, old):
        cache = compute_soft_labels(teacher, x, y, batch_size=16,
                                    path=folder)
        np.testing.assert_array_equal(cache.teacher_logits(),
                                      built.teacher_logits())
        np.testing.assert_array_equal(
            SoftLabels.load(folder, teacher=teacher).teacher_logits(),
            built.teacher_logits())
    # Building, resuming or overwriting needs to write: named, not half done.
    with pytest.raises(PermissionError, match=(
            r"cannot write to the soft-label cache folder '.*c'.*overwrite"
            r"=True.*writable")):
        compute_soft_labels(teacher, x, y, batch_size=16, path=path,
                            overwrite=True)
    with pytest.raises(PermissionError, match=r"'.*part'.*incomplete"):
        compute_soft_labels(teacher, x, y, batch_size=16, path=part)
    assert {p: _read_all(tmp_path / p) for p in files} == files


# ----------------------------------------------------------------------
# The teacher's architecture is fingerprinted too (issue 28 #14)
# ----------------------------------------------------------------------
def _variant(teacher, rescale=False, activation="relu"):
    """``mlp(32, "teacher")``'s layers and weights, with a Rescaling layer
    in front or another hidden activation: same name, same weights."""
    inputs = keras.Input((64,), name="teacher_input")
    h = keras.layers.Rescaling(2.0)(inputs) if rescale else inputs
    h = keras.layers.Dense(32, activation=activation,
                           name="teacher_hidden")(h)
    model = keras.Model(inputs, keras.layers.Dense(
        10, name="teacher_logits")(h), name="teacher")
    model.set_weights(teacher.get_weights())
    return model


def test_a_teacher_with_another_architecture_is_refused(tmp_path):
    x, y = _data(32)
    path = str(tmp_path / "c")
    teacher = mlp(32, "teacher")
    compute_soft_labels(teacher, x, y, batch_size=16, path=path)
    fingerprint = _manifest(path)["teacher"]
    for variant in (_variant(teacher, rescale=True),
                    _variant(teacher, activation="tanh")):
        assert kd.soft_labels.teacher_fingerprint(variant)["weights_sha256"] \
            == fingerprint["weights_sha256"]
        assert not np.allclose(to_numpy(variant(x)), to_numpy(teacher(x)))
        with pytest.raises(ValueError, match=(
                r"another teacher: its architecture \(SHA-256 of its "
                r"config\) is '[0-9a-f]{64}'")):
            compute_soft_labels(variant, x, y, batch_size=16, path=path)
        with pytest.raises(ValueError, match="its architecture"):
            SoftLabels.load(path, teacher=variant)
    # The same architecture built again (a copy of the teacher, with other
    # automatic layer names) and frozen is the same teacher.
    same = _variant(teacher)
    same.trainable = False
    assert compute_soft_labels(same, x, y, batch_size=16,
                               path=path).num_samples == 32
    first, second = cnn(4, "t"), cnn(4, "t")  # auto-named ReLU layers
    second.set_weights(first.get_weights())
    assert [a.name for a in first.layers] != [b.name for b in second.layers]
    assert kd.soft_labels.teacher_fingerprint(first) == \
        kd.soft_labels.teacher_fingerprint(second)


def test_caches_without_an_architecture_fingerprint_open_with_a_warning(
        tmp_path):
    x, y = _data(32)
    path = str(tmp_path / "c")
    teacher = mlp(32, "teacher")
    built = compute_soft_labels(teacher, x, y, batch_size=16, path=path)
    manifest = _manifest(path)
    del manifest["teacher"]["architecture_sha256"]  # an older keras-kd's
    with open(os.path.join(path, "manifest.json"), "w") as f:
        json.dump(manifest, f)
    for open_it in (lambda: SoftLabels.load(path, teacher=teacher),
                    lambda: compute_soft_labels(teacher, x, y, batch_size=16,
                                                path=path)):
        with pytest.warns(UserWarning, match=(
                r"records no architecture.*name, output shape and weights "
                r"only.*overwrite=True")):
            cache = open_it()
        np.testing.assert_array_equal(cache.teacher_logits(),
                                      built.teacher_logits())
