"""Independent NumPy references for keras-kd's losses: the one place they live.

Every function here is written from the paper's formula (cited), plainly,
in float64 NumPy, without keras-kd or Keras: the tests compare the library's
float32 ``keras.ops`` code on every backend against these. Loops are used
where they make the formula easier to read than a vectorised form would.

Conventions (those of keras-kd's docstrings):

* Logits have the class axis last and any number of leading axes; the
  per-sample (or per-token) functions return one value per leading position.
* ``T`` is the temperature; distributions are ``softmax(z / T)``.
* A "teacher" argument may be a list of logits (multi-teacher distillation):
  the soft target is then the weighted mean of the teachers' softened
  probabilities, :func:`mean_probs`.
* Relation losses (RKD, SP, PKT) and DIST return one scalar per batch.

Contents: ``softmax``, ``log_softmax``, ``kl``, ``mean_probs``, ``kd``,
``sparse_ce``, ``dkd``, ``standardize``, ``ls``, ``dist``, ``hard``,
``fitnet``, ``resize_bilinear``, ``attention_map``, ``at``, ``huber``,
``rkd_distance``, ``rkd_angle``, ``rkd``, ``sp``, ``pkt``, ``support``,
``truncated``, ``forward_kl``, ``reverse_kl``, ``gjsd``, ``skew_kl``,
``skew_reverse_kl``, and ``reduce_term`` (the Distiller's reduction).
"""

import numpy as np


def _f64(x):
    return np.asarray(x, dtype=np.float64)


# ----------------------------------------------------------------------
# Distributions
# ----------------------------------------------------------------------
def softmax(z, axis=-1):
    """``exp(z) / Σ exp(z)`` along ``axis`` (max subtracted first)."""
    z = _f64(z)
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def log_softmax(z, axis=-1):
    """``z − log Σ exp(z)`` along ``axis``."""
    z = _f64(z)
    z = z - z.max(axis=axis, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=axis, keepdims=True))


def kl(p, q):
    """``KL(p ‖ q) = Σ_c p_c log(p_c / q_c)`` over the last axis, 0·log 0 = 0."""
    p, q = _f64(p), _f64(q)
    out = np.zeros(p.shape[:-1])
    for idx in np.ndindex(out.shape):
        out[idx] = sum(pc * np.log(pc / qc) for pc, qc in zip(p[idx], q[idx])
                       if pc > 0)
    return out


def mean_probs(teachers, T, weights=None):
    """Soft target: ``softmax(t / T)``, or ``Σ_k w_k softmax(t_k / T)`` with
    the weights normalised to sum to 1 (uniform when None) for a list."""
    if not isinstance(teachers, (list, tuple)):
        return softmax(_f64(teachers) / T)
    w = np.ones(len(teachers)) if weights is None else _f64(weights)
    w = w / w.sum()
    return sum(wk * softmax(_f64(t) / T) for wk, t in zip(w, teachers))


# ----------------------------------------------------------------------
# Logit objectives
# ----------------------------------------------------------------------
def kd(t, s, T, weights=None):
    """Hinton KD per sample: ``T² · KL(p ‖ softmax(s / T))``, ``p`` the soft
    target (Hinton et al. 2015, arXiv:1503.02531)."""
    return T * T * kl(mean_probs(t, T, weights), softmax(_f64(s) / T))


def sparse_ce(labels, logits):
    """Cross-entropy per element: ``−log softmax(logits)[label]``."""
    log_q = log_softmax(logits)
    labels = np.asarray(labels)
    out = np.zeros(log_q.shape[:-1])
    for idx in np.ndindex(out.shape):
        out[idx] = -log_q[idx][int(labels[idx])]
    return out


def dkd(t, s, labels, alpha, beta, T, weights=None):
    """Decoupled KD per sample (Zhao et al., CVPR 2022, arXiv:2203.08679):

        T² · (α · KL(b_t ‖ b_s) + β · KL(p̂_t ‖ p̂_s)),
        b = [p_y, 1 − p_y],  p̂ = p over the non-target classes, renormalised.
    """
    p_t = mean_probs(t, T, weights)
    p_s = softmax(_f64(s) / T)
    out = []
    for i, y in enumerate(np.asarray(labels)):
        y = int(y)
        b_t = [p_t[i, y], 1 - p_t[i, y]]
        b_s = [p_s[i, y], 1 - p_s[i, y]]
        rest = [c for c in range(p_t.shape[1]) if c != y]
        nt_t = p_t[i, rest] / p_t[i, rest].sum()
        nt_s = p_s[i, rest] / p_s[i, rest].sum()
        out.append(T * T * (alpha * kl(b_t, b_s) + beta * kl(nt_t, nt_s)))
    return np.array(out)


