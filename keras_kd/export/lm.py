"""The student language model on LiteRT: a fixed-length forward pass, or
prefill and decode with a KV cache (:mod:`keras_kd.export.lm_cache`).

:func:`lm_to_tflite` converts a causal LM (a keras-hub ``CausalLM`` such as
``keras_hub.models.GPT2CausalLM``, or any Keras model called on
``{"token_ids", "padding_mask"}``) to a ``.tflite`` file computing
``token_ids, padding_mask -> logits`` at batch 1 and a fixed
``sequence_length``, with the same converter, Flex check, verification and
atomic write as :func:`keras_kd.export.to_tflite`; with ``kv_cache_length``
it writes the KV-cache file instead. :class:`LiteRTCausalLM`
(:mod:`keras_kd.export.litert_lm`) runs either file with LiteRT's
interpreter and generates (greedy or sampled, streamed).

The file without a KV cache: each generated token runs the whole
``sequence_length`` forward pass again, the prompt and the tokens generated so
far included, so one token costs what ``report.latency_ms_median`` measures
whatever the position.
"""

import keras
import numpy as np

from keras_kd.export import litert
from keras_kd.export.api import check_path, converted, student_of

LM_QUANTIZE_MODES = ("float32", "float16", "dynamic")
"""The precisions :func:`lm_to_tflite` offers (see
:func:`keras_kd.export.to_tflite` for what each stores)."""

INPUT_NAMES = ("token_ids", "padding_mask")

# Random sequences compared when no sample_token_ids are given.
VERIFY_SEQUENCES = 8


def token_ids_of(sequence, vocabulary_size, what="token_ids"):
    """One sequence of token ids as an int64 array, checked.

    ``sequence`` is a list or 1-D array of integers (a ``(1, n)`` array, one
    row, is taken as its row); every id must lie in ``[0,
    vocabulary_size)``. Refused, naming the fix: several rows (a batch: the
    file runs one sequence), floats (never truncated), and ids outside the
    vocabulary (a negative id or one of 2**32 or more would otherwise wrap
    around in int32 and read as another token).

    >>> token_ids_of([1, 2, 3], 256)
    array([1, 2, 3])
    >>> token_ids_of([1, -5, 3], 256)
    Traceback (most recent call last):
    ...
    ValueError: token_ids must be ids in [0, 256) (the vocabulary size 256); got -5 at position 1.
    """
    ids = np.asarray(sequence)
    if ids.ndim == 2 and ids.shape[0] == 1:
        ids = ids[0]
    if ids.ndim > 1:
        raise ValueError(
            f"{what} holds {ids.shape[0]} sequences (shape {ids.shape}); the "
            "file runs one sequence at a time: pass one list of ids, e.g. "
            f"a loop over the prompts ({what}[0], {what}[1], ...).")
    ids = ids.reshape(-1)
    if ids.size and (ids.dtype == bool or not np.issubdtype(ids.dtype,
                                                            np.integer)):
        raise TypeError(
            f"{what} must be integer token ids, got {ids.dtype} values "
            f"(e.g. {ids[0]!r}); floats are not truncated: pass ints, e.g. "
            "np.asarray(ids).astype(int) if they are whole numbers.")
    bad = np.flatnonzero((ids < 0) | (ids >= vocabulary_size))
    if bad.size:
        raise ValueError(
            f"{what} must be ids in [0, {vocabulary_size}) (the vocabulary "
            f"size {vocabulary_size}); got {int(ids[bad[0]])} at position "
            f"{int(bad[0])}.")
    return ids.astype("int64")


def pack(sequences, sequence_length, vocabulary_size, what="token_ids"):
    """``{"token_ids", "padding_mask"}`` int32 ``(n, sequence_length)`` arrays
    of ``sequences`` (lists of ids, each checked by :func:`token_ids_of`),
    left-aligned and padded with 0.

    >>> pack([[5, 6], [7]], 4, 256)["padding_mask"]
    array([[1, 1, 0, 0],
           [1, 0, 0, 0]], dtype=int32)
    """
    token_ids = np.zeros((len(sequences), sequence_length), "int32")
    padding_mask = np.zeros((len(sequences), sequence_length), "int32")
    for row, sequence in enumerate(sequences):
        name = f"{what}[{row}]" if len(sequences) > 1 else what
        ids = token_ids_of(sequence, vocabulary_size, name)
        if not 1 <= len(ids) <= sequence_length:
            raise ValueError(
                f"Token sequences must hold 1 to {sequence_length} ids (the "
                f"exported sequence_length); {name} has {len(ids)}. "
                "Truncate it, or export with a longer sequence_length.")
        token_ids[row, :len(ids)] = ids
        padding_mask[row, :len(ids)] = 1
    return {"token_ids": token_ids, "padding_mask": padding_mask}


