"""Offline distillation of sequence models: per-token logits, dict inputs,
padding sample weights (keras_kd/soft_labels/).

A tiny language model maps keras-hub style inputs ``{"token_ids",
"padding_mask"}`` to logits (batch, length, vocab); padding reaches the loss
as a (batch, length) ``sample_weight``.
"""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_kd as kd
from keras_kd.soft_labels import SoftLabels, compute_soft_labels
from tests.helpers import Interrupted, Rows, to_numpy

pytestmark = pytest.mark.filterwarnings("ignore:The teacher")

VOCAB, LENGTH = 13, 7


def lm(width, name, vocab=VOCAB):
    """Embedding + Dense: {"token_ids", "padding_mask"} -> logits
    (batch, length, vocab)."""
    tokens = keras.Input((LENGTH,), dtype="int32", name="token_ids")
    mask = keras.Input((LENGTH,), dtype="bool", name="padding_mask")
    h = keras.layers.Embedding(vocab, width, name=f"{name}_embedding")(tokens)
    h = h * keras.ops.expand_dims(keras.ops.cast(mask, h.dtype), -1)
    h = keras.layers.Dense(width, activation="tanh", name=f"{name}_hidden")(h)
    logits = keras.layers.Dense(vocab, name=f"{name}_logits")(h)
    return keras.Model({"token_ids": tokens, "padding_mask": mask}, logits,
                       name=name)


