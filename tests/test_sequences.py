"""The Distiller on sequence models: per-token logits, padding, masks.

Plain Keras models mapping token ids (batch, length) to logits
(batch, length, vocab); keras-hub tasks are in tests/test_keras_hub.py.
"""

import keras
import numpy as np
import pytest

import keras_kd as kd
from tests.helpers import to_numpy

VOCAB, LENGTH = 13, 7


def lm(width, name, mask_zero=False):
    tokens = keras.Input((LENGTH,), dtype="int32", name=f"{name}_tokens")
    h = keras.layers.Embedding(VOCAB, width, mask_zero=mask_zero,
                               name=f"{name}_embedding")(tokens)
    h = keras.layers.Dense(width, activation="tanh", name=f"{name}_hidden")(h)
    logits = keras.layers.Dense(VOCAB, name=f"{name}_logits")(h)
    return keras.Model(tokens, logits, name=name)


def batch(n=6, seed=0):
    """Token ids with right padding (id 0), next-token labels and weights."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, LENGTH + 1, n)
    tokens = rng.integers(1, VOCAB, (n, LENGTH)).astype("int32")
    weights = (np.arange(LENGTH)[None] < lengths[:, None]).astype("float32")
    tokens[weights == 0] = 0
    labels = np.roll(tokens, -1, axis=1)
    weights[:, -1] = 0.0  # no next token at the last position
    labels[weights == 0] = 0
    return tokens, labels, weights


def log_softmax(z):
    z = np.asarray(z, "float64")
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_token_kd(t, s, T):
    """T² KL(softmax(t/T) ‖ softmax(s/T)) per token, (batch, length)."""
    log_p, log_q = log_softmax(t / T), log_softmax(s / T)
    return T * T * (np.exp(log_p) * (log_p - log_q)).sum(-1)


def np_token_ce(s, y):
    return -np.take_along_axis(log_softmax(s), y[..., None], -1)[..., 0]


SCE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


@pytest.mark.parametrize("alpha", [0.0, 0.3])
def test_token_kd_with_padding_equals_numpy(alpha):
    tokens, labels, weights = batch()
    teacher, student = lm(24, "teacher"), lm(8, "student")
    d = kd.Distiller(teacher, student)
    d.compile("sgd", loss=keras.losses.SparseCategoricalCrossentropy(
        from_logits=True), alpha=alpha, temperature=2.0)
    loss = to_numpy(d.compute_loss(tokens, labels, d(tokens),
                                   sample_weight=weights, training=False))
    t, s = to_numpy(teacher(tokens)), to_numpy(student(tokens))
    n = weights.size  # Keras's sum_over_batch_size: Σ l·w / N
    soft = (np_token_kd(t, s, 2.0) * weights).sum() / n
    hard = (np_token_ce(s, labels) * weights).sum() / n
    np.testing.assert_allclose(loss, alpha * hard + (1 - alpha) * soft,
                               rtol=1e-5, atol=1e-6)
    # Padded tokens add nothing: changing their logits changes nothing.
    logs = d.evaluate(tokens, labels, sample_weight=weights, verbose=0,
                      return_dict=True)
    np.testing.assert_allclose(logs["distillation_loss"], soft, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(logs["student_loss"], hard, rtol=1e-5, atol=1e-6)


def test_alpha_one_trains_exactly_as_the_student_alone():
    tokens, labels, weights = batch(12, seed=1)
    student = lm(8, "student")
    alone = keras.models.clone_model(student)
    alone.set_weights(student.get_weights())
    alone.compile(keras.optimizers.SGD(0.5), SCE,
                  weighted_metrics=["sparse_categorical_accuracy"])
    history_alone = alone.fit(tokens, labels, sample_weight=weights,
                              batch_size=4, epochs=2, shuffle=False,
                              verbose=0).history
    d = kd.Distiller(lm(24, "teacher"), student)
    d.compile(keras.optimizers.SGD(0.5), SCE, alpha=1.0,
              weighted_metrics=["sparse_categorical_accuracy"],
              distillation_loss="forward_kl", temperature=1.0)
    history = d.fit(tokens, labels, sample_weight=weights, batch_size=4,
                    epochs=2, shuffle=False, verbose=0).history
    # Bit for bit on JAX and TensorFlow; on PyTorch the embedding's gradient
    # is summed in another order (one float32 ulp).
    exact = keras.backend.backend() != "torch"
    for a, b in zip(alone.weights, student.weights):
        if exact:
            np.testing.assert_array_equal(to_numpy(b), to_numpy(a))
        else:
            np.testing.assert_allclose(to_numpy(b), to_numpy(a), rtol=1e-6,
                                       atol=1e-8)
    np.testing.assert_allclose(history["loss"], history_alone["loss"],
                               rtol=0 if exact else 1e-6)
    np.testing.assert_allclose(
        history["sparse_categorical_accuracy"],
        history_alone["sparse_categorical_accuracy"], rtol=1e-6)
    assert history["loss"][1] < history["loss"][0]  # it trained


def test_unlabeled_tokens_are_left_out_of_hard_loss_and_metrics():
    tokens, labels, weights = batch(8, seed=2)
    labels = labels.copy()
    labels[:, :2] = -1  # e.g. prompt tokens: distilled, not supervised
    teacher, student = lm(24, "teacher"), lm(8, "student")
    d = kd.Distiller(teacher, student)
    d.compile("sgd", SCE, alpha=0.5, temperature=1.0,
              metrics=["sparse_categorical_accuracy"])
    logs = d.evaluate(tokens, labels, verbose=0, return_dict=True)
    t, s = to_numpy(teacher(tokens)), to_numpy(student(tokens))
    keep = labels >= 0
    hard = np_token_ce(s, np.maximum(labels, 0))[keep].mean()
    soft = np_token_kd(t, s, 1.0).mean()  # every token is distilled
    accuracy = (s.argmax(-1) == labels)[keep].mean()
    np.testing.assert_allclose(logs["student_loss"], hard, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(logs["distillation_loss"], soft, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(logs["sparse_categorical_accuracy"], accuracy,
                               rtol=1e-6)
    np.testing.assert_allclose(logs["loss"], 0.5 * hard + 0.5 * soft,
                               rtol=1e-5, atol=1e-6)


def test_a_students_keras_mask_leaves_padding_out_of_every_term():
    tokens, labels, weights = batch(8, seed=3)
    teacher = lm(24, "teacher")
    student = lm(8, "student", mask_zero=True)  # logits carry a padding mask
    d = kd.Distiller(teacher, student)
    d.compile("sgd", SCE, alpha=0.5, temperature=1.0)
    logs = d.evaluate(tokens, labels, verbose=0, return_dict=True)
    t, s = to_numpy(teacher(tokens)), to_numpy(student(tokens))
    valid = tokens != 0
    hard = np_token_ce(s, labels)[valid].mean()
    soft = np_token_kd(t, s, 1.0)[valid].mean()
    np.testing.assert_allclose(logs["student_loss"], hard, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(logs["distillation_loss"], soft, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name, reference", [
    ("reverse_kl", lambda t, s: np_token_kd(s, t, 1.0)),
    ("dkd", None),
])
def test_label_and_sequence_objectives_reduce_per_token(name, reference):
    tokens, labels, weights = batch(6, seed=4)
    teacher, student = lm(24, "teacher"), lm(8, "student")
    d = kd.Distiller(teacher, student)
    d.compile("sgd", None, temperature=1.0, distillation_loss=name)
    loss = to_numpy(d.compute_loss(tokens, labels, d(tokens),
                                   sample_weight=weights, training=False))
    t, s = to_numpy(teacher(tokens)), to_numpy(student(tokens))
    if reference is None:  # DKD per token == DKD over flattened tokens
        per_token = to_numpy(kd.objectives.dkd_loss(
            t.reshape(-1, VOCAB), s.reshape(-1, VOCAB), labels.reshape(-1),
            temperature=1.0)).reshape(labels.shape) * kd.objectives.DKD(
                warmup_epochs=20).warmup_factor
    else:
        per_token = reference(t, s)
    np.testing.assert_allclose(
        loss, (per_token * weights).sum() / weights.size, rtol=1e-5, atol=1e-6)
