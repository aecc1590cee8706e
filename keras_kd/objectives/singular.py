"""KD-SVD: the correlation of consecutive stages' singular vectors.

Lee, Kim, Song and Kim, "Self-supervised Knowledge Distillation Using
Singular Value Decomposition", ECCV 2018 (arXiv:1807.06819). Each tapped
feature map is compressed to its leading singular vectors; the student
imitates, stage pair by stage pair, an RBF kernel between the vectors of one
stage and those of the stage before it in the teacher.

Where the paper, its authors' TensorFlow code and mdistiller's port differ,
keras-kd follows mdistiller (``mdistiller/distillers/KDSVD.py``) except for
the layout of the maps and the teacher's sign:

* **layout**: the authors reshape a ``(H, W, C)`` map to an ``(H·W, C)``
  matrix, so its right singular vectors run along the channels; keras-kd does
  the same (``vectors="channels"``). mdistiller views a PyTorch
  ``(C, H, W)`` map as ``(C·H, W)``, so its vectors run along the width
  axis. ``vectors="positions"`` takes them along the ``H·W`` positions
  instead (the left singular vectors), which lets a student narrower than its
  teacher be distilled;
* **counts**: the teacher keeps its top ``k`` vectors, the student its top
  ``k + 3`` candidates, and each teacher vector is matched with the student
  candidate of largest ``|cosine|`` whose sign is flipped to agree
  (mdistiller; the authors' code keeps ``k + 1`` of each and flips the
  teacher's sign to the student's);
* **teacher's sign**: a singular vector's sign is arbitrary and the RBF
  between two stages depends on it, so the value would depend on the SVD
  routine of the backend. keras-kd makes each teacher vector's
  largest-magnitude entry positive before aligning the student to it;
* **scale and sum**: both models' vectors are scaled by the teacher's top-k
  singular values normalised to unit length, the RBF is
  ``exp(−(v_i[a] − v_{i−1}[b])² / 8)``, and the loss sums the squared
  differences of the RBFs over entries and stage pairs, per sample (mdistiller
  divides the batch's sum by the batch size; the authors' code uses
  ``tf.nn.l2_loss`` times ``sqrt(k)`` over the batch).

The gradient of an SVD divides by ``s_i² − s_j²``: equal singular values
(a dead channel, a map with fewer positions than channels) give ``0·∞`` and
NaN on JAX and PyTorch even though the loss only uses the leading vectors.
The authors' code replaces TensorFlow's SVD gradient by one truncated to the
leading vectors, with non-finite entries set to zero; mdistiller zeroes
non-finite forward values, which does not clean the gradient. keras-kd keeps
the exact gradient of a slightly regularised problem: the SVD is taken of the
map stacked over ``r · diag(d_1, …, d_D)``, ``d`` spread over ``[1, 2]`` and
``r² = eps · ‖X‖²_F / D`` (a constant for the gradient), whose right
singular vectors are the eigenvectors of ``XᵀX + r² diag(d)²``. Every
singular value is then positive and distinct, the gradient is finite, and
the leading vectors move by ``O(eps)`` (``eps=1e-4``; ``eps=0`` is the plain
SVD).
"""

import keras
from keras import ops

from keras_kd.checks import check_number
from keras_kd.objectives.base import to_float32
from keras_kd.objectives.features import channels_last_maps
from keras_kd.objectives.stages import StagesObjective

VECTORS = ("channels", "positions")


def _matrix(features, vectors):
    """A map as ``(batch, rows, D)`` whose right singular vectors are the
    ones KD-SVD compares (D: channels or positions)."""
    f = to_float32(ops.convert_to_tensor(features))
    if len(f.shape) == 4:
        f = channels_last_maps(f, "KDSVD")
        f = ops.reshape(f, (-1, f.shape[1] * f.shape[2], f.shape[3]))
    elif len(f.shape) != 3:
        raise ValueError(
            "KDSVD needs feature maps (batch, H, W, C) or sequences (batch, "
            f"positions, C), got a tensor of shape {tuple(f.shape)}. Tap "
            "convolutional layers before pooling.")
    if vectors == "positions":
        f = ops.transpose(f, (0, 2, 1))
    return f


