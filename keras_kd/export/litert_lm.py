"""Running a language-model file with LiteRT: :class:`LiteRTCausalLM`.

Two kinds of file, both written by :func:`keras_kd.export.lm_to_tflite`:

* **with a KV cache** (``kv_cache_length=L``): signatures ``prefill_<N>``
  and ``decode`` (:mod:`keras_kd.export.lm_cache`). The prompt's first
  ``p − 1`` tokens are prefilled in chunks of the file's prefill lengths
  (the last chunk padded: its padding positions are overwritten by the next
  decode steps before any position attends to them), then each token is one
  ``decode`` call at its position: the prompt's last token at ``p − 1``,
  then each generated token. The cache travels between calls as tensors.
  One token costs one position's forward pass plus attention over the
  cache: use it to generate. This is the order of litert-torch's example
  runner (prefill, then decode from the prompt's last token).
* **without a cache** (``sequence_length``): every token reruns the full
  ``sequence_length`` forward pass on the padded sequence so far. Use it for
  a model whose cache cannot be exported (no keras-hub ``call_with_cache``,
  or another cache layout), or to score whole sequences (:meth:`logits`
  costs one call).

Next tokens are chosen by :mod:`keras_kd.export.sampling` (greedy, or
temperature / top-k / top-p draws from a seeded generator).
"""

import os

import numpy as np

from keras_kd.export import litert, sampling
from keras_kd.export.lm import INPUT_NAMES, pack, token_ids_of


def prefill_plan(count, prefill_lengths, kv_cache_length, start=0):
    """``[(signature, n_tokens, n_real)]`` filling positions ``start`` to
    ``start + count − 1``: chunks of the prefill lengths, the last one padded
    when a length covers what remains, never past the cache (a chunk of
    ``N`` at ``s`` needs ``s + N <= L``), ``decode`` for a token no prefill
    fits.

    >>> prefill_plan(11, [4, 8], 32)
    [('prefill_8', 8, 8), ('prefill_4', 4, 3)]
    >>> prefill_plan(3, [8], 9, start=4)
    [('decode', 1, 1), ('decode', 1, 1), ('decode', 1, 1)]
    """
    plan, position = [], start
    while position < start + count:
        remaining = start + count - position
        fits = [n for n in prefill_lengths if position + n <= kv_cache_length]
        covering = [n for n in fits if n >= remaining]
        whole = [n for n in fits if n <= remaining]
        n = min(covering) if covering else max(whole) if whole else 1
        real = min(n, remaining)
        plan.append((f"prefill_{n}" if n in fits else "decode", n, real))
        position += real
    return plan


