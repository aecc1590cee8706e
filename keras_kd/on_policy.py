"""On-policy distillation of causal language models (GKD).

A student distilled only on fixed text learns to continue the teacher's
prefixes, not its own, and drifts at generation time. On-policy distillation
(Agarwal et al., "On-Policy Distillation of Language Models: Learning from
Self-Generated Mistakes", ICLR 2024, arXiv:2306.13649; Gu et al., MiniLLM,
ICLR 2024) trains the student on its own continuations, scored by the
teacher:

1. each sequence of a batch is, with probability ``λ`` (``lmbda``), cut to
   its prompt (the first ``prompt_length`` tokens) and continued by the
   student *with its current weights*, by sampling (temperature, top-k,
   top-p) inside the training step;
2. the teacher and the student both run on the resulting tokens;
3. the distillation objective (e.g. ``"gkd"``, ``"reverse_kl"``) is computed
   on the positions that predict a generated token only; those positions
   carry no label, so the hard-label loss leaves them out;
4. the other sequences keep the batch's own continuations (off-policy).

Which sequences may be sampled: a row is continued by the student only when
its prompt holds at least one real token, its weights are not all 0 and it
is right-padded (keras-hub's preprocessors pad on the right). A row of
padding only, a row the user weighted 0 and a left-padded row (a padding
token before a real one) keep their own tokens and weights: sampling them
would invent a sequence from an empty prompt, give weight to a row meant to
count for nothing, or overwrite real tokens. A batch of padding only thus
has every weight 0: its loss and gradients are 0 (the step changes nothing
but the optimizer's own state, as any zero-weight batch in Keras).
NumPy inputs with left-padded rows, or with sequences no longer than
``prompt_length``, are refused before ``fit`` starts
(:meth:`OnPolicy.check_data`).

``lmbda=0`` is off-policy distillation exactly (no sampling runs);
``lmbda=1`` is fully on-policy. The per-sequence draw gives each batch, on
average, a fraction ``λ`` of sampled sequences (GKD draws once per batch;
the expected mix is the same, with less variance between steps).

Sampling runs inside the compiled training step with keras-hub's
``CausalLM.generate_step`` (its key/value cache and ``while_loop``) on
copies of the student's current weights that carry no gradient, so it works
on JAX, TensorFlow and PyTorch and never samples from a stale copy. A step
with on-policy sequences costs the generation of ``L − prompt_length``
tokens plus one more student forward pass. The wall time of the sampling
is measured inside the step (:func:`timed`) and logged as
``sampling_seconds``.
"""

import time

import keras
import numpy as np
from keras import ops

from keras_kd import inputs
from keras_kd.checks import check_temperature, is_number


def _sampler_class():
    try:
        import keras_hub
    except ImportError as error:  # pragma: no cover - hub extra missing
        raise ImportError(
            'On-policy distillation samples with keras-hub: pip install '
            '"keras-kd[hub]"') from error

    class StudentSampler(keras_hub.samplers.Sampler):
        """Temperature, top-k and top-p sampling from a given seed generator."""

        def __init__(self, seed_generator, temperature=1.0, top_k=None,
                     top_p=None):
            super().__init__(temperature=temperature)
            self.top_k, self.top_p = top_k, top_p
            self.seed_generator = seed_generator

        def get_next_token(self, probabilities):
            vocabulary = ops.shape(probabilities)[-1]
            k = vocabulary if self.top_k is None else min(self.top_k,
                                                          vocabulary)
            probs, indices = ops.top_k(probabilities, k=k, sorted=True)
            if self.top_p is not None:
                # Keep the smallest prefix whose mass reaches top_p.
                before = ops.cumsum(probs, axis=-1) - probs
                probs = ops.where(before < self.top_p, probs,
                                  ops.zeros_like(probs))
            choice = keras.random.categorical(
                ops.log(ops.maximum(probs, 1e-30)), 1,
                seed=self.seed_generator, dtype="int32")
            return ops.squeeze(ops.take_along_axis(indices, choice, axis=-1),
                               axis=-1)

    return StudentSampler


