"""The KV-cache LiteRT file (prefill_<N> / decode) of keras-hub causal LMs.

A tiny GPT-2 and a tiny Gemma (RoPE, grouped-query attention: 4 query heads
over 2 key/value heads), built from config with large random weights (NumPy's,
the same on every backend) so that logits spread over several units and
greedy choices are not near-ties (the margins are checked). Each file is
converted once per module; on JAX and PyTorch in the TensorFlow worker.
GPT-2 runs on every backend; for the time budget Gemma runs on PyTorch only
(JAX's first eager calls of its ops cost some 40 s) and the four precisions
on TensorFlow only (four conversions).
The references are independent of the file's runner: keras-hub's
``generate`` and the Keras model's own ``call_with_cache``, stepped here with
a cache of keras-hub's shape and the prompt prefilled in one call (the file
is prefilled in padded chunks).
"""

import os

import keras
import numpy as np
import pytest

keras_hub = pytest.importorskip("keras_hub")
pytest.importorskip("ai_edge_litert")
pytest.importorskip("tensorflow")

from ai_edge_litert.interpreter import Interpreter  # noqa: E402

from keras_kd import export  # noqa: E402
from keras_kd.export import lm_cache, sampling  # noqa: E402
from tests.conftest import BACKEND  # noqa: E402
from tests.helpers import to_numpy  # noqa: E402

V = 256
PROMPTS = [[72, 101, 108, 108, 111], [0], [200, 17, 3, 99, 150, 7, 31, 5, 9,
                                           60, 61]]


def spread(lm, seed):
    """Large random weights: embeddings N(0, 1), kernels N(0, 4 / fan-in);
    Keras's initial weights give near-flat logits."""
    rng = np.random.default_rng(seed)
    for weight in lm.weights:
        shape = tuple(weight.shape)
        if "embedding" in weight.path:
            weight.assign(rng.normal(0, 1, shape).astype("float32"))
        elif len(shape) >= 2:
            weight.assign(rng.normal(0, 2 / np.sqrt(shape[0]), shape)
                          .astype("float32"))
    lm.compile(sampler="greedy")
    return lm


def gpt2(length):
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=V, num_layers=2, num_heads=2, hidden_dim=16,
        intermediate_dim=32, max_sequence_length=length, dropout=0.0)
    return spread(keras_hub.models.GPT2CausalLM(backbone, None), 0)


def gemma():
    backbone = keras_hub.models.GemmaBackbone(
        vocabulary_size=V, num_layers=2, num_query_heads=4,
        num_key_value_heads=2, hidden_dim=16, intermediate_dim=32,
        head_dim=4)
    return spread(keras_hub.models.GemmaCausalLM(backbone, None), 1)


# name: (model, kv_cache_length, prefill_lengths, cache (kv_heads, head_dim))
MODELS = {"gpt2": (lambda: gpt2(40), 40, (8,), (2, 8)),
          "gemma": (gemma, 32, (8,), (2, 4))}


@pytest.fixture(scope="module", params=[
    "gpt2", pytest.param("gemma", marks=pytest.mark.one_backend("torch"))])
def exported(request, tmp_path_factory):
    build, length, prefills, _ = MODELS[request.param]
    lm = build()
    path = tmp_path_factory.mktemp("kv") / f"{request.param}.tflite"
    report = export.lm_to_tflite(lm, path, kv_cache_length=length,
                                 prefill_lengths=prefills, latency_runs=3)
    return request.param, lm, path, report


def keras_logits(lm, ids):
    """The Keras LM's full forward pass on one sequence: (len, V)."""
    ids = np.asarray(ids, "int32")[None]
    return to_numpy(lm({"token_ids": ids,
                        "padding_mask": np.ones_like(ids)}))[0]


