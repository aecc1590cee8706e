"""Multi-stage feature methods (FSP, ReviewKD, FT) and CRD against NumPy.

Each method: its value equals the NumPy reference written from the paper
(tests/references_features_b.py), its gradient reaches the student and its
own layers and never the teacher, and a ``.keras`` save and load restores it.
"""

import os

import keras
import numpy as np
import pytest
from keras import ops

import keras_kd as kd
from keras_kd import objectives as obj
from tests import references_features_b as ref
from tests.helpers import (backend_grad, cnn, layer_features as features,
                           numeric_grad, to_numpy)


def images(n=8, seed=0, shape=(8, 8, 1)):
    rng = np.random.default_rng(seed)
    return (rng.random((n,) + shape).astype("float32"),
            rng.integers(0, 10, n).astype("int32"))


def save_and_load(distiller, tmp_path):
    path = os.path.join(tmp_path, "distiller.keras")
    distiller.save(path)
    return keras.models.load_model(path)


def trainable_ids(model):
    return {id(v) for v in model.trainable_weights}


# ----------------------------------------------------------------------
# FSP
# ----------------------------------------------------------------------
def test_fsp_matches_numpy_with_pooling():
    rng = np.random.default_rng(0)
    t = [(rng.normal(size=(3, 4, 4, 2)), rng.normal(size=(3, 2, 2, 3))),
         (rng.normal(size=(3, 2, 2, 3)), rng.normal(size=(3, 2, 2, 4)))]
    s = [(rng.normal(size=(3, 4, 4, 2)), rng.normal(size=(3, 2, 2, 3))),
         (rng.normal(size=(3, 2, 2, 3)), rng.normal(size=(3, 2, 2, 4)))]
    t = [tuple(a.astype("float32") for a in p) for p in t]
    s = [tuple(a.astype("float32") for a in p) for p in s]
    np.testing.assert_allclose(to_numpy(obj.fsp_matrix(*t[0])),
                               ref.fsp_matrix(*t[0]), rtol=1e-5, atol=1e-6)
    got = to_numpy(obj.fsp_loss(t, s, weights=[1.0, 0.5]))
    np.testing.assert_allclose(got, ref.fsp(t, s, [1.0, 0.5]), rtol=1e-5)
    # gradient: finite differences on the student's first map; none to t
    s1 = s[0][0]
    g = backend_grad(lambda v: ops.sum(obj.fsp_loss(t[:1], [(v, s[0][1])])),
                     s1)
    expected = numeric_grad(lambda v: ref.fsp(t[:1], [(v, s[0][1])]).sum(),
                            s1)
    np.testing.assert_allclose(g, expected, rtol=1e-3, atol=1e-5)
    g_t = backend_grad(lambda v: ops.sum(obj.fsp_loss([(v, t[0][1])], s[:1])),
                       t[0][0])
    assert g_t is None or np.all(g_t == 0)


def test_fsp_in_distiller_matches_numpy_and_saves(sparse_ce, tmp_path):
    teacher, student = cnn(6, "teacher"), cnn(6, "student")
    fsp = obj.FSP([("teacher_conv1", "teacher_conv2")],
                  [("student_conv1", "student_conv2")], weight=2.0)
    distiller = kd.Distiller(teacher=teacher, student=student)
    distiller.compile(optimizer="sgd", loss=sparse_ce, alpha=1.0,
                      distillation_loss=None, feature_losses=[fsp])
    x, y = images()
    logs = distiller.evaluate(x, y, batch_size=8, verbose=0, return_dict=True)
    expected = ref.fsp(
        [(features(teacher, "teacher_conv1", x),
          features(teacher, "teacher_conv2", x))],
        [(features(student, "student_conv1", x),
          features(student, "student_conv2", x))]).mean()
    np.testing.assert_allclose(logs["fsp_loss"], expected, rtol=1e-4)
    loaded = save_and_load(distiller, tmp_path)
    assert loaded.feature_objectives[0].get_config() == fsp.get_config()
    again = loaded.evaluate(x, y, batch_size=8, verbose=0, return_dict=True)
    np.testing.assert_allclose(again["fsp_loss"], logs["fsp_loss"], rtol=1e-6)
    with pytest.raises(ValueError, match="same channel counts"):
        kd.Distiller(teacher=cnn(8, "teacher"), student=cnn(4, "student")
                     ).compile(loss=sparse_ce, feature_losses=[obj.FSP(
                         [("teacher_conv1", "teacher_conv2")],
                         [("student_conv1", "student_conv2")])])
    with pytest.raises(ValueError, match="name pairs"):
        obj.FSP(["teacher_conv1"], [("a", "b")])


