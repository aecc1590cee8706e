"""Token-chunked language-model distillation: no (batch, length, vocab) tensor.

``Distiller.compile(token_chunk_size=N)`` for keras-hub causal LMs, whose
logits are the backbone's hidden states times the output embedding (a
``ReversibleEmbedding`` called with ``reverse=True``, tied to the input
embedding or not). A step then runs each backbone once, keeps the hidden
states ``h`` of shape ``(batch, length, hidden)``, and computes the logits,
the token-level objective and the hard loss ``N`` positions at a time:

    loss = alpha · hard + (1 − alpha) · soft + extra

    soft = Σ_chunks Σ_{b, i ∈ chunk} w_bi · l(t_bi, s_bi) / (batch · length)
    hard = Σ_chunks Σ_{b, i ∈ chunk} w_bi · m_bi · ce(y_bi, s_bi) / Σ m

with ``s = h_s · E_sᵀ`` and ``t = h_t · E_tᵀ`` formed chunk by chunk, ``w``
the sample weights (a padding mask), ``m`` the labels >= 0 and ``extra`` the
student's regularization losses: the terms (and the logged
``student_loss`` / ``distillation_loss`` and compiled metrics) of the
unchunked :class:`~keras_kd.Distiller` step, reduced in another order. Each
chunk is rematerialised in the backward pass (``keras.remat``:
``jax.checkpoint``, ``tf.recompute_grad``, ``torch.utils.checkpoint``), so a
step holds the logits of one chunk, ``batch · N · vocab`` values per model,
instead of ``batch · length · vocab``.

Every per-position objective works chunked (``"kd"``, ``"forward_kl"``,
``"reverse_kl"``, ``"gkd"``, ``"skew_kl"``, ``"skew_reverse_kl"``, with their
``top_k`` / ``top_p``), with ``sample_weight``, labels below 0,
``truncate_teacher_logits`` and cached teacher logits (a soft-label cache,
sliced chunk by chunk); on-policy distillation runs as it does unchunked.
Anything else is refused at ``compile`` with the fix.
"""

import contextlib
import numbers

import keras
from keras import ops

from keras_kd import composition, masking
from keras_kd.objectives.logits import KD
from keras_kd.objectives.sequences import SEQUENCE_OBJECTIVES

CHUNKABLE = (KD,) + tuple(SEQUENCE_OBJECTIVES.values())
REDUCTIONS = ("sum_over_batch_size", "mean", "sum", "mean_with_sample_weight")


def output_embedding(model, role="student"):
    """The ``ReversibleEmbedding`` that turns ``model``'s hidden states into
    logits, after checking that ``model`` is exactly backbone + embedding.

    Example:

    >>> import keras
    >>> output_embedding(keras.Sequential([keras.Input((2,)),
    ...                                    keras.layers.Dense(3)]))
    Traceback (most recent call last):
    ...
    ValueError: token_chunk_size needs keras-hub causal LMs ...
    """
    backbone = getattr(model, "backbone", None)
    embedding = getattr(backbone, "token_embedding", None)
    if embedding is None or not hasattr(embedding, "tie_weights"):
        raise ValueError(
            f"token_chunk_size needs keras-hub causal LMs whose logits are "
            f"the backbone's hidden states times its output embedding "
            f"(model.backbone.token_embedding, a ReversibleEmbedding); the "
            f"{role} '{model.name}' ({type(model).__name__}) exposes no "
            "such backbone and embedding. Compile without token_chunk_size "
            "(the full-logits path), or use a keras_hub.models.CausalLM.")
    others = [layer.name for layer in model.layers
              if layer is not backbone and layer is not embedding
              and not isinstance(layer, keras.layers.InputLayer)]
    if others:
        raise ValueError(
            f"token_chunk_size: the {role} '{model.name}' computes its logits "
            f"with layers besides its backbone and output embedding "
            f"({others}), which the chunked path would skip. Compile without "
            "token_chunk_size for this model.")
    return embedding


