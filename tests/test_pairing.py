"""kd.pair_layers: stage matching, linear CKA scores, ready-to-use losses."""

import keras
import numpy as np
import pytest

import keras_kd as kd
from keras_kd.pairing import linear_cka
from tests import references_features_b as ref
from tests.helpers import layer_features, to_numpy


# `kd.pair_layers` (NumPy CKA over predict outputs): no backend-specific path of its own (the Keras
# and keras-kd calls it makes are tested on every backend elsewhere), so CI runs
# this file under one backend (tests/conftest.py, `one_backend`; a test's own
# mark wins).
pytestmark = pytest.mark.one_backend("torch")


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


def mlp(widths, name, first=None, softmax=False):
    """A dense network on 6 inputs: hidden layers ``{name}_h0``, ... (the
    first one ``first`` when given), logits ``{name}_logits``."""
    x = keras.Input((6,))
    h = first(x) if first is not None else x
    for i, width in enumerate(widths[1 if first is not None else 0:],
                              start=1 if first is not None else 0):
        h = keras.layers.Dense(width, activation="tanh", name=f"{name}_h{i}")(h)
    out = keras.layers.Dense(5, name=f"{name}_logits")(h)
    if softmax:
        out = keras.layers.Softmax(name=f"{name}_probs")(out)
    return keras.Model(x, out, name=name)


def test_mlp_planted_hidden_layer_is_paired_with_cka_one():
    teacher = mlp((12, 12, 12), "teacher")
    first = keras.layers.Dense(12, activation="tanh", name="student_h0")
    student = mlp((12, 5), "student", first=first)
    first.set_weights(teacher.get_layer("teacher_h0").get_weights())
    x = np.random.default_rng(4).normal(size=(32, 6)).astype("float32")
    t_names = ["teacher_h0", "teacher_h1", "teacher_h2"]
    s_names = ["student_h0", "student_h1"]
    # Every teacher x student pair is a candidate, scored with CKA.
    cka = np.array([[ref.linear_cka(layer_features(teacher, t, x),
                                    layer_features(student, s, x))
                     for t in t_names] for s in s_names])
    pairing = kd.pair_layers(teacher, student, x, select="cka")
    got = {(c["teacher"], c["student"]): c["cka"] for c in pairing.candidates}
    assert len(got) == 6
    for j, s in enumerate(s_names):
        for i, t in enumerate(t_names):
            np.testing.assert_allclose(got[(t, s)], cka[j, i], rtol=1e-5)
    # The order-keeping assignment with the largest total CKA, by brute
    # force over all non-decreasing (t_0 <= t_1).
    best = max(((a, b) for a in range(3) for b in range(a, 3)),
               key=lambda ab: cka[0, ab[0]] + cka[1, ab[1]])
    assert [(p["teacher"], p["student"]) for p in pairing.pairs] == [
        (t_names[best[0]], "student_h0"), (t_names[best[1]], "student_h1")]
    assert pairing.pairs[0]["teacher"] == "teacher_h0"    # the planted one
    np.testing.assert_allclose(pairing.pairs[0]["cka"], 1.0, rtol=1e-5)
    assert cka[0, 1:].max() < 0.999 and cka[1].max() < 0.999
    assert [p["student_shape"] for p in pairing.pairs] == [(12,), (5,)]
    # Default: relative depth, student j of 2 -> teacher round((j+1)*3/2)-1
    # = teacher 1 (round(1.5) = 2) and teacher 2.
    depth = kd.pair_layers(teacher, student, x)
    assert [(p["teacher"], p["student"]) for p in depth.pairs] == [
        ("teacher_h1", "student_h0"), ("teacher_h2", "student_h1")]
    np.testing.assert_allclose([p["cka"] for p in depth.pairs],
                               [cka[0, 1], cka[1, 2]], rtol=1e-5)
    assert len(depth.candidates) == 6


