"""Token-level objectives for sequence models and language models.

The student imitates the teacher's distribution over the vocabulary at every
position. The pure functions accept logits of any rank (``(batch, classes)``,
``(batch, length, vocab)``, ``(batch, H, W, classes)``, ...), the class /
vocabulary axis being the last one, and return the loss **per position**, a
float32 tensor of shape ``logits.shape[:-1]``: the Distiller applies sample
weights and padding masks and does the reduction.

Notation: ``p = softmax(t / T)`` is the teacher's distribution, ``q =
softmax(s / T)`` the student's, ``T > 0`` the temperature (1 for language
models). Every loss is multiplied by ``T²``, as Hinton KD does, so that the
gradient scale does not depend on ``T`` (a no-op at ``T = 1``). All the math
runs in float32 on log-probabilities from ``log_softmax``; mixtures such as
``β·p + (1 − β)·q`` are formed in log space with a two-term logsumexp.

Every function can truncate the teacher's distribution first (``top_k`` /
``top_p``, see :func:`forward_kl`), as done when the teacher's logits are
stored sparsely or when its long tail is noise.
"""

import math
import numbers

import keras
from keras import ops

from keras_kd.objectives.base import Objective, check_temperature
from keras_kd.objectives.distributions import as_temperature, float32_tensor

# Logit given to the classes outside the kept support: exp() of it underflows
# to exactly 0 in float32, yet it stays finite, so gradients stay finite too.
_OUTSIDE = -1e9


# ----------------------------------------------------------------------
# Argument checks (each error names the fix)
# ----------------------------------------------------------------------
def _check_single_teacher(teacher_logits, name):
    if isinstance(teacher_logits, (list, tuple)):
        raise ValueError(
            f"{name} takes the logits of a single teacher, got a "
            f"{type(teacher_logits).__name__} of {len(teacher_logits)}. Use "
            "one teacher, or the 'kd' objective for multi-teacher "
            "distillation."
        )


def _check_top_k(top_k):
    if top_k is None:
        return None
    if (not isinstance(top_k, numbers.Integral) or isinstance(top_k, bool)
            or top_k < 1):
        raise ValueError(
            f"top_k must be an integer >= 1 or None, got {top_k!r}; pass e.g. "
            "top_k=50 to keep the teacher's 50 most probable classes, or "
            "top_k=None to keep them all."
        )
    return int(top_k)


def _check_top_p(top_p):
    if top_p is None:
        return None
    if (not isinstance(top_p, numbers.Real) or isinstance(top_p, bool)
            or not 0.0 < top_p <= 1.0):
        raise ValueError(
            f"top_p must be a number with 0 < top_p <= 1 or None, got "
            f"{top_p!r}; pass e.g. top_p=0.95 to keep the teacher's nucleus "
            "of 95% probability, or top_p=None (or 1.0) to keep every class."
        )
    return float(top_p)


def _check_fraction(name, value, hint, include_one):
    """A Python number in ``[0, 1]`` (``include_one``) or ``[0, 1)``."""
    upper_ok = (lambda v: v <= 1.0) if include_one else (lambda v: v < 1.0)
    ok = (isinstance(value, numbers.Real) and not isinstance(value, bool)
          and value >= 0.0 and upper_ok(value))
    if not ok:
        bound = "0 <= {} <= 1" if include_one else "0 <= {} < 1"
        raise ValueError(f"{name} must be a number with "
                         f"{bound.format(name)}, got {value!r}; {hint}")
    return float(value)


def _check_beta(beta):
    return _check_fraction(
        "beta", beta, "the GKD paper uses beta in {0.1, 0.5, 0.9} (beta=0 "
        "is forward KL, beta=1 reverse KL).", include_one=True)


def _check_alpha(alpha):
    return _check_fraction(
        "alpha", alpha, "DistiLLM uses alpha=0.1 (alpha=0 gives the plain "
        "KL; alpha=1 would make the loss identically 0).", include_one=False)


def _check_vocabulary(t, s):
    vt, vs = t.shape[-1], s.shape[-1]
    if vt is not None and vs is not None and vt != vs:
        raise ValueError(
            f"The teacher's logits have {vt} classes on their last axis and "
            f"the student's {vs}; token-level distillation compares the two "
            "distributions class by class. Use a teacher and a student with "
            "the same vocabulary (tokenizer), or slice the padded vocabulary "
            "of the larger one to the shared classes."
        )


