"""DIST+: DIST's correlation loss extended from the logits to a feature map.

Huang, You, Wang, Qian and Xu, "DIST+: Knowledge Distillation From a
Stronger Adaptive Teacher", IEEE TPAMI 47(7), 2025 (doi
10.1109/TPAMI.2025.3554235). The paper adds two things to DIST (NeurIPS
2022, :mod:`keras_kd.objectives.dist`): a teacher acclimation strategy, and
DIST's relation loss on features. keras-kd implements the second, as
torchdistill's ``DISTPlusLoss`` (``torchdistill/losses/mid_level.py``,
config ``configs/sample/ilsvrc2012/dist_plus/``) does; the acclimation of the
teacher is in neither torchdistill nor keras-kd.

DIST+'s loss is DIST on the logits plus, on one feature map of each model:

* a **channel relation**: at each position of each sample, the Pearson
  correlation of the two models' channel vectors, ``ρ_c``;
* a **spatial relation**: each model's map summed over the channels, then
  at each position the Pearson correlation across the batch, ``ρ_s``.

keras-kd's feature term is ``ι · (1 − mean ρ_c) + κ · (1 − mean ρ_s)``,
DIST's ``1 − ρ`` form for both. torchdistill adds ``ι · mean ρ_c`` (the
correlation itself, not ``1 − ρ_c``), which rewards a student whose channels
anti-correlate with the teacher's; keras-kd takes it for a slip and follows
the spatial term's (and DIST's) form. torchdistill's ImageNet settings
(ResNet-34 → ResNet-18, ``layer4``): cross-entropy weight 1, and weight 2 on
DIST (β = γ = 2, τ = 1) plus the feature term (ι = κ = 1).
"""

import keras
from keras import ops

from keras_kd.checks import check_number
from keras_kd.objectives.dist import pearson
from keras_kd.objectives.features import FeatureObjective
from keras_kd.objectives.statistics import channel_maps


def dist_plus_loss(teacher_features, student_features, iota=1.0, kappa=1.0,
                   eps=1e-8):
    """DIST+'s feature term, one value per sample.

    With maps ``F`` of ``N`` positions and ``C`` channels per sample,

        ρ_c(b) = mean_n pearson_C(F_s[b, n, :], F_t[b, n, :])
        A[b, n] = Σ_C F[b, n, c]
        ρ_s = mean_n pearson_batch(A_s[:, n], A_t[:, n])
        loss(b) = ι · (1 − ρ_c(b)) + κ · (1 − ρ_s)

    the teacher's side a constant (Huang et al., "DIST+: Knowledge
    Distillation From a Stronger Adaptive Teacher", TPAMI 2025, the feature
    extension of DIST; torchdistill's ``DISTPlusLoss``, whose channel term
    is ``+ι·ρ_c``, see the module's notes). The spatial term couples the
    samples of the batch; as DIST's intra-class term, it is spread evenly
    over them, so the batch mean is exact. DIST+'s logit part is
    :func:`keras_kd.objectives.dist_loss`.

    Args:
        teacher_features: ``(batch, H, W, C)`` or ``(batch, L, C)`` map.
        student_features: the student's, same positions (and same channel
            count unless ``iota=0``).
        iota: weight of the channel relation, >= 0.
        kappa: weight of the spatial relation, >= 0.
        eps: added to the correlations' denominators.

    Returns:
        A ``(batch,)`` float32 tensor.

    Example:

    >>> import numpy as np
    >>> t = np.random.default_rng(0).normal(size=(4, 3, 3, 5))
    >>> [round(float(v), 6) for v in dist_plus_loss(t, t)]
    [0.0, 0.0, 0.0, 0.0]
    """
    iota = check_number("iota", iota, "the usual DIST+ value is iota=1.0.")
    kappa = check_number("kappa", kappa,
                         "the usual DIST+ value is kappa=1.0.")
    t = ops.stop_gradient(channel_maps(teacher_features, "DISTPlus"))
    s = channel_maps(student_features, "DISTPlus")   # (batch, C, N)
    if t.shape[2] != s.shape[2] or (iota and t.shape[1] != s.shape[1]):
        raise ValueError(
            f"DISTPlus: the teacher's map has {t.shape[2]} positions and "
            f"{t.shape[1]} channels, the student's {s.shape[2]} and "
            f"{s.shape[1]}. Tap layers with the same positions, and the "
            "same channel count for the channel relation (or iota=0).")
    total = 0.0
    if iota:
        rho_c = ops.mean(pearson(s, t, axis=1, eps=eps), axis=1)
        total = total + iota * (1.0 - rho_c)
    if kappa:
        a_s, a_t = ops.sum(s, axis=1), ops.sum(t, axis=1)   # (batch, N)
        rho_s = ops.mean(pearson(a_s, a_t, axis=0, eps=eps))
        total = total + kappa * (1.0 - rho_s) * ops.ones_like(a_s[:, 0])
    if not (iota or kappa):
        total = ops.zeros_like(s[:, 0, 0])
    return total


