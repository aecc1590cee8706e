"""Which elements of a batch count: labels below 0, padding, Keras masks.

Logits may have any rank, the class axis last: ``(batch, classes)``,
``(batch, length, vocab)``, ``(batch, H, W, classes)``. Their *elements* are
the positions of every axis but the last. An element counts unless

* the student's output carries a Keras mask that is False there (an
  ``Embedding(mask_zero=True)`` student), or, for terms that use labels,
* its integer label is below 0 (an unlabeled sample or token, as in
  semi-supervised batches).

Padding masks given as ``sample_weight`` (keras-hub's convention) weigh
elements instead; see :mod:`keras_kd.composition` for the reduction.

Masks reach Keras's own losses and metrics the way Keras models pass them:
attached to the predictions by a layer's ``compute_mask``, which Keras's
losses and metrics read, so they average over the elements that count.
"""

import keras
from keras import ops


class _MaskOf(keras.layers.Layer):
    """The Keras mask its input carries (all True when none), as bool.

    ``found`` tells, once called, whether there was one: a fact of the
    model's structure, the same at every step, so it is read while tracing.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True
        self.found = False

    def call(self, inputs, mask=None):
        self.found = mask is not None
        if mask is None:
            return ops.ones(ops.shape(inputs)[:-1], "bool")
        return ops.cast(mask, "bool")

    def compute_mask(self, inputs, mask=None):
        return None


class _WithMask(keras.layers.Layer):
    """A view of its input that carries ``mask`` as its Keras mask."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True

    def call(self, inputs, mask=None):
        # A new tensor object (free: a reshape to the same shape), so that
        # the caller's own tensor keeps its mask, if any.
        return ops.reshape(inputs, ops.shape(inputs))


def sparse_labels(labels, logits):
    """True when ``labels`` are integer class indices for ``logits``.

    That is, integer labels with one entry per element (shape
    ``logits.shape[:-1]``, or that plus a trailing axis of 1), as
    ``SparseCategoricalCrossentropy`` takes. One-hot labels (integer or
    float) are not.
    """
    if labels is None or isinstance(labels, (list, tuple, dict)):
        return False
    if "int" not in keras.backend.standardize_dtype(labels.dtype):
        return False
    rank, logits_rank = len(labels.shape), len(logits.shape)
    if rank == logits_rank - 1:
        return True
    return rank == logits_rank and labels.shape[-1] == 1 and \
        logits.shape[-1] != 1


class ElementMasks:
    """Computes, per step, the elements that count, and hands them to Keras.

    Holds two stateless layers (not tracked or saved with the model).
    """

    def __init__(self):
        self._mask_of = _MaskOf(name="keras_kd_mask_of")
        self._with_mask = _WithMask(name="keras_kd_with_mask")

    def __call__(self, logits, labels):
        """``(valid, labeled, labels)`` for a batch.

        ``valid`` is the student's Keras mask, ``labeled`` is ``valid`` and a
        label >= 0 (``valid`` itself when the labels are not sparse integer
        labels), both boolean with shape ``logits.shape[:-1]``, or None when
        every element counts; ``labels`` are the labels with every value
        below 0 replaced by 0 (so that losses can read them).
        """
        valid = self._mask_of(logits)
        if not self._mask_of.found:
            valid = None
        if not sparse_labels(labels, logits):
            return valid, valid, labels
        keep = ops.greater_equal(labels, 0)
        if len(keep.shape) == len(logits.shape):
            keep = ops.squeeze(keep, -1)
        labeled = keep if valid is None else ops.logical_and(valid, keep)
        return valid, labeled, ops.maximum(labels, ops.zeros_like(labels))

    def attach(self, logits, mask):
        """A view of ``logits`` carrying ``mask``, for Keras losses and
        metrics (``logits`` itself when ``mask`` is None)."""
        return logits if mask is None else self._with_mask(logits, mask=mask)
