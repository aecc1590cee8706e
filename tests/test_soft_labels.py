"""Offline distillation: precomputed teacher outputs (keras_kd/soft_labels.py)."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_kd as kd
from keras_kd.soft_labels import (SoftLabels, compress_top_k,
                                  compute_soft_labels, expand_top_k)
from tests.helpers import Interrupted, Rows, cnn, mlp, to_numpy
from tests.references import kd as np_kd
from tests.references import softmax as np_softmax
from tests.references import sparse_ce as np_sparse_ce

pytestmark = pytest.mark.filterwarnings("ignore:The teacher")


def _data(n=96, shape=(64,), classes=10, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((n,) + shape).astype("float32")
    return x, rng.integers(0, classes, n).astype("int32")


def _distiller(teacher, student, init, feature_losses=None):
    """A compiled Distiller whose student (and adapters) start from ``init``."""
    d = kd.Distiller(teacher=teacher, student=student)
    d.compile(optimizer=keras.optimizers.SGD(0.05),
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
              alpha=0.3, temperature=3.0, feature_losses=feature_losses)
    trainable = d.student.weights + [w for f in d.feature_objectives
                                     if getattr(f, "adapter", None)
                                     for w in f.adapter.weights]
    if init is not None:
        for w, value in zip(trainable, init):
            w.assign(value)
    return d, [to_numpy(w) for w in trainable]


def _live_vs_cached(teacher, make_student, x, y, feature_pair=None):
    """Trains twice from the same start and order: live and from the cache."""
    layers = [feature_pair[0]] if feature_pair else None

    def objectives():
        if not feature_pair:
            return None
        return [kd.FitNet(*feature_pair, weight=10.0)]

    live, init = _distiller(teacher, make_student(), None, objectives())
    cached, _ = _distiller(teacher, make_student(), init, objectives())
    n = len(x)
    live_ds = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(
        n, seed=7).batch(16)
    cache = compute_soft_labels(teacher, x, y, batch_size=32,
                                feature_layers=layers)
    cache_ds = cache.as_dataset(16, shuffle=True, seed=7, distiller=cached)
    h_live = live.fit(live_ds, epochs=2, verbose=0).history
    h_cached = cached.fit(cache_ds, epochs=2, verbose=0).history
    assert sorted(h_live) == sorted(h_cached)
    for key in h_live:
        np.testing.assert_allclose(h_cached[key], h_live[key], rtol=2e-5,
                                   atol=1e-6, err_msg=key)
    # Training moved the student, identically in both runs.
    for a, b in zip(live.student.weights, cached.student.weights):
        np.testing.assert_allclose(to_numpy(b), to_numpy(a), rtol=1e-4,
                                   atol=1e-5)
    assert not np.allclose(to_numpy(live.student.weights[0]), init[0])
    return h_live


def test_cached_training_matches_live_logits():
    x, y = _data()
    teacher = mlp(64, "teacher")
    history = _live_vs_cached(teacher, lambda: mlp(16, "student"), x, y)
    assert history["distillation_loss"][0] > 0


def test_cached_training_matches_live_with_fitnet():
    x, y = _data(64, (8, 8, 1))
    teacher = cnn(16, "teacher")
    history = _live_vs_cached(teacher, lambda: cnn(4, "student"), x, y,
                              ("teacher_conv2", "student_conv2"))
    assert history["fitnet_loss"][0] > 0


def test_stored_outputs_equal_teacher_outputs():
    x, y = _data(48, (8, 8, 1))
    teacher = cnn(8, "teacher")
    cache = compute_soft_labels(teacher, x, y, batch_size=16,
                                feature_layers=["teacher_conv1"])
    logits = to_numpy(teacher(x, training=False))
    feature = to_numpy(keras.Model(
        teacher.inputs, teacher.get_layer("teacher_conv1").output)(x))
    np.testing.assert_allclose(cache.teacher_logits(), logits, rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_allclose(cache.teacher_features()[0], feature,
                               rtol=1e-5, atol=1e-5)
    assert cache.bytes_per_sample == 4 * 10 + 4 + 4 * 8 * 8 * 8  # + labels
    xs, targets = cache.as_numpy()
    np.testing.assert_array_equal(xs, x)
    np.testing.assert_array_equal(targets["labels"], y)
    # A deterministic tf.data source gives the same cache (inputs stored).
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    from_ds = compute_soft_labels(teacher, ds, feature_layers=["teacher_conv1"])
    np.testing.assert_array_equal(from_ds.inputs, x)
    np.testing.assert_array_equal(from_ds.labels, y)
    np.testing.assert_allclose(from_ds.teacher_logits(), logits, rtol=1e-5,
                               atol=1e-5)


def test_as_dataset_keeps_each_output_with_its_sample(tmp_path):
    x, y = _data(70)
    teacher = mlp(32, "teacher")
    cache = compute_soft_labels(teacher, x, y, batch_size=32,
                                path=str(tmp_path / "c"))
    reference = to_numpy(teacher(x, training=False))
    seen = []
    for xb, targets in cache.as_dataset(16, shuffle=True, seed=1):
        xb = np.asarray(xb)
        rows = [int(np.flatnonzero((x == r).all(1))[0]) for r in xb]
        np.testing.assert_allclose(np.asarray(targets["teacher_logits"]),
                                   reference[rows], rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(np.asarray(targets["labels"]), y[rows])
        seen += rows
    assert sorted(seen) == list(range(70)) and seen != list(range(70))


def _np_loss(teacher, student, x, y):
    """alpha·CE + (1 − alpha)·KD at T = 3 (``_distiller``), the teacher run
    live: the loss cached targets must reproduce."""
    t, s = to_numpy(teacher(x)), to_numpy(student(x))
    hard, soft = np_sparse_ce(y, s).mean(), np_kd(t, s, 3.0).mean()
    return {"loss": 0.3 * hard + 0.7 * soft, "student_loss": hard,
            "distillation_loss": soft}


def test_numpy_dict_targets_fit():
    x, y = _data(48)
    teacher = mlp(32, "teacher")
    d, init = _distiller(teacher, mlp(8, "student"), None)
    xs, targets = compute_soft_labels(teacher, x, y).as_numpy()
    np.testing.assert_array_equal(targets["labels"], y)
    # The first step's loss, computed from the cached targets before its
    # update, is the live loss on the first batch.
    expected = _np_loss(teacher, d.student, x[:16], y[:16])
    steps = []
    record = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: steps.append(
            {k: float(v) for k, v in logs.items()}))
    d.fit(xs, targets, batch_size=16, epochs=1, shuffle=False, verbose=0,
          callbacks=[record])
    assert len(steps) == 3
    for key, value in expected.items():
        np.testing.assert_allclose(steps[0][key], value, rtol=1e-5,
                                   err_msg=key)
    assert not np.allclose(to_numpy(d.student.weights[0]), init[0])
    # After training, evaluating from the cache gives the live loss again.
    logs = d.evaluate(xs, targets, batch_size=16, verbose=0, return_dict=True)
    for key, value in _np_loss(teacher, d.student, x, y).items():
        np.testing.assert_allclose(logs[key], value, rtol=1e-5, err_msg=key)
    # The stored logits are what the step reads (the teacher does not run):
    # altered ones change the distillation term accordingly.
    altered = dict(targets, teacher_logits=2.0 * targets["teacher_logits"])
    logs = d.evaluate(xs, altered, batch_size=16, verbose=0, return_dict=True)
    np.testing.assert_allclose(
        logs["distillation_loss"],
        np_kd(altered["teacher_logits"], to_numpy(d.student(x)), 3.0).mean(),
        rtol=1e-5)


# ----------------------------------------------------------------------
# Guards
# ----------------------------------------------------------------------
def test_cache_for_another_teacher_is_refused(tmp_path):
    x, y = _data(40)
    path = str(tmp_path / "c")
    teacher = mlp(32, "teacher")
    compute_soft_labels(teacher, x, y, batch_size=16, path=path)
    retrained = mlp(32, "teacher")  # same name and shape, other weights
    with pytest.raises(ValueError, match="another teacher: its weights"):
        compute_soft_labels(retrained, x, y, batch_size=16, path=path)
    with pytest.raises(ValueError, match="another teacher: its name"):
        SoftLabels.load(path, teacher=mlp(32, "other"))
    with pytest.raises(ValueError, match="another teacher: its output shape"):
        SoftLabels.load(path, teacher=mlp(32, "teacher", classes=5))
    # The right teacher reopens it without running again.
    cache = SoftLabels.load(path, teacher=teacher, num_samples=40)
    np.testing.assert_allclose(cache.teacher_logits(),
                               to_numpy(teacher(x)), rtol=1e-5, atol=1e-5)
    again = compute_soft_labels(teacher, x, y, batch_size=16, path=path)
    assert again.manifest["batches_done"] == 3
    # overwrite=True rebuilds it for the new teacher.
    rebuilt = compute_soft_labels(retrained, x, y, batch_size=16, path=path,
                                  overwrite=True)
    np.testing.assert_allclose(rebuilt.teacher_logits(),
                               to_numpy(retrained(x)), rtol=1e-5, atol=1e-5)


def test_overwrite_removes_only_the_caches_own_files(tmp_path):
    x, y = _data(40)
    path = tmp_path / "c"
    compute_soft_labels(mlp(32, "teacher"), x, y, batch_size=16,
                        path=str(path), feature_layers=["teacher_hidden"])
    built = sorted(p.name for p in path.iterdir())
    assert "feature_0.bin" in built and "manifest.json" in built
    (path / "my_embeddings.bin").write_bytes(b"user data")
    (path / "notes.txt").write_text("keep")
    # Rebuilt without the feature column: its file goes, the user's stay.
    compute_soft_labels(mlp(32, "teacher"), x, y, batch_size=16,
                        path=str(path), overwrite=True)
    assert (path / "my_embeddings.bin").read_bytes() == b"user data"
    assert (path / "notes.txt").read_text() == "keep"
    assert not (path / "feature_0.bin").exists()
    assert (path / "inputs.bin").exists()


@pytest.mark.parametrize("edit, match", [
    (lambda m: m["columns"].__setitem__(
        "teacher_logits", {"dtype": "|O", "shape": [10]}), "dtype"),
    (lambda m: m["columns"].__setitem__(
        "../outside", {"dtype": "<f4", "shape": [10]}), "not a plain file"),
    (lambda m: m["columns"].__setitem__(
        "/etc/passwd", {"dtype": "<f4", "shape": [10]}), "not a plain file"),
    (lambda m: m["columns"].__setitem__(
        "labels", {"dtype": "<i4", "shape": [-3]}), "whole numbers"),
], ids=["object-dtype", "parent-path", "absolute-path", "negative-size"])
def test_a_crafted_manifest_is_refused_before_any_file_is_read(
        tmp_path, edit, match):
    x, y = _data(40)
    path = tmp_path / "c"
    compute_soft_labels(mlp(32, "teacher"), x, y, batch_size=16,
                        path=str(path))
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"x" * 1000)
    manifest = json.loads((path / "manifest.json").read_text())
    edit(manifest)
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=match):
        SoftLabels.load(str(path)).teacher_logits()
    with pytest.raises(ValueError, match=match):  # resuming refuses it too
        compute_soft_labels(mlp(32, "teacher"), x, y, batch_size=16,
                            path=str(path))
    assert outside.read_bytes() == b"x" * 1000


def test_cache_for_other_data_or_classes_is_refused(tmp_path):
    x, y = _data(40)
    path = str(tmp_path / "c")
    teacher = mlp(32, "teacher")
    compute_soft_labels(teacher, x, y, batch_size=16, path=path)
    with pytest.raises(ValueError, match="holds 40 samples but the dataset "
                                         "has 30"):
        compute_soft_labels(teacher, x[:30], y[:30], batch_size=16, path=path)
    with pytest.raises(ValueError, match="first batch of inputs differs"):
        compute_soft_labels(teacher, x[::-1].copy(), y, batch_size=16,
                            path=path)
    with pytest.raises(ValueError, match="top_k=None, not 3"):
        compute_soft_labels(teacher, x, y, batch_size=16, path=path, top_k=3)
    with pytest.raises(ValueError, match="holds 40 samples"):
        SoftLabels.load(path, num_samples=41)
    with pytest.raises(ValueError, match="10-class teacher logits but 5"):
        SoftLabels.load(path, num_classes=5)


def test_feature_layers_must_match_distiller():
    x, y = _data(32, (8, 8, 1))
    teacher = cnn(8, "teacher")
    cache = compute_soft_labels(teacher, x, y,
                                feature_layers=["teacher_conv1"])
    d, _ = _distiller(teacher, cnn(4, "student"), None,
                      [kd.FitNet("teacher_conv2", "student_conv2")])
    with pytest.raises(ValueError, match=r"feature_layers=\['teacher_conv2'\]"):
        cache.as_dataset(8, distiller=d)


def test_augmented_dataset_is_refused():
    x, y = _data(40)
    teacher = mlp(32, "teacher")
    augmented = tf.data.Dataset.from_tensor_slices((x, y)).batch(16).map(
        lambda a, b: (a + tf.random.uniform(tf.shape(a)), b))
    with pytest.raises(ValueError, match="not deterministic"):
        compute_soft_labels(teacher, augmented)
    shuffled = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(40).batch(16)
    with pytest.raises(ValueError, match="un-augmented, unshuffled"):
        compute_soft_labels(teacher, shuffled)
    unbatched = tf.data.Dataset.from_tensor_slices((x, y))
    with pytest.raises(ValueError, match=r"dataset.batch\(256\)"):
        compute_soft_labels(teacher, unbatched)


def test_random_ops_are_read_from_the_pipelines_graph():
    """guards.random_ops reads tf.data's private _as_serialized_graph, the
    one way to see augmentation whose two reads agree (a global seed replays
    the same draws): if TensorFlow changes it, this fails loudly."""
    from keras_kd.soft_labels import guards

    x, y = _data(40)
    tf.random.set_seed(3)
    seeded = tf.data.Dataset.from_tensor_slices((x, y)).batch(16).map(
        lambda a, b: (tf.image.random_flip_left_right(a[..., None])[..., 0],
                      b))
    first = [np.asarray(a) for a, _ in seeded.take(1)][0]
    again = [np.asarray(a) for a, _ in seeded.take(1)][0]
    np.testing.assert_array_equal(first, again)  # two reads agree...
    ops = guards.random_ops(seeded)
    assert ops and all("Random" in op or "Shuffle" in op for op in ops)
    with pytest.raises(ValueError, match="contains random operations"):
        compute_soft_labels(mlp(32, "teacher"), seeded)  # ...yet refused
    plain = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    assert guards.random_ops(plain) == []


def test_bad_arguments_are_refused(tmp_path):
    x, _ = _data(20)
    teacher = mlp(16, "teacher")
    for k in (0, 11, 2.5):
        with pytest.raises(ValueError, match=r"top_k must be an integer in "
                                             r"\[1, 10\]"):
            compute_soft_labels(teacher, x, top_k=k)
    with pytest.raises(ValueError, match="batch_size must be a positive"):
        compute_soft_labels(teacher, x, batch_size=0)
    with pytest.raises(TypeError, match="NumPy array"):
        compute_soft_labels(teacher, x.tolist())
    with pytest.raises(FileNotFoundError, match="No soft-label cache"):
        SoftLabels.load(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="float16 range"):
        compress_top_k(np.array([[1e5, 0.0]]), 1)


# ----------------------------------------------------------------------
# Resume
# ----------------------------------------------------------------------
def test_interrupted_build_resumes(tmp_path):
    x, y = _data(100, (8, 8, 1))
    path = str(tmp_path / "c")
    teacher = cnn(8, "teacher")
    with pytest.raises(Interrupted):
        compute_soft_labels(teacher, Rows(x, fail_at=48), y, batch_size=16,
                            path=path, top_k=4)
    with open(os.path.join(path, "manifest.json")) as f:
        manifest = json.load(f)
    assert (manifest["rows_done"], manifest["batches_done"],
            manifest["complete"]) == (48, 3, False)
    with pytest.raises(ValueError, match="incomplete"):
        SoftLabels.load(path)
    # A batch torn mid-write: bytes past the recorded rows are dropped.
    with open(os.path.join(path, "topk_values.bin"), "ab") as f:
        f.write(b"\x00" * 24)
    rows = Rows(x)
    cache = compute_soft_labels(teacher, rows, y, batch_size=16, path=path,
                                top_k=4)
    # The first batch (guard), the stored rows read again to check their
    # checksums (the data fingerprint; the teacher does not rerun), the rest.
    assert rows.starts == [0, 0, 16, 32, 48, 64, 80, 96]
    assert cache.num_samples == 100 and cache.manifest["complete"]
    reference = compress_top_k(to_numpy(teacher(x, training=False)), 4)
    reopened = SoftLabels.load(path, teacher=teacher, num_samples=100)
    for got in (cache, reopened):
        np.testing.assert_array_equal(got.inputs, x)
        np.testing.assert_array_equal(got.labels, y)
        np.testing.assert_allclose(
            got.teacher_logits(),
            expand_top_k(*reference, num_classes=10), rtol=2e-3, atol=2e-3)
    assert os.path.getsize(os.path.join(path, "topk_values.bin")) == 100 * 8


# ----------------------------------------------------------------------
# Top-k compression
# ----------------------------------------------------------------------
def test_top_k_is_exact_at_k_equals_classes():
    logits = np.random.default_rng(1).normal(0, 3, (20, 7)).astype("float32")
    rebuilt = expand_top_k(*compress_top_k(logits, 7), num_classes=7)
    np.testing.assert_array_equal(
        rebuilt, logits.astype("float16").astype("float32"))
    teacher = mlp(16, "teacher", classes=7)
    x, _ = _data(30)
    cache = compute_soft_labels(teacher, x, top_k=7)
    np.testing.assert_array_equal(
        cache.teacher_logits(),
        to_numpy(teacher(x)).astype("float16").astype("float32"))


def test_top_k_approximation_matches_numpy():
    rng = np.random.default_rng(2)
    logits = rng.normal(0, 3, (25, 12))
    k = 4
    rebuilt = expand_top_k(*compress_top_k(logits, k), num_classes=12)
    # Independent reference: keep the top-k probabilities, spread the rest
    # of the mass uniformly over the other C - k classes.
    p = np_softmax(logits.astype("float64"))
    expected = np.empty_like(p)
    for i in range(len(p)):
        top = np.argsort(-p[i])[:k]
        rest = np.setdiff1d(np.arange(12), top)
        expected[i, top] = p[i, top]
        expected[i, rest] = (1.0 - p[i, top].sum()) / (12 - k)
    np.testing.assert_allclose(np_softmax(rebuilt.astype("float64")), expected,
                               rtol=5e-3, atol=1e-6)
    kept = np.sort(logits, axis=1)[:, ::-1][:, :k]
    np.testing.assert_allclose(np.sort(rebuilt, axis=1)[:, ::-1][:, :k], kept,
                               rtol=1e-3)
    # Storage: 2-byte value + 2-byte index per kept class + a float32 fill.
    teacher = mlp(16, "teacher", classes=12)
    x, _ = _data(30)
    assert compute_soft_labels(teacher, x, top_k=k).bytes_per_sample == 4 * k + 4
    assert compute_soft_labels(teacher, x).bytes_per_sample == 4 * 12


def test_cached_targets_without_the_features_an_objective_needs_are_refused():
    teacher, student = mlp(32, "teacher"), mlp(8, "student")
    distiller = kd.Distiller(teacher, student)
    distiller.compile("sgd", keras.losses.SparseCategoricalCrossentropy(
        from_logits=True), feature_losses=[kd.FitNet("teacher_hidden",
                                                     "student_hidden")])
    x = np.random.rand(8, 64).astype("float32")
    targets = {"teacher_logits": np.asarray(keras.ops.convert_to_numpy(
        teacher(x)))}
    with pytest.raises(ValueError, match="feature_layers="):
        distiller.compute_loss(x, targets, distiller(x), training=False)


# ----------------------------------------------------------------------
# Infinite datasets (issue 28 #10)
# ----------------------------------------------------------------------
def test_an_infinite_dataset_is_refused_before_anything_is_written(
        tmp_path, monkeypatch):
    from keras_kd.soft_labels import batches

    x, y = _data(32)
    teacher = mlp(16, "teacher")
    stored = []

    def append(*args, **kwargs):  # a bound on the test, not on the library
        stored.append(1)
        if len(stored) > 20:
            raise AssertionError("still writing batches of an endless dataset")
        return real(*args, **kwargs)

    real = batches.append
    monkeypatch.setattr(batches, "append", append)
    endless = tf.data.Dataset.from_tensor_slices((x, y)).batch(16).repeat()
    for path in (str(tmp_path / "c"), None):
        with pytest.raises(ValueError, match=(
                r"x is an infinite data set \(ds.repeat\(\) without a count\)"
                r".*x.take\(n\)")):
            compute_soft_labels(teacher, endless, path=path)
    assert not stored and not os.path.exists(tmp_path / "c")
    # A counted repeat is finite: twice the data.
    twice = tf.data.Dataset.from_tensor_slices((x, y)).batch(16).repeat(2)
    assert compute_soft_labels(teacher, twice).num_samples == 64


# ----------------------------------------------------------------------
# In-memory caches and the arrays they reference (issue 28 #15)
# ----------------------------------------------------------------------
def test_in_memory_inputs_changed_after_the_build_are_refused():
    x0, y0 = _data(40)
    teacher = mlp(16, "teacher")
    logits = to_numpy(teacher(x0))
    changes = {"shuffled": lambda a: np.random.default_rng(1).shuffle(a),
               "rescaled": lambda a: a.__imul__(2.0),
               "one value": lambda a: a.__setitem__((37, 5), 0.5)}
    message = (r"inputs \(x\) of this in-memory soft-label cache changed "
               r"since it was built: row \d+ differs.*x.copy\(\)")
    for name, change in changes.items():
        x = x0.copy()
        cache = compute_soft_labels(teacher, x, y0, batch_size=16)
        change(x)
        for use in (cache.as_numpy, lambda: cache.as_dataset(8),
                    lambda: cache.inputs):
            with pytest.raises(ValueError, match=message):
                use()
    # Changed while a dataset from as_dataset is being read: the batch that
    # reads the row stops.
    x = x0.copy()
    cache = compute_soft_labels(teacher, x, y0, batch_size=16)
    dataset = cache.as_dataset(8, shuffle=False)
    x[20] = 0.0
    with pytest.raises(tf.errors.OpError, match="row 20 differs"):
        for _ in dataset:
            pass
    # Labels and sample weights are the cache's own copy: shuffling the
    # caller's arrays in place changes nothing.
    x, y = x0.copy(), y0.copy()
    weights = np.linspace(0.1, 1.0, 40).astype("float32")
    cache = compute_soft_labels(teacher, x, y, batch_size=16,
                                sample_weight=weights)
    np.random.default_rng(2).shuffle(y)
    weights[:] = 0.0
    xs, targets, w = cache.as_numpy()
    np.testing.assert_array_equal(xs, x0)
    np.testing.assert_array_equal(targets["labels"], y0)
    np.testing.assert_array_equal(w, np.linspace(0.1, 1.0, 40, dtype="float32"))
    np.testing.assert_allclose(targets["teacher_logits"], logits, rtol=1e-5,
                               atol=1e-5)