def standardize(z, eps=1e-7):
    """Z-score per row, ``(z − mean) / (std + eps)`` with the sample std
    (divisor C − 1), as the LS authors' ``torch.std``."""
    z = _f64(z)
    return (z - z.mean(-1, keepdims=True)) / (
        z.std(-1, ddof=1, keepdims=True) + eps)


def ls(t, s, T, weights=None):
    """Logit-standardised KD per sample (Sun et al., CVPR 2024,
    arXiv:2403.01427): KD between z-scored logits at base temperature T."""
    ts = ([standardize(x) for x in t] if isinstance(t, (list, tuple))
          else standardize(t))
    return kd(ts, standardize(s), T, weights)


def dist(t, s, T, beta=1.0, gamma=1.0, weights=None):
    """DIST's batch loss, a scalar (Huang et al., NeurIPS 2022,
    arXiv:2205.10536), with ``np.corrcoef`` for Pearson's correlation:

        T² · (β · (1 − mean_i ρ(p_s[i, :], p_t[i, :]))
              + γ · (1 − mean_c ρ(p_s[:, c], p_t[:, c])))

    over every element of the batch (samples, or tokens).
    """
    p_t = mean_probs(t, T, weights)
    p_s = softmax(_f64(s) / T)
    p_t = p_t.reshape(-1, p_t.shape[-1])
    p_s = p_s.reshape(-1, p_s.shape[-1])
    inter = 1 - np.mean([np.corrcoef(p_s[i], p_t[i])[0, 1]
                         for i in range(len(p_t))])
    intra = 1 - np.mean([np.corrcoef(p_s[:, c], p_t[:, c])[0, 1]
                         for c in range(p_t.shape[1])])
    return T * T * (beta * inter + gamma * intra)


def hard(t, s, weights=None):
    """Hard-label distillation per sample: cross-entropy of the student
    against the teacher's argmax (DeiT, arXiv:2012.12877); several teachers
    vote with their weighted mean probabilities at T = 1."""
    scores = mean_probs(t, 1.0, weights) if isinstance(t, (list, tuple)) \
        else _f64(t)
    return sparse_ce(np.argmax(scores, -1), s)


# ----------------------------------------------------------------------
# Feature objectives
# ----------------------------------------------------------------------
def fitnet(f_t, f_s):
    """FitNet hint per sample: ``mean((f_s − f_t)²)`` over every axis but the
    batch axis, ``f_s`` already through the regressor (Romero et al., ICLR
    2015, arXiv:1412.6550)."""
    d = _f64(f_s) - _f64(f_t)
    return (d ** 2).reshape(len(d), -1).mean(axis=1)


def resize_bilinear(f, size):
    """Bilinear resize of a ``(batch, H, W, C)`` map to ``size = (H', W')``,
    half-pixel centres, edges clamped (``tf.image.resize``'s convention)."""
    f = _f64(f)

    def taps(n_in, n_out):
        out = []
        for i in range(n_out):
            x = min(max((i + 0.5) * n_in / n_out - 0.5, 0.0), n_in - 1.0)
            lo = int(np.floor(x))
            out.append((lo, min(lo + 1, n_in - 1), x - lo))
        return out

    rows, cols = taps(f.shape[1], size[0]), taps(f.shape[2], size[1])
    out = np.zeros((f.shape[0], size[0], size[1], f.shape[3]))
    for i, (r0, r1, a) in enumerate(rows):
        for j, (c0, c1, b) in enumerate(cols):
            out[:, i, j] = ((1 - a) * (1 - b) * f[:, r0, c0]
                            + (1 - a) * b * f[:, r0, c1]
                            + a * (1 - b) * f[:, r1, c0]
                            + a * b * f[:, r1, c1])
    return out


