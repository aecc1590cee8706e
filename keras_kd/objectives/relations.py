"""Relation objectives: the student imitates how the teacher relates samples.

Instead of matching each sample's output, these objectives compare the
*structure* of a batch of embeddings (usually the penultimate layer: the
pooled features before the classifier): pairwise distances and angles (RKD),
the batch similarity matrix (SP) or a probability distribution over the
batch's neighbours (PKT). The teacher's and the student's embeddings may have
different widths; no adapter is needed.

Each loss couples the samples of a batch, so it is a scalar for the whole
batch (``per_sample = False``): ``sample_weight`` and label masks do not
apply to it. A relation needs at least two samples: a batch of one raises a
ValueError when its size is known when the loss is built (NumPy inputs,
eager execution, JAX and PyTorch, TensorFlow with a fixed batch size). Under
a TensorFlow graph traced with an unknown batch size the check cannot run; a
batch of one then gives a loss of 0 (no relation, no gradient). Batch with
``drop_remainder=True`` (or a batch size that leaves no single-sample
remainder) to avoid it.
"""

import keras
from keras import ops

from keras_kd.objectives.base import to_float32
from keras_kd.objectives.features import FeatureObjective


def _flatten(features, name):
    f = to_float32(ops.convert_to_tensor(features))
    batch = f.shape[0]
    if batch is not None and batch < 2:
        raise ValueError(
            f"{name} compares the samples of a batch with each other and got "
            f"a batch of {batch}. Use batches of at least 2 samples (e.g. "
            "batch_size=64), and drop a last incomplete batch of one "
            "(tf.data: .batch(n, drop_remainder=True); NumPy: pick a "
            "batch_size that does not leave one sample over)."
        )
    if len(f.shape) != 2:
        f = ops.reshape(f, (ops.shape(f)[0], -1))
    return f


def _l2_normalize(x, axis=-1, eps=1e-12):
    """``x / max(‖x‖, eps)``, with a finite gradient at x = 0."""
    sq = ops.sum(ops.square(x), axis=axis, keepdims=True)
    return x / ops.sqrt(ops.maximum(sq, eps * eps))


def _huber(x, y):
    """Mean smooth-L1 (Huber, delta 1) between two tensors."""
    d = ops.abs(x - y)
    return ops.mean(ops.where(d < 1.0, 0.5 * ops.square(d), d - 0.5))


def _normalized_distances(e):
    """Pairwise Euclidean distances divided by the mean non-zero distance."""
    sq = ops.sum(ops.square(e), axis=-1)
    d2 = ops.expand_dims(sq, 1) + ops.expand_dims(sq, 0) - 2.0 * ops.matmul(
        e, ops.transpose(e))
    n = ops.shape(e)[0]
    off = 1.0 - ops.eye(n, dtype="float32")
    d = ops.sqrt(ops.maximum(d2, 1e-12)) * off
    positive = ops.sum(ops.cast(d > 0, "float32"))
    mean = ops.sum(d) / ops.maximum(positive, 1.0)
    return d / ops.maximum(mean, 1e-12)


def rkd_distance_loss(teacher_features, student_features):
    """RKD distance term: Huber between normalised pairwise distances.

        ψ_D(i, j) = ‖e_i − e_j‖ / μ,  μ = mean over pairs i ≠ j
        loss = mean_{i,j} huber(ψ_D^s(i, j) − ψ_D^t(i, j))

    (Park et al., "Relational Knowledge Distillation", CVPR 2019,
    arXiv:1904.05068; Huber with δ=1 and the mean over all ``b²`` entries as
    in the authors' code). Features are flattened per sample; the teacher's
    side is a constant. Returns a float32 scalar.

    Example:

    >>> import numpy as np
    >>> e = np.random.rand(4, 8)
    >>> float(rkd_distance_loss(e, 3.0 * e)) < 1e-6
    True
    """
    t = ops.stop_gradient(_flatten(teacher_features, "RKD"))
    s = _flatten(student_features, "RKD")
    return _huber(_normalized_distances(s), _normalized_distances(t))


def _angles(e):
    """Cosines ``<(e_j − e_i)/‖·‖, (e_k − e_i)/‖·‖>`` for all triplets."""
    diff = ops.expand_dims(e, 0) - ops.expand_dims(e, 1)   # [i, j] = e_j − e_i
    unit = _l2_normalize(diff, axis=-1)
    return ops.matmul(unit, ops.transpose(unit, (0, 2, 1)))


