"""How a step's loss is composed from the hard-label, distillation and feature terms.

    loss = alpha · hard + (1 − alpha) · soft + Σ_k w_k · feature_k

``hard`` is the compiled Keras loss on the labels (Keras computes it, with
the regularization losses, in ``Model.compute_loss``), ``soft`` the logit
objective (weighted by its own ``weight``) and ``feature_k`` the feature
objectives. Without labels or without a compiled loss, ``soft`` has weight 1
(and, with no logit objective either, ``alpha`` weighs ``hard`` alone).

Reduction. Objectives return one value per element (every axis of the
logits but the class axis) or per sample; each term is reduced as Keras
reduces a loss with ``reduction="sum_over_batch_size"`` and a mask:

    term = Σ_e  l_e · w_e · m_e  /  Σ_e m_e

where ``w`` is ``sample_weight`` broadcast over the elements (``(batch,)``
or ``(batch, length)``, e.g. keras-hub's padding mask), and ``m`` marks the
elements that count (:mod:`keras_kd.masking`: the student's Keras mask, and
labels >= 0 for the terms that use labels). Without masks ``Σ m`` is the
number of elements, so this is Keras's ``Σ l·w / N``: a padded token with
weight 0 adds nothing, and with ``alpha=1`` the step is exactly the student's
own ``fit`` step. A per-sample term (shape ``(batch,)``) with per-token
weights takes, per sample, the sum of its tokens' weights (Keras's
broadcasting rule), and scalar terms (relations over the batch) are used as
they are.
"""

import threading

import keras
from keras import ops

from keras_kd import masking
from keras_kd.objectives.base import to_float32


def replicas():
    """How many ``tf.distribute`` replicas share a step (1 off TensorFlow).

    Keras's TensorFlow ``train_step`` sums the replicas' gradients and scales
    the loss it logs back up, so each replica's loss is its share of the
    global loss, ``value / replicas`` (Keras's compiled loss is already).
    """
    if keras.backend.backend() != "tensorflow":
        return 1
    import tensorflow as tf

    return tf.distribute.get_strategy().num_replicas_in_sync


def _element_weights(sample_weight, mask, shape):
    """``w · m`` over the elements (``shape``, the logits' but the last
    axis), as float32; ``m`` is 1 where ``mask`` is None."""
    w = ops.ones(shape, "float32") if sample_weight is None else to_float32(
        ops.convert_to_tensor(sample_weight))
    rank = len(shape)
    while len(w.shape) > rank and w.shape[-1] == 1:
        w = ops.squeeze(w, -1)
    while len(w.shape) < rank:
        w = ops.expand_dims(w, -1)
    if mask is not None:
        w = w * ops.cast(mask, "float32")
    return ops.broadcast_to(w, shape)


def reduce_term(values, weights, count):
    """``Σ values · weights / count`` with weights fitted to ``values``.

    ``weights`` are per element (see :func:`_element_weights`); a term of
    lower rank (per sample) sums them over the extra axes, a term of higher
    rank (per token with per-sample logits) broadcasts them and counts its
    extra positions. A term over other positions than the logits' (hidden
    states of every token against a masked LM's logits at the masked
    positions) is averaged per sample and weighted by the sample's summed
    weights. Scalars are returned as they are.
    """
    values = to_float32(values)
    rank, w_rank = len(values.shape), len(weights.shape)
    if rank == 0:
        return values
    if rank > 1 and w_rank > 1 and _other_positions(values, weights):
        values = ops.mean(values, axis=tuple(range(1, rank)))
        rank = 1
    if rank < w_rank:
        weights = ops.sum(weights, axis=tuple(range(rank, w_rank)))
    while len(weights.shape) < rank:
        weights = ops.expand_dims(weights, -1)
    total = ops.sum(values * weights)
    if rank > w_rank:
        extra = 1
        for d in values.shape[w_rank:]:
            extra *= d
        count = count * float(extra)
    return total / count


def _other_positions(values, weights):
    """True when a term's positions are not the logits' (static shapes)."""
    shared = min(len(values.shape), len(weights.shape))
    return any(a is not None and b is not None and a != b for a, b in zip(
        values.shape[1:shared], weights.shape[1:shared]))


class LossTerms(keras.metrics.Metric):
    """Running means of the loss terms, one variable for all of them.

    Each term is averaged over the samples seen, weighted by batch size as
    Keras's own ``loss`` is, so that at the end of an epoch ``loss = alpha ·
    student_loss + (1 − alpha) · distillation_loss + ...`` holds for the
    logged values too.
    """

    def __init__(self, term_names, name="loss_terms"):
        super().__init__(name=name)
        self.term_names = list(term_names)
        # Weighted sums of the terms, then the number of samples.
        self.totals = self.add_variable(
            shape=(len(self.term_names) + 1,), initializer="zeros",
            dtype="float32", name="totals")

    def update_state(self, values, batch_size):
        """Adds one batch: ``values`` holds one scalar per term, in order."""
        terms = ops.stack([ops.convert_to_tensor(v, "float32")
                           for v in values] + [ops.ones((), "float32")])
        self.totals.assign_add(terms * batch_size)

    def result(self):
        totals = self.totals.value
        # 0 samples only before any update, when the totals are 0 too.
        means = ops.unstack(totals[:-1] / ops.maximum(totals[-1], 1.0))
        return dict(zip(self.term_names, means))


