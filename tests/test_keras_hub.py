"""keras-hub tasks as teacher and student, built from config (no download)."""

import keras
import numpy as np
import pytest

keras_hub = pytest.importorskip("keras_hub")

import keras_kd as kd  # noqa: E402
from keras_kd.app.language_models import byte_preprocessor  # noqa: E402
from tests.helpers import padded_lm_batch, to_numpy  # noqa: E402
from tests.test_sequences import np_token_ce, np_token_kd  # noqa: E402

LENGTH = 12


def gpt2(name, width, layers=1, vocabulary=64, preprocessor=None, seed=0):
    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=vocabulary, num_layers=layers, num_heads=2,
        hidden_dim=width, intermediate_dim=2 * width, dropout=0.0,
        max_sequence_length=LENGTH, name=f"{name}_backbone")
    return keras_hub.models.GPT2CausalLM(
        backbone=backbone, preprocessor=preprocessor, name=name)


def lm_batch(n=6, vocabulary=64, seed=0):
    return padded_lm_batch(n, LENGTH, vocabulary, seed)


SCE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def test_token_kd_with_padding_equals_numpy():
    teacher, student = gpt2("teacher", 32, 2), gpt2("student", 16)
    x, labels, weights = lm_batch()
    d = kd.Distiller(teacher, student)
    d.compile("adam", SCE, alpha=0.2, temperature=1.0,
              distillation_loss="forward_kl")
    logs = d.evaluate(x, labels, sample_weight=weights, verbose=0,
                      return_dict=True)
    t, s = to_numpy(teacher(x)), to_numpy(student(x))
    soft = (np_token_kd(t, s, 1.0) * weights).sum() / weights.size
    hard = (np_token_ce(s, labels) * weights).sum() / weights.size
    np.testing.assert_allclose(logs["distillation_loss"], soft, rtol=1e-5,
                               atol=1e-7)
    np.testing.assert_allclose(logs["student_loss"], hard, rtol=1e-5)
    np.testing.assert_allclose(logs["loss"], 0.2 * hard + 0.8 * soft,
                               rtol=1e-5)


def test_alpha_one_equals_the_student_alone_and_the_teacher_stays():
    teacher, student = gpt2("teacher", 32, 2), gpt2("student", 16)
    alone = gpt2("student", 16)  # same seed: same initial weights
    x, labels, weights = lm_batch(8, seed=1)
    teacher_before = [to_numpy(w).copy() for w in teacher.weights]
    alone.compile(keras.optimizers.SGD(0.1), SCE)
    alone.fit(x, labels, sample_weight=weights, batch_size=4, epochs=2,
              shuffle=False, verbose=0)
    d = kd.Distiller(teacher, student)
    d.compile(keras.optimizers.SGD(0.1), SCE, alpha=1.0, temperature=1.0,
              distillation_loss="reverse_kl")
    d.fit(x, labels, sample_weight=weights, batch_size=4, epochs=2,
          shuffle=False, verbose=0)
    for a, b in zip(alone.weights, student.weights):
        np.testing.assert_allclose(to_numpy(b), to_numpy(a), rtol=1e-6,
                                   atol=1e-7)
    assert not np.allclose(to_numpy(student.weights[0]),
                           to_numpy(gpt2("student", 16).weights[0]))
    for a, b in zip(teacher_before, teacher.weights):
        np.testing.assert_array_equal(a, to_numpy(b))


