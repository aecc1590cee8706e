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


def avg_pool(f, size):
    """Mean over non-overlapping windows, down to ``size`` = (H', W')."""
    f = _f64(f)
    b, h, w, c = f.shape
    ph, pw = h // size[0], w // size[1]
    out = np.zeros((b, size[0], size[1], c))
    for i in range(size[0]):
        for j in range(size[1]):
            out[:, i, j] = f[:, i * ph:(i + 1) * ph, j * pw:(j + 1) * pw].mean(
                axis=(1, 2))
    return out


def hcl(t_maps, s_maps, levels=(4, 2, 1)):
    """ReviewKD's hierarchical context loss (authors' ``hcl``), per sample."""
    total = 0.0
    for t, s in zip(t_maps, s_maps):
        t, s = _f64(t), _f64(s)
        if s.ndim == 3:   # (batch, L, C) as L × 1 maps
            t, s = t[:, :, None], s[:, :, None]
        h = s.shape[1]
        loss = ((s - t) ** 2).mean(axis=(1, 2, 3))
        cnt, tot = 1.0, 1.0
        for level in levels:
            if level >= h:
                continue
            size = (level, min(level, s.shape[2]))   # 1-D maps: l × 1
            ps, pt = avg_pool(s, size), avg_pool(t, size)
            cnt /= 2.0
            loss = loss + ((ps - pt) ** 2).mean(axis=(1, 2, 3)) * cnt
            tot += cnt
        total = total + loss / tot
    return total


def conv2d_same(x, kernel, bias=None):
    """Stride-1 'same' convolution, kernel ``(kh, kw, C_in, C_out)``."""
    x, kernel = _f64(x), _f64(kernel)
    kh, kw = kernel.shape[:2]
    pad = np.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
    b, h, w, _ = x.shape
    out = np.zeros((b, h, w, kernel.shape[3]))
    for i in range(h):
        for j in range(w):
            patch = pad[:, i:i + kh, j:j + kw, :]
            out[:, i, j] = np.einsum("bhwc,hwco->bo", patch, kernel)
    return out if bias is None else out + _f64(bias)


def batchnorm(x, gamma, beta, mean, var, eps=1e-3):
    """Inference-mode batch normalisation (Keras's default epsilon)."""
    return (_f64(x) - mean) / np.sqrt(_f64(var) + eps) * gamma + beta


def nearest(x, size):
    """PyTorch's nearest interpolation by integer factors."""
    x = _f64(x)
    h, w = x.shape[1:3]
    rows = [int(np.floor(i * h / size[0])) for i in range(size[0])]
    cols = [int(np.floor(j * w / size[1])) for j in range(size[1])]
    return x[:, rows][:, :, cols]


def abf(x, residual, out_size, p):
    """ReviewKD's ABF module (authors' code), inference mode; ``p`` holds
    the weights: conv1, bn1 (4 arrays), [att_kernel, att_bias], conv2, bn2."""
    x = batchnorm(conv2d_same(x, p["conv1"]), *p["bn1"])
    if residual is not None:
        residual = nearest(residual, x.shape[1:3])
        z = conv2d_same(np.concatenate([x, residual], -1), p["att_kernel"],
                        p["att_bias"])
        a = 1.0 / (1.0 + np.exp(-z))
        x = x * a[..., 0:1] + residual * a[..., 1:2]
    if x.shape[1:3] != tuple(out_size):
        x = nearest(x, out_size)
    return batchnorm(conv2d_same(x, p["conv2"]), *p["bn2"]), x


def reviewkd(t_maps, s_maps, params, levels=(4, 2, 1)):
    """ReviewKD: ABFs from the deepest stage up, then HCL, per sample."""
    out, residual = [None] * len(s_maps), None
    for i in reversed(range(len(s_maps))):
        out[i], residual = abf(s_maps[i], residual, t_maps[i].shape[1:3],
                               params[i])
    return hcl(t_maps, out, levels)


def conv_blocks(x, blocks):
    """Conv 3×3 ('same') + inference BN + LeakyReLU(0.1) blocks; each block
    is ``(kernel, bias, [gamma, beta, mean, var])``."""
    for kernel, bias, bn in blocks:
        x = batchnorm(conv2d_same(x, kernel, bias), *bn)
        x = np.where(x > 0, x, 0.1 * x)
    return x


def ft(factor_t, factor_s):
    """Kim et al. 2018 with the authors' mean: ``mean|u(F_S) − u(F_T)|``."""
    def u(f):
        f = _f64(f).reshape(len(f), -1)
        return f / np.linalg.norm(f, axis=1, keepdims=True)
    return np.abs(u(factor_s) - u(factor_t)).mean(axis=1)


def linear_cka(x, y):
    """Kornblith et al. 2019, feature-space form of linear CKA:
    ``‖Yᵀ X‖²_F / (‖Xᵀ X‖_F ‖Yᵀ Y‖_F)`` on centred, flattened rows."""
    x = _f64(x).reshape(len(x), -1)
    y = _f64(y).reshape(len(y), -1)
    x = x - x.mean(axis=0)
    y = y - y.mean(axis=0)
    return (np.linalg.norm(y.T @ x) ** 2
            / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))
