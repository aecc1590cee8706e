"""Independent float64 NumPy references of the single-pair feature methods
(NST, ICKD, CCKD, AB, OFD, VID, MGD, PAD-L2, SRD), written from the papers
with explicit loops where they make the formula plain. Feature maps are
channels-last: ``(batch, H, W, C)`` or ``(batch, L, C)``."""

import math

import numpy as np


def _f64(x):
    return np.asarray(x, dtype="float64")


def _channels_by_positions(f):
    """(batch, C, N) from a channels-last map."""
    f = _f64(f)
    return f.reshape(f.shape[0], -1, f.shape[-1]).transpose(0, 2, 1)


def nst(t, s):
    """Huang & Wang 2017, eq. 4 (d=2, c=0), means over channel pairs."""
    out = []
    for ft, fs in zip(_channels_by_positions(t), _channels_by_positions(s)):
        ft = ft / np.linalg.norm(ft, axis=1, keepdims=True)
        fs = fs / np.linalg.norm(fs, axis=1, keepdims=True)
        k = lambda a, b: np.mean([[(x @ y) ** 2 for y in b] for x in a])
        out.append(k(ft, ft) + k(fs, fs) - 2.0 * k(ft, fs))
    return np.array(out)


def ickd(t, s):
    """Liu et al. 2021 (authors' code): row-normalised Gram, sum / C."""
    out = []
    for ft, fs in zip(_channels_by_positions(t), _channels_by_positions(s)):
        gt, gs = ft @ ft.T, fs @ fs.T
        gt = gt / np.linalg.norm(gt, axis=1, keepdims=True)
        gs = gs / np.linalg.norm(gs, axis=1, keepdims=True)
        out.append(np.sum((gs - gt) ** 2) / ft.shape[0])
    return np.array(out)


def cckd(t, s, kernel="gaussian", gamma=0.4, order=2):
    """Peng et al. 2019, eq. 6 and 9 on L2-normalised embeddings."""
    def matrix(e):
        e = _f64(e).reshape(len(e), -1)
        e = e / np.linalg.norm(e, axis=1, keepdims=True)
        b = len(e)
        k = np.zeros((b, b))
        for i in range(b):
            for j in range(b):
                x = e[i] @ e[j]
                if kernel == "bilinear":
                    k[i, j] = x
                else:
                    k[i, j] = math.exp(-2 * gamma) * sum(
                        (2 * gamma) ** p / math.factorial(p) * x ** p
                        for p in range(order + 1))
        return k
    b = len(t)
    return np.sum((matrix(s) - matrix(t)) ** 2) / b ** 2


def ab(t, s, margin=1.0):
    """Heo et al. AAAI 2019, eq. 6 (squared hinges), summed per sample."""
    t, s = _f64(t), _f64(s)
    rho = (t > 0).astype("float64")
    per = rho * np.maximum(0, margin - s) ** 2 + (1 - rho) * np.maximum(
        0, margin + s) ** 2
    return per.reshape(len(t), -1).sum(1)


def ofd_margin(gamma, beta):
    """E[x | x < 0] for x ~ N(beta, gamma²) (Heo et al. ICCV 2019, eq. 3),
    by numerical integration; −3|γ| when P(x < 0) <= 0.001."""
    out = []
    for g, b in zip(gamma, beta):
        s = abs(g)
        x = np.linspace(b - 12 * s, 0.0, 200001)
        pdf = np.exp(-((x - b) / s) ** 2 / 2) / (s * math.sqrt(2 * math.pi))
        mass = np.trapezoid(pdf, x)
        out.append(np.trapezoid(x * pdf, x) / mass if mass > 0.001
                   else -3 * s)
    return np.array(out)


def ofd(t, s, margin):
    """Heo et al. ICCV 2019, eq. 2-4: partial L2 to max(t, m), per sample."""
    t, s = _f64(t), _f64(s)
    target = np.maximum(t, np.broadcast_to(_f64(margin), t.shape))
    keep = (s > target) | (target > 0)
    return (((s - target) ** 2) * keep).reshape(len(t), -1).sum(1)


def softplus(x):
    return np.log1p(np.exp(_f64(x)))


def vid(t, mean, variance):
    """Ahn et al. 2019, eq. 5 without constants, mean over elements."""
    t, mean, var = _f64(t), _f64(mean), _f64(variance)
    nll = 0.5 * ((t - mean) ** 2 / var + np.log(var))
    return nll.reshape(len(t), -1).mean(1)


def dense(x, kernel, bias=None, relu=False):
    y = _f64(x) @ _f64(kernel)
    if bias is not None:
        y = y + _f64(bias)
    return np.maximum(y, 0) if relu else y


def conv_same(x, kernel, bias, relu=False):
    """A 'same' convolution, stride 1, channels-last, 1-D or 2-D."""
    x, kernel = _f64(x), _f64(kernel)
    if x.ndim == 3:
        x, kernel = x[:, None], kernel[None]
        return conv_same(x, kernel, bias, relu)[:, 0]
    kh, kw = kernel.shape[:2]
    ph, pw = kh // 2, kw // 2
    padded = np.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    h, w = x.shape[1:3]
    out = np.zeros(x.shape[:3] + (kernel.shape[-1],))
    for i in range(kh):
        for j in range(kw):
            out += padded[:, i:i + h, j:j + w] @ kernel[i, j]
    out += _f64(bias)
    return np.maximum(out, 0) if relu else out


def mgd(t, generated):
    """Yang et al. 2022, eq. 3: summed squared error per sample."""
    d = (_f64(generated) - _f64(t)) ** 2
    return d.reshape(len(d), -1).sum(1)


def batchnorm_inference(x, gamma, beta, mean, var, eps=1e-3):
    return (_f64(x) - mean) / np.sqrt(_f64(var) + eps) * gamma + beta


def pad_l2(t, s, log_var, eps=1e-6):
    """Zhang et al. 2020, eq. 7 (per-dimension variance), mean over dims."""
    t, s, v = (_f64(a).reshape(len(a), -1) for a in (t, s, log_var))
    return np.mean((t - s) ** 2 / (eps + np.exp(v)) + v, axis=1)


def log_softmax(z):
    z = _f64(z)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def srd(h_t, h_s, kernel, bias, alpha=1.0, beta=1.0, T=1.0):
    """Yang et al. ICLR 2021: α·MSE(features) + β·T²·KL(teacher ‖ student)
    of the teacher's classifier on both representations."""
    h_t, h_s = _f64(h_t), _f64(h_s)
    out = alpha * ((h_s - h_t) ** 2).mean(1)
    lt = log_softmax((h_t @ kernel + bias) / T)
    ls = log_softmax((h_s @ kernel + bias) / T)
    return out + beta * T * T * (np.exp(lt) * (lt - ls)).sum(1)