@keras.saving.register_keras_serializable(package="keras_kd")
class OnPolicy:
    """Student-generated continuations for distilling a causal LM (GKD).

    Pass it to ``Distiller.compile(on_policy=...)`` with a keras-hub
    ``CausalLM`` student whose inputs are ``{"token_ids", "padding_mask"}``
    and integer next-token labels (what its preprocessor gives). The math is
    in this module's docstring (:mod:`keras_kd.on_policy`).

    Args:
        lmbda: probability ``λ`` in [0, 1] that a sequence is continued by
            the student (GKD's λ; 0 is off-policy distillation).
        prompt_length: number of leading tokens of each sequence kept as the
            prompt; the student samples the rest, up to the sequence length.
        temperature: sampling temperature (> 0; 1 samples the student's own
            distribution, as GKD does).
        top_k: sample among the ``top_k`` most likely tokens only (None: all).
        top_p: nucleus sampling: the smallest set of tokens whose mass
            reaches ``top_p`` (None: all).
        seed: seed of the sampling (None: random).

    Logged during ``fit``: ``on_policy_fraction`` (the share of sequences
    sampled, whose mean is ``λ``), ``generated_tokens`` (tokens sampled per
    batch) and ``sampling_seconds`` (wall time spent sampling per step, see
    :func:`timed`; not logged on TensorFlow with ``jit_compile=True``).

    Example:

    >>> on_policy = OnPolicy(lmbda=0.5, prompt_length=16, top_k=50)
    >>> on_policy.get_config()["lmbda"]
    0.5
    """

    def __init__(self, lmbda=0.5, prompt_length=1, temperature=1.0,
                 top_k=None, top_p=None, seed=None):
        if not is_number(lmbda) or not 0.0 <= float(lmbda) <= 1.0:
            raise ValueError(
                f"lmbda must be in [0, 1], got {lmbda!r}: the probability "
                "that a sequence is continued by the student (0: off-policy "
                "distillation, 1: every sequence sampled), e.g. lmbda=0.5.")
        self.lmbda = float(lmbda)
        if not isinstance(prompt_length, (int, np.integer)) or isinstance(
                prompt_length, bool) or prompt_length < 1:
            raise ValueError(
                f"prompt_length must be an integer >= 1, got "
                f"{prompt_length!r}: the number of leading tokens of each "
                "sequence the student continues from, e.g. prompt_length=16.")
        self.prompt_length = int(prompt_length)
        self.temperature = check_temperature(temperature, strict=True,
                                             what="on-policy temperature")
        if top_k is not None and (
                not isinstance(top_k, (int, np.integer))
                or isinstance(top_k, bool) or top_k < 1):
            raise ValueError(
                f"top_k must be an integer >= 1 or None, got {top_k!r}; "
                "e.g. top_k=50 samples among the 50 likeliest tokens.")
        if top_p is not None and not (is_number(top_p)
                                      and 0.0 < float(top_p) <= 1.0):
            raise ValueError(
                f"top_p must be a number in (0, 1] or None, got {top_p!r}; "
                "e.g. top_p=0.95 samples from the smallest set of tokens "
                "holding 95% of the probability.")
        if seed is not None and (not isinstance(seed, (int, np.integer))
                                 or isinstance(seed, bool)):
            raise ValueError(f"seed must be an integer or None, got {seed!r}.")
        top_k = None if top_k is None else int(top_k)
        seed = None if seed is None else int(seed)
        self.top_k = top_k
        self.top_p = None if top_p is None else float(top_p)
        self.seed = seed

    def get_config(self):
        return dict(lmbda=self.lmbda, prompt_length=self.prompt_length,
                    temperature=self.temperature, top_k=self.top_k,
                    top_p=self.top_p, seed=self.seed)

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def check_student(self, student):
        """Refuses a student that is not a keras-hub causal LM."""
        if not hasattr(student, "generate_step"):
            raise ValueError(
                f"on_policy needs a keras-hub CausalLM student (it samples "
                f"with generate_step); '{student.name}' is a "
                f"{type(student).__name__}. Distil it off-policy "
                "(on_policy=None).")

    def check_data(self, x):
        """Refuses, before ``fit``, data the sampling cannot use.

        ``x`` as given to ``fit``: a dict of NumPy ``token_ids`` and
        ``padding_mask``, or a ``tf.data`` dataset of such batches (its
        element spec is read, never its data). Sequences no longer than
        ``prompt_length`` leave nothing to sample; NumPy rows padded on the
        left would have real tokens overwritten (such rows are kept
        off-policy inside the step, see :mod:`keras_kd.on_policy`; here the
        whole input is refused so that the mistake is seen).

        Example:

        >>> x = {"token_ids": np.ones((2, 8), "int32"),
        ...      "padding_mask": np.ones((2, 8), bool)}
        >>> OnPolicy(prompt_length=4).check_data(x)
        >>> OnPolicy(prompt_length=8).check_data(x)
        Traceback (most recent call last):
        ...
        ValueError: prompt_length=8 leaves nothing to sample in sequences of 8 tokens; use a prompt_length below 8.
        """
        if inputs.is_tf_dataset(x):
            spec = x.element_spec
            spec = spec[0] if isinstance(spec, tuple) else spec
            if isinstance(spec, dict) and "token_ids" in spec:
                shape = spec["token_ids"].shape
                if shape.rank == 2 and shape[1] is not None:
                    self.check_length(int(shape[1]))
            return
        if not isinstance(x, dict) or "token_ids" not in x:
            return
        ids = x["token_ids"]
        if getattr(ids, "ndim", None) == 2 and ids.shape[1] is not None:
            self.check_length(int(ids.shape[1]))
        mask = x.get("padding_mask")
        if isinstance(mask, np.ndarray) and mask.ndim == 2:
            mask = mask.astype(bool)
            left = np.flatnonzero((~mask[:, :-1] & mask[:, 1:]).any(axis=1))
            if left.size:
                raise ValueError(
                    f"on_policy needs right-padded sequences (real tokens "
                    f"first, padding after), but rows {left[:5].tolist()} "
                    "have padding before a real token (left padding): "
                    "sampling would overwrite their real tokens. Pad on the "
                    "right, as keras-hub's CausalLM preprocessors do.")

    def check_length(self, length):
        """Refuses sequences of ``length`` tokens that leave nothing to
        sample after the prompt."""
        if self.prompt_length >= length:
            raise ValueError(
                f"prompt_length={self.prompt_length} leaves nothing to sample "
                f"in sequences of {length} tokens; use a prompt_length below "
                f"{length}.")

    def make_sampler(self, seed_generator):
        """The keras-hub sampler drawing from ``seed_generator``."""
        return _sampler_class()(seed_generator, self.temperature, self.top_k,
                                self.top_p)

    def sample(self, student, sampler, token_ids, prompt_mask):
        """Tokens of ``token_ids`` continued by ``student`` past ``prompt_mask``.

        The student's variables are read through ``stop_gradient``: the
        sampled tokens are data, and JAX cannot differentiate through the
        sampling loop.
        """
        previous = getattr(student, "sampler", None)
        student.sampler = sampler
        try:
            if keras.config.backend() != "jax":  # integer tokens: no gradient
                return student.generate_step(
                    {"token_ids": token_ids,
                     "padding_mask": prompt_mask})["token_ids"]
            mapping = [(v, ops.stop_gradient(v.value))
                       for v in student.variables + sampler.variables]
            with keras.StatelessScope(state_mapping=mapping) as scope:
                tokens = student.generate_step(
                    {"token_ids": token_ids, "padding_mask": prompt_mask}
                )["token_ids"]
            for v in sampler.variables:  # the seed moves on
                v.assign(scope.get_current_value(v))
            return tokens
        finally:
            student.sampler = previous

    def mix(self, student, sampler, seed_generator, x, y, sample_weight,
            timing=True):
        """The batch with a ``λ`` share of its sequences student-generated.

        Returns ``(x, y, sample_weight, fraction, generated, seconds)``:
        inputs whose
        chosen rows hold the prompt plus sampled tokens (padding mask all
        true there); labels ``-1`` (unlabeled) on those rows; weights equal
        to the row's largest weight (1 for a padding mask, the sequence's
        weight for per-sequence weights) on the positions that predict a
        sampled token and 0 elsewhere on those rows (the other rows keep
        their labels and weights; rows of padding only, weighted 0 or
        left-padded are never chosen); the share of
        rows sampled, the number of tokens sampled and the seconds spent
        sampling (:func:`timed`; None when ``timing=False``).
        """
        if not isinstance(x, dict) or "token_ids" not in x:
            raise ValueError(
                "on_policy needs batches of {'token_ids', 'padding_mask'} "
                "inputs (a keras-hub CausalLM preprocessor's output), got "
                f"{type(x).__name__}.")
        token_ids = x["token_ids"]
        padding_mask = ops.cast(x["padding_mask"], "bool")
        length = ops.shape(token_ids)[1]
        self.check_length(length)
        position = ops.arange(length)[None, :]
        prompt_mask = ops.logical_and(padding_mask,
                                      position < self.prompt_length)
        if sample_weight is None:
            weights = ops.cast(padding_mask, "float32")
        else:
            weights = ops.cast(sample_weight, "float32")
            if len(weights.shape) == 1:  # one weight per sequence
                weights = weights[:, None] * ops.ones((1, length), "float32")
        # Rows that may be sampled: a real token in the prompt, a weight
        # somewhere, right-padded (no padding before a real token).
        prompt_ends = ops.sum(ops.cast(prompt_mask, "int32"), axis=1)
        row_weight = ops.max(weights, axis=1)
        right_padded = ops.logical_not(ops.any(ops.logical_and(
            ops.logical_not(padding_mask[:, :-1]), padding_mask[:, 1:]),
            axis=1))
        eligible = ops.logical_and(
            ops.logical_and(prompt_ends > 0, row_weight > 0), right_padded)
        # The sampler continues every row; the others' samples are dropped,
        # but an empty prompt would make it read position -1: give those
        # rows their first token as a prompt.
        sampling_mask = ops.where(eligible[:, None], prompt_mask,
                                  position == 0)

        def sample(ids):
            return self.sample(student, sampler, ids, sampling_mask)

        sampled, seconds = (timed(sample, token_ids) if timing
                            else (sample(token_ids), None))
        rows = ops.logical_and(
            keras.random.uniform(ops.shape(token_ids)[:1],
                                 seed=seed_generator) < self.lmbda, eligible)
        rows2d = rows[:, None]
        new_ids = ops.where(rows2d, ops.cast(sampled, token_ids.dtype),
                            token_ids)
        new_mask = ops.logical_or(rows2d, padding_mask)
        # Position t predicts token t + 1: sampled tokens are predicted from
        # each row's own prompt end to the second-to-last position, with the
        # row's largest weight (1 for a padding mask).
        predicts_sampled = ops.logical_and(
            position >= prompt_ends[:, None] - 1, position < length - 1)
        on_weights = ops.cast(predicts_sampled, "float32")
        new_weights = ops.where(rows2d, on_weights * row_weight[:, None],
                                weights)
        new_y = None if y is None else ops.where(
            rows2d, ops.cast(-1, y.dtype), y)
        generated = ops.sum(on_weights * ops.cast(rows2d, "float32"))
        fraction = ops.mean(ops.cast(rows, "float32"))
        new_x = dict(x, token_ids=new_ids,
                     padding_mask=ops.cast(new_mask, x["padding_mask"].dtype))
        return new_x, new_y, new_weights, fraction, generated, seconds


