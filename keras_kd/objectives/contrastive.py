"""CRD: contrastive representation distillation with a memory bank of negatives.

Tian et al., "Contrastive Representation Distillation", ICLR 2020
(arXiv:1910.10699). Two embedding heads (one Dense layer each, then L2
normalisation) map the teacher's and the student's penultimate features to a
shared space; noise-contrastive estimation (NCE) teaches the student to tell
the teacher's embedding of the same input (the positive) from embeddings of
other inputs (the negatives), which come from a memory bank.

The memory bank. The authors' code keeps one bank row per training sample,
addressed by the sample's index in the dataset, updated with momentum. A
Keras ``fit`` does not hand a loss the samples' indices, so keras-kd's bank
is a first-in-first-out queue of the last ``bank_size`` embeddings of each
model (as MoCo keeps its negatives): each training step writes the batch's
embeddings over the oldest rows, and the positive of a sample is the other
model's embedding of it in the same step. The bank, its write position and
the NCE normalisers ``Z`` are non-trainable variables of the objective:
they are saved in ``.keras`` files and checkpoints with the Distiller and
come back on load and resume; they are never part of the student.

Data parallelism. The bank is written from the *global* batch:

* JAX (``keras.distribution.DataParallel``) traces the step once over the
  global, sharded batch, so the write covers every device's samples;
* TensorFlow (``tf.distribute`` strategies) runs the step per replica: the
  embeddings are gathered from every replica (``all_gather``) before the
  write, the normalisers ``Z`` are averaged over the replicas, and the
  variables use ``aggregation="only_first_replica"``, so
  every replica holds the same bank;
* PyTorch runs one process; Keras offers no data parallelism there.
"""

import keras
from keras import ops

from keras_kd.objectives.base import to_float32
from keras_kd.objectives.features import FeatureObjective


def _flat(x):
    x = to_float32(ops.convert_to_tensor(x))
    if len(x.shape) != 2:
        x = ops.reshape(x, (ops.shape(x)[0], -1))
    return x


def l2_normalize(x, eps=1e-12):
    """Rows of ``x`` divided by ``max(‖x‖, eps)``, float32."""
    x = to_float32(ops.convert_to_tensor(x))
    norm = ops.sqrt(ops.maximum(ops.sum(ops.square(x), axis=-1,
                                        keepdims=True), eps * eps))
    return x / norm


def nce_scores(anchor, positive, bank, temperature):
    """``exp(<a, p>/τ)`` then ``exp(<a, bank_k>/τ)``: a ``(batch, 1 + K)``
    tensor, the positive in column 0 (CRD's ``ContrastMemory``)."""
    pos = ops.sum(anchor * positive, axis=-1, keepdims=True)
    neg = ops.matmul(anchor, ops.transpose(bank))
    return ops.exp(ops.concatenate([pos, neg], axis=-1) / temperature)


def nce_normalizer(scores, num_data):
    """CRD's estimate of the partition constant: ``Z = mean(scores) · N``
    (taken once, on the first batch, and then kept; a constant)."""
    return ops.stop_gradient(ops.mean(scores) * float(num_data))


def nce_loss(probs, num_data, eps=1e-7):
    """CRD's NCE loss per sample from normalised scores ``(batch, 1 + K)``.

        loss_i = −log(P_i0 / (P_i0 + K·P_n)) − Σ_k log(K·P_n / (P_ik + K·P_n))

    with the noise distribution ``P_n = 1/N`` (uniform over the data) and
    ``K`` negatives (CRD's ``ContrastLoss``, ``eps`` added as there).

    Example:

    >>> import numpy as np
    >>> v = nce_loss(np.full((2, 3), 0.5, "float32"), num_data=4)
    >>> tuple(v.shape)
    (2,)
    """
    probs = to_float32(ops.convert_to_tensor(probs))
    k = probs.shape[-1] - 1
    noise = k / float(num_data)
    log_d1 = ops.log(probs[:, 0] / (probs[:, 0] + noise + eps))
    log_d0 = ops.log(noise / (probs[:, 1:] + noise + eps))
    return -(log_d1 + ops.sum(log_d0, axis=-1))