# ----------------------------------------------------------------------
# Truncation of the teacher's distribution and the shared log-probabilities
# ----------------------------------------------------------------------
def _support(t, top_k, top_p):
    """Boolean mask of the classes kept from the teacher, or None (all kept).

    ``t`` holds the teacher's logits already divided by ``T``. The decisions
    made in Python depend only on the (static) options and vocabulary size,
    never on tensor values, so the function is jit-friendly.
    """
    vocab = t.shape[-1]
    mask = None
    if top_k is not None and (vocab is None or top_k < vocab):
        kth = ops.top_k(t, top_k, sorted=True)[0][..., -1:]
        mask = t >= kth                     # ties with the k-th are kept
    if top_p is not None and top_p < 1.0:
        p = ops.softmax(t, axis=-1)
        desc = ops.flip(ops.sort(p, axis=-1), axis=-1)
        cum = ops.cumsum(desc, axis=-1)
        before = ops.concatenate([ops.zeros_like(desc[..., :1]),
                                  cum[..., :-1]], axis=-1)
        # Sorted class j is kept while the mass before it is < top_p; the
        # kept ones form a prefix, so its smallest probability is a threshold.
        # (ops.amin rather than ops.min: the latter breaks torch.compile.)
        threshold = ops.amin(ops.where(before < top_p, desc, 2.0), axis=-1,
                             keepdims=True)
        nucleus = p >= threshold            # ties with the threshold are kept
        mask = nucleus if mask is None else ops.logical_and(mask, nucleus)
    return mask


def _log_probs(teacher_logits, student_logits, temperature, top_k, top_p,
               name):
    """``(log p̃, log q̃, T)``: float32 log-softmaxes over the kept support."""
    _check_single_teacher(teacher_logits, name)
    top_k, top_p = _check_top_k(top_k), _check_top_p(top_p)
    T = as_temperature(temperature)
    t = float32_tensor(teacher_logits) / T
    s = float32_tensor(student_logits) / T
    _check_vocabulary(t, s)
    mask = _support(t, top_k, top_p)
    if mask is not None:
        t = ops.where(mask, t, _OUTSIDE)
        s = ops.where(mask, s, _OUTSIDE)
    return ops.log_softmax(t, axis=-1), ops.log_softmax(s, axis=-1), T


def _kl(log_a, log_b):
    """``Σ_c a_c (log a_c − log b_c)`` over the last axis, ``a = exp(log a)``.

    Classes outside the support have ``a_c = 0`` exactly and finite logs, so
    they add exactly 0.
    """
    return ops.sum(ops.exp(log_a) * (log_a - log_b), axis=-1)


def _log_mixture(log_a, log_b, w):
    """``log(w·a + (1 − w)·b)`` for ``0 < w < 1``, a two-term logsumexp."""
    return ops.logaddexp(log_a + math.log(w), log_b + math.log1p(-w))