# ----------------------------------------------------------------------
# CRD
# ----------------------------------------------------------------------
def test_crd_loss_matches_numpy_and_gradients():
    rng = np.random.default_rng(1)
    t = ref.unit(rng.normal(size=(3, 4))).astype("float32")
    s = ref.unit(rng.normal(size=(3, 4))).astype("float32")
    bt = ref.unit(rng.normal(size=(5, 4))).astype("float32")
    bs = ref.unit(rng.normal(size=(5, 4))).astype("float32")
    got = to_numpy(obj.crd_loss(t, s, bt, bs, temperature=0.5, num_data=20))
    expected, z_t, z_s = ref.crd(t, s, bt, bs, tau=0.5, num_data=20)
    np.testing.assert_allclose(got, expected, rtol=1e-4)
    got = to_numpy(obj.crd_loss(t, s, bt, bs, temperature=0.5, num_data=20,
                                z_teacher=2.0, z_student=3.0))
    np.testing.assert_allclose(
        got, ref.crd(t, s, bt, bs, 0.5, 20, 2.0, 3.0)[0], rtol=1e-4)
    g = backend_grad(lambda v: ops.sum(obj.crd_loss(
        t, v, bt, bs, 0.5, 20, 2.0, 3.0)), s)
    expected = numeric_grad(
        lambda v: ref.crd(t, v, bt, bs, 0.5, 20, 2.0, 3.0)[0].sum(), s)
    np.testing.assert_allclose(g, expected, rtol=1e-3, atol=1e-5)
    g_bank = backend_grad(lambda v: ops.sum(obj.crd_loss(
        t, s, v, bs, 0.5, 20, 2.0, 3.0)), bt)
    assert g_bank is None or np.all(g_bank == 0)


def crd_models():
    from tests.helpers import mlp
    return mlp(12, "teacher"), mlp(6, "student")


