"""FSP: the flow of the solution procedure between two layers of each model."""

import keras
from keras import ops

from keras_kd.objectives.features import channels_last_maps
from keras_kd.objectives.stages import StagesObjective


def _pooled_to(f, size):
    """Max-pools a map down to ``size`` (H, W) by an integer factor."""
    h, w = f.shape[1], f.shape[2]
    if (h, w) == tuple(size):
        return f
    if h % size[0] or w % size[1]:
        raise ValueError(
            f"FSP: a map of spatial size {(h, w)} cannot be max-pooled to "
            f"{tuple(size)} by an integer factor. Pair layers whose sizes "
            "divide each other (e.g. 32x32 with 16x16).")
    pool = (h // size[0], w // size[1])
    return ops.max_pool(f, pool, strides=pool, padding="valid",
                        data_format="channels_last")


def fsp_matrix(first, second):
    """The FSP (Gram) matrix of two feature maps, per sample.

        G_ij = Σ_{h,w} F1[h, w, i] · F2[h, w, j] / (H · W)

    (Yim et al., "A Gift from Knowledge Distillation: Fast Optimization,
    Network Minimization and Transfer Learning", CVPR 2017). When the two
    maps differ in spatial size, the larger is max-pooled to the smaller
    (torchdistill's adaptive max pooling; here by an integer factor).
    Float32, channels last (``channels_first`` maps are transposed).

    Args:
        first: ``(batch, H, W, C1)`` tensor.
        second: ``(batch, H', W', C2)`` tensor.

    Returns:
        A ``(batch, C1, C2)`` float32 tensor.

    Example:

    >>> import numpy as np
    >>> g = fsp_matrix(np.ones((2, 4, 4, 3)), np.ones((2, 2, 2, 5)))
    >>> tuple(g.shape), float(g[0, 0, 0])
    ((2, 3, 5), 1.0)
    """
    a = channels_last_maps(first, "FSP")
    b = channels_last_maps(second, "FSP")
    size = (min(a.shape[1], b.shape[1]), min(a.shape[2], b.shape[2]))
    a, b = _pooled_to(a, size), _pooled_to(b, size)
    hw = size[0] * size[1]
    a = ops.reshape(a, (ops.shape(a)[0], hw, a.shape[-1]))
    b = ops.reshape(b, (ops.shape(b)[0], hw, b.shape[-1]))
    return ops.matmul(ops.transpose(a, (0, 2, 1)), b) / float(hw)


def fsp_loss(teacher_pairs, student_pairs, weights=None):
    """FSP loss, one value per sample: ``Σ_k λ_k ‖G_t^k − G_s^k‖²_F``.

    ``G^k`` is :func:`fsp_matrix` of the k-th pair of layers of each model;
    the teacher's matrices are constants (``stop_gradient``). This is the
    paper's squared L2 (Yim et al., CVPR 2017, eq. 2, with ``λ_k = 1``);
    torchdistill's ``FSPLoss`` sums unsquared column norms instead.

    Args:
        teacher_pairs: list of ``(first, second)`` teacher feature maps.
        student_pairs: list of ``(first, second)`` student feature maps,
            with the teacher's channel counts pair by pair.
        weights: the ``λ_k`` (default 1 each).

    Returns:
        A ``(batch,)`` float32 tensor.

    Example:

    >>> import numpy as np
    >>> t = [(np.ones((2, 4, 4, 3)), np.ones((2, 4, 4, 5)))]
    >>> [float(v) for v in fsp_loss(t, t)]
    [0.0, 0.0]
    """
    weights = [1.0] * len(teacher_pairs) if weights is None else weights
    total = 0.0
    for lam, (t1, t2), (s1, s2) in zip(weights, teacher_pairs,
                                        student_pairs):
        g_t = ops.stop_gradient(fsp_matrix(t1, t2))
        g_s = fsp_matrix(s1, s2)
        if g_t.shape[1:] != g_s.shape[1:]:
            raise ValueError(
                f"FSP: the teacher's matrix is {tuple(g_t.shape[1:])} and the "
                f"student's {tuple(g_s.shape[1:])}; FSP compares layers with "
                "the same channel counts in both models (e.g. a deep and a "
                "shallow ResNet of the same width).")
        total = total + float(lam) * ops.sum(ops.square(g_t - g_s),
                                             axis=(1, 2))
    return total


def _pairs(arg, pairs):
    if isinstance(pairs, str) or not isinstance(pairs, (list, tuple)) or \
            not pairs or not all(isinstance(p, (list, tuple)) and len(p) == 2
                                 for p in pairs):
        raise ValueError(
            f"{arg} must be a non-empty list of (first_layer, second_layer) "
            f"name pairs, got {pairs!r}; e.g. [('block1_in', 'block1_out')].")
    return [tuple(p) for p in pairs]


@keras.saving.register_keras_serializable(package="keras_kd")
class FSP(StagesObjective):
    """FSP: the student imitates the teacher's flow between layer pairs.

    ``weight · Σ_k λ_k ‖G(t_k1, t_k2) − G(s_k1, s_k2)‖²_F`` per sample
    (:func:`fsp_loss`, :func:`fsp_matrix`; Yim et al., CVPR 2017). Each pair
    names two layers of the same model, typically the input and the output
    of a stage; the k-th teacher pair and the k-th student pair must have
    the same channel counts. The paper trains with FSP alone first, then
    with the task loss; with ``Distiller.compile`` both are combined
    (``alpha`` weighs the hard loss).

    Args:
        teacher_pairs: ``[(first_layer, second_layer), ...]`` of the teacher.
        student_pairs: the student's pairs, as many.
        weights: ``λ_k`` per pair (default 1 each).
        weight: the term's weight in the total loss.

    Example:

    >>> import keras_kd as kd
    >>> fsp = kd.objectives.FSP([("t_conv1", "t_conv2")],
    ...                         [("s_conv1", "s_conv2")])
    >>> fsp.get_config()["student_pairs"]
    [['s_conv1', 's_conv2']]
    """

    def __init__(self, teacher_pairs, student_pairs, weights=None,
                 weight=1.0, name="fsp", **kwargs):
        teacher_pairs = _pairs("teacher_pairs", teacher_pairs)
        student_pairs = _pairs("student_pairs", student_pairs)
        super().__init__([n for p in teacher_pairs for n in p],
                         [n for p in student_pairs for n in p],
                         weight=weight, name=name, **kwargs)
        if weights is not None and len(weights) != len(teacher_pairs):
            raise ValueError(
                f"FSP: {len(weights)} weights for {len(teacher_pairs)} "
                "pairs; give one weight per pair (or none).")
        self.pair_weights = None if weights is None else [
            float(w) for w in weights]

    def build_for(self, teacher_shapes, student_shapes):
        for k in range(0, len(teacher_shapes), 2):
            t_ch = (teacher_shapes[k][-1], teacher_shapes[k + 1][-1])
            s_ch = (student_shapes[k][-1], student_shapes[k + 1][-1])
            if keras.config.image_data_format() == "channels_first":
                t_ch = (teacher_shapes[k][1], teacher_shapes[k + 1][1])
                s_ch = (student_shapes[k][1], student_shapes[k + 1][1])
            if len(teacher_shapes[k]) != 4 or t_ch != s_ch:
                raise ValueError(
                    f"FSP: teacher pair {self.teacher_layers[k:k + 2]} has "
                    f"shapes {teacher_shapes[k:k + 2]} and student pair "
                    f"{self.student_layers[k:k + 2]} has "
                    f"{student_shapes[k:k + 2]}. FSP needs feature maps with "
                    "the same channel counts pair by pair; tap such layers, "
                    "or use kd.FitNet (it learns an adapter).")
        self.built = True

    def compute(self, teacher_features, student_features, training=False):
        t = list(zip(teacher_features[::2], teacher_features[1::2]))
        s = list(zip(student_features[::2], student_features[1::2]))
        return fsp_loss(t, s, self.pair_weights)

    def get_config(self):
        config = super().get_config()
        for key in ("teacher_layers", "student_layers"):
            config.pop(key)
        config.update(
            teacher_pairs=[list(p) for p in zip(self.teacher_layers[::2],
                                                self.teacher_layers[1::2])],
            student_pairs=[list(p) for p in zip(self.student_layers[::2],
                                                self.student_layers[1::2])],
            weights=self.pair_weights)
        return config
