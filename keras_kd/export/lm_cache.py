"""A causal LM on LiteRT with a KV cache: ``prefill_<N>`` and ``decode``.

:func:`keras_kd.export.lm_to_tflite` with ``kv_cache_length=L`` writes one
``.tflite`` file in the layout of LiteRT-LM and litert-torch's generative
converter:

* one signature ``prefill_<N>`` per prefill length ``N``: inputs ``tokens``
  int32 ``(1, N)``, ``input_pos`` int32 ``(N,)`` and the cache; it writes
  the keys and values of positions ``input_pos`` into the cache and returns
  the logits of its last position, ``logits`` float32 ``(1, 1, V)``, and the
  updated cache;
* a ``decode`` signature: ``tokens`` ``(1, 1)``, ``input_pos`` ``(1,)``, the
  cache; returns ``logits`` ``(1, 1, V)`` and the updated cache;
* the cache of layer ``i`` as inputs and outputs ``kv_cache_k_<i>`` and
  ``kv_cache_v_<i>``, float32 ``(1, L, num_kv_heads, head_dim)``.

The graph is keras-hub's ``CausalLM.call_with_cache(token_ids, cache,
cache_update_index)``, whose cache is ``(batch, num_layers, 2, L, kv_heads,
head_dim)``: layer ``i``'s keys are ``cache[:, i, 0]``, its values
``cache[:, i, 1]``. Position ``j`` of a call starting at ``s =
input_pos[0]`` attends to cache positions ``<= s + j`` (keras-hub's causal
mask with ``cache_index=s``), so a decode step costs one position's
forward pass plus attention over the cache: the same at every position.

Deviations from litert-torch, by design: the positions are ``input_pos[0],
input_pos[0] + 1, ...`` (only ``input_pos[0]`` is read: positions must be
contiguous); the causal mask is computed inside the file (no ``mask``
input); prefill returns its last position's logits as well as the cache.

Speed: for GPT-2, Gemma and Llama :func:`step` calls the transformer layers
one by one, as ``call_with_cache`` does, without the 6-D cache, and
:func:`keras_kd.export.cache_graph.bypass_packs` removes the stack / slice
copies of each layer's cache from the converted file: a decode step copies
each cache tensor once (its ``DYNAMIC_UPDATE_SLICE``).
"""

import dataclasses
import os
import time

import keras
import numpy as np

from keras_kd import saving
from keras_kd.export import litert
from keras_kd.export.api import ExportReport
from keras_kd.export.errors import ExportError, FlexOpsError
from keras_kd.extras import require

CACHE_QUANTIZE_MODES = ("float32", "float16", "dynamic", "weight_only")
"""Precisions of a KV-cache file: float32; float16 weights; ``"dynamic"``,
int8 weights with dynamic-range int8 matmuls (LiteRT-LM's ``dynamic_int8``);
``"weight_only"``, int8 weights dequantized to float32 at load (its
``weight_only_int8``)."""


@dataclasses.dataclass
class CacheExportReport(ExportReport):
    """An :class:`~keras_kd.export.ExportReport` of a KV-cache file.

    Attributes (beyond the base report's):
        kv_cache_length: ``L``, the positions the cache holds.
        prefill_lengths: the ``N`` of the ``prefill_<N>`` signatures.
        cache_shape: one cache tensor's shape, ``(1, L, kv_heads,
            head_dim)``; there are ``2 * num_layers`` of them.
        num_layers: layers (one ``kv_cache_k_<i>`` / ``kv_cache_v_<i>`` pair
            each).
        decode_ms: ``{position: median ms}`` of one decode step at position
            ``min(16, L - 1)`` and ``L - 1`` (``latency_runs`` each).
        prefill_tokens_per_s: ``{N: N / median seconds of prefill_<N>}``.
        weight_types: the file's constant (weight) tensors counted by type,
            e.g. ``{"INT8": 14, "FLOAT32": 30}``.
    """

    kv_cache_length: int = 0
    prefill_lengths: tuple = ()
    cache_shape: tuple = ()
    num_layers: int = 0
    decode_ms: dict = dataclasses.field(default_factory=dict)
    prefill_tokens_per_s: dict = dataclasses.field(default_factory=dict)
    weight_types: dict = dataclasses.field(default_factory=dict)