def test_crd_in_distiller_bank_grads_and_save(sparse_ce, tmp_path):
    teacher, student = crd_models()
    crd = obj.CRD("teacher_hidden", "student_hidden", weight=0.8,
                  feature_dim=4, bank_size=12, temperature=0.5, num_data=40)
    distiller = kd.Distiller(teacher=teacher, student=student)
    distiller.compile(optimizer="sgd", loss=sparse_ce, alpha=1.0,
                      distillation_loss=None, feature_losses=[crd])
    rng = np.random.default_rng(2)
    x = rng.random((8, 64)).astype("float32")
    y = rng.integers(0, 10, 8).astype("int32")

    def embeddings(model, layer, head):
        kernel, bias = (to_numpy(w).astype("float64") for w in head.weights)
        return ref.unit(features(model, layer, x) @ kernel + bias)

    bank_t, bank_s = to_numpy(crd.teacher_bank), to_numpy(crd.student_bank)
    t = embeddings(teacher, "teacher_hidden", crd.teacher_head)
    s = embeddings(student, "student_hidden", crd.student_head)
    expected, z_t, z_s = ref.crd(t, s, bank_t, bank_s, 0.5, 40)
    logs = distiller.evaluate(x, y, batch_size=8, verbose=0, return_dict=True)
    np.testing.assert_allclose(logs["crd_loss"], expected.mean(), rtol=1e-4)
    np.testing.assert_allclose(to_numpy(crd.normalizers), [z_s, z_t],
                               rtol=1e-4)
    np.testing.assert_array_equal(to_numpy(crd.teacher_bank), bank_t)

    # One training step: the heads and the student move, the teacher does
    # not, and the batch's embeddings are written at rows 0..7.
    teacher_before = [to_numpy(w) for w in teacher.weights]
    heads_before = [to_numpy(w) for w in crd.teacher_head.weights +
                    crd.student_head.weights + student.weights]
    distiller.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    for a, w in zip(teacher_before, teacher.weights):
        np.testing.assert_array_equal(a, to_numpy(w))
    moved = [not np.allclose(a, to_numpy(w)) for a, w in zip(
        heads_before, crd.teacher_head.weights + crd.student_head.weights +
        student.weights)]
    assert all(moved[:4]) and any(moved[4:])
    head_ids = {id(v) for v in crd.teacher_head.weights +
                crd.student_head.weights}
    assert head_ids <= trainable_ids(distiller)
    assert not head_ids & trainable_ids(student)
    np.testing.assert_allclose(to_numpy(crd.teacher_bank)[:8], t, rtol=1e-4,
                               atol=1e-6)
    np.testing.assert_allclose(to_numpy(crd.student_bank)[:8], s, rtol=1e-4,
                               atol=1e-6)
    np.testing.assert_array_equal(to_numpy(crd.teacher_bank)[8:], bank_t[8:])
    assert int(to_numpy(crd.bank_position)) == 8
    distiller.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    assert int(to_numpy(crd.bank_position)) == 4   # (8 + 8) mod 12

    loaded = save_and_load(distiller, tmp_path)
    again = loaded.feature_objectives[0]
    for name in ("teacher_bank", "student_bank", "bank_position",
                 "normalizers"):
        np.testing.assert_array_equal(to_numpy(getattr(again, name)),
                                      to_numpy(getattr(crd, name)))
    assert again.get_config() == crd.get_config()
    # resume: the loaded Distiller trains on as the original does
    h1 = distiller.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    h2 = loaded.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    np.testing.assert_allclose(h2.history["crd_loss"], h1.history["crd_loss"],
                               rtol=1e-5)
    np.testing.assert_allclose(to_numpy(again.student_bank),
                               to_numpy(crd.student_bank), rtol=1e-5,
                               atol=1e-6)
    assert int(to_numpy(again.bank_position)) == 0   # (16 + 8) mod 12
    # the student alone exports: no CRD head or bank inside it
    assert len(loaded.student.weights) == len(student.weights)


def test_crd_errors():
    with pytest.raises(ValueError, match="bank_size"):
        obj.CRD("a", "b", bank_size=0)
    with pytest.raises(ValueError, match="temperature"):
        obj.CRD("a", "b", temperature=0.0)
    crd = obj.CRD("a", "b", bank_size=4, feature_dim=2)
    crd.build_for((None, 3), (None, 3))
    with pytest.raises(ValueError, match="bank_size"):
        crd.compute(np.ones((6, 3), "float32"), np.ones((6, 3), "float32"))


@pytest.mark.one_backend("tensorflow")
def test_crd_bank_written_from_the_global_batch(tmp_path):
    """Data-parallel on 2 devices, the bank holds every replica's
    embeddings, as one device's bank does after the same two steps.
    TensorFlow's replicas need the gather (the code path under test); the
    script runs under JAX's DataParallel too (its step sees the global
    batch), outside CI's budget."""
    from tests.helpers import run_scale_script
    run = run_scale_script("crd_parallel", tmp_path / "crd.json",
                           keras.backend.backend(), timeout=300)
    assert run["devices"] == 2
    single, parallel = run["single"], run["parallel"]
    assert single["position"] == parallel["position"] == 16
    for key in ("teacher_bank", "student_bank", "normalizers"):
        np.testing.assert_allclose(parallel[key], single[key], rtol=1e-4,
                                   atol=1e-5, err_msg=key)
    # rows 0..15 were written (unit rows), the rest is still the init
    norms = np.linalg.norm(np.array(single["teacher_bank"]), axis=1)
    np.testing.assert_allclose(norms[:16], 1.0, rtol=1e-5)
    assert np.all(np.abs(norms[16:] - 1.0) > 1e-3)
    np.testing.assert_allclose(parallel["loss"], single["loss"], rtol=1e-4)