class LiteRTCausalLM:
    """A language model file from :func:`~keras_kd.export.lm_to_tflite`,
    run with LiteRT (with or without a KV cache; see the module).

    Loads the file once into LiteRT's interpreter (one thread; TensorFlow's
    interpreter when the file needs Flex ops) and reads its kind and sizes
    from its signatures.

    Attributes:
        has_cache: whether the file has ``prefill_<N>`` / ``decode``.
        sequence_length: the longest sequence (prompt plus generated
            tokens): the file's length, or its ``kv_cache_length``.
        kv_cache_length, prefill_lengths: the cache's positions and the
            prefill signatures' lengths (None and () without a cache).
        vocabulary_size: the number of token ids.

    Args:
        path: a ``.tflite`` file written by :func:`lm_to_tflite`.

    Example:

    >>> import keras_kd as kd
    >>> from keras_kd.app.language_models import build_causal_lm
    >>> _ = kd.export.lm_to_tflite(build_causal_lm("tiny", seed=0),
    ...                            "/tmp/lm16.tflite", 16, latency_runs=0)
    >>> lm = kd.export.LiteRTCausalLM("/tmp/lm16.tflite")
    >>> lm.sequence_length, lm.vocabulary_size, lm.has_cache
    (16, 256, False)
    >>> lm.logits([1, 2, 3]).shape
    (3, 256)
    >>> lm.generate([1, 2], 3, stop_token_ids=1).dtype
    dtype('int32')
    >>> lm.logits([1, 256])
    Traceback (most recent call last):
    ...
    ValueError: token_ids must be ids in [0, 256) (the vocabulary size 256); got 256 at position 1.
    >>> _ = kd.export.lm_to_tflite(build_causal_lm("tiny", seed=0),
    ...                            "/tmp/lm_kv16.tflite", kv_cache_length=16,
    ...                            prefill_lengths=(4,), latency_runs=0)
    >>> cached = kd.export.LiteRTCausalLM("/tmp/lm_kv16.tflite")
    >>> cached.has_cache, cached.kv_cache_length, cached.prefill_lengths
    (True, 16, (4,))
    >>> len(cached.generate([1, 2], 5, temperature=0.8, top_k=20, seed=0))
    7
    >>> [type(t).__name__ for t in cached.stream([5, 6], 2)]
    ['int', 'int']
    """

    def __init__(self, path):
        path = os.fspath(path)
        with open(path, "rb") as f:
            flex = litert.flex_ops(f.read(), path)
        self.path = path
        self.interpreter = litert.interpreter(path, bool(flex))
        signatures = self.interpreter.get_signature_list()
        self.has_cache = "decode" in signatures
        if self.has_cache:
            self._read_cache_signatures(signatures)
        else:
            self._read_fixed_signature()

    def _read_cache_signatures(self, signatures):
        decode = self.interpreter.get_signature_runner("decode")
        inputs = decode.get_input_details()
        self._cache = {name: (tuple(int(d) for d in detail["shape"]),
                              detail["dtype"])
                       for name, detail in inputs.items()
                       if name.startswith("kv_cache_")}
        if not self._cache or not {"tokens", "input_pos"} <= set(inputs):
            raise ValueError(
                f"{self.path!r} has a 'decode' signature with inputs "
                f"{sorted(inputs)}, not tokens, input_pos and kv_cache_k_<i> "
                "/ kv_cache_v_<i>; write it with kd.export.lm_to_tflite(..., "
                "kv_cache_length=...).")
        self.kv_cache_length = int(next(iter(self._cache.values()))[0][1])
        self.sequence_length = self.kv_cache_length
        self.prefill_lengths = tuple(sorted(
            int(name[len("prefill_"):]) for name in signatures
            if name.startswith("prefill_")))
        self._runners = {name: self.interpreter.get_signature_runner(name)
                         for name in signatures}
        logits = decode.get_output_details()["logits"]
        self.vocabulary_size = int(logits["shape"][-1])

    def _read_fixed_signature(self):
        inputs = self.interpreter.get_signature_runner().get_input_details()
        shapes = {tuple(d["shape"]) for d in inputs.values()}
        if set(inputs) != set(INPUT_NAMES) or len(shapes) != 1 or len(
                next(iter(shapes))) != 2 or next(iter(shapes))[0] != 1:
            found = {name: tuple(int(d) for d in detail["shape"])
                     for name, detail in sorted(inputs.items())}
            raise ValueError(
                f"{self.path!r} takes {found}, not token_ids and padding_mask "
                "of shape (1, length); write it with kd.export.lm_to_tflite.")
        self.sequence_length = int(next(iter(shapes))[1])
        self.kv_cache_length, self.prefill_lengths = None, ()
        (output,) = self.interpreter.get_output_details()
        self.vocabulary_size = int(output["shape"][-1])

    # ------------------------------------------------------------------
    # The cache
    # ------------------------------------------------------------------
    def new_cache(self):
        """An empty cache of a cache file: ``{"kv_cache_k_0": zeros (1, L,
        kv_heads, head_dim), ...}``, one array per cache input."""
        if not self.has_cache:
            raise ValueError(f"{self.path!r} has no KV cache; export with "
                             "kd.export.lm_to_tflite(..., kv_cache_length=L).")
        return {name: np.zeros(shape, dtype)
                for name, (shape, dtype) in self._cache.items()}

    def run_signature(self, name, tokens, start, cache):
        """One call of the cache file's signature ``name`` (``"decode"``
        or ``"prefill_<N>"``) on ``tokens`` (as many as it takes) at
        positions ``start, start + 1, ...``, with ``cache`` (from
        :meth:`new_cache` or a previous call); returns ``(logits (V,) of the
        last position, the updated cache)``. Nothing is checked here: the
        building block of :meth:`generate`, for timing single steps."""
        n = len(tokens)
        out = self._runners[name](
            tokens=np.asarray(tokens, "int32").reshape(1, n),
            input_pos=np.arange(start, start + n, dtype="int32"), **cache)
        return out["logits"].reshape(-1), {k: out[k] for k in cache}

    def _fill(self, tokens, cache):
        """Prefills ``tokens`` from position 0 (see :func:`prefill_plan`)."""
        position = 0
        for name, n, real in prefill_plan(len(tokens), self.prefill_lengths,
                                          self.kv_cache_length):
            chunk = list(tokens[position:position + real]) + [0] * (n - real)
            _, cache = self.run_signature(name, chunk, position, cache)
            position += real
        return cache

    # ------------------------------------------------------------------
    # Public
    # ------------------------------------------------------------------
    def logits(self, token_ids):
        """Float32 logits ``(len(token_ids), vocabulary_size)`` of one
        sequence of 1 to ``sequence_length`` ids: row ``i`` predicts token
        ``i + 1``.

        Without a cache the sequence is padded to the file's length and run
        once; with one, each token is one ``decode`` step. The ids must be
        integers in ``[0, vocabulary_size)``; a batch of several sequences
        is refused (the file runs one: call once per sequence)."""
        if not self.has_cache:
            packed = pack([token_ids], self.sequence_length,
                          self.vocabulary_size)
            (logits,) = litert.invoke(self.interpreter, packed)
            return logits[0, :int(packed["padding_mask"].sum())]
        ids = token_ids_of(token_ids, self.vocabulary_size)
        if not 1 <= len(ids) <= self.kv_cache_length:
            raise ValueError(
                f"Token sequences must hold 1 to {self.kv_cache_length} ids "
                f"(the file's kv_cache_length); got {len(ids)}.")
        cache, rows = self.new_cache(), []
        for position, token in enumerate(ids.tolist()):
            logits, cache = self.run_signature("decode", [token], position, cache)
            rows.append(logits)
        return np.stack(rows).astype("float32")

    def stream(self, prompt_token_ids, max_new_tokens, stop_token_ids=None,
               temperature=0.0, top_k=None, top_p=None, seed=None):
        """Yields the generated token ids one by one, as they are chosen.

        Arguments as :meth:`generate` (without ``callback``); the prompt is
        not yielded. Everything is checked before the first token.

        Example::

            for token in lm.stream(prompt_ids, 64, temperature=0.7, seed=0):
                print(bytes([token]).decode(errors="replace"), end="")
        """
        tokens, stop, rng = self._check(prompt_token_ids, max_new_tokens,
                                        stop_token_ids, temperature, top_k,
                                        top_p, seed)
        return self._tokens(tokens, max_new_tokens, stop, rng,
                            (temperature, top_k, top_p))

    def _tokens(self, tokens, max_new_tokens, stop, rng, options):
        if max_new_tokens == 0:
            return
        if self.has_cache:
            cache = self._fill(tokens[:-1], self.new_cache())
            logits, cache = self.run_signature("decode", tokens[-1:], len(tokens) - 1,
                                      cache)
        else:
            logits = self.logits(tokens)[-1]
        for count in range(max_new_tokens):
            token = sampling.choose(logits, rng, *options)
            tokens.append(token)
            yield token
            if token in stop or count + 1 == max_new_tokens:
                return
            if self.has_cache:
                logits, cache = self.run_signature("decode", [token], len(tokens) - 1,
                                          cache)
            else:
                logits = self.logits(tokens)[-1]

    def _check(self, prompt_token_ids, max_new_tokens, stop_token_ids,
               temperature, top_k, top_p, seed):
        tokens = token_ids_of(prompt_token_ids, self.vocabulary_size,
                              "prompt_token_ids").tolist()
        if not tokens:
            raise ValueError("prompt_token_ids is empty; generation needs at "
                             "least one token to predict from (e.g. a start "
                             "or newline token).")
        if not isinstance(max_new_tokens, (int, np.integer)) or isinstance(
                max_new_tokens, bool) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be an int >= 0, got "
                             f"{max_new_tokens!r}.")
        if len(tokens) + max_new_tokens > self.sequence_length:
            what = ("kv_cache_length" if self.has_cache
                    else "sequence_length")
            raise ValueError(
                f"The prompt ({len(tokens)} tokens) plus max_new_tokens="
                f"{max_new_tokens} exceeds the file's {what}="
                f"{self.sequence_length}; generate at most "
                f"{max(0, self.sequence_length - len(tokens))} tokens, or "
                f"export with a longer {what}.")
        sampling.check_options(temperature, top_k, top_p)
        stop = set() if stop_token_ids is None else set(token_ids_of(
            np.asarray(stop_token_ids).reshape(-1), self.vocabulary_size,
            "stop_token_ids").tolist())
        return tokens, stop, np.random.default_rng(seed)

    def generate(self, prompt_token_ids, max_new_tokens, stop_token_ids=None,
                 temperature=0.0, top_k=None, top_p=None, seed=None,
                 callback=None):
        """The prompt followed by up to ``max_new_tokens`` generated ids.

        Each next token is chosen from the logits at the last position
        (:func:`keras_kd.export.sampling.choose`): greedily
        (``temperature=0``, keras-hub's ``generate`` with
        ``sampler="greedy"``), or drawn from ``softmax(logits /
        temperature)`` restricted to the ``top_k`` most likely tokens and/or
        the ``top_p`` nucleus, with ``numpy.random.default_rng(seed)`` (one
        seed, one result). Generation stops after ``max_new_tokens`` tokens
        or after a token in ``stop_token_ids`` (kept in the result).
        :meth:`stream` yields the same tokens one by one.

        One prompt at a time: a batch of prompts (a 2-D array of several
        rows) is refused, since each row would stop at its own length; call
        ``generate`` once per prompt.

        Args:
            prompt_token_ids: 1 or more integer token ids in ``[0,
                vocabulary_size)`` (one sequence).
            max_new_tokens: tokens to generate; the prompt plus them must fit
                in ``sequence_length`` (the ``kv_cache_length`` of a cache
                file), else ``ValueError`` before any work.
            stop_token_ids: an id or ids that end generation, or None.
            temperature: 0 for greedy, else the sampling temperature.
            top_k, top_p: restrict sampling (need ``temperature > 0``).
            seed: the sampling generator's seed (None: fresh entropy).
            callback: called with each generated id (an int) as soon as it
                is chosen, e.g. to print a streamed reply.

        Returns:
            An int32 array: the prompt, then the generated ids.
        """
        tokens, stop, rng = self._check(prompt_token_ids, max_new_tokens,
                                        stop_token_ids, temperature, top_k,
                                        top_p, seed)
        if callback is not None and not callable(callback):
            raise TypeError(f"callback must be callable (called with each "
                            f"token id), got {type(callback).__name__}.")
        prompt = list(tokens)
        new = []
        for token in self._tokens(tokens, max_new_tokens, stop, rng,
                                  (temperature, top_k, top_p)):
            new.append(token)
            if callback is not None:
                callback(token)
        return np.asarray(prompt + new, dtype="int32")


def litert_generate(tflite_path, prompt_token_ids, max_new_tokens,
                    stop_token_ids=None):
    """Greedy generation with a :func:`lm_to_tflite` file in LiteRT.

    ``LiteRTCausalLM(tflite_path).generate(...)``: see
    :meth:`LiteRTCausalLM.generate`. Keep a :class:`LiteRTCausalLM` to
    generate several times from one loaded file.

    Returns:
        An int32 array: the prompt, then the generated ids.

    Example:

    >>> import keras_kd as kd
    >>> from keras_kd.app.language_models import build_causal_lm
    >>> _ = kd.export.lm_to_tflite(build_causal_lm("tiny", seed=0),
    ...                            "/tmp/lm16.tflite", 16, latency_runs=0)
    >>> kd.export.litert_generate("/tmp/lm16.tflite", [72, 105], 4).shape
    (6,)
    """
    return LiteRTCausalLM(tflite_path).generate(
        prompt_token_ids, max_new_tokens, stop_token_ids)
