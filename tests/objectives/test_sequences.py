"""Token-level (sequence / LM) objectives against float64 NumPy references."""

import math

import keras
import numpy as np
import pytest
from keras import ops

from keras_kd.objectives import sequences as seq
from tests.helpers import backend_grad, numeric_grad, to_numpy
from tests.references import (forward_kl as np_forward_kl, gjsd as np_gjsd,
                              reverse_kl as np_reverse_kl,
                              skew_kl as np_skew_kl,
                              skew_reverse_kl as np_skew_reverse_kl,
                              softmax as np_softmax, support as np_support)

BACKEND = keras.backend.backend()


# (id, our function with its parameter, the reference with the same one)
CASES = [
    ("forward_kl", seq.forward_kl, np_forward_kl, {}),
    ("reverse_kl", seq.reverse_kl, np_reverse_kl, {}),
    ("gkd_0.1", seq.generalized_jsd, np_gjsd, {"beta": 0.1}),
    ("gkd_0.5", seq.generalized_jsd, np_gjsd, {"beta": 0.5}),
    ("gkd_0.9", seq.generalized_jsd, np_gjsd, {"beta": 0.9}),
    ("skew_kl", seq.skew_kl, np_skew_kl, {"alpha": 0.1}),
    ("skew_kl_0.4", seq.skew_kl, np_skew_kl, {"alpha": 0.4}),
    ("skew_reverse_kl", seq.skew_reverse_kl, np_skew_reverse_kl,
     {"alpha": 0.1}),
]
CASE_IDS = [c[0] for c in CASES]
FUNCTIONS = [seq.forward_kl, seq.reverse_kl, seq.generalized_jsd,
             seq.skew_kl, seq.skew_reverse_kl]


def logits_pair(shape, seed, scale=2.0):
    rng = np.random.default_rng(seed)
    return [(scale * rng.normal(size=shape)).astype("float32")
            for _ in range(2)]


def call(fn, t, s, params, T, **trunc):
    return to_numpy(fn(t, s, temperature=T, **trunc, **params))


def ref(np_fn, t, s, params, T, **trunc):
    return np_fn(t, s, *params.values(), T=T, **trunc)


# ----------------------------------------------------------------------
# Values, any rank
# ----------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(4, 7), (3, 5, 11), (2, 3, 2, 6)],
                         ids=["rank2", "rank3", "rank4"])