def _input_names(model):
    try:
        inputs = model.input
    except (AttributeError, ValueError):
        return set()
    if isinstance(inputs, dict):
        return set(inputs)
    return {getattr(t, "name", None) for t in getattr(model, "inputs", None)
            or ()}


def takes_token_ids(model):
    """Whether ``model`` is called on ``{"token_ids", "padding_mask"}`` (a
    causal LM that :func:`lm_to_tflite` exports).

    >>> import keras
    >>> inputs = keras.Input((4,))
    >>> takes_token_ids(keras.Model(inputs, inputs))
    False
    """
    return set(INPUT_NAMES) <= _input_names(model)


def sequence_length_of(model):
    """The longest sequence a causal LM takes: its backbone's
    ``max_sequence_length`` (a keras-hub ``CausalLM``; ``keras-kd run --task
    causal-lm`` builds it with its ``--sequence-length``), else the fixed
    length of its ``token_ids`` input; None when neither is known.

    >>> from keras_kd.app.language_models import build_causal_lm
    >>> sequence_length_of(build_causal_lm("tiny", sequence_length=24))
    24
    """
    limit = getattr(getattr(model, "backbone", None), "max_sequence_length",
                    None)
    if limit is not None:
        return int(limit)
    try:
        inputs = model.input
    except (AttributeError, ValueError):
        return None
    token_ids = inputs.get("token_ids") if isinstance(inputs, dict) else None
    shape = getattr(token_ids, "shape", None)
    if shape is not None and len(shape) == 2 and shape[1] is not None:
        return int(shape[1])
    return None


def _sample(sample_token_ids, sequence_length, vocabulary_size):
    if sample_token_ids is None:
        rng = np.random.default_rng(0)
        lengths = rng.integers(1, sequence_length + 1, VERIFY_SEQUENCES)
        lengths[0] = sequence_length  # one sequence without padding
        sample_token_ids = [rng.integers(0, vocabulary_size, n)
                            for n in lengths]
    if isinstance(sample_token_ids, np.ndarray) and \
            sample_token_ids.ndim == 1:
        sample_token_ids = [sample_token_ids]  # one sequence
    return pack(list(sample_token_ids), sequence_length, vocabulary_size,
                "sample_token_ids")


def _check_positions(model, length, name):
    """``length`` fits the model's position embeddings, when it has some."""
    limit = getattr(getattr(model, "backbone", None), "max_sequence_length",
                    None)
    if limit is not None and length > limit:
        raise ValueError(
            f"{name}={length} is longer than the model's position embeddings "
            f"(max_sequence_length={limit}); pass {name} <= {limit}.")