def _canonical_sign(v):
    """Flips each column of ``v`` (batch, D, k) so that its entry of largest
    magnitude is positive."""
    top = ops.one_hot(ops.argmax(ops.abs(v), axis=1), v.shape[1], axis=1)
    sign = ops.sign(ops.sum(v * top, axis=1, keepdims=True))
    return v * ops.stop_gradient(ops.where(sign == 0, 1.0, sign))


def singular_vectors(features, count, eps=1e-4, vectors="channels"):
    """The leading singular values and vectors of each sample's map.

    A ``(H, W, C)`` map (or a ``(positions, C)`` sequence) is the matrix
    ``X`` of ``H·W`` rows and ``C`` columns; ``vectors="channels"`` returns
    its top ``count`` right singular vectors (length C), ``"positions"``
    its left ones (length H·W). With ``eps > 0`` the SVD is that of ``X``
    stacked over ``r·diag(d)`` (``d`` spread over ``[1, 2]``,
    ``r² = eps·‖X‖²_F / D``), whose singular values are positive and
    distinct, so that the gradient stays finite (see the module's notes).
    Float32 (Lee et al., ECCV 2018).

    Args:
        features: ``(batch, H, W, C)`` maps or ``(batch, positions, C)``.
        count: how many leading vectors (at most the matrix's smaller
            side: beyond its rank, vectors are arbitrary).
        eps: the relative regulariser (0: the plain SVD).
        vectors: ``"channels"`` or ``"positions"``.

    Returns:
        ``(s, v)``: ``(batch, count)`` singular values in decreasing order
        and ``(batch, D, count)`` unit vectors, one per column.

    Example:

    >>> import numpy as np
    >>> x = np.zeros((1, 2, 2, 3), "float32"); x[..., 1] = 2.0
    >>> s, v = singular_vectors(x, 1, eps=0.0)
    >>> round(float(s[0, 0]), 4), [round(abs(float(a)), 4) for a in v[0, :, 0]]
    (4.0, [0.0, 1.0, 0.0])
    """
    if vectors not in VECTORS:
        raise ValueError(f"vectors must be one of {VECTORS}, got "
                         f"{vectors!r}.")
    x = _matrix(features, vectors)
    d = x.shape[-1]
    most = min(x.shape[1], d)
    if not isinstance(count, int) or not 1 <= count <= most:
        raise ValueError(
            f"KDSVD: cannot keep {count!r} singular vectors of a "
            f"{x.shape[1]}x{d} matrix; keep between 1 and {most} (lower k).")
    if eps:
        scale = ops.sum(ops.square(x), axis=(1, 2), keepdims=True) / d
        r = ops.sqrt(ops.stop_gradient(float(eps) * scale) + 1e-12)
        diag = ops.eye(d, dtype="float32") * ops.linspace(1.0, 2.0, d)
        x = ops.concatenate([x, r * diag[None]], axis=1)
    _, s, vh = ops.svd(x, full_matrices=False, compute_uv=True)
    v = ops.transpose(vh, (0, 2, 1))[:, :, :count]
    return s[:, :count], v


def _aligned(v_student, v_teacher):
    """Each teacher column's student candidate of largest |cosine|, its
    sign made to agree (mdistiller's ``align_rsv``)."""
    cosine = ops.matmul(ops.transpose(v_student, (0, 2, 1)), v_teacher)
    pick = ops.one_hot(ops.argmax(ops.abs(cosine), axis=1),
                       v_student.shape[2], axis=1)
    mask = ops.stop_gradient(pick * ops.sign(cosine))
    return ops.matmul(v_student, mask)


def _rbf(top, bottom, sigma):
    """``exp(−(top[a, j] − bottom[b, j])² / σ)``: (batch, D_i, D_{i−1}, k)."""
    diff = ops.expand_dims(top, 2) - ops.expand_dims(bottom, 1)
    return ops.exp(-ops.square(diff) / sigma)