@pytest.mark.parametrize("T", [1.0, 2.0])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_matches_numpy(case, T, shape):
    _, fn, np_fn, params = case
    t, s = logits_pair(shape, seed=len(shape))
    got = call(fn, t, s, params, T)
    assert got.shape == shape[:-1] and got.dtype == np.float32
    np.testing.assert_allclose(got, ref(np_fn, t, s, params, T),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_any_input_dtype_gives_float32(dtype):
    t, s = logits_pair((2, 3, 7), seed=20)
    t16 = ops.cast(t, dtype)
    s16 = ops.cast(s, dtype)
    for fn in FUNCTIONS:
        got = to_numpy(fn(t16, s16, temperature=2.0))
        assert got.dtype == np.float32 and got.shape == (2, 3)
    # The math itself is float32: same result as float32 inputs rounded alike.
    t_r = to_numpy(ops.cast(t16, "float32"))
    s_r = to_numpy(ops.cast(s16, "float32"))
    np.testing.assert_allclose(to_numpy(seq.forward_kl(t16, s16, 2.0)),
                               np_forward_kl(t_r, s_r, 2.0), rtol=1e-5,
                               atol=1e-6)


def test_temperature_scales_by_t_squared():
    t, s = logits_pair((3, 4, 9), seed=21)
    for fn in FUNCTIONS:
        np.testing.assert_allclose(to_numpy(fn(t, s, temperature=3.0)),
                                   9.0 * to_numpy(fn(t / 3.0, s / 3.0)),
                                   rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("make_T", [
    lambda: ops.convert_to_tensor(2.0),
    lambda: keras.Variable(2.0, trainable=False),
], ids=["tensor", "variable"])
def test_tensor_temperature(make_T):
    t, s = logits_pair((2, 5, 8), seed=22)
    for _, fn, np_fn, params in CASES:
        got = to_numpy(fn(t, s, temperature=make_T(), **params))
        np.testing.assert_allclose(got, ref(np_fn, t, s, params, 2.0),
                                   rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------
# Special cases and properties
# ----------------------------------------------------------------------
def test_end_points_are_the_plain_divergences():
    t, s = logits_pair((3, 5, 11), seed=30)
    for T in (1.0, 2.0):
        fwd = to_numpy(seq.forward_kl(t, s, T))
        rev = to_numpy(seq.reverse_kl(t, s, T))
        np.testing.assert_array_equal(
            to_numpy(seq.generalized_jsd(t, s, beta=0.0, temperature=T)), fwd)
        np.testing.assert_array_equal(
            to_numpy(seq.generalized_jsd(t, s, beta=1.0, temperature=T)), rev)
        np.testing.assert_array_equal(
            to_numpy(seq.skew_kl(t, s, alpha=0.0, temperature=T)), fwd)
        np.testing.assert_array_equal(
            to_numpy(seq.skew_reverse_kl(t, s, alpha=0.0, temperature=T)),
            rev)
        np.testing.assert_allclose(fwd, np_forward_kl(t, s, T), rtol=1e-5)
        np.testing.assert_allclose(rev, np_reverse_kl(t, s, T), rtol=1e-5)
    # The special case is a jump: just inside (0, 1) the mixture formula
    # gives a loss that vanishes with beta, unlike the end point.
    small = to_numpy(seq.generalized_jsd(t, s, beta=1e-3))
    np.testing.assert_allclose(small, np_gjsd(t, s, 1e-3), rtol=1e-3,
                               atol=1e-6)
    assert np.all(small < 0.01 * fwd)


def test_swapping_teacher_and_student():
    """Identities that tie the directions together (no reference needed)."""
    t, s = logits_pair((3, 5, 11), seed=31)
    np.testing.assert_allclose(to_numpy(seq.reverse_kl(t, s, 2.0)),
                               to_numpy(seq.forward_kl(s, t, 2.0)),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        to_numpy(seq.generalized_jsd(t, s, beta=0.5)),
        to_numpy(seq.generalized_jsd(s, t, beta=0.5)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        to_numpy(seq.generalized_jsd(t, s, beta=0.2)),
        to_numpy(seq.generalized_jsd(s, t, beta=0.8)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        to_numpy(seq.skew_kl(t, s, alpha=0.3)),
        to_numpy(seq.skew_reverse_kl(s, t, alpha=0.3)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("trunc", [{}, {"top_k": 3}, {"top_p": 0.8}],
                         ids=["full", "top_k", "top_p"])
def test_zero_for_identical_and_nonnegative(trunc):
    t, s = logits_pair((4, 6, 13), seed=32, scale=5.0)
    for _, fn, _, params in CASES:
        for T in (1.0, 2.0):
            same = call(fn, t, t, params, T, **trunc)
            np.testing.assert_allclose(same, 0.0, atol=1e-6)
            loss = call(fn, t, s, params, T, **trunc)
            assert np.all(loss >= -1e-6)
            if not trunc:   # (a truncation to one class gives exactly 0)
                assert np.all(loss > 1e-4)


# ----------------------------------------------------------------------
# Truncation of the teacher's distribution
# ----------------------------------------------------------------------
TRUNCATIONS = [{"top_k": 1}, {"top_k": 3}, {"top_k": 7}, {"top_p": 0.3},
               {"top_p": 0.7}, {"top_p": 0.95}, {"top_k": 4, "top_p": 0.8},
               {"top_k": 2, "top_p": 0.99}]


@pytest.mark.parametrize("trunc", TRUNCATIONS,
                         ids=lambda d: "-".join(f"{k}{v}"
                                               for k, v in d.items()))
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_truncation_matches_numpy(case, trunc):
    _, fn, np_fn, params = case
    t, s = logits_pair((3, 5, 11), seed=40)
    T = 2.0
    expected = ref(np_fn, t, s, params, T, **trunc)
    got = call(fn, t, s, params, T, **trunc)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    if trunc != {"top_k": 1}:   # the truncation really changes the loss
        full = ref(np_fn, t, s, params, T)
        assert np.max(np.abs(full - expected)) > 1e-3


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_truncation_rank2_and_rank4(case):
    _, fn, np_fn, params = case
    for shape in [(6, 9), (2, 3, 2, 9)]:
        t, s = logits_pair(shape, seed=41)
        for trunc in ({"top_k": 4}, {"top_p": 0.6}):
            np.testing.assert_allclose(
                call(fn, t, s, params, 1.0, **trunc),
                ref(np_fn, t, s, params, 1.0, **trunc), rtol=1e-5, atol=1e-6)


def test_support_counts():
    """The nucleus really is the shortest prefix reaching top_p."""
    t, _ = logits_pair((3, 5, 11), seed=42)
    p = np_softmax(t)
    for top_p in (0.3, 0.7, 0.95):
        mask = np_support(p, top_p=top_p)
        kept = np.sort(np.where(mask, p, 0.0), axis=-1)[..., ::-1]
        n = mask.sum(-1)
        total = kept.sum(-1)
        without_last = total - kept[np.arange(3)[:, None], np.arange(5),
                                    n - 1]
        assert np.all(total >= top_p) and np.all(without_last < top_p)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_no_truncation_when_everything_is_kept(case):
    _, fn, _, params = case
    t, s = logits_pair((3, 5, 11), seed=43)
    full = call(fn, t, s, params, 2.0)
    for trunc in ({"top_k": 11}, {"top_k": 50}, {"top_p": 1.0},
                  {"top_k": 11, "top_p": 1.0}):
        np.testing.assert_array_equal(call(fn, t, s, params, 2.0, **trunc),
                                      full)


def test_top1_and_top2_known_values():
    t = np.array([[3.0, 1.0, 0.0, -2.0]], "float32")
    s = np.array([[0.0, 1.0, 2.0, 3.0]], "float32")
    # p = softmax(t) ≈ [0.839, 0.114, 0.042, 0.006]: top_p=0.8 keeps the top
    # class only, where p̃ = q̃ = 1 and every divergence is exactly 0 (the
    # untruncated forward KL would be large).
    for _, fn, _, params in CASES:
        for trunc in ({"top_p": 0.8}, {"top_k": 1}):
            np.testing.assert_allclose(call(fn, t, s, params, 1.0, **trunc),
                                       [0.0], atol=1e-7)
    assert float(to_numpy(seq.forward_kl(t, s))[0]) > 1.0
    # top_k=2 and top_p=0.9 both keep {0, 1}: binary KL between
    # p̃ = [σ(2), σ(−2)] and q̃ = [σ(−1), σ(1)], written by hand.
    sig = lambda x: 1.0 / (1.0 + math.exp(-x))  # noqa: E731
    a, b = sig(2.0), sig(-1.0)
    fwd = a * math.log(a / b) + (1 - a) * math.log((1 - a) / (1 - b))
    rev = b * math.log(b / a) + (1 - b) * math.log((1 - b) / (1 - a))
    for trunc in ({"top_k": 2}, {"top_p": 0.9}):
        np.testing.assert_allclose(to_numpy(seq.forward_kl(t, s, **trunc)),
                                   [fwd], rtol=1e-5)
        np.testing.assert_allclose(to_numpy(seq.reverse_kl(t, s, **trunc)),
                                   [rev], rtol=1e-5)


def test_ties_at_the_cut_are_kept():
    s = np.array([[0.3, -0.2, 0.5, 1.0]], "float32")
    # top_k=2 with three classes tied at the top keeps all three.
    t = np.array([[1.0, 1.0, 1.0, 0.0]], "float32")
    np.testing.assert_allclose(to_numpy(seq.forward_kl(t, s, top_k=2)),
                               np_forward_kl(t[:, :3], s[:, :3]), rtol=1e-5)
    # p ≈ [0.53, 0.20, 0.20, 0.07]: the nucleus of 0.6 needs one of the two
    # tied classes; both are kept.
    t = np.array([[2.0, 1.0, 1.0, 0.0]], "float32")
    np.testing.assert_allclose(to_numpy(seq.forward_kl(t, s, top_p=0.6)),
                               np_forward_kl(t[:, :3], s[:, :3]), rtol=1e-5)


def test_student_mass_outside_the_support_is_ignored():
    """q̃ is renormalised: the student's logits off the support don't count."""
    t, s = logits_pair((3, 5, 11), seed=44)
    p = np_softmax(t)
    outside = ~np_support(p, top_k=3)
    s2 = np.where(outside, s + 10.0 * np.sign(s), s).astype("float32")
    for fn in FUNCTIONS:
        np.testing.assert_allclose(to_numpy(fn(t, s2, top_k=3)),
                                   to_numpy(fn(t, s, top_k=3)), rtol=1e-5,
                                   atol=1e-6)


# ----------------------------------------------------------------------
# Compiled execution
# ----------------------------------------------------------------------
class _LossLayer(keras.layers.Layer):
    def __init__(self, fn, kwargs, **layer_kwargs):
        super().__init__(**layer_kwargs)
        self.fn, self.kwargs = fn, kwargs

    def call(self, t, s):
        return self.fn(t, s, **self.kwargs)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_runs_in_a_compiled_predict(case):
    """model.predict: tf.function (+XLA) on TF, jax.jit on JAX; batch None."""
    _, fn, np_fn, params = case
    kwargs = dict(params, temperature=2.0, top_k=6, top_p=0.9)
    t_in, s_in = keras.Input((5, 11)), keras.Input((5, 11))
    model = keras.Model([t_in, s_in],
                        _LossLayer(fn, kwargs)(t_in, s_in))
    assert tuple(model.output.shape) == (None, 5)
    t, s = logits_pair((4, 5, 11), seed=50)
    got = model.predict([t, s], batch_size=2, verbose=0)
    np.testing.assert_allclose(
        got, ref(np_fn, t, s, params, 2.0, top_k=6, top_p=0.9), rtol=1e-5,
        atol=1e-6)


def test_runs_under_the_backend_jit():
    t, s = logits_pair((3, 5, 11), seed=51)

    def loss(t, s):
        return ops.stack([
            seq.forward_kl(t, s, 2.0, top_k=5, top_p=0.9),
            seq.reverse_kl(t, s, 2.0, top_k=5),
            seq.generalized_jsd(t, s, 0.5, 2.0, top_p=0.9),
            seq.skew_kl(t, s, 0.1, 2.0, top_k=5, top_p=0.9),
            seq.skew_reverse_kl(t, s, 0.1, 2.0, top_p=0.9)])

    if BACKEND == "jax":
        import jax
        compiled = jax.jit(loss)
    elif BACKEND == "tensorflow":
        import tensorflow as tf
        compiled = tf.function(loss, jit_compile=True)
    else:
        import torch
        # Whole-graph capture fails on any data-dependent Python control flow.
        compiled = torch.compile(loss, backend="eager", fullgraph=True)
    tt, st = ops.convert_to_tensor(t), ops.convert_to_tensor(s)
    got = to_numpy(compiled(tt, st))
    np.testing.assert_allclose(got, to_numpy(loss(tt, st)), rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(got[0], np_forward_kl(t, s, 2.0, top_k=5,
                                                     top_p=0.9), rtol=1e-5)


# ----------------------------------------------------------------------
# Gradients
# ----------------------------------------------------------------------
@pytest.mark.parametrize("trunc", [{}, {"top_k": 3, "top_p": 0.9}],
                         ids=["full", "truncated"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_gradient_matches_finite_differences(case, trunc):
    _, fn, np_fn, params = case
    t, s = logits_pair((2, 2, 5), seed=60)
    w = np.linspace(0.5, 1.5, 4).reshape(2, 2)
    w_t = ops.convert_to_tensor(w, "float32")
    got = backend_grad(
        lambda v: ops.sum(fn(t, v, temperature=2.0, **trunc, **params) * w_t),
        s)
    expected = numeric_grad(
        lambda v: np.sum(ref(np_fn, t, v, params, 2.0, **trunc) * w), s)
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("trunc", [{}, {"top_k": 2}, {"top_p": 0.5}],
                         ids=["full", "top_k", "top_p"])
def test_extreme_logits_stay_finite(trunc):
    rng = np.random.default_rng(61)
    t = (50.0 * np.sign(rng.normal(size=(2, 3, 7)))).astype("float32")
    s = (-t + rng.normal(size=t.shape)).astype("float32")
    s[0, 0] = t[0, 0]                       # a perfect match too
    for _, fn, _, params in CASES:
        for T in (1.0, 0.5):
            values = call(fn, t, s, params, T, **trunc)
            assert np.all(np.isfinite(values)) and np.all(values >= -1e-4)
            grad = backend_grad(
                lambda v: ops.sum(fn(t, v, temperature=T, **trunc, **params)),
                s)
            assert np.all(np.isfinite(grad)), (fn.__name__, params, T)


# ----------------------------------------------------------------------
# Classes
# ----------------------------------------------------------------------
CLASS_CASES = [
    (seq.ForwardKL, {}, seq.forward_kl),
    (seq.ReverseKL, {}, seq.reverse_kl),
    (seq.GeneralizedJSD, {"beta": 0.9}, seq.generalized_jsd),
    (seq.SkewKL, {"alpha": 0.2}, seq.skew_kl),
    (seq.SkewReverseKL, {"alpha": 0.3}, seq.skew_reverse_kl),
]


@pytest.mark.parametrize("cls,params,_fn", CLASS_CASES,
                         ids=[c[0].__name__ for c in CLASS_CASES])
def test_config_round_trip(cls, params, _fn):
    kwargs = dict(params, temperature=2.0, top_k=20, top_p=0.95, weight=0.5)
    instance = cls(**kwargs)
    config = instance.get_config()
    assert set(config) == set(kwargs) | {"name"}
    for key, value in kwargs.items():
        assert config[key] == value
    assert cls.from_config(config).get_config() == config
    clone = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(instance))
    assert type(clone) is cls and clone.get_config() == config
    # Defaults: every option off, the Distiller's temperature.
    default = cls().get_config()
    assert default["temperature"] is None and default["top_k"] is None
    assert default["top_p"] is None and default["weight"] == 1.0


def test_registry_dict_and_default_names():
    assert seq.SEQUENCE_OBJECTIVES == {
        "forward_kl": seq.ForwardKL, "reverse_kl": seq.ReverseKL,
        "gkd": seq.GeneralizedJSD, "skew_kl": seq.SkewKL,
        "skew_reverse_kl": seq.SkewReverseKL}
    for name, cls in seq.SEQUENCE_OBJECTIVES.items():
        instance = cls()
        assert instance.name == name and instance.kind == "logits"
        assert not instance.needs_labels
    assert seq.GeneralizedJSD().beta == 0.5
    assert seq.SkewKL().alpha == 0.1 and seq.SkewReverseKL().alpha == 0.1


@pytest.mark.parametrize("cls,params,fn", CLASS_CASES,
                         ids=[c[0].__name__ for c in CLASS_CASES])
def test_class_compute_uses_its_options(cls, params, fn):
    t, s = logits_pair((2, 4, 9), seed=70)
    y = np.zeros((2, 4), "int32")
    # temperature=None follows the Distiller's temperature.
    follows = cls(top_k=5, **params)
    np.testing.assert_allclose(
        to_numpy(follows.compute(t, s, y, temperature=3.0)),
        to_numpy(fn(t, s, temperature=3.0, top_k=5, **params)), rtol=1e-6)
    assert to_numpy(follows.compute(t, s)).shape == (2, 4)   # T = 1 default
    np.testing.assert_allclose(
        to_numpy(follows.compute(t, s)),
        to_numpy(fn(t, s, temperature=1.0, top_k=5, **params)), rtol=1e-6)
    # Its own temperature overrides it.
    fixed = cls(temperature=2.0, top_p=0.7, **params)
    np.testing.assert_allclose(
        to_numpy(fixed.compute(t, s, temperature=9.0)),
        to_numpy(fn(t, s, temperature=2.0, top_p=0.7, **params)), rtol=1e-6)


# ----------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------
T2 = np.zeros((2, 3, 5), "float32")
TEMPERATURE_ERROR = (r"temperature must be (a finite number )?> 0"
                     r".*temperature=4")


@pytest.mark.parametrize("make,match", [
    (lambda: seq.ForwardKL(top_k=0),
     r"top_k must be an integer >= 1.*top_k=50"),
    (lambda: seq.ReverseKL(top_k=2.5), "top_k must be an integer >= 1"),
    (lambda: seq.SkewKL(top_k=True), "top_k must be an integer >= 1"),
    (lambda: seq.ForwardKL(top_p=0.0), r"0 < top_p <= 1.*top_p=0.95"),
    (lambda: seq.GeneralizedJSD(top_p=1.5), r"0 < top_p <= 1"),
    (lambda: seq.GeneralizedJSD(beta=-0.1), r"0 <= beta <= 1.*beta in"),
    (lambda: seq.GeneralizedJSD(beta=1.2), r"0 <= beta <= 1"),
    (lambda: seq.GeneralizedJSD(beta="0.5"), r"0 <= beta <= 1"),
    (lambda: seq.SkewKL(alpha=1.0), r"0 <= alpha < 1.*alpha=0.1"),
    (lambda: seq.SkewReverseKL(alpha=-0.1), r"0 <= alpha < 1"),
    (lambda: seq.ForwardKL(temperature=0.0), TEMPERATURE_ERROR),
    (lambda: seq.SkewKL(temperature=-2), TEMPERATURE_ERROR),
    (lambda: seq.ReverseKL(weight=-1.0), r"weight must be a (finite )?number"),
    (lambda: seq.forward_kl(T2, T2, top_k=0), "top_k must be an integer"),
    (lambda: seq.reverse_kl(T2, T2, top_p=-0.5), r"0 < top_p <= 1"),
    (lambda: seq.generalized_jsd(T2, T2, beta=2.0), r"0 <= beta <= 1"),
    (lambda: seq.skew_kl(T2, T2, alpha=1.0), r"0 <= alpha < 1"),
    (lambda: seq.skew_reverse_kl(T2, T2, alpha=1.5), r"0 <= alpha < 1"),
    (lambda: seq.forward_kl(T2, T2, temperature=0.0),
     TEMPERATURE_ERROR),
    # (#25) strings and NaN name the argument and a valid value
    (lambda: seq.ForwardKL(top_p="abc"), r"top_p must be a number.*'abc'"),
    (lambda: seq.reverse_kl(T2, T2, top_p="abc"), r"top_p must be.*0.95"),
    (lambda: seq.skew_kl(T2, T2, top_p=float("nan")), r"top_p must be"),
    (lambda: seq.SkewKL(top_k="abc"), r"top_k must be an integer.*'abc'"),
    (lambda: seq.generalized_jsd(T2, T2, top_k="5"), r"top_k must be"),
])
def test_bad_options_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("fn", FUNCTIONS, ids=lambda f: f.__name__)
def test_several_teachers_raise(fn):
    with pytest.raises(ValueError, match=r"Use one teacher, or the 'kd' "
                                         r"objective for multi-teacher"):
        fn([T2, T2], T2)
    with pytest.raises(ValueError, match="single teacher"):
        seq.GeneralizedJSD().compute((T2, T2), T2)


def test_vocabulary_mismatch_raises():
    with pytest.raises(ValueError, match="same vocabulary"):
        seq.forward_kl(np.zeros((2, 3, 7)), np.zeros((2, 3, 5)))