def lm_to_tflite(causal_lm, path, sequence_length=None, quantize="float32",
                 sample_token_ids=None, allow_flex=False, latency_runs=20,
                 verify=True, kv_cache_length=None, prefill_lengths=None):
    """Converts a causal LM to a TFLite (LiteRT) file, with or without a
    KV cache.

    **With** ``kv_cache_length=L`` (a keras-hub ``CausalLM``): the file of
    :mod:`keras_kd.export.lm_cache`, in LiteRT-LM's layout: signatures
    ``prefill_<N>`` (``tokens`` int32 ``(1, N)``, ``input_pos`` int32
    ``(N,)``) and ``decode`` (``tokens`` ``(1, 1)``, ``input_pos`` ``(1,)``),
    each taking and returning the per-layer cache ``kv_cache_k_<i>`` /
    ``kv_cache_v_<i>`` float32 ``(1, L, kv_heads, head_dim)`` and returning
    the last position's ``logits`` ``(1, 1, V)``; built on keras-hub's
    ``call_with_cache``. A token costs one position's forward pass plus
    attention over the cache, whatever the position. Verification runs
    every signature on random tokens and random caches (each prefill at
    position 0 and ``L - N``, decode at 0, ``L // 2``, ``L - 1``) and
    compares logits and caches with ``call_with_cache`` on the caller's
    backend (a float32 file off by more than ``1e-3 · max(1, max |logits|)``
    is refused); timing fills ``report.decode_ms`` and
    ``report.prefill_tokens_per_s`` (:class:`~keras_kd.export.lm_cache.CacheExportReport`).
    ``quantize`` may also be ``"weight_only"`` (int8 weights dequantized at
    load, :mod:`keras_kd.export.weight_only`). ``sequence_length`` and
    ``sample_token_ids`` are not used.

    **Without** a cache (``sequence_length``; any model called on
    ``{"token_ids", "padding_mask"}``):

    The file computes ``logits = lm({"token_ids", "padding_mask"})`` for one
    sequence (batch 1) of ``sequence_length`` tokens: inputs ``token_ids``
    and ``padding_mask``, both int32 ``(1, sequence_length)`` (the mask 1 on
    real tokens, 0 on padding), and float32 logits ``(1, sequence_length,
    vocabulary_size)``. Shorter sequences are padded at the end, as
    :class:`LiteRTCausalLM` does; the logits at position ``i`` predict token
    ``i + 1``. The file holds no KV cache: generating a token runs the full
    ``sequence_length`` forward pass again (:class:`LiteRTCausalLM`).

    Conversion, the Flex-op check and the atomic write are those of
    :func:`~keras_kd.export.to_tflite`: TensorFlow converts in this process on
    the TensorFlow backend and in a ``KERAS_BACKEND=tensorflow`` worker
    process (from a temporary ``.keras`` copy) on JAX and PyTorch, and any
    failure leaves an existing ``path`` untouched.

    Verification (``verify=True``): the file runs in LiteRT's interpreter on
    ``sample_token_ids`` (default: 8 random sequences of random lengths, seed
    0), padded to ``sequence_length``, and its logits at every position
    (padding included) are compared with the Keras model's on the caller's
    backend: ``report.max_abs_diff = max |tflite − keras|``. A float32 file
    off by more than ``1e-3 · max(1, max |keras logits|)`` raises
    :class:`~keras_kd.export.ExportError` and is not written (float32 only
    reorders sums: the tests measure some 1e-6 on logits up to 18, so the
    bound flags a wrong graph, not rounding); ``"float16"`` and
    ``"dynamic"`` files report their difference.

    Args:
        causal_lm: a keras-hub ``CausalLM`` (its preprocessor, if any, is not
            part of the file: tokenize on the app's side), a Keras model
            called on ``{"token_ids", "padding_mask"}``, or a
            ``keras_kd.Distiller`` whose student is one.
        path: the target file, ending in ``.tflite``.
        sequence_length: the fixed length of the file's inputs: the longest
            prompt plus generated tokens. At most the model's
            ``max_sequence_length`` (its position embeddings). Not with
            ``kv_cache_length``.
        quantize: ``"float32"``, ``"float16"`` (float16 weights) or
            ``"dynamic"`` (int8 weights, dynamic-range quantization);
            with a cache also ``"weight_only"``.
        sample_token_ids: sequences of token ids (each 1 to
            ``sequence_length`` long) to verify on.
        allow_flex: accept TensorFlow (Flex) ops in the file.
        latency_runs: batch-1 invocations timed (one thread): the median is
            the cost of one generated token; 0 skips.
        verify: run and compare the file before writing it.
        kv_cache_length: ``L``, the positions of the KV cache (prompt plus
            generated tokens), or None for the file without a cache. At most
            the model's ``max_sequence_length`` when it has one.
        prefill_lengths: the ``N`` of the ``prefill_<N>`` signatures, each
            in ``[1, L]``; default ``(min(32, L),)``. A longer prompt is
            prefilled in chunks (:class:`LiteRTCausalLM`).

    Returns:
        A :class:`~keras_kd.export.ExportReport` (a
        :class:`~keras_kd.export.lm_cache.CacheExportReport` with a cache).

    Example:

    >>> import keras_kd as kd
    >>> from keras_kd.app.language_models import build_causal_lm
    >>> lm = build_causal_lm("tiny", sequence_length=32, seed=0)
    >>> report = kd.export.lm_to_tflite(lm, "/tmp/lm.tflite", 32)
    >>> report.max_abs_diff < 1e-4
    True
    >>> kd.export.litert_generate("/tmp/lm.tflite", [104, 105], 3).shape
    (5,)

    With a KV cache (run as in :class:`LiteRTCausalLM`'s example)::

        report = kd.export.lm_to_tflite(lm, "lm_kv.tflite",
                                        kv_cache_length=32,
                                        prefill_lengths=(8,))
        report.cache_shape  # (1, 32, 2, 8): (1, L, kv_heads, head_dim)
    """
    model = student_of(causal_lm)
    if kv_cache_length is not None:
        return _cache_export(model, path, sequence_length, quantize,
                             allow_flex, latency_runs, verify,
                             kv_cache_length, prefill_lengths)
    if sequence_length is None:
        raise ValueError(
            "lm_to_tflite needs sequence_length (the file without a cache, "
            "e.g. sequence_length=128) or kv_cache_length (the file with a "
            "KV cache, e.g. kv_cache_length=512).")
    names = _input_names(model)
    if not takes_token_ids(model):
        raise ValueError(
            f"lm_to_tflite exports language models called on "
            f"{{'token_ids', 'padding_mask'}}; '{model.name}' takes "
            f"{sorted(n for n in names if n) or 'unknown inputs'}. Pass a "
            "keras-hub CausalLM (e.g. keras_hub.models.GPT2CausalLM), or "
            "export a one-input model with kd.export.to_tflite.")
    if quantize not in LM_QUANTIZE_MODES:
        raise ValueError(
            f"quantize must be one of {list(LM_QUANTIZE_MODES)} for a "
            f"language model, got {quantize!r}"
            + ("; full-integer int8 is not offered here: use "
               "quantize='dynamic' (int8 weights, float activations)."
               if quantize == "int8" else "."))
    if not isinstance(sequence_length, (int, np.integer)) or isinstance(
            sequence_length, bool) or sequence_length < 1:
        raise ValueError(f"sequence_length must be an int >= 1, got "
                         f"{sequence_length!r}; e.g. 128.")
    sequence_length = int(sequence_length)
    _check_positions(model, sequence_length, "sequence_length")
    if not isinstance(latency_runs, int) or latency_runs < 0:
        raise ValueError(f"latency_runs must be an int >= 0, got "
                         f"{latency_runs!r}; e.g. 20, or 0 to skip timing.")
    path, _ = check_path(path, ".tflite")
    vocabulary_size = int(model.outputs[0].shape[-1]) if getattr(
        model, "outputs", None) else model.backbone.vocabulary_size
    sample = _sample(sample_token_ids, sequence_length, vocabulary_size)

    signature = {name: ((1, sequence_length), "int32")
                 for name in INPUT_NAMES}
    with converted(model, path, quantize, allow_flex=allow_flex,
                   input_signature=signature) as (report, tmp):
        if verify or latency_runs:
            interpreter = litert.interpreter(tmp, bool(report.flex_ops))
        if verify:
            report.max_abs_diff = litert.max_abs_diff(
                interpreter, model, sample, quantize, path, batch_size=1)
        if latency_runs:
            report.latency_ms_median = litert.latency_ms(
                interpreter, {name: value[:1] for name, value in
                              sample.items()}, latency_runs)
    return report


