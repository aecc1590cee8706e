"""keras_kd.app.language_models: keras-hub causal LMs built from config."""

import pytest

keras_hub = pytest.importorskip("keras_hub")

import random  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_kd.app.language_models import (  # noqa: E402
    SIZES,
    CausalByteTokenizer,
    build_causal_lm,
    byte_preprocessor,
    evaluate_bits_per_byte,
    greedy_agreement,
    greedy_continuations,
)
from keras_kd.data.text import bits_per_byte, load_python_source  # noqa: E402
from tests.helpers import to_numpy  # noqa: E402

L = 16


# The application's model builders: no backend-specific path of its own (the Keras
# and keras-kd calls it makes are tested on every backend elsewhere), so CI runs
# this file under one backend (tests/conftest.py, `one_backend`; a test's own
# mark wins).
pytestmark = pytest.mark.one_backend("torch")


@pytest.fixture(scope="module")
def data():
    return load_python_source(sequence_length=L, max_bytes=6_000)


def _compile(model, **kwargs):
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        weighted_metrics=["sparse_categorical_accuracy"], **kwargs)
    return model


def test_teacher_and_student_sizes():
    teacher = build_causal_lm("teacher", sequence_length=128)
    student = build_causal_lm("student", sequence_length=128)
    assert isinstance(teacher, keras_hub.models.GPT2CausalLM)
    assert teacher.preprocessor is None and not teacher.compiled
    assert teacher.count_params() == 224_640
    assert student.count_params() == 63_168
    assert 3.5 < teacher.count_params() / student.count_params() < 4.5


def test_forward_shapes(data):
    x = {k: v[:3] for k, v in data.train.x.items()}
    model = build_causal_lm("tiny", sequence_length=L, seed=0)
    assert tuple(model(x).shape) == (3, L, 256)
    # shorter sequences and int padding masks work too
    model = build_causal_lm("tiny", sequence_length=L, vocabulary_size=300)
    logits = model({"token_ids": x["token_ids"][:, :5],
                    "padding_mask": x["padding_mask"][:, :5].astype("int32")})
    assert tuple(logits.shape) == (3, 5, 300)


def test_seed_fixes_the_weights_and_leaves_random_alone():
    state = random.getstate()
    a = build_causal_lm("tiny", sequence_length=L, seed=7)
    b = build_causal_lm("tiny", sequence_length=L, seed=7)
    c = build_causal_lm("tiny", sequence_length=L, seed=8)
    assert random.getstate() == state
    for u, v in zip(a.weights, b.weights):
        np.testing.assert_array_equal(to_numpy(u), to_numpy(v))
    assert any(not np.array_equal(to_numpy(u), to_numpy(v))
               for u, v in zip(a.weights, c.weights))


def test_one_fit_step_learns(data):
    model = _compile(build_causal_lm("tiny", sequence_length=L, seed=0))
    train = data.train.shuffled(0)
    before = evaluate_bits_per_byte(model, data.held_out)
    assert 7.9 < before < 8.1  # a fresh model is close to uniform
    first = [to_numpy(w).copy() for w in model.trainable_weights]
    history = model.fit(train.x, train.labels,
                        sample_weight=train.sample_weight, batch_size=64,
                        epochs=2, verbose=0)
    losses = history.history["loss"]
    assert np.isfinite(losses).all() and losses[-1] < losses[0]
    assert any(not np.array_equal(a, to_numpy(b))
               for a, b in zip(first, model.trainable_weights))
    assert evaluate_bits_per_byte(model, data.held_out) < before


def test_evaluate_bits_per_byte_matches_full_logits(data):
    model = build_causal_lm("tiny", sequence_length=L, seed=1)
    w = data.held_out
    logits = to_numpy(model(w.x))
    expected = bits_per_byte(logits, w.labels, w.sample_weight)
    assert evaluate_bits_per_byte(model, w, batch_size=7) == pytest.approx(
        expected, rel=1e-5)