def test_signatures_follow_the_litert_lm_layout(exported):
    name, lm, path, report = exported
    _, length, prefills, (heads, head_dim) = MODELS[name]
    signatures = Interpreter(model_path=str(path)).get_signature_list()
    assert sorted(signatures) == sorted(
        ["decode"] + [f"prefill_{n}" for n in prefills])
    cache = [f"kv_cache_{kind}_{i}" for i in range(2) for kind in "kv"]
    interpreter = Interpreter(model_path=str(path))
    for signature, n in [("decode", 1)] + [(f"prefill_{n}", n)
                                           for n in prefills]:
        runner = interpreter.get_signature_runner(signature)
        inputs = {k: (tuple(d["shape"]), d["dtype"])
                  for k, d in runner.get_input_details().items()}
        outputs = {k: tuple(d["shape"])
                   for k, d in runner.get_output_details().items()}
        expected = {"tokens": ((1, n), np.int32),
                    "input_pos": ((n,), np.int32)}
        expected.update({k: ((1, length, heads, head_dim), np.float32)
                         for k in cache})
        assert inputs == expected
        assert outputs == dict({"logits": (1, 1, V)},
                               **{k: (1, length, heads, head_dim)
                                  for k in cache})
    assert report.cache_shape == (1, length, heads, head_dim)
    assert report.num_layers == 2 and report.kv_cache_length == length
    assert report.size_bytes == os.path.getsize(path)
    assert report.converted_in == ("process" if BACKEND == "tensorflow"
                                   else "subprocess")
    assert report.max_abs_diff < 1e-4 and report.flex_ops == []
    assert set(report.decode_ms) == {16, length - 1}
    assert min(report.decode_ms.values()) > 0
    assert set(report.prefill_tokens_per_s) == set(prefills)


def test_every_decode_step_equals_call_with_cache(exported):
    """The file's signatures driven here (prompt prefilled in one padded
    chunk, then decode) against the Keras model's ``call_with_cache``
    stepped with a cache of keras-hub's shape (the prompt in one unpadded
    call): logits within 1e-4 at every step, to the end of the cache."""
    name, lm, path, _ = exported
    _, length, prefills, (heads, head_dim) = MODELS[name]
    runners = {n: Interpreter(model_path=str(path)).get_signature_runner(n)
               for n in ["decode", f"prefill_{max(prefills)}"]}
    rng = np.random.default_rng(5)
    sequence = rng.integers(0, V, length).astype("int32")
    p = max(prefills) - 3  # a padded prefill chunk
    cache = {f"kv_cache_{kind}_{i}": np.zeros((1, length, heads, head_dim),
                                              "float32")
             for i in range(2) for kind in "kv"}
    chunk = np.zeros((1, max(prefills)), "int32")
    chunk[0, :p] = sequence[:p]
    out = runners[f"prefill_{max(prefills)}"](
        tokens=chunk, input_pos=np.arange(max(prefills), dtype="int32"),
        **cache)
    cache = {k: out[k] for k in cache}
    reference = keras.ops.zeros((1, 2, 2, length, heads, head_dim))
    _, _, reference = lm.call_with_cache(sequence[None, :p], reference, 0)
    worst = 0.0
    for position in range(p, length):
        out = runners["decode"](
            tokens=sequence[None, position:position + 1],
            input_pos=np.array([position], "int32"), **cache)
        cache = {k: out[k] for k in cache}
        logits, _, reference = lm.call_with_cache(
            sequence[None, position:position + 1], reference,
            keras.ops.convert_to_tensor(position, "int32"))
        expected = to_numpy(logits)[0, -1]
        assert np.abs(expected).max() > 3  # not near-flat logits
        worst = max(worst, float(np.abs(out["logits"][0, 0] - expected)
                                 .max()))
        # Layer 1's cache at this position: the keys call_with_cache wrote.
        np.testing.assert_allclose(
            out["kv_cache_k_1"][0, position],
            to_numpy(reference)[0, 1, 0, position], atol=1e-4)
    assert worst < 1e-4
    # An unpadded prefill's logits are the last position's.
    n = min(prefills)
    out = runners.get(f"prefill_{n}") or Interpreter(
        model_path=str(path)).get_signature_runner(f"prefill_{n}")
    out = out(tokens=sequence[None, :n], input_pos=np.arange(n, dtype="int32"),
              **{k: np.zeros_like(v) for k, v in cache.items()})
    np.testing.assert_allclose(out["logits"][0, 0],
                               keras_logits(lm, sequence[:n])[-1], atol=1e-4)


def test_greedy_generation_equals_keras_generate(exported):
    name, lm, path, report = exported
    length = MODELS[name][1]
    lite = export.LiteRTCausalLM(path)
    assert lite.has_cache and lite.kv_cache_length == length
    for prompt in PROMPTS:
        new = length - len(prompt)  # to the end of the cache
        token_ids = np.zeros((1, length), "int32")
        token_ids[0, :len(prompt)] = prompt
        mask = np.arange(length)[None] < len(prompt)
        expected = to_numpy(lm.generate(
            {"token_ids": token_ids, "padding_mask": mask},
            stop_token_ids=None)["token_ids"])[0]
        np.testing.assert_array_equal(lite.generate(prompt, new), expected)
        # Not a tie-break accident: each chosen token leads the next by
        # 1e-3 or more (measured: 9e-3) and by 100 times the largest
        # difference between file and Keras logits the export measured.
        logits = np.sort(keras_logits(lm, expected[:-1])[len(prompt) - 1:])
        margin = np.min(logits[:, -1] - logits[:, -2])
        assert margin > max(1e-3, 100 * report.max_abs_diff)
        assert len(set(expected[len(prompt):].tolist())) > 3