def check_chunk_size(token_chunk_size):
    """``None`` or a positive int; anything else is refused with the fix.

    Example:

    >>> check_chunk_size(128)
    128
    >>> check_chunk_size(0)
    Traceback (most recent call last):
    ...
    ValueError: token_chunk_size must be an integer >= 1 (positions per chunk) or None, got 0; e.g. token_chunk_size=256.
    """
    if token_chunk_size is None:
        return None
    if not isinstance(token_chunk_size, numbers.Integral) or isinstance(
            token_chunk_size, bool) or token_chunk_size < 1:
        raise ValueError(
            "token_chunk_size must be an integer >= 1 (positions per chunk) "
            f"or None, got {token_chunk_size!r}; e.g. token_chunk_size=256.")
    return int(token_chunk_size)


def make(token_chunk_size, teachers, student, objective, feature_losses,
         loss, truncate_teacher_logits):
    """The :class:`ChunkedStep` of a ``compile(token_chunk_size=N)``, or
    None when ``token_chunk_size`` is None. Refuses, with the fix, what the
    chunked path cannot do (see :class:`ChunkedStep`)."""
    size = check_chunk_size(token_chunk_size)
    if size is None:
        return None
    if len(teachers) != 1:
        raise ValueError(
            "token_chunk_size works with one teacher; got "
            f"{len(teachers)}. Distil from one teacher, or compile without "
            "token_chunk_size.")
    if feature_losses:
        raise ValueError(
            "token_chunk_size computes logits chunk by chunk and taps no "
            "features: drop feature_losses or token_chunk_size.")
    if objective is not None and not isinstance(objective, CHUNKABLE):
        raise ValueError(
            f"token_chunk_size needs a per-token objective ('kd', "
            f"{', '.join(repr(n) for n in SEQUENCE_OBJECTIVES)}), got "
            f"'{objective.name}' ({type(objective).__name__}). Choose one of "
            "them, or compile without token_chunk_size.")
    if isinstance(objective, KD) and objective.teacher_weights:
        raise ValueError("token_chunk_size works with one teacher: build KD "
                         "without teacher_weights.")
    return ChunkedStep(size, teachers[0], student, objective,
                       _hard_loss(loss), truncate_teacher_logits)


def _hard_loss(loss):
    """``(per_element_fn, reduction)`` of a compiled hard loss, or None."""
    if loss is None:
        return None
    if isinstance(loss, str):
        loss = keras.losses.get(loss)
    if isinstance(loss, keras.losses.Loss):
        if loss.reduction not in REDUCTIONS:
            raise ValueError(
                f"token_chunk_size reduces the hard loss itself and knows the "
                f"reductions {REDUCTIONS}; got reduction={loss.reduction!r}. "
                "Use one of them, or compile without token_chunk_size.")
        return loss.call, loss.reduction
    if callable(loss):
        return loss, "sum_over_batch_size"
    raise ValueError(
        f"token_chunk_size takes one hard loss (a keras.losses.Loss, its "
        f"name, or a function of (y_true, y_pred)), got {loss!r}.")


def remat(f):
    """``f``, rematerialised in the backward pass: ``keras.remat`` where this
    Keras has it, else the backend's own (``jax.checkpoint``,
    ``tf.recompute_grad``, non-reentrant ``torch.utils.checkpoint``).

    Example:

    >>> from keras import ops
    >>> float(remat(lambda v: ops.sum(v * v))(ops.ones((3,))))
    3.0
    """
    if hasattr(keras, "remat"):
        return keras.remat(f)
    backend = keras.backend.backend()
    if backend == "jax":
        import jax
        return jax.checkpoint(f)
    if backend == "tensorflow":
        import tensorflow as tf
        return tf.recompute_grad(f)
    if backend == "torch":
        import torch.utils.checkpoint

        def wrapped(*args):
            return torch.utils.checkpoint.checkpoint(f, *args,
                                                     use_reentrant=False)
        return wrapped
    return f


def eager():
    """True where TensorFlow executes eagerly (``run_eagerly=True``)."""
    import tensorflow as tf
    return tf.executing_eagerly()


