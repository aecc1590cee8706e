"""kd.pair_layers: stage matching, linear CKA scores, ready-to-use losses."""

import keras
import numpy as np
import pytest

import keras_kd as kd
from keras_kd.pairing import linear_cka
from tests import references_features_b as ref
from tests.helpers import layer_features, to_numpy


def test_linear_cka_matches_numpy_and_invariances():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 7))
    y = x @ rng.normal(size=(7, 5)) + 0.5 * rng.normal(size=(20, 5))
    np.testing.assert_allclose(linear_cka(x, y), ref.linear_cka(x, y),
                               rtol=1e-10)
    q, _ = np.linalg.qr(rng.normal(size=(7, 7)))
    np.testing.assert_allclose(linear_cka(x, 2.5 * x @ q), 1.0, rtol=1e-10)
    maps = rng.normal(size=(6, 3, 3, 4))
    np.testing.assert_allclose(linear_cka(maps, maps[..., ::-1]), 1.0,
                               rtol=1e-10)
    assert linear_cka(x, rng.normal(size=(20, 5))) < 0.6
    with pytest.raises(ValueError, match="same n"):
        linear_cka(x, y[:5])


def staged(widths, name, stem=None):
    """A CNN with stages at 8×8 (``_a1``, ``_a2``), 4×4 (``_b``), 2×2
    (``_c``); ``stem`` plants a given first layer."""
    x = keras.Input((8, 8, 3))
    h = stem(x) if stem is not None else keras.layers.Conv2D(
        widths[0], 3, padding="same", name=f"{name}_a1")(x)
    h = keras.layers.Conv2D(widths[0], 3, padding="same", activation="relu",
                            name=f"{name}_a2")(h)
    h = keras.layers.Conv2D(widths[1], 3, strides=2, padding="same",
                            activation="relu", name=f"{name}_b")(h)
    h = keras.layers.Conv2D(widths[2], 3, strides=2, padding="same",
                            activation="relu", name=f"{name}_c")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(x, keras.layers.Dense(5)(h), name=name)


def test_planted_identical_stage_is_paired_with_cka_one(sparse_ce):
    teacher = staged((8, 16, 32), "teacher")
    stem = keras.layers.Conv2D(8, 3, padding="same", name="student_stem")
    student = staged((4, 6, 8), "student", stem=stem)
    stem.set_weights(teacher.get_layer("teacher_a1").get_weights())
    x = np.random.default_rng(1).random((24, 8, 8, 3)).astype("float32")
    pairing = kd.pair_layers(teacher, student, x, select="cka")
    first = pairing.pairs[0]
    assert (first["teacher"], first["student"]) == ("teacher_a1",
                                                    "student_stem")
    np.testing.assert_allclose(first["cka"], 1.0, rtol=1e-5)
    np.testing.assert_allclose(first["cka"], ref.linear_cka(
        layer_features(teacher, "teacher_a1", x),
        layer_features(student, "student_stem", x)), rtol=1e-5)
    # 4 candidates at 8×8 (2 layers each side), 1 at 4×4, 1 at 2×2
    assert len(pairing.candidates) == 6
    assert all(c["cka"] < 0.999 for c in pairing.candidates
               if c["student"] != "student_stem" or
               c["teacher"] != "teacher_a1")
    assert [(p["teacher"], p["student"]) for p in pairing.pairs[1:]] == [
        ("teacher_b", "student_b"), ("teacher_c", "student_c")]
    # stage outputs by default
    ends = kd.pair_layers(teacher, student, x)
    assert ends.pairs[0]["teacher"] == "teacher_a2"