# ----------------------------------------------------------------------
# Pure functions
# ----------------------------------------------------------------------
def forward_kl(teacher_logits, student_logits, temperature=1.0, top_k=None,
               top_p=None):
    """Token-level KD: forward KL from the teacher, one value per position.

        loss = T² · KL(p ‖ q) = T² Σ_c p_c (log p_c − log q_c),
        p = softmax(t / T),  q = softmax(s / T)   (over the last axis)

    Mean-seeking: the student is pushed to cover every class the teacher
    gives mass to. This is Hinton KD (Hinton et al., "Distilling the
    Knowledge in a Neural Network", 2015, arXiv:1503.02531) applied at every
    token; DistilBERT (Sanh et al., 2019, arXiv:1910.01108) used T = 2, and
    language models usually use T = 1.

    Truncation (the same in every function of this module): ``top_k=k``
    keeps the teacher's k most probable classes at each position (classes
    tied with the k-th are kept too); ``top_p=x`` keeps the smallest set of
    most probable classes whose probability under ``p`` reaches ``x`` (the
    nucleus, always including the top class; ties with its least probable
    member are kept too). With both, the support ``S`` is the intersection
    of the two sets, each computed from the untruncated ``p``. The teacher's
    and the student's distributions are then both restricted to ``S`` and
    renormalised (``p̃``, ``q̃``) and the divergence is taken between them,
    so reverse divergences stay finite. ``top_k`` >= the vocabulary size or
    ``top_p=1.0`` keeps every class and gives exactly the untruncated loss.

    Args:
        teacher_logits: logits of any rank, the classes on the last axis
            (e.g. ``(batch, length, vocab)``). A single teacher only.
        student_logits: logits of the same shape.
        temperature: ``T > 0`` (a Python number or a scalar tensor).
        top_k: optional integer >= 1, truncates the teacher to its top k.
        top_p: optional number in (0, 1], truncates the teacher to its nucleus.

    Returns:
        A float32 tensor of shape ``logits.shape[:-1]`` (no reduction).

    Example:

    >>> import numpy as np
    >>> t = np.array([[[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]]])   # (1, 2, 3)
    >>> s = np.array([[[0.5, 0.2, 0.1], [0.0, 0.0, 0.0]]])
    >>> loss = forward_kl(t, s)
    >>> tuple(loss.shape)
    (1, 2)
    >>> [round(float(v), 4) for v in loss[0]]
    [0.4069, 0.1233]
    >>> round(float(forward_kl(t, s, top_k=1)[0, 0]), 4)   # -log q̃(top) = 0
    0.0
    """
    log_p, log_q, T = _log_probs(teacher_logits, student_logits, temperature,
                                 top_k, top_p, "forward_kl")
    return _kl(log_p, log_q) * (T * T)


def reverse_kl(teacher_logits, student_logits, temperature=1.0, top_k=None,
               top_p=None):
    """Reverse KL from the student to the teacher, one value per position.

        loss = T² · KL(q ‖ p) = T² Σ_c q_c (log q_c − log p_c),
        p = softmax(t / T),  q = softmax(s / T)

    Mode-seeking: the student is pushed to put its mass where the teacher is
    confident rather than to cover the teacher's whole distribution. This is
    the token-level form of MiniLLM's objective (Gu et al., "MiniLLM:
    Knowledge Distillation of Large Language Models", ICLR 2024,
    arXiv:2306.08543), which optimises the sequence-level reverse KL with
    policy gradients. Usual setting: T = 1. ``top_k`` / ``top_p`` truncate
    the teacher as in :func:`forward_kl` (both distributions renormalised
    over the kept classes).

    Args:
        teacher_logits: logits of any rank, classes on the last axis; a
            single teacher only.
        student_logits: logits of the same shape.
        temperature: ``T > 0``.
        top_k: optional integer >= 1.
        top_p: optional number in (0, 1].

    Returns:
        A float32 tensor of shape ``logits.shape[:-1]``.

    Example:

    >>> import numpy as np
    >>> t = np.array([[2.0, 0.0, -1.0]]); s = np.array([[0.5, 0.2, 0.1]])
    >>> round(float(reverse_kl(t, s)[0]), 4)
    0.5349
    """
    log_p, log_q, T = _log_probs(teacher_logits, student_logits, temperature,
                                 top_k, top_p, "reverse_kl")
    return _kl(log_q, log_p) * (T * T)


