"""Independent NumPy reference for KD-SVD (Lee et al., ECCV 2018).

Written from the paper and mdistiller's description of it, plainly, in
float64 NumPy with ``np.linalg.svd`` of each sample's matrix (no
regulariser), loops where they read closer to the formula. Maps are channels
last, ``(batch, H, W, C)`` or ``(batch, positions, C)``.
"""

import numpy as np


def matrix(f, vectors="channels"):
    """One sample's ``(H·W, C)`` matrix (``(C, H·W)`` for positions)."""
    f = np.asarray(f, np.float64)
    x = f.reshape(-1, f.shape[-1])
    return x.T if vectors == "positions" else x


def top_vectors(x, count):
    """``(s, V)``: the top ``count`` singular values and right singular
    vectors (columns) of ``x``."""
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    return s[:count], vt[:count].T


def rbf(top, bottom, sigma=8.0):
    d_top, d_bottom, k = top.shape[0], bottom.shape[0], top.shape[1]
    g = np.zeros((d_top, d_bottom, k))
    for a in range(d_top):
        for b in range(d_bottom):
            for j in range(k):
                g[a, b, j] = np.exp(-(top[a, j] - bottom[b, j]) ** 2 / sigma)
    return g


def kdsvd(teacher, student, k=1, candidates=3, sigma=8.0,
          vectors="channels"):
    """``Σ_{i≥1} Σ (G_s^i − G_t^i)²`` per sample."""
    batch = np.asarray(teacher[0]).shape[0]
    out = np.zeros(batch)
    for n in range(batch):
        prev = None
        for t, s in zip(teacher, student):
            s_t, v_t = top_vectors(matrix(t[n], vectors), k)
            for j in range(k):   # the teacher's largest entry positive
                if v_t[np.argmax(np.abs(v_t[:, j])), j] < 0:
                    v_t[:, j] = -v_t[:, j]
            x_s = matrix(s[n], vectors)
            _, v_c = top_vectors(x_s, min(k + candidates, x_s.shape[1]))
            v_s = np.zeros_like(v_t)
            for j in range(k):   # best |cosine| candidate, sign agreeing
                cos = v_c.T @ v_t[:, j]
                best = np.argmax(np.abs(cos))
                v_s[:, j] = np.sign(cos[best]) * v_c[:, best]
            w = s_t / np.linalg.norm(s_t)
            v_t, v_s = v_t * w, v_s * w
            if prev is not None:
                g_t = rbf(v_t, prev[0], sigma)
                g_s = rbf(v_s, prev[1], sigma)
                out[n] += ((g_s - g_t) ** 2).sum()
            prev = (v_t, v_s)
    return out


# ----------------------------------------------------------------------
# DIST+ (Huang et al., TPAMI 2025): DIST's relations on a feature map
# ----------------------------------------------------------------------
def pearson(a, b, eps=1e-8):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    a, b = a - a.mean(), b - b.mean()
    return (a * b).sum() / (np.linalg.norm(a) * np.linalg.norm(b) + eps)


def dist_plus(teacher, student, iota=1.0, kappa=1.0):
    """``ι (1 − ρ_channels(b)) + κ (1 − ρ_spatial)`` per sample; maps
    ``(batch, H, W, C)`` or ``(batch, L, C)``."""
    t = np.asarray(teacher, np.float64)
    s = np.asarray(student, np.float64)
    batch = t.shape[0]
    t = t.reshape(batch, -1, t.shape[-1])     # (batch, N, C)
    s = s.reshape(batch, -1, s.shape[-1])
    n = t.shape[1]
    out = np.zeros(batch)
    for b in range(batch if iota else 0):   # iota=0: widths may differ
        rho = np.mean([pearson(s[b, i], t[b, i]) for i in range(n)])
        out[b] += iota * (1.0 - rho)
    a_t, a_s = t.sum(axis=2), s.sum(axis=2)   # (batch, N)
    rho_s = np.mean([pearson(a_s[:, i], a_t[:, i]) for i in range(n)])
    return out + kappa * (1.0 - rho_s)