def test_pairs_compile_for_each_method(sparse_ce):
    teacher, student = staged((8, 16, 32), "teacher"), staged((4, 6, 8),
                                                              "student")
    x = np.random.default_rng(2).random((8, 8, 8, 3)).astype("float32")
    losses = []
    for method, count in (("fitnet", 3), ("at", 3), ("reviewkd", 1)):
        pairing = kd.pair_layers(teacher, student, (x, None), method=method)
        assert isinstance(pairing, list) and len(pairing) == count
        assert "CKA" in repr(pairing)
        losses += pairing
    # one Distiller with all of them: each method's objectives accept the
    # proposed shapes (adapters, ABF modules) and give a finite loss
    distiller = kd.Distiller(teacher=teacher, student=student)
    distiller.compile(optimizer="sgd", loss=sparse_ce, feature_losses=losses)
    logs = distiller.evaluate(x, np.zeros(8, "int32"), batch_size=8,
                              verbose=0, return_dict=True)
    names = [f"{o.name}_loss" for o in losses]
    assert names[-1] == "reviewkd_loss" and len(set(names)) == 7
    assert all(np.isfinite(logs[n]) and logs[n] > 0 for n in names)


def test_pair_layers_errors():
    teacher = staged((8, 16, 32), "teacher")
    x = np.zeros((4, 8, 8, 3), "float32")
    with pytest.raises(ValueError, match="method"):
        kd.pair_layers(teacher, teacher, x, method="crd")
    inputs = keras.Input((8, 8, 3))
    flat = keras.Model(inputs, keras.layers.Dense(5)(
        keras.layers.Flatten()(inputs)))
    with pytest.raises(ValueError, match="by hand"):
        kd.pair_layers(teacher, flat, x)


@pytest.mark.one_backend("tensorflow")   # eager ResNet50 is slowest on JAX
def test_resnet50_to_mobilenetv2(sparse_ce):
    teacher = keras.applications.ResNet50(weights=None, input_shape=(32, 32, 3),
                                          classes=10, classifier_activation=None)
    student = keras.applications.MobileNetV2(
        weights=None, input_shape=(32, 32, 3), classes=10,
        classifier_activation=None)
    x = np.random.default_rng(3).random((4, 32, 32, 3)).astype("float32")
    pairing = kd.pair_layers(teacher, student, x)
    sizes = [p["teacher_shape"][:2] for p in pairing.pairs]
    assert (16, 16) in sizes and (8, 8) in sizes and (1, 1) in sizes
    for p in pairing.pairs:
        assert p["teacher_shape"][:2] == p["student_shape"][:2]
        assert 0.0 <= p["cka"] <= 1.0 + 1e-9
    distiller = kd.Distiller(teacher=teacher, student=student)
    distiller.compile(optimizer="sgd", loss=sparse_ce, feature_losses=pairing)
    for objective, p in zip(pairing, pairing.pairs):
        assert objective.adapter is not None   # the widths differ
        assert objective.adapter.compute_output_shape(
            (None,) + p["student_shape"]) == (None,) + p["teacher_shape"]


@pytest.mark.one_backend("torch")
def test_keras_hub_transformers_by_relative_depth(sparse_ce):
    keras_hub = pytest.importorskip("keras_hub")
    from tests.helpers import padded_lm_batch

    def gpt2(name, width, layers):
        backbone = keras_hub.models.GPT2Backbone(
            vocabulary_size=32, num_layers=layers, num_heads=2,
            hidden_dim=width, intermediate_dim=2 * width, dropout=0.0,
            max_sequence_length=8, name=f"{name}_backbone")
        return keras_hub.models.GPT2CausalLM(backbone=backbone,
                                             preprocessor=None, name=name)

    teacher, student = gpt2("teacher", 16, 4), gpt2("student", 8, 2)
    x, y, w = padded_lm_batch(4, 8, 32)
    pairing = kd.pair_layers(teacher, student, x)
    assert [(p["teacher"], p["student"]) for p in pairing.pairs] == [
        ("teacher_backbone/transformer_layer_1",
         "student_backbone/transformer_layer_0"),
        ("teacher_backbone/transformer_layer_3",
         "student_backbone/transformer_layer_1")]
    assert all(0.0 < p["cka"] <= 1.0 + 1e-9 for p in pairing.pairs)
    distiller = kd.Distiller(teacher=teacher, student=student)
    distiller.compile(optimizer="sgd", loss=sparse_ce, feature_losses=pairing)
    logs = distiller.evaluate(x, y, sample_weight=w, verbose=0,
                              return_dict=True)
    assert np.isfinite(logs["fitnet1_loss"]) and logs["fitnet1_loss"] > 0
    assert to_numpy(pairing[0].adapter.kernel).shape == (8, 16)