def generalized_jsd(teacher_logits, student_logits, beta=0.5,
                    temperature=1.0, top_k=None, top_p=None):
    """Generalized Jensen-Shannon divergence of GKD, one value per position.

        M = β·p + (1 − β)·q
        loss = T² · (β · KL(p ‖ M) + (1 − β) · KL(q ‖ M))

    From GKD (Agarwal et al., "On-Policy Distillation of Language Models:
    Learning from Self-Generated Mistakes", ICLR 2024, arXiv:2306.13649),
    which uses β in {0.1, 0.5, 0.9}; β = 0.5 is the usual JSD. ``log M`` is
    a logsumexp of ``log β + log p`` and ``log(1 − β) + log q``.

    Following Hugging Face TRL's ``GKDTrainer``, the end points are special
    cases: ``beta=0`` returns exactly the forward KL ``T²·KL(p ‖ q)`` and
    ``beta=1`` exactly the reverse KL ``T²·KL(q ‖ p)`` (the formula above
    would give 0 at both ends, so the loss jumps there: a small β > 0 gives a
    small loss that behaves like the forward KL scaled by about β).
    ``top_k`` / ``top_p`` truncate the teacher as in :func:`forward_kl`.

    Args:
        teacher_logits: logits of any rank, classes on the last axis; a
            single teacher only.
        student_logits: logits of the same shape.
        beta: the teacher's weight in the mixture, ``0 <= β <= 1``.
        temperature: ``T > 0``.
        top_k: optional integer >= 1.
        top_p: optional number in (0, 1].

    Returns:
        A float32 tensor of shape ``logits.shape[:-1]``.

    Example:

    >>> import numpy as np
    >>> t = np.array([[2.0, 0.0, -1.0]]); s = np.array([[0.5, 0.2, 0.1]])
    >>> round(float(generalized_jsd(t, s, beta=0.5)[0]), 4)
    0.109
    >>> round(float(generalized_jsd(t, s, beta=0.0)[0]), 4)   # forward KL
    0.4069
    """
    beta = _check_beta(beta)
    log_p, log_q, T = _log_probs(teacher_logits, student_logits, temperature,
                                 top_k, top_p, "generalized_jsd")
    if beta == 0.0:
        loss = _kl(log_p, log_q)
    elif beta == 1.0:
        loss = _kl(log_q, log_p)
    else:
        log_m = _log_mixture(log_p, log_q, beta)
        loss = beta * _kl(log_p, log_m) + (1.0 - beta) * _kl(log_q, log_m)
    return loss * (T * T)


def skew_kl(teacher_logits, student_logits, alpha=0.1, temperature=1.0,
            top_k=None, top_p=None):
    """Skew KL divergence of DistiLLM, one value per position.

        loss = T² · KL(p ‖ α·p + (1 − α)·q)

    Mixing a little of the teacher into the student's distribution bounds
    the log-ratio (by ``−log α``) and so stabilises the gradients (Ko et al.,
    "DistiLLM: Towards Streamlined Distillation for Large Language Models",
    ICML 2024, arXiv:2402.03898; α = 0.1). ``alpha=0`` is exactly the
    forward KL. ``top_k`` / ``top_p`` truncate the teacher as in
    :func:`forward_kl`.

    Args:
        teacher_logits: logits of any rank, classes on the last axis; a
            single teacher only.
        student_logits: logits of the same shape.
        alpha: the teacher's weight in the mixture, ``0 <= α < 1``.
        temperature: ``T > 0``.
        top_k: optional integer >= 1.
        top_p: optional number in (0, 1].

    Returns:
        A float32 tensor of shape ``logits.shape[:-1]``.

    Example:

    >>> import numpy as np
    >>> t = np.array([[2.0, 0.0, -1.0]]); s = np.array([[0.5, 0.2, 0.1]])
    >>> round(float(skew_kl(t, s, alpha=0.1)[0]), 4)
    0.335
    """
    alpha = _check_alpha(alpha)
    log_p, log_q, T = _log_probs(teacher_logits, student_logits, temperature,
                                 top_k, top_p, "skew_kl")
    log_m = log_q if alpha == 0.0 else _log_mixture(log_p, log_q, alpha)
    return _kl(log_p, log_m) * (T * T)


def skew_reverse_kl(teacher_logits, student_logits, alpha=0.1,
                    temperature=1.0, top_k=None, top_p=None):
    """Skew reverse KL divergence of DistiLLM, one value per position.

        loss = T² · KL(q ‖ (1 − α)·p + α·q)

    The reverse counterpart of :func:`skew_kl` (Ko et al., ICML 2024,
    arXiv:2402.03898; α = 0.1): the student is mixed into the teacher's
    distribution, which bounds the log-ratio by ``−log α``. ``alpha=0`` is
    exactly the reverse KL. ``top_k`` / ``top_p`` truncate the teacher as in
    :func:`forward_kl`.

    Args:
        teacher_logits: logits of any rank, classes on the last axis; a
            single teacher only.
        student_logits: logits of the same shape.
        alpha: the student's weight in the mixture, ``0 <= α < 1``.
        temperature: ``T > 0``.
        top_k: optional integer >= 1.
        top_p: optional number in (0, 1].

    Returns:
        A float32 tensor of shape ``logits.shape[:-1]``.

    Example:

    >>> import numpy as np
    >>> t = np.array([[2.0, 0.0, -1.0]]); s = np.array([[0.5, 0.2, 0.1]])
    >>> round(float(skew_reverse_kl(t, s, alpha=0.1)[0]), 4)
    0.3846
    """
    alpha = _check_alpha(alpha)
    log_p, log_q, T = _log_probs(teacher_logits, student_logits, temperature,
                                 top_k, top_p, "skew_reverse_kl")
    log_m = log_p if alpha == 0.0 else _log_mixture(log_q, log_p, alpha)
    return _kl(log_q, log_m) * (T * T)