def _positive(value, what, example):
    if not isinstance(value, (int, np.integer)) or isinstance(
            value, bool) or value < 1:
        raise ValueError(f"{what} must be an int >= 1, got {value!r}; "
                         f"e.g. {example}.")
    return int(value)


def _cache_export(model, path, sequence_length, quantize, allow_flex,
                  latency_runs, verify, kv_cache_length, prefill_lengths):
    from keras_kd.export import lm_cache

    if sequence_length is not None:
        raise ValueError(
            "Pass sequence_length (the file without a cache) or "
            "kv_cache_length (the file with a KV cache), not both; the "
            "cache file's longest sequence is kv_cache_length.")
    if quantize not in lm_cache.CACHE_QUANTIZE_MODES:
        raise ValueError(
            f"quantize must be one of {list(lm_cache.CACHE_QUANTIZE_MODES)} "
            f"for a KV-cache file, got {quantize!r}.")
    length = _positive(kv_cache_length, "kv_cache_length", 512)
    _check_positions(model, length, "kv_cache_length")
    if prefill_lengths is None:
        prefill_lengths = (min(32, length),)
    if isinstance(prefill_lengths, (int, np.integer)):
        prefill_lengths = (prefill_lengths,)
    prefill_lengths = sorted({_positive(n, "each prefill length", 32)
                              for n in prefill_lengths})
    if not prefill_lengths or prefill_lengths[-1] > length:
        raise ValueError(
            f"prefill_lengths must be 1 or more lengths in [1, "
            f"kv_cache_length={length}], got {prefill_lengths}.")
    if not isinstance(latency_runs, int) or latency_runs < 0:
        raise ValueError(f"latency_runs must be an int >= 0, got "
                         f"{latency_runs!r}; e.g. 20, or 0 to skip timing.")
    path, _ = check_path(path, ".tflite")
    vocabulary_size = model.backbone.vocabulary_size
    return lm_cache.export(model, path, length, prefill_lengths, quantize,
                           allow_flex, latency_runs, verify, vocabulary_size)