def test_preprocessor_gives_the_same_ids_as_the_arrays(data):
    w = data.train
    x, y, sample_weight = byte_preprocessor(L)(w.as_bytes())
    np.testing.assert_array_equal(to_numpy(x["token_ids"]), w.token_ids)
    np.testing.assert_array_equal(to_numpy(x["padding_mask"]), w.padding_mask)
    np.testing.assert_array_equal(to_numpy(y), w.labels)
    np.testing.assert_array_equal(to_numpy(sample_weight), w.sample_weight > 0)
    # the text as written: no case folding, UTF-8 bytes, no start/end token
    x, y, sample_weight = byte_preprocessor(8)(["Ab\u00e9", "XYZ"])
    np.testing.assert_array_equal(to_numpy(x["token_ids"])[0],
                                  [65, 98, 0xC3, 0xA9, 0, 0, 0, 0])
    np.testing.assert_array_equal(to_numpy(y)[1], [89, 90, 0, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(to_numpy(sample_weight)[1],
                                  [1, 1, 0, 0, 0, 0, 0, 0])


def test_raw_strings_fit_and_generate(data):
    model = build_causal_lm("tiny", sequence_length=L, with_preprocessor=True,
                            seed=0)
    assert isinstance(model.preprocessor.tokenizer, CausalByteTokenizer)
    _compile(model, sampler="greedy")
    history = model.fit(data.train.as_bytes(), batch_size=64, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    # no end token: generate to max_length, or stop at ids given here
    out = model.generate(["def ", "import"], max_length=L,
                         stop_token_ids=(ord("\n"),))
    assert out[0].startswith("def ") and out[1].startswith("import")
    assert all(len(o.encode()) <= L for o in out)


def test_generate_without_preprocessor(data):
    model = _compile(build_causal_lm("tiny", sequence_length=L, seed=0),
                     sampler="greedy")
    prompt = {"token_ids": data.train.token_ids[:2].copy(),
              "padding_mask": np.zeros((2, L), bool)}
    prompt["padding_mask"][:, :4] = True
    prompt["token_ids"][:, 4:] = 0
    out = model.generate(prompt, stop_token_ids=None)
    assert out["token_ids"].shape == (2, L)
    np.testing.assert_array_equal(out["token_ids"][:, :4],
                                  prompt["token_ids"][:, :4])
    assert out["padding_mask"].all()


def test_save_and_load(tmp_path, data):
    model = build_causal_lm("tiny", sequence_length=L, with_preprocessor=True,
                            seed=0)
    path = str(tmp_path / "lm.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.preprocessor.tokenizer, CausalByteTokenizer)
    x = {k: v[:4] for k, v in data.train.x.items()}
    np.testing.assert_allclose(to_numpy(loaded(x)), to_numpy(model(x)),
                               atol=1e-6)


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(size="huge"), ValueError, "size must be one of"),
    (dict(size="tiny", num_experts=4), ValueError, "Unknown config"),
    (dict(size="tiny", num_heads=3), ValueError, "multiple of num_heads"),
    (dict(size="tiny", with_preprocessor=True, vocabulary_size=300),
     ValueError, "vocabulary_size must be 256"),
])
def test_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        build_causal_lm(**kwargs)


def test_sizes_are_gpt2_backbone_arguments():
    for shape in SIZES.values():
        assert set(shape) == {"num_layers", "num_heads", "hidden_dim",
                              "intermediate_dim"}
        assert shape["hidden_dim"] % shape["num_heads"] == 0


def test_greedy_continuations_match_full_forward_argmax(data):
    model = build_causal_lm("tiny", sequence_length=L, seed=3)
    _compile(model).fit(data.train.x, data.train.labels,
                        sample_weight=data.train.sample_weight,
                        batch_size=16, epochs=1, steps_per_epoch=10,
                        verbose=0)
    sampler_before = model.sampler
    ids = data.held_out.token_ids[:4].copy()
    mask = data.held_out.padding_mask[:4]
    prompt = 6
    out = greedy_continuations(model, ids, mask, prompt)
    expected = np.where(mask & (np.arange(L) < prompt), ids, 0)
    full = np.ones_like(mask)
    for position in range(prompt, L):  # one full forward pass per token
        logits = to_numpy(model({"token_ids": expected, "padding_mask": full}))
        expected[:, position] = logits[:, position - 1].argmax(-1)
    np.testing.assert_array_equal(out, expected)
    assert model.sampler is sampler_before
    # A model agrees with itself; an untrained one does not.
    assert greedy_agreement(model, model, data.held_out, prompt, count=8) == 1.0
    other = build_causal_lm("tiny", sequence_length=L, seed=4)
    assert greedy_agreement(model, other, data.held_out, prompt, count=8) < 1.0