class Composition:
    """The terms of a compiled Distiller and how they add up.

    The hard term is Keras's own compiled loss (``Model.compute_loss``, which
    also adds the regularization losses): :meth:`__call__` returns what the
    distillation adds to it, so that with ``alpha = 1`` a step is bit for bit
    the student's own ``fit`` step.

    Args:
        objective: the logit objective, or None.
        feature_objectives: the feature objectives, in order.
    """

    def __init__(self, objective, feature_objectives):
        self.objective = objective
        self.feature_objectives = list(feature_objectives)
        self.term_names = ["student_loss"] + (
            ["distillation_loss"] if objective is not None else []) + [
            f"{f.name}_loss" for f in self.feature_objectives]
        self.tracker = LossTerms(self.term_names)
        self.masks = masking.ElementMasks()
        self._prepared = threading.local()  # see prepare()

    def prepare(self, y_pred, labels):
        """The batch's elements that count (see :mod:`keras_kd.masking`).

        Returns a dict: ``valid`` and ``labeled`` masks, the ``labels`` with
        values below 0 replaced by 0, and ``y_pred`` carrying the mask of
        labeled elements, for Keras's compiled loss and metrics.

        A step asks twice, for its loss and for its metrics, with the same
        ``y_pred`` and ``labels`` objects: the second call returns the first
        one's dict and forgets it, so the masks are computed once per step
        (on PyTorch, whose steps run eagerly, that saves two layer calls and
        the mask ops at every step). Any other call computes afresh; the
        dict is remembered per thread (``tf.distribute`` replicas run their
        steps in threads).
        """
        memo = self._prepared
        last = getattr(memo, "value", None)
        memo.value = None
        if last is not None and last[0] is y_pred and last[1] is labels:
            return last[2]
        valid, labeled, new_labels = self.masks(y_pred, labels)
        batch = {"valid": valid, "labeled": labeled, "labels": new_labels,
                 "y_pred": self.masks.attach(y_pred, labeled)}
        memo.value = (y_pred, labels, batch)
        return batch

    def __call__(self, batch, hard, y_pred, sample_weight, teacher_logits,
                 teacher_features, student_features, alpha, temperature,
                 training):
        """What the distillation adds to the hard term, and the terms to log.

        ``loss = hard + excess`` with ``excess = (1 − alpha) · (soft − hard) +
        Σ_k w_k feature_k`` (``(alpha − 1) · hard + ...`` without a logit
        objective; ``soft + ...`` when ``hard`` is None). ``batch`` is
        :meth:`prepare`'s dict; ``hard`` the per-batch hard loss or None.
        The terms are in ``term_names`` order.
        """
        labels = batch["labels"]
        shape = ops.shape(y_pred)[:-1]
        valid_weights = _element_weights(sample_weight, batch["valid"], shape)
        valid_count = _count(batch["valid"], shape)

        soft = None
        objective = self.objective
        if objective is not None:
            if objective.needs_labels and labels is None:
                raise ValueError(
                    f"The '{objective.name}' objective needs labels: pass y "
                    "to fit()/evaluate(), or choose distillation_loss='kd'."
                )
            per_element = objective.compute(
                teacher_logits, y_pred, labels=labels, temperature=temperature)
            if objective.needs_labels:
                soft = reduce_term(
                    per_element,
                    _element_weights(sample_weight, batch["labeled"], shape),
                    _count(batch["labeled"], shape))
            else:
                soft = reduce_term(per_element, valid_weights, valid_count)
            if objective.weight != 1.0:
                soft = soft * objective.weight

        if hard is None:
            excess = ops.zeros((), "float32") if soft is None else soft
        elif soft is None:  # features only: alpha·hard + Σ_k w_k feature_k
            excess = (alpha - 1.0) * hard
        else:
            excess = (1.0 - alpha) * (soft - hard)
        feature_values = []
        for f, t_feat, s_feat in zip(
                self.feature_objectives,
                grouped(self.feature_objectives, teacher_features, "teacher"),
                grouped(self.feature_objectives, student_features, "student")):
            value = reduce_term(f.compute(t_feat, s_feat, training=training),
                                valid_weights, valid_count)
            feature_values.append(value)
            excess = excess + (value if f.weight == 1.0 else f.weight * value)

        terms = [ops.zeros((), "float32") if hard is None else hard] + (
            [] if soft is None else [soft]) + feature_values
        return excess, terms


def _count(mask, shape):
    """How many elements count (at least 1, so that an empty batch gives 0)."""
    if mask is None:
        count = 1
        for d in shape:
            count = count * d
        return ops.cast(count, "float32")
    return ops.maximum(ops.sum(ops.cast(mask, "float32")), 1.0)


def grouped(objectives, features, role):
    """The tapped ``features`` (a flat list, in the order of
    ``keras_kd.taps.tapped_layers``) given back per objective: one tensor
    for a single-pair objective, a list for a multi-layer one (its
    ``teacher_layers`` / ``student_layers``)."""
    features = list(features)
    out, start = [], 0
    for f in objectives:
        several = getattr(f, f"{role}_layers", None)
        if several is None:
            out.append(features[start])
            start += 1
        else:
            out.append(features[start:start + len(several)])
            start += len(several)
    return out