def batch(n=12, seed=0, vocab=VOCAB):
    """Right-padded token ids (id 0) with their padding mask, next-token
    labels and (n, length) weights (0 on padding and the last token)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, LENGTH + 1, n)
    tokens = rng.integers(1, vocab, (n, LENGTH)).astype("int32")
    real = np.arange(LENGTH)[None] < lengths[:, None]
    tokens[~real] = 0
    weights = real.astype("float32")
    labels = np.roll(tokens, -1, axis=1)
    weights[:, -1] = 0.0  # no next token at the last position
    labels[weights == 0] = 0
    return {"token_ids": tokens, "padding_mask": real}, labels, weights


def distiller(teacher, student, init=None):
    """A compiled Distiller whose student starts from ``init``."""
    d = kd.Distiller(teacher=teacher, student=student)
    d.compile(optimizer=keras.optimizers.SGD(0.5),
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
              weighted_metrics=["sparse_categorical_accuracy"],
              alpha=0.3, temperature=2.0)
    if init is not None:
        for w, value in zip(d.student.weights, init):
            w.assign(value)
    return d, [to_numpy(w) for w in d.student.weights]


def np_top_k(logits, k):
    """Independent top-k expansion: the k largest logits of each token kept,
    every other one replaced by the log-mean-exp of the dropped ones."""
    logits = np.asarray(logits, "float64")
    flat = logits.reshape(-1, logits.shape[-1])
    out = np.empty_like(flat)
    for i, row in enumerate(flat):
        top = np.argsort(-row)[:k]
        rest = np.setdiff1d(np.arange(len(row)), top)
        out[i] = np.log(np.mean(np.exp(row[rest]))) if len(rest) else 0.0
        out[i, top] = row[top]
    return out.reshape(logits.shape)


# ----------------------------------------------------------------------
# Training from the cache equals live distillation
# ----------------------------------------------------------------------
@pytest.mark.parametrize("top_k, top_k_dtype", [
    (None, "float16"),        # float32 logits
    (VOCAB, "float32"),       # every logit kept, exactly
    (VOCAB, "float16"),       # every logit kept, rounded to float16
])
def test_cached_sequence_training_equals_live(top_k, top_k_dtype):
    x, labels, weights = batch(12)
    teacher = lm(24, "teacher")
    live, init = distiller(teacher, lm(8, "student"))
    cached, _ = distiller(teacher, lm(8, "student"), init)
    h_live = live.fit(x, labels, sample_weight=weights, batch_size=4,
                      epochs=2, shuffle=False, verbose=0).history
    cache = compute_soft_labels(teacher, x, labels, sample_weight=weights,
                                batch_size=4, top_k=top_k,
                                top_k_dtype=top_k_dtype)
    t = np.concatenate([to_numpy(teacher.predict_on_batch(
        {k: v[i:i + 4] for k, v in x.items()})) for i in range(0, 12, 4)])
    exact = top_k_dtype == "float32" or top_k is None
    np.testing.assert_array_equal(
        cache.teacher_logits(), t if exact else
        t.astype("float16").astype("float32"))
    h_cached = cached.fit(cache.as_dataset(4, shuffle=False), epochs=2,
                          shuffle=False, verbose=0).history
    assert sorted(h_live) == sorted(h_cached)
    assert "student_loss" in h_cached and "distillation_loss" in h_cached
    rtol, atol = (1e-6, 1e-7) if exact else (2e-3, 1e-4)
    for key in h_live:
        np.testing.assert_allclose(h_cached[key], h_live[key], rtol=rtol,
                                   atol=atol, err_msg=key)
    for a, b in zip(live.student.weights, cached.student.weights):
        np.testing.assert_allclose(to_numpy(b), to_numpy(a), rtol=rtol,
                                   atol=atol)
    assert not np.allclose(to_numpy(live.student.weights[-2]), init[-2])

    # as_numpy holds the same (x, targets, sample_weight) as the batches.
    xs, targets, ws = cache.as_numpy()
    batches = list(cache.as_dataset(5, shuffle=False))
    assert all(len(element) == 3 for element in batches)
    for key in ("token_ids", "padding_mask"):
        np.testing.assert_array_equal(xs[key], x[key])
        np.testing.assert_array_equal(
            np.concatenate([np.asarray(b[0][key]) for b in batches]), x[key])
    np.testing.assert_array_equal(ws, weights)
    np.testing.assert_array_equal(
        np.concatenate([np.asarray(b[2]) for b in batches]), weights)
    np.testing.assert_array_equal(targets["labels"], labels)
    np.testing.assert_array_equal(
        np.concatenate([np.asarray(b[1]["teacher_logits"]) for b in batches]),
        targets["teacher_logits"])
    # ... and, as a dataset, gives the batches of as_dataset.
    ds = tf.data.Dataset.from_tensor_slices((xs, targets, ws)).batch(5)
    for ours, theirs in zip(ds, batches):
        for a, b in zip(tf.nest.flatten(ours), tf.nest.flatten(theirs)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# ----------------------------------------------------------------------
# Top-k per token
# ----------------------------------------------------------------------
@pytest.mark.parametrize("top_k_dtype, tol", [("float32", 1e-5),
                                              ("float16", 2e-3)])
def test_top_k_per_token_matches_numpy(top_k_dtype, tol):
    x, labels, weights = batch(10, seed=1)
    teacher = lm(24, "teacher")
    k = 4
    cache = compute_soft_labels(teacher, x, labels, sample_weight=weights,
                                batch_size=4, top_k=k, top_k_dtype=top_k_dtype)
    t = to_numpy(teacher.predict_on_batch(x))
    got = cache.teacher_logits()
    assert got.shape == (10, LENGTH, VOCAB) and got.dtype == np.float32
    assert cache.logits_shape == (LENGTH, VOCAB)
    assert cache.top_k_dtype == top_k_dtype
    np.testing.assert_allclose(got, np_top_k(t, k), rtol=tol, atol=tol)
    # Each token keeps its own k largest logits.
    np.testing.assert_array_equal(np.argsort(-got, -1)[..., :k],
                                  np.argsort(-t, -1)[..., :k])
    # Indexing selects samples, every token of them.
    np.testing.assert_array_equal(cache.teacher_logits([3, 1]), got[[3, 1]])


# ----------------------------------------------------------------------
# On disk: dict inputs, sample weights, per-token top-k, resumable
# ----------------------------------------------------------------------
def _files(path):
    """Every .bin file of a cache, as bytes."""
    out = {}
    for name in sorted(os.listdir(path)):
        if name.endswith(".bin"):
            with open(os.path.join(path, name), "rb") as f:
                out[name] = f.read()
    return out


def test_on_disk_sequence_cache_resumes_bit_for_bit(tmp_path):
    x, labels, weights = batch(22, seed=2)
    teacher = lm(16, "teacher")
    options = dict(sample_weight=weights, batch_size=4, top_k=5)
    whole_path, path = str(tmp_path / "whole"), str(tmp_path / "resumed")
    compute_soft_labels(teacher, x, labels, path=whole_path, **options)

    def inputs(fail_at=None):
        return {"token_ids": Rows(x["token_ids"], fail_at),
                "padding_mask": x["padding_mask"]}

    with pytest.raises(Interrupted):
        compute_soft_labels(teacher, inputs(fail_at=12), labels, path=path,
                            **options)
    with open(os.path.join(path, "manifest.json")) as f:
        manifest = json.load(f)
    assert (manifest["rows_done"], manifest["batches_done"],
            manifest["complete"]) == (12, 3, False)
    assert manifest["options"]["input_keys"] == ["padding_mask", "token_ids"]
    # A batch torn mid-write: bytes past the recorded rows are dropped.
    for name in ("inputs.token_ids.bin", "sample_weight.bin",
                 "topk_values.bin"):
        with open(os.path.join(path, name), "ab") as f:
            f.write(b"\x01" * 10)
    with pytest.raises(ValueError, match="top_k_dtype='float16', not "
                                         "'float32'"):
        compute_soft_labels(teacher, inputs(), labels, path=path,
                            top_k_dtype="float32", **options)
    rows = inputs()
    resumed = compute_soft_labels(teacher, rows, labels, path=path, **options)
    # The first batch (guard), the stored rows again (data fingerprint), the
    # rest.
    assert rows["token_ids"].starts == [0, 0, 4, 8, 12, 16, 20]
    assert resumed.manifest["complete"] and resumed.num_samples == 22

    expected_files = _files(whole_path)
    assert sorted(expected_files) == [
        "inputs.padding_mask.bin", "inputs.token_ids.bin", "labels.bin",
        "sample_weight.bin", "topk_fill.bin", "topk_indices.bin",
        "topk_values.bin"]
    assert _files(path) == expected_files
    with open(os.path.join(whole_path, "manifest.json")) as f:
        assert json.load(f) == resumed.manifest

    # The same cache from a tf.data source of (x, y, sample_weight) batches.
    ds = tf.data.Dataset.from_tensor_slices((x, labels, weights)).batch(4)
    from_ds = compute_soft_labels(teacher, ds, path=str(tmp_path / "ds"),
                                  top_k=5)
    assert _files(str(tmp_path / "ds")) == expected_files

    reopened = SoftLabels.load(path, teacher=teacher, num_samples=22)
    reference = np_top_k(to_numpy(teacher.predict_on_batch(x)), 5)
    for cache in (resumed, reopened, from_ds):
        assert sorted(cache.inputs) == ["padding_mask", "token_ids"]
        for key in cache.inputs:
            assert isinstance(cache.inputs[key], np.memmap)
            np.testing.assert_array_equal(cache.inputs[key], x[key])
        assert isinstance(cache.labels, np.memmap)
        assert isinstance(cache.sample_weight, np.memmap)
        np.testing.assert_array_equal(cache.labels, labels)
        np.testing.assert_array_equal(cache.sample_weight, weights)
        np.testing.assert_allclose(cache.teacher_logits(), reference,
                                   rtol=2e-3, atol=2e-3)
    assert os.path.getsize(os.path.join(path, "topk_values.bin")) == \
        22 * LENGTH * 5 * 2
    # A shuffled epoch keeps each sample's inputs, outputs and weights
    # together.
    seen = []
    logits = reopened.teacher_logits()
    for xb, targets, wb in reopened.as_dataset(8, shuffle=True, seed=3):
        tokens = np.asarray(xb["token_ids"])
        idx = [int(np.flatnonzero((x["token_ids"] == r).all(1))[0])
               for r in tokens]
        np.testing.assert_array_equal(np.asarray(xb["padding_mask"]),
                                      x["padding_mask"][idx])
        np.testing.assert_array_equal(np.asarray(wb), weights[idx])
        np.testing.assert_array_equal(np.asarray(targets["labels"]),
                                      labels[idx])
        np.testing.assert_array_equal(np.asarray(targets["teacher_logits"]),
                                      logits[idx])
        seen += idx
    assert sorted(seen) == list(range(22)) and seen != list(range(22))


def test_caches_written_before_the_sequence_options_still_open(tmp_path):
    x, labels, _ = batch(8, seed=3)
    tokens = x["token_ids"]
    inputs = keras.Input((LENGTH,), dtype="int32", name="tokens")
    teacher = keras.Model(inputs, keras.layers.Dense(VOCAB)(
        keras.layers.Embedding(VOCAB, 4)(inputs)))
    path = str(tmp_path / "c")
    built = compute_soft_labels(teacher, tokens, labels, batch_size=4,
                                path=path, top_k=3)
    # A manifest of the first format: no input_keys, sample weights or
    # top-k value dtype among the options.
    manifest_file = os.path.join(path, "manifest.json")
    with open(manifest_file) as f:
        manifest = json.load(f)
    for key in ("input_keys", "has_sample_weight", "top_k_dtype"):
        del manifest["options"][key]
    with open(manifest_file, "w") as f:
        json.dump(manifest, f)
    for cache in (SoftLabels.load(path, teacher=teacher),
                  compute_soft_labels(teacher, tokens, labels, batch_size=4,
                                      path=path, top_k=3)):
        assert cache.top_k_dtype == "float16" and cache.input_keys is None
        assert cache.sample_weight is None
        np.testing.assert_array_equal(cache.inputs, tokens)
        np.testing.assert_array_equal(cache.teacher_logits(),
                                      built.teacher_logits())
        assert len(cache.as_numpy()) == 2


# ----------------------------------------------------------------------
# Storage per token; refused inputs
# ----------------------------------------------------------------------
def test_bytes_per_token_follows_the_formula():
    vocab = 40
    x, labels, weights = batch(4, seed=4, vocab=vocab)
    teacher = lm(8, "teacher", vocab=vocab)
    for top_k, dtype, value_bytes in ((8, "float16", 2), (32, "float16", 2),
                                      (vocab, "float16", 2),
                                      (32, "float32", 4)):
        cache = compute_soft_labels(teacher, x, labels, sample_weight=weights,
                                    top_k=top_k, top_k_dtype=dtype)
        assert cache.bytes_per_token == top_k * (value_bytes + 2) + 4
        # Per sample: every token's outputs, labels (int32) and weights
        # (float32); the in-memory inputs are referenced, not counted.
        assert cache.bytes_per_sample == LENGTH * (
            cache.bytes_per_token + 4 + 4)
    full = compute_soft_labels(teacher, x, labels, sample_weight=weights)
    assert full.bytes_per_token == 4 * vocab
    assert full.bytes_per_sample == LENGTH * (4 * vocab + 4 + 4)
    # More than 65,535 classes: int32 indices.
    inputs = keras.Input((2,))
    wide = keras.Model(inputs, keras.layers.Dense(65536)(inputs))
    cache = compute_soft_labels(wide, np.ones((2, 2), "float32"), top_k=32)
    assert cache.bytes_per_token == 32 * (2 + 4) + 4


def test_bad_dict_inputs_are_refused(tmp_path):
    x, labels, weights = batch(4, seed=5)
    teacher = lm(8, "teacher")
    bad = {"token ids": x["token_ids"], "padding_mask": x["padding_mask"]}
    with pytest.raises(ValueError, match=r"only ASCII letters, digits and "
                                         r"underscores\. Rename the key "
                                         r"\(e\.g\. to 'token_ids'\)"):
        compute_soft_labels(teacher, bad, path=str(tmp_path / "c"))
    with pytest.raises(ValueError, match="Rename the key"):
        compute_soft_labels(teacher, tf.data.Dataset.from_tensor_slices(
            {"../token_ids": x["token_ids"]}).batch(2))
    assert not os.path.exists(tmp_path / "c" / "manifest.json")
    with pytest.raises(ValueError, match="equally long"):
        compute_soft_labels(teacher, {"token_ids": x["token_ids"],
                                      "padding_mask": x["padding_mask"][:3]})
    with pytest.raises(ValueError, match="sample_weight has 3"):
        compute_soft_labels(teacher, x, sample_weight=weights[:3])
    with pytest.raises(ValueError, match=r"shape \(n,\) or one per position, "
                                         r"shape \(n, 7\)"):
        compute_soft_labels(teacher, x, sample_weight=weights[:, :3])
    with pytest.raises(ValueError, match=r"dataset.batch\(256\)"):
        compute_soft_labels(teacher, tf.data.Dataset.from_tensor_slices(x))
    with pytest.raises(ValueError, match="top_k_dtype must be one of"):
        compute_soft_labels(teacher, x, top_k=3, top_k_dtype="bfloat16")


def test_dict_inputs_changed_after_an_in_memory_build_are_refused():
    x, labels, weights = batch(10, seed=5)
    cache = compute_soft_labels(lm(8, "teacher"), x, labels, batch_size=4,
                                sample_weight=weights)
    assert [type(part).__name__ for part in cache.as_numpy()] == [
        "dict", "dict", "ndarray"]  # unchanged: usable
    x["token_ids"][7, 2] = (x["token_ids"][7, 2] + 1) % VOCAB
    with pytest.raises(ValueError, match=r"row 7 differs \(in "
                                         r"x\['token_ids'\]\)"):
        cache.as_numpy()
    x["token_ids"][7, 2] = (x["token_ids"][7, 2] - 1) % VOCAB  # restored
    np.testing.assert_array_equal(cache.inputs["token_ids"], x["token_ids"])
    x["padding_mask"] = x["padding_mask"][::-1]  # a new array in the dict
    with pytest.raises(ValueError, match=r"x\['padding_mask'\]"):
        cache.as_dataset(4)