def rkd_angle_loss(teacher_features, student_features):
    """RKD angle term: Huber between the angles of all sample triplets.

        ψ_A(i, j, k) = cos ∠(e_j − e_i, e_k − e_i)
        loss = mean_{i,j,k} huber(ψ_A^s − ψ_A^t)

    (Park et al., CVPR 2019; degenerate triplets with a repeated sample give
    0 on both sides, as in the authors' code). Memory grows as ``b³·D``: keep
    batches moderate (≤ 128). Returns a float32 scalar.

    Example:

    >>> import numpy as np
    >>> e = np.random.rand(4, 8)
    >>> float(rkd_angle_loss(e, 2.0 * e + 1.0)) < 1e-6
    True
    """
    t = ops.stop_gradient(_flatten(teacher_features, "RKD"))
    s = _flatten(student_features, "RKD")
    return _huber(_angles(s), _angles(t))


def rkd_loss(teacher_features, student_features, distance_weight=25.0,
             angle_weight=50.0):
    """Relational KD: ``w_d · distance + w_a · angle`` (Park et al., CVPR 2019).

    See :func:`rkd_distance_loss` and :func:`rkd_angle_loss`. Usual weights:
    25 (distance) and 50 (angle). Returns a float32 scalar.

    Example:

    >>> import numpy as np
    >>> t = np.random.rand(8, 16); s = np.random.rand(8, 4)
    >>> float(rkd_loss(t, s)) > 0
    True
    """
    loss = 0.0
    if distance_weight:
        loss = loss + distance_weight * rkd_distance_loss(teacher_features,
                                                          student_features)
    if angle_weight:
        loss = loss + angle_weight * rkd_angle_loss(teacher_features,
                                                    student_features)
    return ops.cast(loss, "float32")


def sp_loss(teacher_features, student_features):
    """Similarity-preserving (SP) loss over a batch.

        G = F Fᵀ  (b × b, F the flattened features),  Ĝ = row-L2-normalised G
        loss = ‖Ĝ_s − Ĝ_t‖²_F / b²

    (Tung & Mori, "Similarity-Preserving Knowledge Distillation", ICCV 2019,
    arXiv:1907.09682). Returns a float32 scalar.

    Example:

    >>> import numpy as np
    >>> e = np.random.rand(4, 8)
    >>> float(sp_loss(e, 5.0 * e)) < 1e-6
    True
    """
    t = ops.stop_gradient(_flatten(teacher_features, "SP"))
    s = _flatten(student_features, "SP")
    g_t = _l2_normalize(ops.matmul(t, ops.transpose(t)), axis=1)
    g_s = _l2_normalize(ops.matmul(s, ops.transpose(s)), axis=1)
    b = ops.cast(ops.shape(s)[0], "float32")
    return ops.sum(ops.square(g_s - g_t)) / (b * b)


def _pkt_similarity(e, eps):
    norm = ops.sqrt(ops.maximum(ops.sum(ops.square(e), axis=1, keepdims=True),
                                1e-24))
    e = e / (norm + eps)
    sim = (ops.matmul(e, ops.transpose(e)) + 1.0) / 2.0
    return sim / ops.sum(sim, axis=1, keepdims=True)


def pkt_loss(teacher_features, student_features, eps=1e-7):
    """Probabilistic knowledge transfer (PKT) loss over a batch.

        ê = e / ‖e‖;  K_ij = (cos(ê_i, ê_j) + 1) / 2;  P_ij = K_ij / Σ_j K_ij
        loss = mean_{i,j} P^t_ij · log((P^t_ij + ε) / (P^s_ij + ε))

    i.e. the KL divergence ``KL(P^t ‖ P^s)`` of each row, averaged over the
    ``b²`` entries as in the authors' code (Passalis & Tefas, "Learning Deep
    Representations with Probabilistic Knowledge Transfer", ECCV 2018,
    arXiv:1803.10837). Returns a float32 scalar.

    Example:

    >>> import numpy as np
    >>> e = np.random.rand(4, 8)
    >>> float(pkt_loss(e, 2.0 * e)) < 1e-6
    True
    """
    t = ops.stop_gradient(_flatten(teacher_features, "PKT"))
    s = _flatten(student_features, "PKT")
    p_t = _pkt_similarity(t, eps)
    p_s = _pkt_similarity(s, eps)
    return ops.mean(p_t * ops.log((p_t + eps) / (p_s + eps)))


class RelationObjective(FeatureObjective):
    """Base of relation objectives: a scalar loss over a batch of embeddings.

    Taps one teacher layer and one student layer (usually the penultimate
    embeddings), flattens each sample's output and compares the batch
    structures. Widths may differ; ``per_sample`` is False (see the module
    docstring for batches of one).
    """

    per_sample = False

    def build_for(self, teacher_shape, student_shape):
        self.built = True

    def get_config(self):
        # Relations compare flattened embeddings: no spatial resize option.
        config = super().get_config()
        config.pop("resize", None)
        return config


