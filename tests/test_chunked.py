"""Token-chunked language-model distillation (keras_kd/chunked.py).

``Distiller.compile(token_chunk_size=N)`` must give the loss, the logged
terms, the metrics and the gradients of the full-logits step, for every
token-level objective, with padding, labels below 0, truncated teacher
vocabularies and cached (top-k) teacher logits, at chunk sizes that do not
divide the length. Tiny keras-hub models built from config: a GPT-2 teacher
(tied embedding) and a Llama student (untied output embedding).
"""

import keras
import numpy as np
import pytest

import keras_kd as kd
from keras_kd.soft_labels import compress_top_k, expand_top_k
from tests.helpers import padded_lm_batch, to_numpy

keras_hub = pytest.importorskip("keras_hub")

VOCAB, LENGTH, BATCH = 21, 7, 4


def gpt2(vocab, seed):
    keras.utils.set_random_seed(seed)
    return keras_hub.models.GPT2CausalLM(keras_hub.models.GPT2Backbone(
        vocabulary_size=vocab, num_layers=1, num_heads=2, hidden_dim=16,
        intermediate_dim=32, max_sequence_length=16, dropout=0.0))


def llama(vocab, seed):
    keras.utils.set_random_seed(seed)
    return keras_hub.models.LlamaCausalLM(keras_hub.models.LlamaBackbone(
        vocabulary_size=vocab, num_layers=1, num_query_heads=2,
        num_key_value_heads=1, hidden_dim=8, intermediate_dim=16,
        tie_word_embeddings=False))


@pytest.fixture(scope="module")
def models():
    """A teacher, a wider-vocabulary teacher and a student, built once."""
    teacher, wide, student = gpt2(VOCAB, 0), gpt2(VOCAB + 3, 1), llama(
        VOCAB, 2)
    return {"teacher": teacher, "wide": wide, "student": student,
            "start": [to_numpy(v) for v in student.weights]}


def data():
    """Padded batch; some labels below 0 (unlabeled tokens, still distilled)."""
    x, labels, weights = padded_lm_batch(BATCH, LENGTH, VOCAB, seed=3)
    labels = labels.copy()
    labels[0, :2] = -1
    return x, labels, weights


def step(models, objective, chunk, y, weights, teacher="teacher",
         eager=True, truncate=False, alpha=0.3):
    """One SGD(1) step from the same start: ``(logs, weight deltas)``."""
    student = models["student"]
    student.set_weights(models["start"])
    d = kd.Distiller(models[teacher], student,
                     truncate_teacher_logits=truncate)
    d.compile(keras.optimizers.SGD(1.0), alpha=alpha, temperature=2.0,
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
              weighted_metrics=["sparse_categorical_accuracy"],
              distillation_loss=objective, token_chunk_size=chunk,
              run_eagerly=eager)
    x = data()[0]
    logs = d.train_on_batch(x, y, sample_weight=weights, return_dict=True)
    deltas = [to_numpy(v) - s for v, s in zip(student.weights,
                                              models["start"])]
    return {k: float(v) for k, v in logs.items()}, deltas


def assert_same_step(reference, chunked):
    (ref_logs, ref_deltas), (logs, deltas) = reference, chunked
    assert sorted(logs) == sorted(ref_logs)
    for name in ref_logs:
        np.testing.assert_allclose(logs[name], ref_logs[name], rtol=1e-5,
                                   atol=1e-6, err_msg=name)
    moved = max(float(np.abs(d).max()) for d in ref_deltas)
    assert moved > 1e-4  # a real gradient reached the student
    for ref, got in zip(ref_deltas, deltas):
        np.testing.assert_allclose(got, ref, atol=1e-5)


OBJECTIVES = {
    "kd": lambda: "kd",
    "forward_kl": lambda: "forward_kl",
    "reverse_kl_top_k": lambda: kd.objectives.ReverseKL(top_k=4),
    "gkd_top_p": lambda: kd.objectives.GeneralizedJSD(beta=0.3, top_p=0.8),
    "skew_kl": lambda: kd.objectives.SkewKL(alpha=0.1),
    "skew_reverse_kl": lambda: kd.objectives.SkewReverseKL(alpha=0.2, top_k=6),
}


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_chunked_step_equals_full_logits(models, name):
    """Loss, logged terms, metric and gradients equal, chunk 3 of 7."""
    _, labels, weights = data()
    reference = step(models, OBJECTIVES[name](), None, labels, weights)
    assert_same_step(reference, step(models, OBJECTIVES[name](), 3, labels,
                                     weights))


def test_chunked_compiled_step_with_truncated_teacher(models):
    """A compiled step (jit), a teacher with 3 extra vocabulary ids, padding
    weights scaled per sequence and a chunk of 2 (7 = 2 + 2 + 2 + 1)."""
    _, labels, weights = data()
    weights = weights * np.array([[1.0], [0.5], [2.0], [0.0]], "float32")
    args = dict(y=labels, weights=weights, teacher="wide", eager=False,
                truncate=True)
    assert_same_step(step(models, "forward_kl", None, **args),
                     step(models, "forward_kl", 2, **args))