class _HostClock:
    """Host-side stopwatch driven from a compiled JAX program.

    ``start`` and ``stop`` pass their array through unchanged; the program
    routes its data through them, so ``start`` runs before the timed work
    begins and ``stop`` once its result exists.
    """

    def __init__(self):
        self.started = None

    def start(self, x):
        self.started = time.perf_counter()
        return x

    def stop(self, x):
        return x, np.float32(time.perf_counter() - self.started)


def _timed_jax(fn, x):
    import jax
    from jax.experimental import io_callback

    clock = _HostClock()
    spec = jax.ShapeDtypeStruct(x.shape, x.dtype)
    x = io_callback(clock.start, spec, x)
    y = fn(x)
    return io_callback(clock.stop, (jax.ShapeDtypeStruct(y.shape, y.dtype),
                                    jax.ShapeDtypeStruct((), "float32")), y)


def _timed_tensorflow(fn, x):
    import tensorflow as tf

    started = tf.timestamp()
    with tf.control_dependencies([started]):
        x = tf.identity(x)
    y = fn(x)
    with tf.control_dependencies([y]):
        stopped = tf.timestamp()
    with tf.control_dependencies([stopped]):
        y = tf.identity(y)
    return y, tf.cast(stopped - started, "float32")


def _timed_eager(fn, x):
    ops.convert_to_numpy(x[:1])  # waits for queued device work
    started = time.perf_counter()
    y = fn(x)
    ops.convert_to_numpy(y[:1])
    return y, ops.convert_to_tensor(time.perf_counter() - started, "float32")


