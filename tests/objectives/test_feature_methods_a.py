"""Single-pair feature methods (NST, ICKD, CCKD, AB, OFD, VID, MGD, PAD-L2,
SRD) against independent NumPy references, their gradients, and their state
through a Distiller's `.keras` save and load."""

import os

import keras
import numpy as np
import pytest
from keras import ops

import keras_kd as kd
from keras_kd import objectives as obj
from tests import references_features_a as ref
from tests.helpers import backend_grad, cnn, layer_features, to_numpy

RNG = np.random.default_rng(0)
T4 = RNG.normal(size=(3, 4, 4, 6)).astype("float32")
S4 = RNG.normal(size=(3, 4, 4, 2)).astype("float32")
T3 = RNG.normal(size=(3, 7, 5)).astype("float32")
S3 = RNG.normal(size=(3, 7, 3)).astype("float32")


def close(got, expected, rtol=1e-4, atol=1e-6):
    np.testing.assert_allclose(to_numpy(got), expected, rtol=rtol, atol=atol)


# -- values against the references ------------------------------------------

@pytest.mark.parametrize("t, s", [(T4, S4), (T3, S3)])
def test_nst_matches_numpy(t, s):
    close(obj.nst_loss(t, s), ref.nst(t, s))
    assert to_numpy(obj.nst_loss(t, s)).shape == (3,)


@pytest.mark.parametrize("t, s", [(T4, T4[..., ::-1] + S4[..., :1]),
                                  (T3, T3 * 0.5 + 0.1)])
def test_ickd_matches_numpy(t, s):
    close(obj.ickd_loss(t, s), ref.ickd(t, s))
    with pytest.raises(ValueError, match="channels"):
        obj.ickd_loss(T4, S4)


@pytest.mark.parametrize("kernel, gamma, order", [("gaussian", 0.4, 2),
                                                  ("gaussian", 1.0, 4),
                                                  ("bilinear", 0.4, 2)])
def test_cckd_matches_numpy(kernel, gamma, order):
    t, s = RNG.normal(size=(5, 8)), RNG.normal(size=(5, 3))
    close(obj.cckd_loss(t, s, kernel, gamma, order),
          ref.cckd(t, s, kernel, gamma, order))
    close(obj.cckd_loss(T4, S4), ref.cckd(T4, S4))  # maps are flattened


@pytest.mark.parametrize("margin", [1.0, 0.5])
def test_ab_matches_numpy(margin):
    s = RNG.normal(size=T4.shape).astype("float32")
    close(obj.ab_loss(T4, s, margin), ref.ab(T4, s, margin))


def test_ofd_margin_and_loss_match_numpy():
    gamma, beta = [1.0, 0.5, 2.0, 0.1], [0.0, -0.3, 1.5, 1.0]
    margin = obj.ofd_margin(gamma, beta)
    np.testing.assert_allclose(margin, ref.ofd_margin(gamma, beta),
                               rtol=1e-5, atol=1e-7)
    assert margin[3] == pytest.approx(-0.3)  # P(x < 0) < 0.001: −3|γ|
    t = RNG.normal(size=(3, 5, 4)).astype("float32")
    s = RNG.normal(size=(3, 5, 4)).astype("float32")
    close(obj.ofd_loss(t, s, margin), ref.ofd(t, s, margin))
    close(obj.ofd_loss(t, s, -0.5), ref.ofd(t, s, -0.5))


def test_vid_matches_numpy():
    mean = RNG.normal(size=T4.shape).astype("float32")
    var = RNG.uniform(0.5, 2.0, size=(6,)).astype("float32")
    close(obj.vid_loss(T4, mean, var), ref.vid(T4, mean, var))