# ----------------------------------------------------------------------
# Classes
# ----------------------------------------------------------------------
class _SequenceObjective(Objective):
    """Shared options of the token-level objectives (not registered)."""

    loss_fn = None

    def __init__(self, temperature=None, top_k=None, top_p=None, weight=1.0,
                 name=None, **kwargs):
        super().__init__(weight=weight, name=name, **kwargs)
        if temperature is not None:
            check_temperature(temperature)
        self.temperature = temperature
        self.top_k = _check_top_k(top_k)
        self.top_p = _check_top_p(top_p)

    def _options(self):
        """The objective's own parameters (beta / alpha), as keywords."""
        return {}

    def compute(self, teacher_logits, student_logits, labels=None,
                temperature=1.0):
        t = temperature if self.temperature is None else self.temperature
        return type(self).loss_fn(teacher_logits, student_logits,
                                  temperature=t, top_k=self.top_k,
                                  top_p=self.top_p, **self._options())

    def get_config(self):
        config = super().get_config()
        config.update(self._options())
        config.update(temperature=self.temperature, top_k=self.top_k,
                      top_p=self.top_p)
        return config


@keras.saving.register_keras_serializable(package="keras_kd")
class ForwardKL(_SequenceObjective):
    """Token-level KD, forward KL (``"forward_kl"``).

    Wraps :func:`forward_kl`: ``T² · KL(p ‖ q)`` at every position, returned
    per position (shape ``logits.shape[:-1]``). Usual settings: T = 1 for
    language models (DistilBERT used T = 2).

    Args:
        temperature: overrides the Distiller's temperature when given.
        top_k: keep only the teacher's top-k classes (None keeps all).
        top_p: keep only the teacher's nucleus of probability top_p.
        weight: a multiplier on the term.

    Example:

    >>> ForwardKL(temperature=1.0, top_k=50).get_config()["top_k"]
    50
    """

    loss_fn = staticmethod(forward_kl)

    def __init__(self, temperature=None, top_k=None, top_p=None, weight=1.0,
                 name="forward_kl", **kwargs):
        super().__init__(temperature=temperature, top_k=top_k, top_p=top_p,
                         weight=weight, name=name, **kwargs)


@keras.saving.register_keras_serializable(package="keras_kd")
class ReverseKL(_SequenceObjective):
    """Token-level reverse KL (``"reverse_kl"``), mode-seeking.

    Wraps :func:`reverse_kl`: ``T² · KL(q ‖ p)`` at every position (the
    token-level form of MiniLLM, Gu et al., ICLR 2024). Usual setting: T = 1.

    Args:
        temperature: overrides the Distiller's temperature when given.
        top_k: keep only the teacher's top-k classes (None keeps all).
        top_p: keep only the teacher's nucleus of probability top_p.
        weight: a multiplier on the term.

    Example:

    >>> ReverseKL(temperature=1.0).name
    'reverse_kl'
    """

    loss_fn = staticmethod(reverse_kl)

    def __init__(self, temperature=None, top_k=None, top_p=None, weight=1.0,
                 name="reverse_kl", **kwargs):
        super().__init__(temperature=temperature, top_k=top_k, top_p=top_p,
                         weight=weight, name=name, **kwargs)