@keras.saving.register_keras_serializable(package="keras_kd")
class DISTPlus(FeatureObjective):
    """DIST+'s feature relations between one layer of each model.

    ``weight · (ι · (1 − ρ_channels) + κ · (1 − ρ_spatial))`` per sample
    (:func:`dist_plus_loss`; Huang et al., TPAMI 2025). DIST+ is this term
    next to DIST on the logits: ``compile(distillation_loss=DIST(...),
    feature_losses=[DISTPlus(...)])``. torchdistill's ImageNet setting:
    ``DIST(beta=2, gamma=2, temperature=1, weight=2)`` and
    ``DISTPlus(t, s, weight=2)`` on the last stage, cross-entropy weight 1.
    No trainable parts.

    Args:
        teacher_layer: the teacher's feature map.
        student_layer: the student's, same positions (and channel count
            unless ``iota=0``).
        iota: weight of the channel relation.
        kappa: weight of the spatial relation.
        eps: added to the correlations' denominators.
        weight: the term's weight in the total loss.

    Example:

    >>> import keras_kd as kd
    >>> term = kd.objectives.DISTPlus("t_stage4", "s_stage4", weight=2.0)
    >>> term.name, term.get_config()["iota"]
    ('dist_plus', 1.0)
    """

    def __init__(self, teacher_layer, student_layer, iota=1.0, kappa=1.0,
                 eps=1e-8, weight=1.0, name="dist_plus", **kwargs):
        super().__init__(teacher_layer, student_layer, weight=weight,
                         name=name, **kwargs)
        self.iota = check_number("iota", iota,
                                 "the usual DIST+ value is iota=1.0.")
        self.kappa = check_number("kappa", kappa,
                                  "the usual DIST+ value is kappa=1.0.")
        self.eps = check_number("eps", eps, "pass e.g. eps=1e-8.")

    def build_for(self, teacher_shape, student_shape):
        self.check_feature_maps(teacher_shape, student_shape)
        channels = (1 if keras.config.image_data_format() == "channels_first"
                    else -1)
        if self.iota and teacher_shape[channels] != student_shape[channels]:
            raise ValueError(
                f"DISTPlus: teacher layer '{self.teacher_layer}' has "
                f"{teacher_shape[channels]} channels and student layer "
                f"'{self.student_layer}' has {student_shape[channels]}; the "
                "channel relation compares them one to one. Tap layers of "
                "the same width, or pass iota=0 (spatial relation only).")
        self.built = True

    def compute(self, teacher_features, student_features, training=False):
        return dist_plus_loss(teacher_features, student_features, self.iota,
                              self.kappa, self.eps)

    def get_config(self):
        config = super().get_config()
        config.update(iota=self.iota, kappa=self.kappa, eps=self.eps)
        return config
