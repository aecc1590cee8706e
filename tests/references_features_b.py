"""Independent NumPy references for the multi-stage feature methods (FSP,
ReviewKD's HCL, FT), CRD and linear CKA.

Written from the papers' formulas, plainly, in float64 NumPy, without
keras-kd or Keras; loops where they read closer to the formula. Feature maps
are channels last, ``(batch, H, W, C)``.
"""

import numpy as np


def _f64(x):
    return np.asarray(x, dtype=np.float64)


def max_pool(f, size):
    """Max over non-overlapping windows, down to ``size`` = (H', W')."""
    f = _f64(f)
    b, h, w, c = f.shape
    ph, pw = h // size[0], w // size[1]
    out = np.zeros((b, size[0], size[1], c))
    for i in range(size[0]):
        for j in range(size[1]):
            out[:, i, j] = f[:, i * ph:(i + 1) * ph, j * pw:(j + 1) * pw].max(
                axis=(1, 2))
    return out


def fsp_matrix(f1, f2):
    """Yim et al. 2017: ``G_ij = Σ_{h,w} F1[h,w,i] F2[h,w,j] / (H W)``, the
    larger map max-pooled to the smaller first."""
    f1, f2 = _f64(f1), _f64(f2)
    size = (min(f1.shape[1], f2.shape[1]), min(f1.shape[2], f2.shape[2]))
    if f1.shape[1:3] != size:
        f1 = max_pool(f1, size)
    if f2.shape[1:3] != size:
        f2 = max_pool(f2, size)
    b, h, w = f1.shape[:3]
    g = np.zeros((b, f1.shape[3], f2.shape[3]))
    for n in range(b):
        for i in range(f1.shape[3]):
            for j in range(f2.shape[3]):
                g[n, i, j] = np.sum(f1[n, :, :, i] * f2[n, :, :, j]) / (h * w)
    return g


def fsp(teacher_pairs, student_pairs, weights=None):
    """``Σ_k λ_k ‖G_t^k − G_s^k‖²_F`` per sample (paper, eq. 2)."""
    weights = weights or [1.0] * len(teacher_pairs)
    total = 0.0
    for lam, (t1, t2), (s1, s2) in zip(weights, teacher_pairs, student_pairs):
        d = fsp_matrix(t1, t2) - fsp_matrix(s1, s2)
        total = total + lam * (d ** 2).sum(axis=(1, 2))
    return total


def unit(x):
    x = _f64(x)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def crd(t, s, t_bank, s_bank, tau=0.07, num_data=None, z_t=None, z_s=None):
    """Tian et al. 2020 with the authors' ContrastMemory / ContrastLoss: per
    sample, NCE of the student anchor over [teacher positive, teacher bank]
    plus NCE of the teacher anchor over [student positive, student bank].
    Returns ``(loss, z_t, z_s)``."""
    t, s, t_bank, s_bank = _f64(t), _f64(s), _f64(t_bank), _f64(s_bank)
    k = t_bank.shape[0]
    n = num_data or k
    noise = k / n

    def scores(anchor, positive, bank):
        out = np.zeros((anchor.shape[0], k + 1))
        for i in range(anchor.shape[0]):
            out[i, 0] = np.exp(anchor[i] @ positive[i] / tau)
            for j in range(k):
                out[i, j + 1] = np.exp(anchor[i] @ bank[j] / tau)
        return out

    def nce(p):
        eps = 1e-7
        return -(np.log(p[:, 0] / (p[:, 0] + noise + eps))
                 + np.log(noise / (p[:, 1:] + noise + eps)).sum(axis=1))

    out_s, out_t = scores(s, t, t_bank), scores(t, s, s_bank)
    z_s = out_s.mean() * n if z_s is None else z_s
    z_t = out_t.mean() * n if z_t is None else z_t
    return nce(out_s / z_s) + nce(out_t / z_t), z_t, z_s