@pytest.mark.parametrize("top_k", [None, 5])
def test_chunked_step_from_cached_teacher_logits(models, top_k):
    """Cached teacher logits (as a soft-label cache yields them, top-k
    compressed and rebuilt), chunk 3 of 7; the top-k step compiled (a
    TensorFlow graph loops over the chunks in a tf.while_loop)."""
    x, labels, weights = data()
    logits = to_numpy(models["teacher"](x))
    if top_k is not None:
        logits = expand_top_k(*compress_top_k(logits, top_k, "float32"),
                              num_classes=VOCAB)
    y = {"teacher_logits": logits.astype("float32"), "labels": labels}
    objective = kd.objectives.ForwardKL(top_k=top_k)
    eager = top_k is None
    assert_same_step(step(models, objective, None, y, weights, eager=eager),
                     step(models, objective, 3, y, weights, eager=eager))


def log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_chunked_loss_matches_numpy(models):
    """The chunked step's loss against the formula in NumPy (float64)."""
    x, labels, weights = data()
    student = models["student"]
    student.set_weights(models["start"])
    s = to_numpy(student(x)).astype("float64")
    t = to_numpy(models["teacher"](x)).astype("float64")
    log_p, log_q = log_softmax(t / 2.0), log_softmax(s / 2.0)
    kl = 4.0 * (np.exp(log_p) * (log_p - log_q)).sum(-1)
    soft = (kl * weights).sum() / kl.size
    keep = labels >= 0
    ce = -np.take_along_axis(log_softmax(s), np.maximum(labels, 0)[..., None],
                             -1)[..., 0]
    hard = (ce * weights * keep).sum() / keep.sum()
    logs, _ = step(models, "forward_kl", 3, labels, weights, alpha=0.25)
    np.testing.assert_allclose(logs["distillation_loss"], soft, rtol=1e-4,
                               atol=1e-7)  # float32 roundoff on a small KL
    np.testing.assert_allclose(logs["student_loss"], hard, rtol=1e-5)
    np.testing.assert_allclose(logs["loss"], 0.25 * hard + 0.75 * soft,
                               rtol=1e-5)


def test_chunked_predict_and_config(models):
    """predict still gives logits; the option is in the compile config."""
    d = kd.Distiller(models["teacher"], models["student"])
    d.compile("sgd", temperature=1.0, distillation_loss="reverse_kl",
              token_chunk_size=3)
    x = data()[0]
    assert tuple(d(x).shape) == (BATCH, LENGTH, 8)  # hidden states
    predicted = d.predict(x, verbose=0)
    np.testing.assert_allclose(predicted, to_numpy(models["student"](x)),
                               atol=1e-6)
    assert d.get_compile_config()["token_chunk_size"] == 3


def test_chunked_refusals(models):
    """Models without hidden states/output embedding, other objectives,
    feature taps and bad sizes: errors that name the fix."""
    def mlp(name):
        return keras.Sequential([keras.Input((LENGTH,)),
                                 keras.layers.Dense(VOCAB)], name=name)

    d = kd.Distiller(mlp("teacher"), mlp("student"))
    with pytest.raises(ValueError, match="keras-hub causal LMs.*without "
                       "token_chunk_size"):
        d.compile("sgd", token_chunk_size=4)
    d = kd.Distiller(models["teacher"], models["student"])
    with pytest.raises(ValueError, match="per-token objective"):
        d.compile("sgd", distillation_loss="dkd", token_chunk_size=4)
    with pytest.raises(ValueError, match="drop feature_losses"):
        # The backbones' own names: Keras numbers them (gpt2_backbone_15)
        # when other tests of this process built some before.
        d.compile("sgd", token_chunk_size=4, feature_losses=[kd.FitNet(
            models["teacher"].backbone.name,
            models["student"].backbone.name)])
    with pytest.raises(ValueError, match="integer >= 1"):
        d.compile("sgd", token_chunk_size=0)


@pytest.mark.one_backend("jax")
def test_chunked_on_policy_equals_full_logits(models):
    """On-policy distillation (λ = 1, the same seed) with the option on."""
    x, labels, weights = data()
    x = {"token_ids": np.where(x["padding_mask"], x["token_ids"], 1),
         "padding_mask": np.ones_like(x["padding_mask"])}
    results = []
    for chunk in (None, 3):
        student = models["student"]
        student.set_weights(models["start"])
        d = kd.Distiller(models["teacher"], student)
        d.compile(keras.optimizers.SGD(1.0), alpha=0.0, temperature=1.0,
                  distillation_loss="gkd", token_chunk_size=chunk,
                  on_policy=kd.OnPolicy(lmbda=1.0, prompt_length=3, seed=4),
                  run_eagerly=True)
        logs = d.train_on_batch(x, return_dict=True)
        results.append(({k: float(v) for k, v in logs.items()
                         if k != "sampling_seconds"},
                        [to_numpy(v) - s for v, s in zip(
                            student.weights, models["start"])]))
    assert results[0][0]["generated_tokens"] == BATCH * (LENGTH - 3)
    assert_same_step(*results)