def test_seeded_sampling_streaming_and_stop_tokens(exported):
    _, _, path, _ = exported
    lite = export.LiteRTCausalLM(path)
    options = dict(temperature=3.0, top_k=50, top_p=0.95)
    first = lite.generate(PROMPTS[0], 20, seed=7, **options)
    np.testing.assert_array_equal(
        lite.generate(PROMPTS[0], 20, seed=7, **options), first)
    others = [lite.generate(PROMPTS[0], 20, seed=s, **options).tolist()
              for s in (8, 9)]
    assert first.tolist() not in others  # the seed matters
    seen = []
    streamed = list(lite.stream(PROMPTS[0], 20, seed=7, **options))
    lite.generate(PROMPTS[0], 20, seed=7, callback=seen.append, **options)
    assert streamed == seen == first[len(PROMPTS[0]):].tolist()
    assert all(type(t) is int for t in streamed)
    greedy = lite.generate(PROMPTS[0], 10).tolist()
    stop = greedy[len(PROMPTS[0]) + 2]
    cut = greedy.index(stop, len(PROMPTS[0])) + 1
    assert lite.generate(PROMPTS[0], 10, stop_token_ids=[stop]).tolist() \
        == greedy[:cut]


def test_overflow_and_bad_ids_raise_clear_errors(exported):
    name, _, path, _ = exported
    length = MODELS[name][1]
    lite = export.LiteRTCausalLM(path)
    with pytest.raises(ValueError, match=f"kv_cache_length={length}; "
                       f"generate at most {length - 5} tokens"):
        lite.generate(PROMPTS[0], length - 4)
    with pytest.raises(ValueError, match="exceeds"):
        lite.stream(PROMPTS[0], length)  # before the first token
    with pytest.raises(ValueError, match=r"ids in \[0, 256\)"):
        lite.generate([1, 256], 2)
    with pytest.raises(ValueError, match=r"stop_token_ids must be ids"):
        lite.generate([1], 2, stop_token_ids=-1)
    with pytest.raises(ValueError, match="needs temperature > 0"):
        lite.generate([1], 2, top_k=5)
    with pytest.raises(ValueError, match="temperature must be"):
        lite.generate([1], 2, temperature=-1.0)


def test_sampling_distribution_against_numpy():
    """``probabilities`` against a direct computation, and ``choose`` against
    inverse-CDF draws from the same generator."""
    logits = np.random.default_rng(0).normal(0, 2, 50)
    z = np.exp((logits - logits.max()) / 0.7)
    p = z / z.sum()
    order = np.argsort(-p)
    top = order[:10]
    expected = np.zeros(50)
    expected[top] = p[top] / p[top].sum()
    np.testing.assert_allclose(
        sampling.probabilities(logits, 0.7, top_k=10), expected, atol=1e-12)
    # Nucleus: the smallest set of best tokens holding 0.8 of the mass.
    cumulative = np.cumsum(p[order])
    size = int(np.argmax(cumulative >= 0.8)) + 1
    nucleus = np.zeros(50)
    nucleus[order[:size]] = p[order[:size]] / p[order[:size]].sum()
    np.testing.assert_allclose(
        sampling.probabilities(logits, 0.7, top_p=0.8), nucleus, atol=1e-12)
    assert 1 < size < 50
    draws = np.random.default_rng(3).random(200)
    rng = np.random.default_rng(3)
    chosen = [sampling.choose(logits, rng, 0.7, top_p=0.8) for _ in draws]
    np.testing.assert_array_equal(
        chosen, np.searchsorted(np.cumsum(nucleus), draws, side="right"))
    assert sampling.choose(logits, None) == int(np.argmax(logits))