def kdsvd_loss(teacher_features, student_features, k=1, candidates=3,
               sigma=8.0, eps=1e-4, vectors="channels"):
    """KD-SVD loss, one value per sample, over two or more stages.

    For stage ``i`` of the teacher, ``V_t^i`` holds its top ``k`` singular
    vectors (:func:`singular_vectors`, each one's largest entry made
    positive) and ``σ^i`` its top ``k`` singular values normalised to unit
    length; the student's top ``k + candidates`` vectors (at most the
    smaller side of its matrix, as in the authors' code) are matched to the
    teacher's by largest ``|cosine|`` and their sign flipped to agree,
    giving ``V_s^i``. Both are scaled column by column by the teacher's
    ``σ^i``, and

        G^i[a, b, j] = exp(−(V^i[a, j] − V^{i−1}[b, j])² / sigma)
        loss = Σ_{i ≥ 1} Σ_{a, b, j} (G_s^i − G_t^i)²

    with the teacher's side constant (``stop_gradient``). (Lee, Kim, Song and
    Kim, "Self-supervised Knowledge Distillation Using Singular Value
    Decomposition", ECCV 2018; mdistiller's settings ``k=1``, ``sigma=8``;
    the module's notes say where the paper and the codes differ.)

    Args:
        teacher_features: list of the teacher's maps, shallow to deep.
        student_features: the student's, as many, with the teacher's
            channel counts (``vectors="channels"``) or positions
            (``"positions"``) stage by stage.
        k: the teacher's singular vectors per stage.
        candidates: the student's extra candidates for the matching.
        sigma: the RBF's width.
        eps: the SVD's relative regulariser (0: the plain SVD).
        vectors: ``"channels"`` or ``"positions"``.

    Returns:
        A ``(batch,)`` float32 tensor.

    Example:

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> t = [rng.normal(size=(2, 4, 4, 3)).astype("float32"),
    ...      rng.normal(size=(2, 2, 2, 5)).astype("float32")]
    >>> [round(float(v), 6) for v in kdsvd_loss(t, t)]
    [0.0, 0.0]
    """
    if len(teacher_features) != len(student_features) or \
            len(teacher_features) < 2:
        raise ValueError(
            "KDSVD correlates consecutive stages: give the same number (two "
            f"or more) of teacher and student maps, got "
            f"{len(teacher_features)} and {len(student_features)}.")
    sigma = check_number("sigma", sigma, "pass e.g. sigma=8.0.",
                         allow_zero=False)
    total, previous = 0.0, None
    for i, (t, s) in enumerate(zip(teacher_features, student_features)):
        t = ops.stop_gradient(to_float32(ops.convert_to_tensor(t)))
        s_t, v_t = singular_vectors(t, k, eps, vectors)
        v_t = _canonical_sign(v_t)
        count = min(k + int(candidates), *_matrix(s, vectors).shape[1:])
        _, v_s = singular_vectors(s, count, eps, vectors)
        if v_s.shape[1] != v_t.shape[1]:
            raise ValueError(
                f"KDSVD: stage {i} has singular vectors of length "
                f"{v_t.shape[1]} in the teacher and {v_s.shape[1]} in the "
                f"student ({vectors}); tap layers with equal "
                + ("channel counts, or use vectors='positions' for maps of "
                   "the same size." if vectors == "channels" else
                   "spatial sizes."))
        v_s = _aligned(v_s, v_t)
        norm = ops.sqrt(ops.sum(ops.square(s_t), axis=1, keepdims=True))
        weight = ops.stop_gradient(
            ops.expand_dims(s_t / ops.maximum(norm, 1e-12), 1))
        v_t, v_s = ops.stop_gradient(v_t * weight), v_s * weight
        if previous is not None:
            g_t = ops.stop_gradient(_rbf(v_t, previous[0], sigma))
            g_s = _rbf(v_s, previous[1], sigma)
            total = total + ops.sum(ops.square(g_s - g_t), axis=(1, 2, 3))
        previous = (v_t, v_s)
    return total