def _bound(variables, values):
    """A scope in which ``variables`` read as ``values`` (none: no scope)."""
    if not values:
        return contextlib.nullcontext()
    return keras.StatelessScope(state_mapping=list(zip(variables, values)))


def _static_length(hidden):
    length = hidden.shape[1]
    if length is None:
        raise ValueError(
            "token_chunk_size needs a fixed sequence length to cut it into "
            "chunks; the batches have an unknown one. Pad them to one length "
            "(keras-hub preprocessors do: sequence_length=...), or compile "
            "without token_chunk_size.")
    return length


def _weights(sample_weight, batch, length):
    """``sample_weight`` as float32 ``(batch, length)`` (ones when None)."""
    if sample_weight is None:
        return ops.ones((batch, length), "float32")
    w = ops.cast(ops.convert_to_tensor(sample_weight), "float32")
    while len(w.shape) > 2 and w.shape[-1] == 1:
        w = ops.squeeze(w, -1)
    if len(w.shape) == 1:
        w = ops.expand_dims(w, -1)
    return ops.broadcast_to(w, (batch, length))


def _labels(labels):
    """``(labels, keep)``: integer labels (batch, length) with those below 0
    replaced by 0, and the float32 mask of labels >= 0."""
    labels = ops.convert_to_tensor(labels)
    if "int" not in keras.backend.standardize_dtype(labels.dtype):
        raise ValueError(
            "token_chunk_size takes integer next-token labels of shape "
            f"(batch, length), got dtype {labels.dtype}: pass the token ids "
            "(not one-hot rows), or compile without token_chunk_size.")
    if len(labels.shape) == 3 and labels.shape[-1] == 1:
        labels = ops.squeeze(labels, -1)
    keep = ops.greater_equal(labels, 0)
    return ops.maximum(labels, 0), ops.cast(keep, "float32")