# ----------------------------------------------------------------------
# ReviewKD
# ----------------------------------------------------------------------
def test_hcl_matches_numpy():
    rng = np.random.default_rng(3)
    t = [rng.normal(size=(2, 8, 8, 3)), rng.normal(size=(2, 2, 2, 5)),
         rng.normal(size=(2, 1, 1, 4))]
    s = [rng.normal(size=a.shape) for a in t]
    t = [a.astype("float32") for a in t]
    s = [a.astype("float32") for a in s]
    np.testing.assert_allclose(to_numpy(obj.hcl_loss(t, s)), ref.hcl(t, s),
                               rtol=1e-5)
    t1, s1 = (rng.normal(size=(2, 8, 3)).astype("float32") for _ in "ts")
    np.testing.assert_allclose(to_numpy(obj.hcl_loss([t1], [s1])),
                               ref.hcl([t1], [s1]), rtol=1e-5)
    g = backend_grad(lambda v: ops.sum(obj.hcl_loss(t[1:2], [v])), s[1])
    np.testing.assert_allclose(
        g, numeric_grad(lambda v: ref.hcl(t[1:2], [v]).sum(), s[1]),
        rtol=1e-3, atol=1e-6)


def staged_cnn(widths, name):
    """A CNN with stages ``{name}_s1`` (8×8), ``_s2`` (4×4) and a pooled
    ``_pool``."""
    x = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(widths[0], 3, padding="same", activation="relu",
                            name=f"{name}_s1")(x)
    h = keras.layers.Conv2D(widths[1], 3, strides=2, padding="same",
                            activation="relu", name=f"{name}_s2")(h)
    h = keras.layers.GlobalAveragePooling2D(name=f"{name}_pool")(h)
    return keras.Model(x, keras.layers.Dense(10)(h), name=name)


def fusion_params(fusion):
    p = {"conv1": to_numpy(fusion.conv1.kernel),
         "bn1": [to_numpy(w) for w in fusion.bn1.weights],
         "conv2": to_numpy(fusion.conv2.kernel),
         "bn2": [to_numpy(w) for w in fusion.bn2.weights]}
    if fusion.attention is not None:
        p["att_kernel"] = to_numpy(fusion.attention.kernel)
        p["att_bias"] = to_numpy(fusion.attention.bias)
    return p