def test_mgd_pad_srd_match_numpy():
    g = RNG.normal(size=T4.shape).astype("float32")
    close(obj.mgd_loss(T4, g), ref.mgd(T4, g))
    t, s, v = (RNG.normal(size=(4, 6)).astype("float32") for _ in range(3))
    close(obj.pad_l2_loss(t, s, v), ref.pad_l2(t, s, v))
    w, b = RNG.normal(size=(6, 5)), RNG.normal(size=(5,))
    for args in ((1.0, 1.0, 1.0), (0.5, 2.0, 4.0), (0.0, 1.0, 2.0)):
        close(obj.srd_loss(t, s, w, b, *args), ref.srd(t, s, w, b, *args),
              rtol=2e-4)


# -- gradients: the student's side only --------------------------------------

def widen(s, t):
    """The student's first channel repeated to the teacher's shape."""
    s, t = ops.convert_to_tensor(s), ops.convert_to_tensor(t)
    return s[..., :1] * ops.ones_like(t)


GRADIENT_CASES = {
    "nst": lambda t, s: obj.nst_loss(t, s),
    "ickd": lambda t, s: obj.ickd_loss(t, widen(s, t)),
    "cckd": lambda t, s: obj.cckd_loss(t, s),
    "ab": lambda t, s: obj.ab_loss(t, widen(s, t)),
    "ofd": lambda t, s: obj.ofd_loss(t, widen(s, t), -0.5),
    "vid": lambda t, s: obj.vid_loss(t, widen(s, t), ops.ones((6,))),
    "mgd": lambda t, s: obj.mgd_loss(t, widen(s, t)),
    "pad_l2": lambda t, s: obj.pad_l2_loss(t, widen(s, t),
                                           0.1 * widen(s, t)),
    "srd": lambda t, s: obj.srd_loss(t, widen(s, t), CLASSIFIER, ops.zeros(5)),
}
CLASSIFIER = RNG.normal(size=(4 * 4 * 6, 5)).astype("float32")


@pytest.mark.parametrize("name", sorted(GRADIENT_CASES))
def test_gradient_reaches_the_student_and_never_the_teacher(name):
    fn = GRADIENT_CASES[name]
    g_s = backend_grad(lambda v: ops.sum(fn(T4, v)), S4)
    assert g_s is not None and np.all(np.isfinite(g_s))
    assert np.abs(g_s).sum() > 0
    g_t = backend_grad(lambda v: ops.sum(fn(v, S4)), T4)
    assert g_t is None or np.all(np.asarray(g_t) == 0)


@pytest.mark.parametrize("name", ["nst", "ickd", "ofd", "vid"])
def test_channels_first_maps_give_the_same_values(name):
    s = np.concatenate([S4, S4, S4], axis=-1)  # the teacher's 6 channels
    margin = list(np.linspace(-1.0, 0.0, 6))
    fn = {"nst": lambda t, v: obj.nst_loss(t, v),
          "ickd": lambda t, v: obj.ickd_loss(t, v),
          "ofd": lambda t, v: obj.ofd_loss(t, v, margin),
          "vid": lambda t, v: obj.vid_loss(t, v, np.arange(1.0, 7.0))}[name]
    expected = to_numpy(fn(T4, s))
    keras.config.set_image_data_format("channels_first")
    try:
        got = to_numpy(fn(T4.transpose(0, 3, 1, 2), s.transpose(0, 3, 1, 2)))
    finally:
        keras.config.set_image_data_format("channels_last")
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


# -- inside a Distiller: value, training, `.keras` save and load -------------

X = np.random.default_rng(1).random((6, 8, 8, 1)).astype("float32")
Y = np.random.default_rng(2).integers(0, 10, 6).astype("int32")


def adapter_np(adapter, x):
    """The numpy output of make_adapter's layer (1×1 conv + BN, or Dense)."""
    if isinstance(adapter, keras.layers.Dense):
        return ref.dense(x, *[to_numpy(w) for w in adapter.weights])
    conv, bn = adapter.layers
    gamma, beta, mean, var = [to_numpy(w) for w in bn.weights]
    return ref.batchnorm_inference(ref.dense(x, to_numpy(conv.kernel)[0, 0]),
                                   gamma, beta, mean, var, bn.epsilon)