class ChunkedStep:
    """The chunked loss and metrics of a compiled Distiller.

    Built by :func:`make` (``Distiller.compile(token_chunk_size=N)``): the
    Distiller's ``call`` then returns the student's hidden states
    (:meth:`hidden`), except in ``predict``, and its ``compute_loss`` hands
    them to :meth:`update_metrics` (the compiled metrics, on the logits of
    the step's weights, before any update) and :meth:`loss`, which form the
    logits ``N`` positions at a time (module docstring); its
    ``compute_metrics`` then only reads the results.

    Args:
        size: positions per chunk; the last chunk holds the rest
            (``length`` need not be a multiple of it).
        teacher: the teacher, a keras-hub causal LM.
        student: the student, a keras-hub causal LM.
        objective: the per-token objective, or None.
        hard: ``(per_element_fn, reduction)`` of the hard loss, or None.
        truncate: keep the teacher's first ``student_vocab`` logits.

    Example:

    >>> import keras_hub, keras_kd as kd
    >>> def lm(width):
    ...     return keras_hub.models.GPT2CausalLM(keras_hub.models.GPT2Backbone(
    ...         vocabulary_size=50, num_layers=1, num_heads=2,
    ...         hidden_dim=width, intermediate_dim=2 * width,
    ...         max_sequence_length=16))
    >>> step = make(3, [lm(16)], lm(8), kd.objectives.ForwardKL(),
    ...             feature_losses=[], loss=None, truncate_teacher_logits=False)
    >>> step.bounds(7)   # the positions of each chunk
    [(0, 3), (3, 6), (6, 7)]
    """

    def __init__(self, size, teacher, student, objective, hard, truncate):
        self.size = size
        self.teacher, self.student = teacher, student
        self.teacher_head = output_embedding(teacher, "teacher")
        self.student_head = output_embedding(student, "student")
        self.objective, self.hard, self.truncate = objective, hard, truncate
        self.masks = masking.ElementMasks()

    def hidden(self, x, training):
        """The student backbone's hidden states ``(batch, length, hidden)``."""
        return self.student.backbone(x, training=training)

    def _teacher_source(self, x, cached):
        """``(values, live)``: the teacher's hidden states (live) or its
        cached logits, which the chunks slice along the length."""
        if cached is not None:
            logits = cached["teacher_logits"]
            if isinstance(logits, (list, tuple)):
                raise ValueError("token_chunk_size works with one teacher: "
                                 "the cache holds several teachers' logits.")
            return ops.convert_to_tensor(logits), False
        hidden = self.teacher.backbone(x, training=False)
        return ops.stop_gradient(hidden), True

    def _chunk(self, live, use_soft, use_hard):
        """The function of one chunk: ``carry + [Σ w·l, Σ w·m·ce]``
        (float32; ``carry`` the sums of the chunks before it)."""
        objective, hard = self.objective, self.hard

        heads = self._head_variables(live and use_soft)

        def terms(carry, h_s, teacher, labels, keep, w, temperature,
                  *values):
            with _bound(heads, values):
                return logit_terms(carry, h_s, teacher, labels, keep, w,
                                   temperature)

        def logit_terms(carry, h_s, teacher, labels, keep, w, temperature):
            s = self.student_head(h_s, reverse=True)
            out = []
            if use_soft:
                t = self.teacher_head(teacher, reverse=True) if live else (
                    teacher)
                t = ops.stop_gradient(t)
                if self.truncate and t.shape[-1] > s.shape[-1]:
                    t = t[..., :s.shape[-1]]
                per = objective.compute(t, s, temperature=temperature)
                out.append(ops.sum(ops.cast(per, "float32") * w))
            if use_hard:  # (labels travel as float32: tf.recompute_grad
                # watches its inputs, and int32 ones only warn)
                per = hard[0](ops.cast(labels, "int32"),
                              ops.cast(s, "float32"))
                out.append(ops.sum(ops.cast(per, "float32") * w * keep))
            return carry + ops.stack(out)

        return remat(terms)

    def _head_variables(self, teacher_too):
        """The output embeddings' variables a chunk reads."""
        heads = [self.student_head] + ([self.teacher_head] if teacher_too
                                       else [])
        return [v for head in heads for v in head.variables]

    def bounds(self, length):
        """``[(start, stop), ...]``: the chunks of ``length`` positions."""
        return [(a, min(a + self.size, length))
                for a in range(0, length, self.size)]

    def loss(self, x, y, hidden, sample_weight, alpha, temperature,
             extra_losses, tracker):
        """The step's loss from the student's hidden states (a replica's
        share), logging ``student_loss`` / ``distillation_loss`` in
        ``tracker`` as the unchunked step does."""
        cached = y if isinstance(y, dict) and "teacher_logits" in y else None
        labels = None if cached is None and y is None else (
            y if cached is None else cached.get("labels"))
        batch, length = hidden.shape[0], _static_length(hidden)
        if batch is None:
            batch = ops.shape(hidden)[0]
        w = _weights(sample_weight, batch, length)
        use_soft = self.objective is not None
        use_hard = self.hard is not None and labels is not None
        if use_hard:
            labels, keep = _labels(labels)
            labels = ops.cast(labels, "float32")
        else:
            labels = keep = ops.zeros((batch, length), "float32")
        teacher, live = (self._teacher_source(x, cached) if use_soft
                         else (hidden, False))
        chunk = self._chunk(live, use_soft, use_hard)
        totals = 0.0
        if use_soft or use_hard:
            totals = self._sum_chunks(
                chunk, (hidden, teacher, labels, keep, w), temperature,
                length, int(use_soft) + int(use_hard),
                self._head_variables(live and use_soft))
        soft = hard = None
        if use_soft:
            count = ops.cast(batch * length, "float32")
            soft = totals[0] / count
            if self.objective.weight != 1.0:
                soft = soft * self.objective.weight
        if use_hard:
            hard = self._reduce_hard(totals[-1], w, keep)
        if hard is None:
            total = ops.zeros((), "float32") if soft is None else soft
        elif soft is None:
            total = alpha * hard
        else:
            total = hard + (1.0 - alpha) * (soft - hard)
        tracker.update_state(
            [ops.zeros((), "float32") if hard is None else hard] + (
                [] if soft is None else [soft]),
            ops.cast(batch, "float32"))
        extra = sum(ops.cast(v, "float32") for v in extra_losses)
        return (total + extra) / composition.replicas()

    def _sum_chunks(self, chunk, arrays, temperature, length, outputs,
                    heads):
        """``Σ_chunks chunk(slices of arrays, temperature)``.

        The whole chunks run in a loop the backend executes one chunk after
        the other, in both passes: ``lax.scan`` on JAX, and on TensorFlow a
        ``tf.while_loop`` with ``parallel_iterations=1``. Unrolled, the
        chunks of a graph have no data dependence in the backward pass, and
        XLA or TensorFlow's executor would be free to run (and keep the
        logits of) many chunks at once: TensorFlow's peak then grew with the
        tokens (docs/language-models.md, Memory). PyTorch, and TensorFlow
        run eagerly, compute one chunk at a time in a Python loop; so does
        the last, shorter chunk everywhere.
        """
        size, whole = self.size, length // self.size
        totals, start = ops.zeros((outputs,), "float32"), 0
        backend = keras.backend.backend()

        def stacked(a):  # (batch, whole · size, ...) -> (whole, batch, size, ...)
            a = a[:, :whole * size]
            a = ops.reshape(a, (-1, whole, size) + tuple(a.shape[2:]))
            return ops.moveaxis(a, 1, 0)

        if backend == "jax" and whole > 1:
            import jax

            def body(carry, xs):
                return chunk(carry, *xs, temperature), None

            totals, _ = jax.lax.scan(body, totals, tuple(
                stacked(a) for a in arrays))
            start = whole * size
        elif backend == "tensorflow" and whole > 1 and not eager():
            import tensorflow as tf

            pieces = tuple(stacked(a) for a in arrays)
            # The body reads the output embeddings as loop inputs, not as
            # captured variables, which tf.recompute_grad cannot
            # differentiate inside a while loop.
            values = [ops.convert_to_tensor(v) for v in heads]

            def tf_body(i, carry):
                return i + 1, chunk(carry, *(p[i] for p in pieces),
                                    temperature, *values)

            _, totals = tf.while_loop(
                lambda i, carry: i < whole, tf_body,
                (tf.constant(0), totals), parallel_iterations=1)
            start = whole * size
        for a, b in self.bounds(length):
            if a >= start:
                totals = chunk(totals, *(x[:, a:b] for x in arrays),
                                temperature)
        return totals

    def _reduce_hard(self, total, w, keep):
        """Keras's reduction of a masked loss: ``Σ l·w·m / Σ m``
        (``sum_over_batch_size``), ``Σ l·w·m`` or ``Σ l·w·m / Σ w·m``."""
        reduction = self.hard[1]
        if reduction == "sum":
            return total
        divisor = ops.sum(w * keep) if reduction == \
            "mean_with_sample_weight" else ops.sum(keep)
        return ops.divide_no_nan(total, divisor)

    def update_metrics(self, y, hidden, sample_weight, update):
        """Feeds the compiled metrics chunk by chunk: ``update(labels,
        logits, sample_weight)`` per chunk (Keras's ``compute_metrics``),
        labels below 0 masked out as unchunked. Returns the last result."""
        labels = y.get("labels") if isinstance(y, dict) else y
        if labels is None:
            return None
        labels, keep = _labels(labels)
        batch, length = hidden.shape[0], _static_length(hidden)
        if batch is None:
            batch = ops.shape(hidden)[0]
        w = None if sample_weight is None else _weights(sample_weight,
                                                        batch, length)
        result = None
        for a, b in self.bounds(length):
            logits = ops.stop_gradient(
                self.student_head(hidden[:, a:b], reverse=True))
            logits = self.masks.attach(logits, keep[:, a:b] > 0)
            result = update(labels[:, a:b], logits,
                            None if w is None else w[:, a:b] * 1.0)
        return result