def test_reviewkd_in_distiller_matches_numpy_grads_and_saves(sparse_ce,
                                                             tmp_path):
    teacher, student = staged_cnn((6, 8), "teacher"), staged_cnn((3, 4),
                                                                 "student")
    layers = ("_s1", "_s2", "_pool")
    review = obj.ReviewKD([f"teacher{n}" for n in layers],
                          [f"student{n}" for n in layers], mid_channels=5)
    distiller = kd.Distiller(teacher=teacher, student=student)
    distiller.compile(optimizer="sgd", loss=sparse_ce, alpha=1.0,
                      distillation_loss=None, feature_losses=[review])
    x, y = images(seed=4)
    # random BN statistics, so that the reference checks them
    rng = np.random.default_rng(5)
    for fusion in review.fusions:
        for bn in (fusion.bn1, fusion.bn2):
            bn.moving_mean.assign(rng.normal(size=bn.moving_mean.shape))
            bn.moving_variance.assign(rng.random(bn.moving_variance.shape)
                                      + 0.5)
    t_maps = [features(teacher, f"teacher{n}", x) for n in layers]
    s_maps = [features(student, f"student{n}", x) for n in layers]
    t_maps[2], s_maps[2] = t_maps[2][:, None, None], s_maps[2][:, None, None]
    params = [fusion_params(f) for f in review.fusions]
    logs = distiller.evaluate(x, y, batch_size=8, verbose=0, return_dict=True)
    np.testing.assert_allclose(logs["reviewkd_loss"],
                               ref.reviewkd(t_maps, s_maps, params).mean(),
                               rtol=1e-4)
    assert review.fusions[0].attention is not None
    assert review.fusions[2].attention is None   # the deepest: no fusion

    teacher_before = [to_numpy(w) for w in teacher.weights]
    abf_before = [to_numpy(w) for f in review.fusions
                  for w in f.trainable_weights]
    distiller.fit(x, y, batch_size=8, epochs=1, verbose=0)
    for a, w in zip(teacher_before, teacher.weights):
        np.testing.assert_array_equal(a, to_numpy(w))
    abf_after = [to_numpy(w) for f in review.fusions
                 for w in f.trainable_weights]
    assert all(not np.allclose(a, b) for a, b in zip(abf_before, abf_after))
    abf_ids = {id(w) for f in review.fusions for w in f.trainable_weights}
    assert abf_ids <= trainable_ids(distiller)
    assert not abf_ids & trainable_ids(student)

    loaded = save_and_load(distiller, tmp_path)
    for a, b in zip(review.fusions, loaded.feature_objectives[0].fusions):
        for wa, wb in zip(a.weights, b.weights):
            np.testing.assert_array_equal(to_numpy(wa), to_numpy(wb))
    np.testing.assert_allclose(
        loaded.evaluate(x, y, batch_size=8, verbose=0)[0],
        distiller.evaluate(x, y, batch_size=8, verbose=0)[0], rtol=1e-5)
    with pytest.raises(ValueError, match="as many"):
        obj.ReviewKD(["a", "b"], ["c"])


# ----------------------------------------------------------------------
# FT
# ----------------------------------------------------------------------
def blocks_of(sequential):
    convs = [l for l in sequential.layers if hasattr(l, "kernel")]
    bns = [l for l in sequential.layers
           if isinstance(l, keras.layers.BatchNormalization)]
    return [(to_numpy(c.kernel), to_numpy(c.bias),
             [to_numpy(w) for w in bn.weights]) for c, bn in zip(convs, bns)]


def test_ft_loss_matches_numpy():
    rng = np.random.default_rng(6)
    t = rng.normal(size=(3, 2, 2, 4)).astype("float32")
    s = rng.normal(size=(3, 2, 2, 4)).astype("float32")
    np.testing.assert_allclose(to_numpy(obj.ft_loss(t, s)), ref.ft(t, s),
                               rtol=1e-5)
    g = backend_grad(lambda v: ops.sum(obj.ft_loss(t, v)), s)
    np.testing.assert_allclose(
        g, numeric_grad(lambda v: ref.ft(t, v).sum(), s), rtol=1e-3,
        atol=1e-6)