def family(name, teacher):
    """(objectives, NumPy reference of each logged term given tapped
    features) of a family."""
    if name == "statistics":
        return [obj.NST("teacher_conv2", "student_conv2"),
                obj.ICKD("teacher_conv2", "student_conv2"),
                obj.CCKD("teacher_pool", "student_pool")], {
            "nst": lambda o, t, s: ref.nst(t, s).mean(),
            "ickd": lambda o, t, s: ref.ickd(t, adapter_np(o.adapter,
                                                           s)).mean(),
            "cckd": lambda o, t, s: ref.cckd(t, s)}
    if name == "boundaries":
        return [obj.ActivationBoundaries("teacher_bn", "student_bn"),
                obj.OFD.from_teacher(teacher, "teacher_bn", "student_bn")], {
            "ab": lambda o, t, s: ref.ab(t, adapter_np(o.adapter, s)).mean(),
            "ofd": lambda o, t, s: ref.ofd(t, adapter_np(o.adapter, s),
                                           o.margin).mean()}
    if name == "generative":
        def vid(o, t, s):
            h = s
            for i, layer in enumerate(o.regressor.layers):
                w, b = [to_numpy(v) for v in layer.weights]
                h = ref.dense(h, w[0, 0], b, relu=i < 2)
            var = ref.softplus(to_numpy(o.log_scale)) + o.eps
            return ref.vid(t, h, var).mean()

        def mgd(o, t, s):
            w, b = [to_numpy(v) for v in o.align.weights]
            h = ref.dense(s, w[0, 0], b)
            for i, layer in enumerate(o.generator.layers):
                h = ref.conv_same(h, *[to_numpy(v) for v in layer.weights],
                                  relu=i == 0)
            return ref.mgd(t, h).mean()
        return [obj.VID("teacher_conv2", "student_conv2"),
                obj.MGD("teacher_conv2", "student_conv2", seed=3)], {
            "vid": vid, "mgd": mgd}

    def pad(o, t, s):
        k, b = [to_numpy(v) for v in o.variance_estimator.layers[0].weights]
        bn = [to_numpy(v) for v in o.variance_estimator.layers[1].weights]
        v = ref.batchnorm_inference(ref.dense(s, k, b), *bn)
        return ref.pad_l2(t, adapter_np(o.adapter, s), v).mean()

    def srd(o, t, s):
        return ref.srd(t, adapter_np(o.adapter, s), to_numpy(o.kernel),
                       to_numpy(o.bias)).mean()
    return [obj.PADL2("teacher_pool", "student_pool"),
            obj.SRD.from_teacher(teacher, "teacher_pool", "student_pool",
                                 "teacher_logits")], {"pad_l2": pad,
                                                      "srd": srd}


def check_values(distiller, references):
    logs = distiller.evaluate(X, Y, batch_size=6, verbose=0,
                              return_dict=True)
    for o in distiller.feature_objectives:
        t = layer_features(distiller.teacher, o.teacher_layer, X)
        s = layer_features(distiller.student, o.student_layer, X)
        np.testing.assert_allclose(logs[f"{o.name}_loss"],
                                   references[o.name](o, t, s), rtol=2e-4,
                                   atol=1e-6, err_msg=o.name)
    return logs


# With loss=None the student's classifier gets no gradient (Keras warns).
@pytest.mark.filterwarnings("ignore:Gradients do not exist")
@pytest.mark.parametrize("name", ["statistics", "boundaries", "generative",
                                  "regression"])