def crd_loss(teacher_embedding, student_embedding, teacher_bank,
             student_bank, temperature=0.07, num_data=None, z_teacher=None,
             z_student=None):
    """CRD loss per sample, both directions, over memory-bank negatives.

        P_s(i, j) = exp(<v_s,i, u_t,j>/τ) / Z_s      (student anchor,
                                                       teacher embeddings)
        P_t(i, j) = exp(<v_t,i, u_s,j>/τ) / Z_t      (teacher anchor)
        loss_i = NCE(P_s(i, ·)) + NCE(P_t(i, ·))

    where column 0 is the positive (the other model's embedding of sample
    ``i``) and the ``K`` other columns are the bank's rows; NCE is
    :func:`nce_loss` with ``P_n = 1/N``; ``Z = mean(exp(·/τ)) · N`` when not
    given (:func:`nce_normalizer`). Embeddings are expected unit-norm.
    Tian et al., ICLR 2020, eq. 18-19 and the authors' code; there the
    positive is the bank's row of sample ``i`` (see the module docstring).

    Args:
        teacher_embedding: ``(batch, d)`` unit rows (the teacher's head).
        student_embedding: ``(batch, d)`` unit rows (the student's head).
        teacher_bank: ``(K, d)`` teacher embeddings of other samples.
        student_bank: ``(K, d)`` student embeddings of other samples.
        temperature: τ (0.07 in the paper).
        num_data: ``N``; default ``K``.
        z_teacher, z_student: the normalisers, or None to estimate them.

    Returns:
        A ``(batch,)`` float32 tensor.

    Example:

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)
    >>> t, s = unit(rng.normal(size=(4, 8))), unit(rng.normal(size=(4, 8)))
    >>> bank_t, bank_s = unit(rng.normal(size=(16, 8))), unit(rng.normal(size=(16, 8)))
    >>> tuple(crd_loss(t, s, bank_t, bank_s).shape)
    (4,)
    """
    t = to_float32(ops.convert_to_tensor(teacher_embedding))
    s = to_float32(ops.convert_to_tensor(student_embedding))
    t_bank = ops.stop_gradient(to_float32(ops.convert_to_tensor(
        teacher_bank)))
    s_bank = ops.stop_gradient(to_float32(ops.convert_to_tensor(
        student_bank)))
    num_data = num_data or t_bank.shape[0]
    out_s = nce_scores(s, t, t_bank, temperature)
    out_t = nce_scores(t, s, s_bank, temperature)
    z_s = nce_normalizer(out_s, num_data) if z_student is None else z_student
    z_t = nce_normalizer(out_t, num_data) if z_teacher is None else z_teacher
    return nce_loss(out_s / z_s, num_data) + nce_loss(out_t / z_t, num_data)


def _replica_context():
    """The ``tf.distribute`` replica context when several replicas run."""
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return None
    return context


def global_batch(x):
    """``x`` gathered from every ``tf.distribute`` replica (axis 0); ``x``
    itself off TensorFlow or with one replica (see the module docstring)."""
    context = _replica_context()
    return x if context is None else context.all_gather(x, axis=0)


def global_mean(x):
    """``x`` averaged over the ``tf.distribute`` replicas (equal batches);
    ``x`` itself off TensorFlow or with one replica."""
    context = _replica_context()
    return x if context is None else context.all_reduce("mean", x)