def timed(fn, x):
    """``(fn(x), seconds)``: the result and the wall time ``fn`` took.

    Works inside a compiled training step, where Python's clock would read
    the time of tracing: on JAX the array passes through two host callbacks
    (``jax.experimental.io_callback``) that bracket ``fn``'s computation
    (``fn`` cannot start before the first returns, the second runs once
    ``fn``'s result exists); on TensorFlow two ``tf.timestamp`` ops ordered
    by control dependencies bracket it (XLA has no clock op, so a step
    compiled with ``jit_compile=True`` cannot call this); on PyTorch (eager)
    the device is waited on before and after. Work the program does before
    or after ``fn`` is not counted; on an accelerator, the two brackets cost
    one device-to-host round trip each.

    Args:
        fn: a function of one tensor returning one tensor.
        x: its input tensor.

    Returns:
        ``(fn(x), seconds)``, ``seconds`` a float32 scalar tensor.

    Example:

    >>> import keras
    >>> y, seconds = timed(lambda t: keras.ops.cumsum(t), keras.ops.ones(4))
    >>> keras.ops.convert_to_numpy(y).tolist(), float(seconds) >= 0
    ([1.0, 2.0, 3.0, 4.0], True)
    """
    backend = keras.config.backend()
    if backend == "jax":
        return _timed_jax(fn, x)
    if backend == "tensorflow":
        return _timed_tensorflow(fn, x)
    return _timed_eager(fn, x)
