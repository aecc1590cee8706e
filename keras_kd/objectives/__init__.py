"""keras-kd's distillation objectives: pure functions plus serializable classes.

``get(identifier)`` resolves the names accepted by ``Distiller.compile``.
"""

from keras_kd.objectives.base import Objective, to_float32
from keras_kd.objectives.features import (
    AttentionTransfer,
    FeatureObjective,
    CosineEmbedding,
    FitNet,
    attention_map,
    cosine_loss,
    attention_transfer_loss,
    fitnet_loss,
)
from keras_kd.objectives.dist import DIST, dist_loss
from keras_kd.objectives.hard import HardDistillation, hard_loss
from keras_kd.objectives.logits import (
    DKD,
    KD,
    LS,
    dkd_loss,
    kd_loss,
    ls_loss,
    standardize_logits,
)
from keras_kd.objectives.sequences import (
    SEQUENCE_OBJECTIVES,
    ForwardKL,
    GeneralizedJSD,
    ReverseKL,
    SkewKL,
    SkewReverseKL,
    forward_kl,
    generalized_jsd,
    reverse_kl,
    skew_kl,
    skew_reverse_kl,
)
from keras_kd.objectives.relations import (
    PKT,
    RKD,
    RelationObjective,
    SimilarityPreserving,
    pkt_loss,
    rkd_angle_loss,
    rkd_distance_loss,
    rkd_loss,
    sp_loss,
)
# Logit methods: teacher-free (Tf-KD), multi-level (MLKD), curriculum
# temperature (CTKD).
from keras_kd.objectives.teacher_free import (
    ConstantLogits,
    TfKD,
    tfkd_loss,
    virtual_teacher,
    virtual_teacher_probabilities,
)
from keras_kd.objectives.multilevel import MLKD, mlkd_loss
from keras_kd.objectives.curriculum import (
    CTKD,
    ctkd_lambda,
    ctkd_temperature,
    reverse_gradient,
)
# Multi-stage feature methods, contrastive (CRD) and layer pairing helpers:
# FSP, ReviewKD, FT, CRD.
from keras_kd.objectives.stages import StagesObjective
from keras_kd.objectives.flow import FSP, fsp_loss, fsp_matrix
from keras_kd.objectives.contrastive import CRD, crd_loss, nce_loss
from keras_kd.objectives.review import ReviewKD, hcl_loss
from keras_kd.objectives.factor import FT, ft_loss, pretrain_paraphraser
# Singular-vector relations between stages (KD-SVD); DIST+'s feature
# relations.
from keras_kd.objectives.singular import KDSVD, kdsvd_loss, singular_vectors
from keras_kd.objectives.dist_plus import DISTPlus, dist_plus_loss

# Single-pair feature methods: NST, ICKD, CCKD (statistics), AB, OFD
# (boundaries), VID, MGD (generative), PAD-L2, SRD (regression).
from keras_kd.objectives.statistics import (
    CCKD,
    ICKD,
    NST,
    cc_matrix,
    cckd_loss,
    channel_maps,
    ickd_loss,
    nst_loss,
)
from keras_kd.objectives.boundaries import (
    OFD,
    ActivationBoundaries,
    ab_loss,
    ofd_loss,
    ofd_margin,
)
from keras_kd.objectives.generative import MGD, VID, mgd_loss, vid_loss
from keras_kd.objectives.regression import PADL2, SRD, pad_l2_loss, srd_loss

# Names usable as `distillation_loss=` in `Distiller.compile`: the label
# objectives, then the token-level ones (any name maps to a class whose
# defaults are the papers' usual settings).
LOGIT_OBJECTIVES = {
    "kd": KD,
    "dkd": DKD,
    "ls": LS,
    "dist": DIST,
    "hard": HardDistillation,
    **SEQUENCE_OBJECTIVES,
    # Logit methods: teacher-free, multi-level, curriculum temperature.
    "tfkd": TfKD,
    "mlkd": MLKD,
    "ctkd": CTKD,
}


def get(identifier):
    """Returns a logit objective instance from a name or an instance.

    Args:
        identifier: a name (``"kd"``, ...) or an :class:`Objective` instance.

    Example:

    >>> import keras_kd as kd
    >>> kd.objectives.get("kd").name
    'kd'
    """
    if isinstance(identifier, Objective):
        if identifier.kind != "logits":
            raise ValueError(
                f"distillation_loss={identifier.name!r} is a feature "
                "objective; pass it in feature_losses=[...] instead."
            )
        return identifier
    if isinstance(identifier, str) and identifier.lower() in LOGIT_OBJECTIVES:
        return LOGIT_OBJECTIVES[identifier.lower()]()
    raise ValueError(
        f"Unknown distillation_loss {identifier!r}. Use one of "
        f"{sorted(LOGIT_OBJECTIVES)} or an objective instance such as "
        "keras_kd.objectives.KD(temperature=4.0)."
    )