def attention_map(f, p=2):
    """AT's map ``a(f) = normalize(flatten(mean_c |f|^p))``, channels last
    (Zagoruyko & Komodakis, ICLR 2017, arXiv:1612.03928)."""
    f = _f64(f)
    a = (np.abs(f) ** p).mean(axis=-1).reshape(len(f), -1)
    return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)


def at(t, s, p=2):
    """Attention transfer per sample: ``mean_j (a(f_s)_j − a(f_t)_j)²``."""
    return ((attention_map(s, p) - attention_map(t, p)) ** 2).mean(axis=1)


# ----------------------------------------------------------------------
# Relation objectives (one scalar per batch)
# ----------------------------------------------------------------------
def _flat(e):
    e = _f64(e)
    return e.reshape(len(e), -1)


def huber(x, y):
    """Mean smooth-L1 (Huber, δ = 1) between two arrays."""
    d = np.abs(_f64(x) - _f64(y))
    return np.mean(np.where(d < 1, 0.5 * d * d, d - 0.5))


def rkd_distance(t, s):
    """RKD distance term (Park et al., CVPR 2019, arXiv:1904.05068):
    Huber between pairwise distances divided by their mean over i ≠ j."""
    def psi(e):
        e = _flat(e)
        n = len(e)
        d = np.array([[np.linalg.norm(e[i] - e[j]) for j in range(n)]
                      for i in range(n)])
        return d / d[~np.eye(n, dtype=bool)].mean()
    return huber(psi(s), psi(t))


def rkd_angle(t, s):
    """RKD angle term: Huber between ``cos ∠(e_j − e_i, e_k − e_i)`` over all
    triplets (0 for a repeated sample, as in the authors' code)."""
    def psi(e):
        e = _flat(e)
        n = len(e)
        out = np.zeros((n, n, n))
        for i in range(n):
            for j in range(n):
                for k in range(n):
                    if j == i or k == i:
                        continue
                    u, v = e[j] - e[i], e[k] - e[i]
                    out[i, j, k] = u @ v / (np.linalg.norm(u) *
                                            np.linalg.norm(v))
        return out
    return huber(psi(s), psi(t))


def rkd(t, s, wd=25.0, wa=50.0):
    """RKD: ``wd · distance + wa · angle``."""
    return wd * rkd_distance(t, s) + wa * rkd_angle(t, s)


def sp(t, s):
    """Similarity-preserving KD (Tung & Mori, ICCV 2019, arXiv:1907.09682):
    ``‖Ĝ_s − Ĝ_t‖²_F / b²`` with row-normalised Gram matrices ``F Fᵀ``."""
    def gram(e):
        e = _flat(e)
        g = e @ e.T
        return g / np.linalg.norm(g, axis=1, keepdims=True)
    b = len(t)
    return np.sum((gram(s) - gram(t)) ** 2) / b ** 2


def pkt(t, s, eps=1e-7):
    """Probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018,
    arXiv:1803.10837): ``mean_ij P^t_ij log((P^t_ij + ε) / (P^s_ij + ε))``,
    ``P`` the row-normalised ``(cos + 1) / 2`` similarities."""
    def probs(e):
        e = _flat(e)
        e = e / (np.linalg.norm(e, axis=1, keepdims=True) + eps)
        k = (e @ e.T + 1) / 2
        return k / k.sum(1, keepdims=True)
    p_t, p_s = probs(t), probs(s)
    return np.mean(p_t * np.log((p_t + eps) / (p_s + eps)))


# ----------------------------------------------------------------------
# Token-level objectives, with the teacher's support truncated
# ----------------------------------------------------------------------
def support(p, top_k=None, top_p=None):
    """Boolean mask of the kept classes, from the sorted teacher probabilities.

    top_k: the k first classes in decreasing probability. top_p: the shortest
    prefix of that order whose cumulative probability reaches top_p. (Ties at
    the cut are not handled here: tests that need them build them by hand.)
    """
    p = _f64(p)
    order = np.argsort(-p, axis=-1, kind="stable")
    sorted_p = np.take_along_axis(p, order, axis=-1)
    keep_sorted = np.ones(p.shape, bool)
    if top_k is not None:
        keep_sorted &= np.arange(p.shape[-1]) < top_k
    if top_p is not None:
        mass_before = np.cumsum(sorted_p, axis=-1) - sorted_p
        keep_sorted &= mass_before < top_p
    mask = np.zeros(p.shape, bool)
    np.put_along_axis(mask, order, keep_sorted, axis=-1)
    return mask