def test_family_in_a_distiller_trains_and_saves(name, tmp_path):
    teacher, student = cnn(6, "teacher"), cnn(3, "student")
    teacher(X[:2]), student(X[:2])
    objectives, references = family(name, teacher)
    distiller = kd.Distiller(teacher=teacher, student=student)
    distiller.compile(optimizer=keras.optimizers.SGD(0.05), loss=None,
                      distillation_loss=None, feature_losses=objectives)
    teacher_before = [to_numpy(w).copy() for w in teacher.weights]
    student_before = to_numpy(student.get_layer("student_conv1").kernel).copy()
    aux_before = {o.name: [to_numpy(w).copy() for w in o.trainable_weights]
                  for o in objectives}
    distiller.train_on_batch(X, Y)
    # The gradient reaches the student and every trainable auxiliary part,
    # and never the teacher (weights and BatchNorm statistics unchanged).
    for a, b in zip(teacher_before, teacher.weights):
        np.testing.assert_array_equal(a, to_numpy(b))
    assert not np.allclose(
        student_before, to_numpy(student.get_layer("student_conv1").kernel))
    for o in objectives:
        for a, b in zip(aux_before[o.name], o.trainable_weights):
            assert not np.allclose(a, to_numpy(b)), (o.name, b.path)
    logs = check_values(distiller, references)

    path = os.path.join(tmp_path, f"{name}.keras")
    distiller.save(path)
    loaded = keras.models.load_model(path)
    for o, p in zip(objectives, loaded.feature_objectives):
        assert type(p) is type(o) and p.get_config() == o.get_config()
        assert len(p.weights) == len(o.weights) > 0 or name == "statistics"
        for a, b in zip(o.weights, p.weights):
            np.testing.assert_array_equal(to_numpy(a), to_numpy(b))
    again = loaded.evaluate(X, Y, batch_size=6, verbose=0, return_dict=True)
    for o in objectives:
        np.testing.assert_allclose(again[f"{o.name}_loss"],
                                   logs[f"{o.name}_loss"], rtol=1e-5)
    # The student saved alone holds none of the objectives' parts.
    assert len(loaded.student.weights) == len(student.weights)


# -- options, errors, configs ------------------------------------------------

def test_srd_copies_the_teachers_classifier_and_keeps_it_frozen():
    teacher = cnn(6, "teacher")
    srd = obj.SRD.from_teacher(teacher, "teacher_pool", "student_pool",
                               "teacher_logits")
    srd.build_for((None, 6), (None, 3))
    layer = teacher.get_layer("teacher_logits")
    np.testing.assert_array_equal(to_numpy(srd.kernel), to_numpy(layer.kernel))
    np.testing.assert_array_equal(to_numpy(srd.bias), to_numpy(layer.bias))
    assert id(srd.kernel) not in {id(w) for w in srd.trainable_weights}
    with pytest.raises(ValueError, match="Dense classifier"):
        obj.SRD.from_teacher(teacher, "teacher_pool", "s", "teacher_conv1")


def test_ofd_margin_comes_from_the_teachers_batchnorm():
    teacher = cnn(4, "teacher")
    bn = teacher.get_layer("teacher_bn")
    bn.gamma.assign(np.array([1.0, 0.5, 2.0, 0.2], "float32"))
    bn.beta.assign(np.array([0.0, 0.4, -1.0, 1.0], "float32"))
    ofd = obj.OFD.from_teacher(teacher, "teacher_bn", "student_bn")
    np.testing.assert_allclose(
        ofd.margin, ref.ofd_margin([1.0, 0.5, 2.0, 0.2], [0.0, 0.4, -1.0,
                                                          1.0]), rtol=1e-5)
    with pytest.raises(ValueError, match="BatchNormalization"):
        obj.OFD.from_teacher(teacher, "teacher_conv1", "student_bn")
    with pytest.raises(ValueError, match="from_teacher"):
        obj.OFD("teacher_bn", "student_bn")
    with pytest.raises(ValueError, match="one margin per channel"):
        obj.OFD("t", "s", margin=[0.1, 0.2]).build_for((None, 4, 4, 3),
                                                       (None, 4, 4, 2))