def cache_names(num_layers):
    """The cache tensors' names, ``kv_cache_k_0, kv_cache_v_0, ...``.

    >>> cache_names(2)
    ['kv_cache_k_0', 'kv_cache_v_0', 'kv_cache_k_1', 'kv_cache_v_1']
    """
    return [f"kv_cache_{kind}_{i}" for i in range(num_layers)
            for kind in "kv"]


def cache_layout(model, probe=True):
    """``(num_layers, kv_heads, head_dim)`` of a keras-hub causal LM's cache.

    Read from its backbone (``num_key_value_heads`` when it has grouped-query
    attention, else ``num_heads``; ``head_dim`` when it has one, else
    ``hidden_dim / heads``) and, with ``probe``, checked: ``call_with_cache``
    must run on one token with a zero cache of that shape and return a cache
    of that shape (the export probes where it converts, in TensorFlow: a
    first eager call costs seconds on JAX). A model without
    ``call_with_cache`` or with another cache is refused, naming the file
    without a cache.

    >>> from keras_kd.app.language_models import build_causal_lm
    >>> cache_layout(build_causal_lm("tiny", seed=0))
    (1, 2, 8)
    """
    backbone = getattr(model, "backbone", None)
    fix = ("Export the file without a cache (kd.export.lm_to_tflite(model, "
           "path, sequence_length=...)), which runs any model called on "
           "token_ids and padding_mask.")
    if backbone is None or not hasattr(model, "call_with_cache"):
        raise ValueError(
            f"kv_cache_length needs a keras-hub CausalLM with "
            f"call_with_cache(token_ids, cache, cache_update_index); "
            f"'{model.name}' has none. {fix}")
    layers = getattr(backbone, "num_layers", None)
    heads = (getattr(backbone, "num_key_value_heads", None)
             or getattr(backbone, "num_heads", None))
    query_heads = (getattr(backbone, "num_query_heads", None)
                   or getattr(backbone, "num_heads", None))
    head_dim = getattr(backbone, "head_dim", None)
    if head_dim is None and query_heads:
        head_dim = getattr(backbone, "hidden_dim", 0) // query_heads
    layout = (layers, heads, head_dim)
    problem = None
    if not all(isinstance(d, int) and d > 0 for d in layout):
        problem = f"its backbone gives no cache layout (read {layout})"
    elif probe:
        cache = keras.ops.zeros((1, layers, 2, 2, heads, head_dim))
        try:
            _, _, out = model.call_with_cache(
                keras.ops.zeros((1, 1), "int32"), cache, 0)
            if tuple(out.shape) != tuple(cache.shape):
                problem = (f"call_with_cache returned a cache of shape "
                           f"{tuple(out.shape)}, not {tuple(cache.shape)}")
        except Exception as error:  # an unusual cache
            problem = (f"call_with_cache fails on a cache of shape "
                       f"{tuple(cache.shape)} ({type(error).__name__}: "
                       f"{error})")
    if problem:
        raise ValueError(
            f"'{model.name}' has not the usual keras-hub cache (batch, "
            f"num_layers, 2, length, kv_heads, head_dim): {problem}. {fix}")
    return layout


def signature_specs(n, kv_cache_length, layout):
    """``{name: (shape, dtype)}`` of the inputs of a signature of ``n``
    tokens (``prefill_<n>``, or ``decode`` for 1).

    >>> signature_specs(4, 32, (1, 2, 8))["kv_cache_v_0"]
    ((1, 32, 2, 8), 'float32')
    """
    layers, heads, head_dim = layout
    specs = {"tokens": ((1, n), "int32"), "input_pos": ((n,), "int32")}
    for name in cache_names(layers):
        specs[name] = ((1, kv_cache_length, heads, head_dim), "float32")
    return specs


LAYERED_FAMILIES = {
    "GPT2CausalLM": ("self_attention_cache",
                     "self_attention_cache_update_index"),
    "GemmaCausalLM": ("cache", "cache_update_index"),
    "LlamaCausalLM": ("self_attention_cache",
                      "self_attention_cache_update_index"),
}
"""keras-hub tasks whose ``call_with_cache`` :func:`step` replays layer by
layer: ``{class name: (the layer's cache keyword, its index keyword)}``."""