def test_ft_pretrain_distil_and_save(sparse_ce, tmp_path):
    teacher, student = cnn(6, "teacher"), cnn(3, "student")
    ft = obj.FT("teacher_conv2", "student_conv2", weight=500.0)
    x, y = images(16, seed=7)
    obj.pretrain_paraphraser(ft, teacher, x, epochs=1, batch_size=8)
    assert ft.encoder.layers[-3].filters == 3   # 0.5 · 6 channels
    trained = [to_numpy(w) for w in ft.encoder.weights]
    fresh = obj.FT("teacher_conv2", "student_conv2")
    fresh.build_paraphraser((None, 8, 8, 6))
    assert not all(np.allclose(a, to_numpy(b)) for a, b in zip(
        trained, fresh.encoder.weights))
    assert not ft.encoder.trainable

    distiller = kd.Distiller(teacher=teacher, student=student)
    distiller.compile(optimizer="sgd", loss=sparse_ce, alpha=1.0,
                      distillation_loss=None, feature_losses=[ft])
    factor = ref.conv_blocks(features(teacher, "teacher_conv2", x),
                             blocks_of(ft.encoder))
    translated = ref.conv_blocks(features(student, "student_conv2", x),
                                 blocks_of(ft.translator))
    logs = distiller.evaluate(x, y, batch_size=16, verbose=0,
                              return_dict=True)
    np.testing.assert_allclose(logs["ft_loss"],
                               ref.ft(factor, translated).mean(), rtol=1e-4)

    frozen = [to_numpy(w) for w in teacher.weights + ft.encoder.weights]
    translator = [to_numpy(w) for w in ft.translator.trainable_weights]
    distiller.fit(x, y, batch_size=16, epochs=1, verbose=0)
    for a, w in zip(frozen, teacher.weights + ft.encoder.weights):
        np.testing.assert_array_equal(a, to_numpy(w))
    # every kernel moves (a conv bias before BatchNorm gets no gradient)
    assert all(not np.allclose(a, to_numpy(w)) for a, w in zip(
        translator, ft.translator.trainable_weights) if a.ndim == 4)
    ids = {id(w) for w in ft.translator.trainable_weights}
    assert ids <= trainable_ids(distiller) and not ids & trainable_ids(
        student)

    loaded = save_and_load(distiller, tmp_path).feature_objectives[0]
    for a, b in zip(ft.encoder.weights + ft.translator.weights,
                    loaded.encoder.weights + loaded.translator.weights):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))
    assert not loaded.encoder.trainable
    with pytest.raises(TypeError, match="FT"):
        obj.pretrain_paraphraser(obj.FitNet("a", "b"), teacher, x)
    small = obj.FT("teacher_conv2", "student_conv2")
    with pytest.raises(ValueError, match="resize=True"):
        small.build_for((None, 8, 8, 6), (None, 4, 4, 3))
    small = obj.FT("teacher_conv2", "student_conv2", resize=True)
    small.build_for((None, 8, 8, 6), (None, 4, 4, 3))
    assert tuple(small.compute(np.ones((2, 8, 8, 6), "float32"),
                               np.ones((2, 4, 4, 3), "float32")).shape) == (2,)


def test_multi_layer_objective_with_cached_teacher_features(sparse_ce):
    """The soft-label cache stores the tapped teacher layers in order, and a
    multi-layer objective gets its own back, as with a live teacher."""
    from keras_kd.soft_labels import compute_soft_labels

    teacher, student = cnn(6, "teacher"), cnn(6, "student")
    fsp = obj.FSP([("teacher_conv1", "teacher_conv2")],
                  [("student_conv1", "student_conv2")])
    hint = kd.FitNet("teacher_conv1", "student_conv1", name="hint")
    distiller = kd.Distiller(teacher=teacher, student=student)
    distiller.compile(optimizer="sgd", loss=sparse_ce, alpha=1.0,
                      distillation_loss=None, feature_losses=[fsp, hint])
    x, y = images(16, seed=8)
    live = distiller.evaluate(x, y, batch_size=8, verbose=0,
                              return_dict=True)
    with pytest.raises(ValueError, match="teacher_conv1', 'teacher_conv2', "
                                         "'teacher_conv1'"):
        compute_soft_labels(teacher, x, y, feature_layers=[
            "teacher_conv1"]).as_dataset(8, distiller=distiller)
    cache = compute_soft_labels(teacher, x, y, feature_layers=[
        "teacher_conv1", "teacher_conv2", "teacher_conv1"])
    cached = distiller.evaluate(cache.as_dataset(8, distiller=distiller),
                                verbose=0, return_dict=True)
    for key in ("fsp_loss", "hint_loss"):
        np.testing.assert_allclose(cached[key], live[key], rtol=1e-5)