def test_distiller_of_keras_hub_models_saves_and_loads(tmp_path):
    teacher, student = gpt2("teacher", 32, 2), gpt2("student", 16)
    x, labels, weights = lm_batch()
    d = kd.Distiller(teacher, student)
    d.compile("adam", SCE, temperature=1.0, distillation_loss="gkd")
    d.fit(x, labels, sample_weight=weights, epochs=1, verbose=0)
    path = tmp_path / "distiller.keras"
    d.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(to_numpy(loaded.student(x)),
                               to_numpy(student(x)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(to_numpy(loaded.teacher(x)),
                               to_numpy(teacher(x)), rtol=1e-5, atol=1e-6)
    assert loaded.distillation_objective.name == "gkd"
    logs = loaded.evaluate(x, labels, sample_weight=weights, verbose=0,
                           return_dict=True)
    expected = d.evaluate(x, labels, sample_weight=weights, verbose=0,
                          return_dict=True)
    np.testing.assert_allclose(logs["loss"], expected["loss"], rtol=1e-5)


def test_different_tokenizers_are_refused_with_the_fix():
    teacher = gpt2("teacher", 32, vocabulary=256,
                   preprocessor=byte_preprocessor(LENGTH))
    other = keras_hub.models.CausalLMPreprocessor(
        tokenizer=keras_hub.tokenizers.UnicodeCodepointTokenizer(
            vocabulary_size=256, sequence_length=LENGTH),
        sequence_length=LENGTH)
    student = gpt2("student", 16, vocabulary=256, preprocessor=other)
    with pytest.raises(ValueError, match="tokenize differently.*"
                       "preprocessor=teacher.preprocessor"):
        kd.Distiller(teacher, student)


def test_padded_teacher_vocabulary_is_truncated_on_request():
    teacher = gpt2("teacher", 32, vocabulary=72)  # 8 padding ids
    student = gpt2("student", 16, vocabulary=64)
    with pytest.raises(ValueError, match="truncate_teacher_logits=True"):
        kd.Distiller(teacher, student)
    d = kd.Distiller(teacher, student, truncate_teacher_logits=True)
    d.compile("adam", None, temperature=1.0, distillation_loss="forward_kl")
    x, labels, weights = lm_batch()
    loss = to_numpy(d.compute_loss(x, labels, d(x), sample_weight=weights,
                                   training=False))
    t = to_numpy(teacher(x))[..., :64]  # the tokenizer's ids only
    s = to_numpy(student(x))
    np.testing.assert_allclose(
        loss, (np_token_kd(t, s, 1.0) * weights).sum() / weights.size,
        rtol=1e-5, atol=1e-7)
    assert kd.Distiller.from_config(d.get_config()).truncate_teacher_logits


def test_raw_strings_go_through_the_students_preprocessor():
    preprocessor = byte_preprocessor(LENGTH)
    teacher = gpt2("teacher", 32, vocabulary=256, preprocessor=preprocessor)
    student = gpt2("student", 16, vocabulary=256, preprocessor=preprocessor)
    text = np.array(["def f(x):", "return x + 1", "import os", "class A:",
                     "pass", "x = [1, 2]"])
    d = kd.Distiller(teacher, student)
    d.compile(keras.optimizers.Adam(1e-2), SCE, alpha=0.5, temperature=1.0,
              distillation_loss="forward_kl")
    logs = d.evaluate(text, batch_size=6, verbose=0, return_dict=True)
    x, labels, weights = preprocessor(text)
    t, s = to_numpy(teacher(x)), to_numpy(student(x))
    w = to_numpy(weights).astype("float64")
    labels = to_numpy(labels)
    hard = (np_token_ce(s, labels) * w).sum() / w.size
    soft = (np_token_kd(t, s, 1.0) * w).sum() / w.size
    np.testing.assert_allclose(logs["student_loss"], hard, rtol=1e-5)
    np.testing.assert_allclose(logs["distillation_loss"], soft, rtol=1e-5,
                               atol=1e-7)
    history = d.fit(text, batch_size=3, epochs=3, verbose=0,
                    validation_data=text[:2])
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert "val_loss" in history.history
    logits = d.predict(text[:2], verbose=0)
    assert logits.shape == (2, LENGTH, 256)
    np.testing.assert_allclose(logits, to_numpy(student(
        preprocessor(text[:2])[0])), rtol=1e-5, atol=1e-5)


def bert(name, layers, vocabulary=50, seed=0):
    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=vocabulary, num_layers=layers, num_heads=2,
        hidden_dim=16, intermediate_dim=32, dropout=0.0,
        max_sequence_length=LENGTH, name=f"{name}_backbone")
    return keras_hub.models.BertMaskedLM(backbone=backbone,
                                         preprocessor=None, name=name)


def mlm_batch(n=4, masked=3, vocabulary=50, seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(5, vocabulary, (n, LENGTH)).astype("int32")
    positions = np.stack([np.sort(rng.choice(LENGTH, masked, replace=False))
                          for _ in range(n)]).astype("int32")
    labels = np.take_along_axis(tokens, positions, 1)
    np.put_along_axis(tokens, positions, 4, 1)  # the [MASK] id
    x = {"token_ids": tokens, "segment_ids": np.zeros_like(tokens),
         "padding_mask": np.ones_like(tokens), "mask_positions": positions}
    weights = np.ones((n, masked), "float32")
    weights[0, -1] = 0.0  # a padded mask slot
    return x, labels, weights


def test_distilbert_init_takes_every_other_layer():
    teacher, student = bert("teacher", 4), bert("student", 2, seed=1)
    copied = kd.hub.init_from_teacher(student, teacher)
    assert copied["transformer_layer_0"] == "transformer_layer_0"
    assert copied["transformer_layer_1"] == "transformer_layer_2"
    assert copied["token_embedding"] == "token_embedding"
    t_backbone = teacher.get_layer("teacher_backbone")
    s_backbone = student.get_layer("student_backbone")
    for s_name, t_name in [("transformer_layer_1", "transformer_layer_2"),
                           ("token_embedding", "token_embedding")]:
        for a, b in zip(s_backbone.get_layer(s_name).weights,
                        t_backbone.get_layer(t_name).weights):
            np.testing.assert_array_equal(to_numpy(a), to_numpy(b))


def test_distilbert_triple_loss_in_one_forward_pass():
    """5 · KD(T=2) + 2 · MLM + 1 · cosine(hidden states), up to a factor 7:
    alpha = 2/7 on the MLM loss, 5/7 on KD, weight 1/7 on the cosine term;
    the hidden states are tapped inside the keras-hub backbones by name."""
    # A student of its own initial weights, so that every term is far from
    # 0 (the init is tested above).
    teacher, student = bert("teacher", 4), bert("student", 2, seed=1)
    d = kd.Distiller(teacher, student)
    d.compile("adam", SCE, alpha=2 / 7, temperature=2.0,
              distillation_loss="kd", feature_losses=[kd.CosineEmbedding(
                  "transformer_layer_3", "transformer_layer_1",
                  weight=1 / 7)])
    x, labels, weights = mlm_batch()
    logs = d.evaluate(x, labels, sample_weight=weights, verbose=0,
                      return_dict=True)

    def hidden(model, layer):
        backbone = model.layers[[lyr.name for lyr in model.layers].index(
            f"{model.name}_backbone")]
        probe = keras.Model(backbone.inputs, backbone.get_layer(layer).output)
        return to_numpy(probe({k: x[k] for k in backbone.input}))

    t, s = to_numpy(teacher(x)), to_numpy(student(x))
    h_t, h_s = hidden(teacher, "transformer_layer_3"), hidden(
        student, "transformer_layer_1")
    cos = 1 - (h_t * h_s).sum(-1) / np.linalg.norm(h_t, axis=-1) / \
        np.linalg.norm(h_s, axis=-1)
    n = weights.size
    mlm = (np_token_ce(s, labels) * weights).sum() / n
    soft = (np_token_kd(t, s, 2.0) * weights).sum() / n
    # Hidden states of every token, weighted per sample by its mask slots.
    cosine = (cos.mean(-1) * weights.sum(-1)).sum() / n
    np.testing.assert_allclose(logs["student_loss"], mlm, rtol=1e-5)
    np.testing.assert_allclose(logs["distillation_loss"], soft, rtol=1e-5,
                               atol=1e-7)
    np.testing.assert_allclose(logs["cosine_loss"], cosine, rtol=1e-4,
                               atol=1e-7)
    np.testing.assert_allclose(
        logs["loss"], 2 / 7 * mlm + 5 / 7 * soft + cosine / 7, rtol=1e-5)
    # One forward pass: the student view holds the backbone once.
    history = d.fit(x, labels, sample_weight=weights, epochs=3, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]


def test_text_classifiers_distil_per_sample():
    def classifier(name, layers, seed):
        keras.utils.set_random_seed(seed)
        backbone = keras_hub.models.BertBackbone(
            vocabulary_size=50, num_layers=layers, num_heads=2,
            hidden_dim=16, intermediate_dim=32, dropout=0.0,
            max_sequence_length=LENGTH, name=f"{name}_backbone")
        return keras_hub.models.BertTextClassifier(
            backbone=backbone, num_classes=3, preprocessor=None,
            dropout=0.0, name=name)

    teacher, student = classifier("teacher", 2, 0), classifier("student", 1, 1)
    x, _, _ = mlm_batch(6)
    x = {k: x[k] for k in ("token_ids", "segment_ids", "padding_mask")}
    labels = np.array([0, 1, 2, 1, 0, 2])
    d = kd.Distiller(teacher, student)
    d.compile("adam", SCE, alpha=0.3, temperature=2.0,
              metrics=["sparse_categorical_accuracy"])
    logs = d.evaluate(x, labels, verbose=0, return_dict=True)
    t, s = to_numpy(teacher(x)), to_numpy(student(x))
    soft = np_token_kd(t, s, 2.0).mean()
    hard = np_token_ce(s, labels).mean()
    np.testing.assert_allclose(logs["loss"], 0.3 * hard + 0.7 * soft,
                               rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(logs["sparse_categorical_accuracy"],
                               (s.argmax(-1) == labels).mean())