@keras.saving.register_keras_serializable(package="keras_kd")
class RKD(RelationObjective):
    """Relational knowledge distillation (distance + angle) on embeddings.

    ``weight · (distance_weight · L_dist + angle_weight · L_angle)`` with
    :func:`rkd_distance_loss` and :func:`rkd_angle_loss` (Park et al., CVPR
    2019). Usual: distance_weight=25, angle_weight=50, weight=1, on the
    penultimate embeddings. A scalar per batch; batches of at least 2.

    Args:
        teacher_layer: name of the teacher's embedding layer.
        student_layer: name of the student's embedding layer.
        distance_weight: weight of the distance term, >= 0.
        angle_weight: weight of the angle term, >= 0.
        weight: the term's weight in the total loss.

    Example:

    >>> import keras_kd as kd
    >>> rkd = kd.objectives.RKD("teacher_pool", "student_pool")
    >>> rkd.get_config()["angle_weight"]
    50.0
    """

    def __init__(self, teacher_layer, student_layer, distance_weight=25.0,
                 angle_weight=50.0, weight=1.0, name="rkd", **kwargs):
        super().__init__(teacher_layer, student_layer, weight=weight,
                         name=name, **kwargs)
        for arg, value in (("distance_weight", distance_weight),
                           ("angle_weight", angle_weight)):
            if not isinstance(value, (int, float)) or isinstance(
                    value, bool) or value < 0:
                raise ValueError(
                    f"{arg} must be a number >= 0, got {value!r}; the usual "
                    "RKD weights are distance_weight=25, angle_weight=50.")
        if distance_weight == 0 and angle_weight == 0:
            raise ValueError("RKD needs distance_weight > 0 or angle_weight "
                             "> 0 (usual: 25 and 50).")
        self.distance_weight = float(distance_weight)
        self.angle_weight = float(angle_weight)

    def compute(self, teacher_features, student_features, training=False):
        return rkd_loss(teacher_features, student_features,
                        self.distance_weight, self.angle_weight)

    def get_config(self):
        config = super().get_config()
        config.update(distance_weight=self.distance_weight,
                      angle_weight=self.angle_weight)
        return config


@keras.saving.register_keras_serializable(package="keras_kd")
class SimilarityPreserving(RelationObjective):
    """Similarity-preserving distillation (SP) on a pair of layers.

    ``weight · ‖Ĝ_s − Ĝ_t‖²_F / b²`` with row-normalised batch Gram matrices,
    :func:`sp_loss` (Tung & Mori, ICCV 2019). Usual weight: 3000 (CRD
    benchmark code). Feature maps are flattened, so any layers work.

    Args:
        teacher_layer: name of the teacher layer.
        student_layer: name of the student layer.
        weight: the term's weight in the total loss.

    Example:

    >>> import keras_kd as kd
    >>> kd.objectives.SimilarityPreserving("teacher_pool", "student_pool",
    ...                                    weight=3000.0).name
    'sp'
    """

    def __init__(self, teacher_layer, student_layer, weight=1.0, name="sp",
                 **kwargs):
        super().__init__(teacher_layer, student_layer, weight=weight,
                         name=name, **kwargs)

    def compute(self, teacher_features, student_features, training=False):
        return sp_loss(teacher_features, student_features)


@keras.saving.register_keras_serializable(package="keras_kd")
class PKT(RelationObjective):
    """Probabilistic knowledge transfer (PKT) on embeddings.

    ``weight · mean_ij P^t_ij log(P^t_ij / P^s_ij)`` over cosine-similarity
    distributions, :func:`pkt_loss` (Passalis & Tefas, ECCV 2018). Usual
    weight: 30000 (CRD benchmark code).

    Args:
        teacher_layer: name of the teacher's embedding layer.
        student_layer: name of the student's embedding layer.
        weight: the term's weight in the total loss.

    Example:

    >>> import keras_kd as kd
    >>> kd.objectives.PKT("teacher_pool", "student_pool",
    ...                   weight=30000.0).get_config()["weight"]
    30000.0
    """

    def __init__(self, teacher_layer, student_layer, weight=1.0, name="pkt",
                 **kwargs):
        super().__init__(teacher_layer, student_layer, weight=weight,
                         name=name, **kwargs)

    def compute(self, teacher_features, student_features, training=False):
        return pkt_loss(teacher_features, student_features)