@keras.saving.register_keras_serializable(package="keras_kd")
class KDSVD(StagesObjective):
    """KD-SVD: the student imitates how the teacher's leading singular
    vectors relate from one stage to the next.

    ``weight · Σ_i Σ (G_s^i − G_t^i)²`` per sample, ``G^i`` the RBF kernel
    between the top singular vectors of stage ``i`` and of stage ``i − 1``
    (:func:`kdsvd_loss`; Lee et al., ECCV 2018). Taps two or more layers of
    each model, shallow to deep, with equal channel counts stage by stage
    (``vectors="channels"``, the paper's) or equal spatial sizes
    (``"positions"``). mdistiller's CIFAR-100 setting: ``k=1``, weight 1
    next to cross-entropy (weight 1), the stages' outputs but the stem. No
    trainable parts. Cost per sample and stage: an SVD of a ``(H·W + C) × C``
    matrix and an RBF of ``C_i · C_{i−1} · k`` entries; with
    ``vectors="positions"``, ``(C + H·W) × H·W`` and ``(H·W)_i ·
    (H·W)_{i−1} · k``: keep that for small maps.

    Args:
        teacher_layers: names of the teacher's layers, shallow to deep.
        student_layers: the student's, as many.
        k: singular vectors kept per teacher stage.
        candidates: extra student vectors the matching chooses among.
        sigma: the RBF's width (8 in the paper).
        eps: relative SVD regulariser that keeps the gradient finite.
        vectors: ``"channels"`` or ``"positions"``.
        weight: the term's weight in the total loss.

    Example:

    >>> import keras_kd as kd
    >>> svd = kd.objectives.KDSVD(["t_conv1", "t_conv2"],
    ...                           ["s_conv1", "s_conv2"])
    >>> svd.name, svd.get_config()["k"]
    ('kdsvd', 1)
    """

    def __init__(self, teacher_layers, student_layers, k=1, candidates=3,
                 sigma=8.0, eps=1e-4, vectors="channels", weight=1.0,
                 name="kdsvd", **kwargs):
        super().__init__(teacher_layers, student_layers, weight=weight,
                         name=name, **kwargs)
        if len(self.teacher_layers) < 2:
            raise ValueError(
                "KDSVD correlates consecutive stages: name two or more "
                f"layers of each model, got {self.teacher_layers}.")
        for arg, value in (("k", k), ("candidates", candidates)):
            if not isinstance(value, int) or isinstance(value, bool) or \
                    value < (1 if arg == "k" else 0):
                raise ValueError(f"KDSVD: {arg} must be a whole number "
                                 f"(k ≥ 1, candidates ≥ 0), got {value!r}.")
        if vectors not in VECTORS:
            raise ValueError(f"KDSVD: vectors must be one of {VECTORS}, "
                             f"got {vectors!r}.")
        self.k, self.candidates, self.vectors = k, candidates, vectors
        self.sigma = check_number("sigma", sigma, "pass e.g. sigma=8.0.",
                                  allow_zero=False)
        self.eps = check_number("eps", eps, "pass e.g. eps=1e-4 (0: the "
                                "plain SVD).")

    def _matrix_shape(self, shape):
        """(rows, vector length) of a tapped shape's matrix, or None."""
        if len(shape) == 4:
            if keras.config.image_data_format() == "channels_first":
                shape = (shape[0], shape[2], shape[3], shape[1])
            shape = (shape[0], shape[1] * shape[2], shape[3])
        if len(shape) != 3:
            return None
        rows, d = shape[1], shape[2]
        return (d, rows) if self.vectors == "positions" else (rows, d)

    def build_for(self, teacher_shapes, student_shapes):
        what = ("channel counts" if self.vectors == "channels"
                else "spatial sizes")
        for i, (t, s) in enumerate(zip(teacher_shapes, student_shapes)):
            t_m, s_m = self._matrix_shape(t), self._matrix_shape(s)
            problem = None
            if t_m is None or s_m is None:
                problem = ("KDSVD needs maps (batch, H, W, C) or (batch, "
                           "positions, C); tap convolutional layers before "
                           "pooling.")
            elif t_m[1] != s_m[1]:
                problem = (f"KDSVD needs equal {what} stage by stage; tap "
                           "such layers" + (
                               ", or use vectors='positions' for maps of "
                               "the same size." if self.vectors == "channels"
                               else "."))
            elif min(t_m + s_m) < self.k:
                problem = (f"KDSVD keeps k={self.k} singular vectors, more "
                           "than these maps have; lower k.")
            if problem:
                raise ValueError(
                    f"KDSVD: teacher layer {self.teacher_layers[i]!r} has "
                    f"shape {tuple(t)} and student layer "
                    f"{self.student_layers[i]!r} has {tuple(s)}. {problem}")
        self.built = True

    def compute(self, teacher_features, student_features, training=False):
        return kdsvd_loss(teacher_features, student_features, self.k,
                          self.candidates, self.sigma, self.eps,
                          self.vectors)

    def get_config(self):
        config = super().get_config()
        config.update(k=self.k, candidates=self.candidates, sigma=self.sigma,
                      eps=self.eps, vectors=self.vectors)
        return config