def test_mgd_masks_positions_only_in_training():
    mgd = obj.MGD("t", "s", mask_ratio=0.5, seed=1)
    mask = to_numpy(mgd.mask(np.ones((64, 8, 8, 5), "float32")))
    assert mask.shape == (64, 8, 8, 1) and set(np.unique(mask)) <= {0.0, 1.0}
    assert abs(mask.mean() - 0.5) < 0.03
    mgd.build_for((None, 8, 8, 5), (None, 8, 8, 5))
    assert mgd.align is None  # equal widths: no alignment layer
    t = RNG.normal(size=(2, 8, 8, 5)).astype("float32")
    s = RNG.normal(size=(2, 8, 8, 5)).astype("float32")
    evaluated = to_numpy(mgd.compute(t, s, training=False))
    close(evaluated, ref.mgd(t, to_numpy(mgd.generate(s))))
    assert not np.allclose(to_numpy(mgd.compute(t, s, training=True)),
                           evaluated)


@pytest.mark.parametrize("make, match", [
    (lambda: obj.NST("t", "s").build_for((None, 8), (None, 8)),
     "feature maps"),
    (lambda: obj.NST("t", "s").build_for((None, 4, 4, 3), (None, 2, 2, 3)),
     "resize=True"),
    (lambda: obj.CCKD("t", "s", kernel="rbf"), "kernel"),
    (lambda: obj.CCKD("t", "s", order=0), "order"),
    (lambda: obj.ActivationBoundaries("t", "s", margin=0), "margin"),
    (lambda: obj.VID("t", "s", init_variance=0.0), "init_variance"),
    (lambda: obj.MGD("t", "s", mask_ratio=1.0), "mask_ratio"),
    (lambda: obj.MGD("t", "s").build_for((None, 8), (None, 8)),
     "feature maps"),
    (lambda: obj.SRD("t", "s", classes=10).build_for((None, 4, 4, 3),
                                                     (None, 4)), "embeddings"),
    (lambda: obj.PADL2("t", "s", eps=0), "eps"),
    (lambda: obj.PADL2("t", "s").build_for((None, None, 4), (None, 8)),
     "fixed size"),
])
def test_bad_input_names_the_fix(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("objective", [
    obj.NST("t", "s", weight=50.0, resize=True),
    obj.ICKD("t", "s", adapter="auto"),
    obj.CCKD("t", "s", kernel="bilinear", gamma=0.5, order=3),
    obj.ActivationBoundaries("t", "s", margin=0.5),
    obj.OFD("t", "s", margin=[-0.5, -1.0]),
    obj.VID("t", "s", hidden=8, init_variance=3.0),
    obj.MGD("t", "s", mask_ratio=0.65, seed=4),
    obj.PADL2("t", "s", eps=1e-5),
    obj.SRD("t", "s", classes=7, temperature=2.0, softmax_weight=0.5),
], ids=lambda o: o.name)
def test_config_round_trip(objective):
    clone = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(objective))
    assert type(clone) is type(objective)
    assert clone.get_config() == objective.get_config()


# -- benchmark rows ----------------------------------------------------------

ROWS = ["NST", "ICKD", "CCKD", "AB", "OFD", "VID", "MGD", "PAD-L2", "SRD"]


def test_benchmark_rows_make_fresh_objectives_for_each_teacher():
    from tests.helpers import benchmark_module

    objectives = benchmark_module("objectives")
    rows = {name: kwargs for name, _, kwargs in objectives.configs(15)}
    teacher = objectives.conv_net("teacher", (32, 32), 64, input_shape=(40, 1))
    for name in ROWS:
        first, second = rows[name](teacher), rows[name](teacher)
        (a,), (b,) = first["feature_losses"], second["feature_losses"]
        assert type(a) is type(b) and a is not b, name
        assert first["alpha"] == 1.0 and first["distillation_loss"] is None
    srd = rows["SRD"](teacher)["feature_losses"][0]
    srd.build_for((None, 64), (None, 16))
    np.testing.assert_array_equal(
        to_numpy(srd.kernel),
        to_numpy(teacher.get_layer("teacher_logits").kernel))