def layered_family(model):
    """The name in ``LAYERED_FAMILIES`` of ``model``'s keras-hub class, when
    ``model`` runs keras-hub's own ``call_with_cache`` of that class (not an
    override), else ``None`` (:func:`step` then calls ``call_with_cache``).

    >>> from keras_kd.app.language_models import build_causal_lm
    >>> layered_family(build_causal_lm("tiny", seed=0))
    'GPT2CausalLM'
    """
    try:
        import keras_hub
    except ImportError:
        return None
    for name in LAYERED_FAMILIES:
        task = getattr(keras_hub.models, name, None)
        if task is not None and isinstance(model, task) and (
                type(model).call_with_cache is task.call_with_cache):
            return name
    return None


def embed(model, family, tokens, start):
    """The hidden states keras-hub's ``call_with_cache`` of ``family`` (a
    :func:`layered_family`) feeds its first layer: the token embeddings;
    GPT-2 adds the position embeddings from ``start``, Gemma scales by
    ``sqrt(hidden_dim)``."""
    backbone = model.backbone
    x = backbone.token_embedding(tokens)
    if family == "GPT2CausalLM":
        positions = backbone.position_embedding(x, start_index=start)
        x = backbone.embeddings_dropout(backbone.embeddings_add(
            (x, positions)))
    elif family == "GemmaCausalLM":
        x = x * keras.ops.cast(keras.ops.sqrt(backbone.hidden_dim), x.dtype)
    return x


def step(model, inputs, num_layers):
    """One call of a signature, in ``keras.ops`` (any backend): the logits
    of the last position and the updated per-layer cache.

    ``inputs`` holds ``tokens``, ``input_pos`` and the cache tensors. For
    GPT-2, Gemma and Llama (:func:`layered_family`) it replays keras-hub's
    ``call_with_cache`` from position ``input_pos[0]`` layer by layer: layer
    ``i`` gets ``stack(kv_cache_k_i, kv_cache_v_i)`` and its updated cache
    is unstacked, with no ``(1, layers, 2, L, heads, head_dim)`` tensor (two
    whole-cache copies per call fewer; ``UNPACK`` where slicing would give
    ``STRIDED_SLICE``, a slow kernel in LiteRT). Other models go through
    ``call_with_cache`` on the stacked cache, split with ``unstack``. Both
    compute the same numbers as ``call_with_cache``.
    """
    ops = keras.ops
    tokens = ops.convert_to_tensor(inputs["tokens"], "int32")
    start = ops.convert_to_tensor(inputs["input_pos"], "int32")[0]
    outputs = {}
    family = layered_family(model)
    if family is not None:
        x = embed(model, family, tokens, start)
        cache_keyword, index_keyword = LAYERED_FAMILIES[family]
        for i, layer in enumerate(model.backbone.transformer_layers):
            cache = ops.stack([inputs[f"kv_cache_k_{i}"],
                               inputs[f"kv_cache_v_{i}"]], axis=1)
            x, cache = layer(x, **{cache_keyword: cache,
                                   index_keyword: start})
            outputs[f"kv_cache_k_{i}"], outputs[f"kv_cache_v_{i}"] = (
                ops.unstack(cache, 2, axis=1))
        x = model.backbone.layer_norm(x)
        logits = model.backbone.token_embedding(x, reverse=True)
    else:
        cache = ops.stack([ops.stack([inputs[f"kv_cache_k_{i}"],
                                      inputs[f"kv_cache_v_{i}"]], axis=1)
                           for i in range(num_layers)], axis=1)
        logits, _, cache = model.call_with_cache(tokens, cache, start)
        for i, layer_cache in enumerate(ops.unstack(cache, num_layers,
                                                    axis=1)):
            outputs[f"kv_cache_k_{i}"], outputs[f"kv_cache_v_{i}"] = (
                ops.unstack(layer_cache, 2, axis=1))
    return {"logits": logits[:, -1:, :], **outputs}