def test_mlp_hidden_vectors_follow_activation_and_skip_the_output():
    # Dense -> BatchNorm -> ReLU is one hidden layer, named by its end; the
    # Dense -> Softmax output is not a hidden layer.
    teacher = keras.Sequential([
        keras.Input((6,)), keras.layers.Dense(8, name="t_dense"),
        keras.layers.BatchNormalization(name="t_bn"),
        keras.layers.ReLU(name="t_relu"),
        keras.layers.Dense(5, name="t_logits"),
        keras.layers.Softmax(name="t_probs")], name="t")
    student = mlp((3,), "s", softmax=True)
    x = np.random.default_rng(5).normal(size=(16, 6)).astype("float32")
    pairing = kd.pair_layers(teacher, student, x)
    assert [(p["teacher"], p["student"]) for p in pairing.pairs] == [
        ("t_relu", "s_h0")]
    relu = keras.Model(teacher.inputs[0], teacher.get_layer("t_relu").output)
    np.testing.assert_allclose(pairing.pairs[0]["cka"], ref.linear_cka(
        to_numpy(relu(x, training=False)),
        layer_features(student, "s_h0", x)), rtol=1e-5)


def test_mlp_pairs_distil_through_adapters(sparse_ce):
    teacher, student = mlp((12, 12, 12), "teacher"), mlp((12, 5), "student")
    rng = np.random.default_rng(6)
    x = rng.normal(size=(16, 6)).astype("float32")
    y = rng.integers(0, 5, 16)
    pairing = kd.pair_layers(teacher, student, x)
    distiller = kd.Distiller(teacher=teacher, student=student)
    distiller.compile(optimizer="sgd", loss=sparse_ce, feature_losses=pairing)
    equal, narrow = pairing   # student_h0 (12) and student_h1 (5) -> 12
    assert equal.adapter is None and equal.weight == 100.0
    assert narrow.adapter.compute_output_shape((None, 5)) == (None, 12)
    logs = distiller.evaluate(x, y, batch_size=16, verbose=0,
                              return_dict=True)
    for objective, p in zip(pairing, pairing.pairs):
        t = layer_features(teacher, p["teacher"], x)
        s = layer_features(student, p["student"], x)
        if objective.adapter is not None:
            kernel, bias = (to_numpy(w) for w in objective.adapter.weights)
            s = s @ kernel + bias
        # logged unweighted; weight 100 in the total
        np.testing.assert_allclose(logs[f"{objective.name}_loss"],
                                   np.mean((s - t) ** 2), rtol=1e-4)
    np.testing.assert_allclose(logs["loss"], 0.1 * logs["student_loss"]
                               + 0.9 * logs["distillation_loss"] + 100.0 * (
                                   logs["fitnet1_loss"] + logs["fitnet2_loss"]),
                               rtol=1e-4)
    before = to_numpy(narrow.adapter.kernel).copy()
    history = distiller.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert not np.allclose(to_numpy(narrow.adapter.kernel), before)


def test_mlp_vector_methods_and_refused_map_methods(sparse_ce):
    teacher, student = mlp((12, 12), "teacher"), mlp((4,), "student")
    x = np.random.default_rng(7).normal(size=(8, 6)).astype("float32")
    losses = []
    for method in ("cosine", "rkd", "sp", "pkt"):
        pairing = kd.pair_layers(teacher, student, x, method=method,
                                 weight=2.0)
        assert [(p["teacher"], p["student"]) for p in pairing.pairs] == [
            ("teacher_h1", "student_h0")]
        assert pairing[0].weight == 2.0
        losses += pairing
    distiller = kd.Distiller(teacher=teacher, student=student)
    distiller.compile(optimizer="sgd", loss=sparse_ce, feature_losses=losses)
    logs = distiller.evaluate(x, np.zeros(8, "int32"), batch_size=8,
                              verbose=0, return_dict=True)
    for name in ("cosine1", "rkd1", "sp1", "pkt1"):
        assert np.isfinite(logs[f"{name}_loss"]) and logs[f"{name}_loss"] > 0
    for method in ("at", "reviewkd"):
        with pytest.raises(ValueError, match="hidden vectors.*'fitnet'"):
            kd.pair_layers(teacher, student, x, method=method)