@keras.saving.register_keras_serializable(package="keras_kd")
class GeneralizedJSD(_SequenceObjective):
    """GKD's generalized Jensen-Shannon divergence (``"gkd"``).

    Wraps :func:`generalized_jsd`: ``T² · (β·KL(p ‖ M) + (1 − β)·KL(q ‖ M))``
    with ``M = β·p + (1 − β)·q`` at every position (Agarwal et al., ICLR
    2024). As in TRL, ``beta=0`` is exactly the forward KL and ``beta=1``
    exactly the reverse KL. Usual settings: β in {0.1, 0.5, 0.9}, T = 1.
    This objective scores the given sequences; GKD's on-policy sampling of
    the student's continuations is up to the data pipeline.

    Args:
        beta: the teacher's weight in the mixture, ``0 <= beta <= 1``.
        temperature: overrides the Distiller's temperature when given.
        top_k: keep only the teacher's top-k classes (None keeps all).
        top_p: keep only the teacher's nucleus of probability top_p.
        weight: a multiplier on the term.

    Example:

    >>> GeneralizedJSD(beta=0.9).get_config()["beta"]
    0.9
    """

    loss_fn = staticmethod(generalized_jsd)

    def __init__(self, beta=0.5, temperature=None, top_k=None, top_p=None,
                 weight=1.0, name="gkd", **kwargs):
        super().__init__(temperature=temperature, top_k=top_k, top_p=top_p,
                         weight=weight, name=name, **kwargs)
        self.beta = _check_beta(beta)

    def _options(self):
        return {"beta": self.beta}


@keras.saving.register_keras_serializable(package="keras_kd")
class SkewKL(_SequenceObjective):
    """DistiLLM's skew KL (``"skew_kl"``).

    Wraps :func:`skew_kl`: ``T² · KL(p ‖ α·p + (1 − α)·q)`` at every position
    (Ko et al., ICML 2024). Usual settings: α = 0.1, T = 1.

    Args:
        alpha: the teacher's weight in the mixture, ``0 <= alpha < 1``.
        temperature: overrides the Distiller's temperature when given.
        top_k: keep only the teacher's top-k classes (None keeps all).
        top_p: keep only the teacher's nucleus of probability top_p.
        weight: a multiplier on the term.

    Example:

    >>> SkewKL(alpha=0.1, top_p=0.95).get_config()["top_p"]
    0.95
    """

    loss_fn = staticmethod(skew_kl)

    def __init__(self, alpha=0.1, temperature=None, top_k=None, top_p=None,
                 weight=1.0, name="skew_kl", **kwargs):
        super().__init__(temperature=temperature, top_k=top_k, top_p=top_p,
                         weight=weight, name=name, **kwargs)
        self.alpha = _check_alpha(alpha)

    def _options(self):
        return {"alpha": self.alpha}


@keras.saving.register_keras_serializable(package="keras_kd")
class SkewReverseKL(_SequenceObjective):
    """DistiLLM's skew reverse KL (``"skew_reverse_kl"``).

    Wraps :func:`skew_reverse_kl`: ``T² · KL(q ‖ (1 − α)·p + α·q)`` at every
    position (Ko et al., ICML 2024). Usual settings: α = 0.1, T = 1.

    Args:
        alpha: the student's weight in the mixture, ``0 <= alpha < 1``.
        temperature: overrides the Distiller's temperature when given.
        top_k: keep only the teacher's top-k classes (None keeps all).
        top_p: keep only the teacher's nucleus of probability top_p.
        weight: a multiplier on the term.

    Example:

    >>> SkewReverseKL().get_config()["alpha"]
    0.1
    """

    loss_fn = staticmethod(skew_reverse_kl)

    def __init__(self, alpha=0.1, temperature=None, top_k=None, top_p=None,
                 weight=1.0, name="skew_reverse_kl", **kwargs):
        super().__init__(temperature=temperature, top_k=top_k, top_p=top_p,
                         weight=weight, name=name, **kwargs)
        self.alpha = _check_alpha(alpha)

    def _options(self):
        return {"alpha": self.alpha}


# Names for the objectives registry (registered by keras_kd.objectives).
SEQUENCE_OBJECTIVES = {
    "forward_kl": ForwardKL,
    "reverse_kl": ReverseKL,
    "gkd": GeneralizedJSD,
    "skew_kl": SkewKL,
    "skew_reverse_kl": SkewReverseKL,
}