@pytest.mark.one_backend("tensorflow")
def test_precisions_sizes_int8_ops_and_bits_per_byte(tmp_path):
    """float32, float16, dynamic-range int8 and weight-only int8 files of a
    GPT-2 whose matrices are large enough to be quantized (32 x 64, the
    converter quantizes tensors of 1024 or more elements): each file's
    size, what its ops compute in (read from the file), and the change of
    bits per byte on a held-out text against the Keras model."""
    from keras_kd.data.text import bits_per_byte
    from keras_kd.export import litert

    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=V, num_layers=2, num_heads=2, hidden_dim=32,
        intermediate_dim=64, max_sequence_length=32, dropout=0.0)
    lm = spread(keras_hub.models.GPT2CausalLM(backbone, None), 2)
    ids = np.frombuffer(b"def bits(x):\n    return x.sum() / len(x)\n",
                        np.uint8)[:32].astype("int32")
    keras_bits = bits_per_byte(keras_logits(lm, ids)[:-1], ids[1:])
    reports, bits, ops = {}, {}, {}
    for mode in lm_cache.CACHE_QUANTIZE_MODES:
        path = tmp_path / f"{mode}.tflite"
        reports[mode] = export.lm_to_tflite(
            lm, path, kv_cache_length=32, prefill_lengths=(8,),
            quantize=mode, latency_runs=0, verify=mode != "float32")
        ops[mode] = litert.operators(path.read_bytes())
        logits = export.LiteRTCausalLM(path).logits(ids)
        bits[mode] = bits_per_byte(logits[:-1], ids[1:])
    sizes = {mode: r.size_bytes for mode, r in reports.items()}
    types = {mode: r.weight_types for mode, r in reports.items()}
    assert abs(bits["float32"] - keras_bits) < 1e-5
    assert abs(bits["float16"] - keras_bits) < 1e-2
    for mode in ("dynamic", "weight_only"):
        # int8 weights: a real and bounded change.
        assert 1e-4 < abs(bits[mode] - keras_bits) < 0.2
        # 12 kernels (6 per layer) and the embedding, at least, are int8;
        # as many float32 weights fewer.
        assert types[mode]["INT8"] >= 13
        assert types[mode]["FLOAT32"] == (types["float32"]["FLOAT32"]
                                          - types[mode]["INT8"])
    assert "INT8" not in types["float16"] and "FLOAT32" not in types[
        "float16"]
    # Bytes saved against the float32 weights' 4 bytes per parameter (the
    # rest of the file, the three signatures' graphs, is the same).
    weight_bytes = 4 * lm.count_params()
    assert sizes["float32"] > weight_bytes
    saved = {mode: (sizes["float32"] - sizes[mode]) / weight_bytes
             for mode in sizes}
    # Measured: float16 0.41, dynamic-range int8 0.45 of the weight bytes
    # (on this tiny model the int8 files also keep float32 per-channel
    # scales and some float32 tensors below the converter's 1024-element
    # threshold).
    assert 0.35 < saved["float16"] < 0.5
    assert saved["float16"] + 0.02 < saved["dynamic"] < 0.75
    assert abs(sizes["weight_only"] - sizes["dynamic"]) < 0.05 * sizes[
        "dynamic"]

    def int8_inputs(mode):
        return sorted({(name, tuple(ins), tuple(outs))
                       for name, ins, outs in ops[mode] if "INT8" in ins})

    # Dynamic range: matmuls read int8 weights and float activations
    # (hybrid kernels); weight-only: only DEQUANTIZE (and the embedding's
    # GATHER, dequantized next) read int8, the matmuls are float32.
    assert ("FULLY_CONNECTED", ("FLOAT32", "INT8", "FLOAT32"),
            ("FLOAT32",)) in int8_inputs("dynamic")
    assert {name for name, _, _ in int8_inputs("weight_only")} <= {
        "DEQUANTIZE", "GATHER"}
    assert all(ins[1] == "FLOAT32" for name, ins, _ in ops["weight_only"]
               if name == "FULLY_CONNECTED")
    assert int8_inputs("float32") == int8_inputs("float16") == []


def op_shapes(data):
    """``[(op name, [output shapes])]`` of every op of every subgraph."""
    model = export.litert.flatbuffer(data)
    shapes = []
    for s in range(model.SubgraphsLength()):
        graph = model.Subgraphs(s)
        for i in range(graph.OperatorsLength()):
            op = graph.Operators(i)
            tensors = [graph.Tensors(int(j)) for j in op.OutputsAsNumpy()]
            shapes.append([tuple(int(d) for d in t.ShapeAsNumpy())
                           if t.ShapeLength() else () for t in tensors])
    names = [name for name, _, _ in export.litert.operators(data)]
    return list(zip(names, shapes))