def truncated(t, s, T, top_k=None, top_p=None):
    """``(p̃, q̃)``: teacher / student ``softmax(z / T)`` restricted to the
    teacher's support and renormalised."""
    p = softmax(_f64(t) / T)
    q = softmax(_f64(s) / T)
    mask = support(p, top_k, top_p)
    p = np.where(mask, p, 0.0)
    q = np.where(mask, q, 0.0)
    return p / p.sum(-1, keepdims=True), q / q.sum(-1, keepdims=True)


def forward_kl(t, s, T=1.0, top_k=None, top_p=None):
    """Token-level forward KL: ``T² · KL(p̃ ‖ q̃)`` per position."""
    p, q = truncated(t, s, T, top_k, top_p)
    return T * T * kl(p, q)


def reverse_kl(t, s, T=1.0, top_k=None, top_p=None):
    """Token-level reverse KL (MiniLLM, arXiv:2306.08543): ``T² · KL(q̃ ‖ p̃)``."""
    p, q = truncated(t, s, T, top_k, top_p)
    return T * T * kl(q, p)


def gjsd(t, s, beta, T=1.0, top_k=None, top_p=None):
    """GKD's generalized JSD (Agarwal et al., ICLR 2024, arXiv:2306.13649):
    ``T² · (β · KL(p ‖ M) + (1 − β) · KL(q ‖ M))``, ``M = β p + (1 − β) q``;
    β = 0 is the forward KL and β = 1 the reverse KL (TRL's convention)."""
    p, q = truncated(t, s, T, top_k, top_p)
    if beta == 0:
        return T * T * kl(p, q)
    if beta == 1:
        return T * T * kl(q, p)
    m = beta * p + (1 - beta) * q
    return T * T * (beta * kl(p, m) + (1 - beta) * kl(q, m))


def skew_kl(t, s, alpha, T=1.0, top_k=None, top_p=None):
    """DistiLLM's skew KL (Ko et al., ICML 2024, arXiv:2402.03898):
    ``T² · KL(p ‖ α p + (1 − α) q)``."""
    p, q = truncated(t, s, T, top_k, top_p)
    return T * T * kl(p, alpha * p + (1 - alpha) * q)


def skew_reverse_kl(t, s, alpha, T=1.0, top_k=None, top_p=None):
    """DistiLLM's skew reverse KL: ``T² · KL(q ‖ (1 − α) p + α q)``."""
    p, q = truncated(t, s, T, top_k, top_p)
    return T * T * kl(q, (1 - alpha) * p + alpha * q)


# ----------------------------------------------------------------------
# The Distiller's reduction (keras_kd/composition.py)
# ----------------------------------------------------------------------
def reduce_term(values, sample_weight=None, mask=None):
    """One loss term of a step, as Keras reduces a loss with
    ``reduction="sum_over_batch_size"`` and a mask:

        term = Σ_e l_e · w_e · m_e / Σ_e m_e

    over the elements ``e`` (every axis of the logits but the class axis).
    ``sample_weight`` (``(batch,)`` or the elements' shape) is broadcast over
    the elements; ``mask`` (the elements' shape, default all True) marks the
    elements that count. ``values`` holds one loss per element, or one per
    sample (a feature term on sequence logits), which then takes the sum of
    its elements' ``w · m``. A scalar (a relation over the batch) is returned
    as it is; with no element counting the term is 0.
    """
    values = _f64(values)
    if values.ndim == 0:
        return float(values)
    if mask is not None:
        shape = np.shape(mask)
    elif sample_weight is not None and np.ndim(sample_weight) > values.ndim:
        shape = np.shape(sample_weight)
    else:
        shape = values.shape
    m = np.ones(shape) if mask is None else _f64(mask)
    w = np.ones(shape) if sample_weight is None else _f64(sample_weight)
    while w.ndim < len(shape):           # per-sample weights, per-token loss
        w = w[..., None]
    wm = np.broadcast_to(w, shape) * m   # w_e · m_e
    count = m.sum()
    while wm.ndim > values.ndim:         # per-sample loss: its tokens' sum
        wm = wm.sum(axis=-1)
    total = 0.0
    for idx in np.ndindex(values.shape):
        total += values[idx] * wm[idx]
    return total / count if count else 0.0