@keras.saving.register_keras_serializable(package="keras_kd")
class CRD(FeatureObjective):
    """Contrastive representation distillation (CRD) with a memory bank.

    ``weight · mean_i [NCE_s(i) + NCE_t(i)]`` (:func:`crd_loss`; Tian et
    al., ICLR 2020): embedding heads ``g_t``, ``g_s`` (a Dense layer to
    ``feature_dim`` then L2 normalisation, on the flattened features of the
    tapped layers: usually the penultimate, pooled ones) are trained with
    the student; the negatives are the last ``bank_size`` embeddings of
    each model (a first-in-first-out bank, written at each training step
    from the global batch; ``evaluate`` reads it without writing). The
    heads and the bank belong to the objective: they are saved with the
    Distiller and never exported with the student. The paper's settings:
    ``feature_dim=128``, ``bank_size=16384``, ``temperature=0.07``, weight
    0.8 next to the hard loss (``alpha=1``, no logit term; the authors'
    CRD+KD adds KD).

    Args:
        teacher_layer: the teacher layer giving the embedding input.
        student_layer: the student layer giving the embedding input.
        weight: the term's weight in the total loss.
        feature_dim: width of the shared embedding space.
        bank_size: ``K``, negatives per sample (at least the batch size).
        temperature: τ of the NCE scores.
        num_data: ``N`` of the noise distribution ``P_n = 1/N`` (the
            paper: the training-set size); default ``bank_size``.
        seed: seed of the bank's random initial rows.

    Example:

    >>> import keras_kd as kd
    >>> crd = kd.objectives.CRD("teacher_pool", "student_pool", weight=0.8)
    >>> crd.get_config()["bank_size"]
    16384
    """

    def __init__(self, teacher_layer, student_layer, weight=1.0,
                 feature_dim=128, bank_size=16384, temperature=0.07,
                 num_data=None, seed=0, name="crd", **kwargs):
        kwargs.pop("resize", None)
        super().__init__(teacher_layer, student_layer, weight=weight,
                         name=name, **kwargs)
        for arg, value in (("feature_dim", feature_dim),
                           ("bank_size", bank_size)):
            if not isinstance(value, int) or isinstance(value, bool) or \
                    value < 1:
                raise ValueError(f"{arg} must be a positive integer, got "
                                 f"{value!r}; the paper uses feature_dim=128"
                                 ", bank_size=16384.")
        if not isinstance(temperature, (int, float)) or temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r};"
                             " the paper uses 0.07.")
        if num_data is not None and (not isinstance(num_data, int)
                                     or num_data < 1):
            raise ValueError(f"num_data must be a positive integer (the "
                             f"training-set size) or None, got {num_data!r}.")
        self.feature_dim, self.bank_size = feature_dim, bank_size
        self.temperature = float(temperature)
        self.num_data = num_data
        self.seed = int(seed)
        self.teacher_head = self.student_head = None

    def build_for(self, teacher_shape, student_shape):
        if self.teacher_head is not None:
            return
        def width(shape):
            n = 1
            for d in shape[1:]:
                if d is None:
                    raise ValueError(
                        f"CRD needs layers with a static shape, got "
                        f"{tuple(shape)}; tap a pooled (batch, D) layer.")
                n *= d
            return n
        self.teacher_head = keras.layers.Dense(self.feature_dim,
                                               name=f"{self.name}_teacher_head")
        self.teacher_head.build((None, width(teacher_shape)))
        self.student_head = keras.layers.Dense(self.feature_dim,
                                               name=f"{self.name}_student_head")
        self.student_head.build((None, width(student_shape)))
        # CRD's bank init: uniform in ±1/sqrt(d/3).
        stdv = 1.0 / (self.feature_dim / 3.0) ** 0.5
        shape = (self.bank_size, self.feature_dim)
        for role, offset in (("teacher", 0), ("student", 1)):
            setattr(self, f"{role}_bank", self.add_weight(
                shape=shape, trainable=False, name=f"{role}_bank",
                aggregation="only_first_replica",
                initializer=keras.initializers.RandomUniform(
                    -stdv, stdv, seed=self.seed + offset)))
        self.bank_position = self.add_weight(
            shape=(), dtype="int32", initializer="zeros", trainable=False,
            name="bank_position", aggregation="only_first_replica")
        self.normalizers = self.add_weight(
            shape=(2,), initializer=keras.initializers.Constant(-1.0),
            trainable=False, name="normalizers",
            aggregation="only_first_replica")
        self.built = True

    def embed(self, teacher_features, student_features, training=False):
        """The unit embeddings ``(g_t(f_t), g_s(f_s))``."""
        t = self.teacher_head(ops.stop_gradient(_flat(teacher_features)),
                              training=training)
        s = self.student_head(_flat(student_features), training=training)
        return l2_normalize(t), l2_normalize(s)

    def compute(self, teacher_features, student_features, training=False):
        t, s = self.embed(teacher_features, student_features, training)
        n = self.num_data or self.bank_size
        # Copies: the write below must not change tensors that the
        # backward pass reads (PyTorch assigns in place).
        t_bank = ops.copy(self.teacher_bank.value)
        s_bank = ops.copy(self.student_bank.value)
        if t.shape[0] is not None and t.shape[0] > self.bank_size:
            raise ValueError(
                f"CRD: a batch of {t.shape[0]} is larger than bank_size="
                f"{self.bank_size}; pass a bank_size of at least the "
                "(global) batch size.")
        out_s = nce_scores(s, t, t_bank, self.temperature)
        out_t = nce_scores(t, s, s_bank, self.temperature)
        z = ops.copy(self.normalizers.value)
        estimate = global_mean(ops.stack([nce_normalizer(out_s, n),
                                          nce_normalizer(out_t, n)]))
        z = ops.where(z < 0, estimate, z)
        self.normalizers.assign(z)
        loss = nce_loss(out_s / z[0], n) + nce_loss(out_t / z[1], n)
        if training:
            self.write_bank(ops.stop_gradient(t), ops.stop_gradient(s))
        return loss

    def write_bank(self, teacher_embedding, student_embedding):
        """Writes a batch of embeddings over the bank's oldest rows."""
        t = global_batch(teacher_embedding)
        s = global_batch(student_embedding)
        start = self.bank_position.value
        rows = (start + ops.arange(ops.shape(t)[0], dtype="int32")) % \
            self.bank_size
        rows = ops.expand_dims(rows, -1)
        self.teacher_bank.assign(ops.scatter_update(self.teacher_bank.value,
                                                    rows, t))
        self.student_bank.assign(ops.scatter_update(self.student_bank.value,
                                                    rows, s))
        self.bank_position.assign(
            (start + ops.cast(ops.shape(t)[0], "int32")) % self.bank_size)

    def get_config(self):
        config = super().get_config()
        config.pop("resize")
        config.update(feature_dim=self.feature_dim, bank_size=self.bank_size,
                      temperature=self.temperature, num_data=self.num_data,
                      seed=self.seed)
        return config
