"""Independent NumPy references for Tf-KD, MLKD, CTKD and deep mutual learning.

Written from the papers' formulas in float64 NumPy, plainly and with loops,
without keras-kd or Keras (same conventions as ``tests/references.py``:
class axis last, ``softmax(z / T)``).
"""

import math

import numpy as np


def _f64(x):
    return np.asarray(x, dtype=np.float64)


def softmax(z):
    z = _f64(z)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def kl(p, q):
    """``Σ_c p_c log(p_c / q_c)`` per row."""
    p, q = _f64(p), _f64(q)
    return np.sum(np.where(p > 0, p * (np.log(np.maximum(p, 1e-300))
                                       - np.log(q)), 0.0), axis=-1)


def tfkd(labels, s, a=0.99, T=20.0):
    """Yuan et al. CVPR 2020, Tf-KD_reg, as the authors' code computes it
    per sample (summed over classes): KL(softmax(p^d / T) ‖ softmax(s))."""
    s = _f64(s)
    K = s.shape[-1]
    out = np.zeros(s.shape[0])
    for i, y in enumerate(labels):
        p_d = np.full(K, (1.0 - a) / (K - 1))
        p_d[int(y)] = a
        u = softmax(p_d / T)
        out[i] = kl(u, softmax(s[i]))
    return out


def mlkd(t, s, temperatures=(2.0, 3.0, 4.0, 5.0, 6.0), w_ins=1.0, w_bat=1.0,
         w_cls=1.0):
    """Jin et al. CVPR 2023: (per-sample instance term, batch term, class
    term), each summed over the temperatures; the loss is their weighted
    sum with the two batch-level terms added to every sample."""
    t, s = _f64(t), _f64(s)
    B, C = s.shape
    instance = np.zeros(B)
    batch = 0.0
    cls = 0.0
    for T in temperatures:
        pt, ps = softmax(t / T), softmax(s / T)
        instance += T * T * kl(pt, ps)
        gb_t = np.array([[pt[i] @ pt[j] for j in range(B)] for i in range(B)])
        gb_s = np.array([[ps[i] @ ps[j] for j in range(B)] for i in range(B)])
        batch += ((gb_t - gb_s) ** 2).sum() / B
        gc_t = np.array([[pt[:, a] @ pt[:, b] for b in range(C)]
                         for a in range(C)])
        gc_s = np.array([[ps[:, a] @ ps[:, b] for b in range(C)]
                         for a in range(C)])
        cls += ((gc_t - gc_s) ** 2).sum() / C
    return w_ins * instance + w_bat * batch + w_cls * cls


def ctkd_temperature(theta, t_start=1.0, t_end=20.0):
    """Li et al. AAAI 2023 (authors' code): T = t_start + t_end·σ(θ)."""
    return t_start + t_end / (1.0 + math.exp(-theta))


def kd(t, s, T):
    """Hinton et al. 2015: T² · KL(softmax(t/T) ‖ softmax(s/T)) per sample."""
    return T * T * kl(softmax(_f64(t) / T), softmax(_f64(s) / T))


def ctkd(t, s, theta, t_start=1.0, t_end=20.0):
    """KD at the learned temperature."""
    return kd(t, s, ctkd_temperature(theta, t_start, t_end))


def ctkd_lambda(epoch, E=10, lam_max=1.0, lam_min=0.0):
    """Cosine ramp of the reversal strength (paper eq. 9)."""
    e = min(epoch, E)
    return lam_min + (lam_max - lam_min) * (1 - math.cos(math.pi * e / E)) / 2


def sparse_ce(y, s):
    p = softmax(s)
    return -np.log(p[np.arange(len(y)), np.asarray(y, int)])


def dml(logits, y, T=1.0, kl_weight=1.0):
    """Zhang et al. CVPR 2018: each student's loss is CE + the mean over its
    peers l of T²·KL(p_l ‖ p_k), batch-averaged. Returns one value per
    student."""
    K = len(logits)
    out = []
    for k in range(K):
        ce = sparse_ce(y, logits[k]).mean()
        peers = [kd(logits[l], logits[k], T).mean() for l in range(K)
                 if l != k]
        out.append(ce + kl_weight * sum(peers) / (K - 1))
    return out