def convert_in_process(model, kv_cache_length, prefill_lengths, quantize):
    """The file's bytes (TensorFlow backend only): one SavedModel endpoint
    per signature (``keras.export.ExportArchive``), converted together with
    TFLite's converter. ``"weight_only"`` converts as ``"dynamic"``; the
    parent rewrites the file (:func:`keras_kd.export.weight_only.rewrite`).
    """
    import tempfile

    from keras_kd.export.native_logs import quiet_native_stderr

    tf = require("tensorflow")
    layout = cache_layout(model)
    names = [f"prefill_{n}" for n in prefill_lengths] + ["decode"]
    with quiet_native_stderr(), tempfile.TemporaryDirectory(
            prefix="keras_kd_export_") as tmp:
        archive = keras.export.ExportArchive()
        archive.track(model)
        for name, n in zip(names, list(prefill_lengths) + [1]):
            specs = {key: tf.TensorSpec(shape, dtype, name=key) for key,
                     (shape, dtype) in signature_specs(
                         n, kv_cache_length, layout).items()}
            archive.add_endpoint(
                name, lambda inputs: step(model, inputs, layout[0]),
                input_signature=[specs])
        archive.write_out(os.path.join(tmp, "saved_model"), verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(
            os.path.join(tmp, "saved_model"), signature_keys=names)
        converter.target_spec.supported_ops = [
            tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
        if quantize != "float32":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if quantize == "float16":
            converter.target_spec.supported_types = [tf.float16]
        try:
            return converter.convert()
        except Exception as error:
            lines = [line for line in str(error).splitlines() if line.strip()]
            raise ExportError(f"TFLite conversion of the KV-cache signatures "
                              f"({quantize}) failed:\n"
                              + "\n".join(lines[-12:])) from error


def cache_bytes(model, kv_cache_length, prefill_lengths, quantize):
    """``(bytes, "process" | "subprocess")``: converted here on TensorFlow,
    in the TensorFlow worker process on JAX and PyTorch."""
    import tempfile

    from keras_kd.export import worker

    if keras.backend.backend() == "tensorflow":
        return convert_in_process(model, kv_cache_length, prefill_lengths,
                                  quantize), "process"
    with tempfile.TemporaryDirectory(prefix="keras_kd_export_") as tmp:
        output = os.path.join(tmp, "model.tflite")
        worker.run_in_tensorflow(model, {
            "kind": "lm_cache", "output": output, "quantize": quantize,
            "kv_cache_length": kv_cache_length,
            "prefill_lengths": list(prefill_lengths)}, tmp)
        with open(output, "rb") as f:
            return f.read(), "subprocess"


def verification_calls(kv_cache_length, prefill_lengths, layout,
                       vocabulary_size, seed=0):
    """``[(signature, inputs)]`` the export compares file and Keras on:
    random tokens and a random normal cache (every cache entry read, not
    zeros), each prefill at position 0 and at the last start that fits,
    decode at positions 0, ``L // 2`` and ``L - 1``."""
    rng = np.random.default_rng(seed)
    L = kv_cache_length
    calls = [(f"prefill_{n}", n, s) for n in prefill_lengths
             for s in sorted({0, L - n})]
    calls += [("decode", 1, s) for s in sorted({0, L // 2, L - 1})]
    result = []
    for name, n, start in calls:
        inputs = {"tokens": rng.integers(0, vocabulary_size, (1, n))
                  .astype("int32"),
                  "input_pos": np.arange(start, start + n, dtype="int32")}
        for key, (shape, _) in signature_specs(n, L, layout).items():
            if key.startswith("kv_cache"):
                inputs[key] = rng.standard_normal(shape).astype("float32")
        result.append((name, inputs))
    return result


def max_abs_diff(interpreter, model, calls, layout, quantize, path):
    """``max |file − keras|`` of the logits over ``calls``; a float32 file
    off by more than ``1e-3 · max(1, max |keras logits|)`` (or whose cache
    outputs differ as much) raises :class:`ExportError`."""
    worst, scale = 0.0, 1.0
    for name, inputs in calls:
        actual = interpreter.get_signature_runner(name)(**inputs)
        expected = {k: np.asarray(keras.ops.convert_to_numpy(v), "float32")
                    for k, v in step(model, inputs, layout[0]).items()}
        diff = float(np.max(np.abs(actual["logits"] - expected["logits"])))
        worst = max(worst, diff)
        scale = max(scale, float(np.max(np.abs(expected["logits"]))))
        cache_diff = max(float(np.max(np.abs(actual[k] - expected[k])))
                         for k in expected if k != "logits")
        if quantize == "float32" and not (
                diff <= litert.FLOAT32_TOLERANCE * scale
                and cache_diff <= litert.FLOAT32_TOLERANCE * scale):
            raise ExportError(
                f"The float32 KV-cache file's signature '{name}' differs "
                f"from the Keras model's call_with_cache by up to "
                f"{max(diff, cache_diff):.3g} (logits {diff:.3g}, cache "
                f"{cache_diff:.3g}; tolerance "
                f"{litert.FLOAT32_TOLERANCE * scale:.3g}); the file was not "
                f"written to {path!r}. Pass verify=False to keep it anyway.")
    return worst


def weight_types(data):
    """The file's constant tensors (those with data: weights) by type."""
    schema = require("ai_edge_litert.schema_py_generated")
    model = litert.flatbuffer(data)
    types = {v: k for k, v in vars(schema.TensorType).items()
             if not k.startswith("_")}
    counts = {}
    seen = set()
    for s in range(model.SubgraphsLength()):
        graph = model.Subgraphs(s)
        for i in range(graph.TensorsLength()):
            tensor = graph.Tensors(i)
            buffer = model.Buffers(tensor.Buffer())
            if tensor.Buffer() in seen or buffer is None or not (
                    buffer.DataLength() or buffer.Size()):
                continue
            seen.add(tensor.Buffer())
            name = types.get(tensor.Type(), "UNKNOWN")
            counts[name] = counts.get(name, 0) + 1
    return counts


def timings(interpreter, layout, kv_cache_length, prefill_lengths, runs):
    """``(decode_ms, prefill_tokens_per_s)``: medians of ``runs`` calls on
    zero caches (see :class:`CacheExportReport`)."""
    L = kv_cache_length
    cache = {key: np.zeros(shape, "float32") for key, (shape, _) in
             signature_specs(1, L, layout).items() if key.startswith("kv")}

    def median_s(name, n, start):
        runner = interpreter.get_signature_runner(name)
        inputs = dict(cache, tokens=np.zeros((1, n), "int32"),
                      input_pos=np.arange(start, start + n, dtype="int32"))
        runner(**inputs)  # warm-up
        times = []
        for _ in range(runs):
            begin = time.perf_counter()
            runner(**inputs)
            times.append(time.perf_counter() - begin)
        return float(np.median(times))

    decode = {p: 1000 * median_s("decode", 1, p)
              for p in sorted({min(16, L - 1), L - 1})}
    prefill = {n: n / median_s(f"prefill_{n}", n, 0) for n in prefill_lengths}
    return decode, prefill


def export(model, path, kv_cache_length, prefill_lengths, quantize,
           allow_flex, latency_runs, verify, vocabulary_size):
    """Converts, checks and atomically writes the KV-cache file (the body of
    :func:`keras_kd.export.lm_to_tflite` with ``kv_cache_length``)."""
    layout = cache_layout(model, probe=False)  # probed where converted
    convert_mode = "dynamic" if quantize == "weight_only" else quantize
    data, converted_in = cache_bytes(model, kv_cache_length,
                                     prefill_lengths, convert_mode)
    from keras_kd.export import cache_graph

    data = cache_graph.bypass_packs(data)  # verified below like the rest
    if quantize == "weight_only":
        from keras_kd.export import weight_only

        data = weight_only.rewrite(data)
    flex = litert.flex_ops(data)
    if flex and not allow_flex:
        raise FlexOpsError(
            f"The KV-cache file needs TensorFlow (Flex) ops {flex}, which "
            "the standard LiteRT runtime does not have; pass "
            "allow_flex=True to ship it with the Flex delegate. Nothing was "
            f"written to {path!r}.")
    layers, heads, head_dim = layout
    report = CacheExportReport(
        path=path, quantize=quantize, size_bytes=len(data), flex_ops=flex,
        converted_in=converted_in, kv_cache_length=kv_cache_length,
        prefill_lengths=tuple(prefill_lengths),
        cache_shape=(1, kv_cache_length, heads, head_dim), num_layers=layers,
        weight_types=weight_types(data))
    with saving.replacing(path, suffix=".tflite") as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
        if verify or latency_runs:
            interpreter = litert.interpreter(tmp, bool(flex))
        if verify:
            calls = verification_calls(kv_cache_length, prefill_lengths,
                                       layout, vocabulary_size)
            report.max_abs_diff = max_abs_diff(interpreter, model, calls,
                                               layout, quantize, path)
        if latency_runs:
            report.decode_ms, report.prefill_tokens_per_s = timings(
                interpreter, layout, kv_cache_length, prefill_lengths,
                latency_runs)
            report.latency_ms_median = report.decode_ms[
                min(report.decode_ms)]
    return report