def test_each_layer_updates_its_own_cache_without_copies(exported):
    # GPT-2 and Gemma are replayed layer by layer (no 6-D cache), and the
    # stack / slice / unstack round trips of each layer's cache are gone:
    # the only ops writing a layer's cache, or its keys and values stacked,
    # are the two DYNAMIC_UPDATE_SLICE per layer and signature.
    name, lm, path, _ = exported
    _, length, prefills, (heads, head_dim) = MODELS[name]
    assert lm_cache.layered_family(lm) == type(lm).__name__
    ops = op_shapes(open(path, "rb").read())
    cache = (1, length, heads, head_dim)
    big = [op for op, shapes in ops
           if cache in shapes or (1, 2) + cache[1:] in shapes]
    assert all(len(shape) <= 5 for _, shapes in ops for shape in shapes)
    assert big.count("DYNAMIC_UPDATE_SLICE") == 2 * 2 * (1 + len(prefills))
    assert big == ["DYNAMIC_UPDATE_SLICE"] * len(big)


def test_bypass_packs_keeps_the_values(tmp_path):
    # Whole elements of a stack are read from the stacked tensors; a slice
    # that takes part of an element stays. The file computes the same
    # numbers as before, bit for bit.
    x = keras.Input((3,), batch_size=1)
    same = keras.layers.Dense(3, use_bias=False,
                              kernel_initializer="identity")  # weights
    both = keras.ops.stack([same(x) + 1, x * 2], axis=1)
    first, second = keras.ops.unstack(both, 2, axis=1)
    out = first * both[:, 1] + keras.ops.sum(both[:, 0, :2]) - second
    path = str(tmp_path / "pack.tflite")
    export.to_tflite(keras.Model(x, out), path, latency_runs=0)
    before = open(path, "rb").read()
    after = export.cache_graph.bypass_packs(before)
    assert {"UNPACK", "PACK", "STRIDED_SLICE"} <= {
        name for name, _ in op_shapes(before)}
    names = [name for name, _ in op_shapes(after)]
    assert "UNPACK" not in names and names.count("STRIDED_SLICE") == 1
    assert names.count("PACK") == 1  # still read by the partial slice
    value = np.array([[1, 2, 3]], "float32")
    expected = (value + 1) * (value * 2) + (value[0, :2] + 1).sum() - (
        value * 2)
    for data in (before, after):
        runner = Interpreter(model_content=data).get_signature_runner()
        (name,) = runner.get_input_details()
        (result,) = runner(**{name: value}).values()
        np.testing.assert_array_equal(result, expected)
    assert export.cache_graph.bypass_packs(after) == after


def test_other_models_step_through_call_with_cache():
    # A subclass with its own call_with_cache is not replayed layer by
    # layer: step calls it on the stacked cache and gives the same numbers
    # as the layered replay of the same weights.
    class Wrapped(keras_hub.models.GPT2CausalLM):
        def call_with_cache(self, token_ids, cache, cache_update_index):
            return super().call_with_cache(token_ids, cache,
                                           cache_update_index)

    lm = gpt2(16)
    other = Wrapped(lm.backbone, None)
    assert lm_cache.layered_family(lm) == "GPT2CausalLM"
    assert lm_cache.layered_family(other) is None
    rng = np.random.default_rng(3)
    inputs = {"tokens": rng.integers(0, V, (1, 3)).astype("int32"),
              "input_pos": np.arange(5, 8, dtype="int32")}
    for key in lm_cache.cache_names(2):
        inputs[key] = rng.standard_normal((1, 16, 2, 8)).astype("float32")
    layered = {k: to_numpy(v) for k, v in lm_cache.step(lm, inputs, 2)
               .items()}
    stacked = {k: to_numpy(v) for k, v in lm_cache.step(other, inputs, 2)
               .items()}
    assert sorted(layered) == sorted(stacked) == sorted(
        ["logits"] + lm_cache.cache_names(2))
    for key in layered:
        np.testing.assert_allclose(layered[key], stacked[key], atol=1e-5)
    # Positions 5-7 were written; the others are the inputs, unchanged.
    for key in lm_cache.cache_names(2):
        keep = np.r_[0:5, 8:16]
        np.testing.assert_array_equal(layered[key][:, keep],
                                      inputs[key][:, keep])
        assert np.abs(layered[key][:, 5:8] - inputs[key][:, 5:8]).min() > 0
    assert layered["logits"].shape == (1, 1, V)
