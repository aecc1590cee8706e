"""A keras-hub causal LM on LiteRT: fixed-length logits and greedy generation.

A tiny GPT-2 (keras_kd.app.language_models, built from config) with large
random weights, so that its logits spread over several units and greedy
choices are not near-ties (the generation test checks the margins). On JAX
and PyTorch the conversions run in the TensorFlow worker process.
"""

import os

import keras
import numpy as np
import pytest

pytest.importorskip("keras_hub")
pytest.importorskip("ai_edge_litert")
pytest.importorskip("tensorflow")

from ai_edge_litert.interpreter import Interpreter  # noqa: E402

from keras_kd import export  # noqa: E402
from keras_kd.app.language_models import build_causal_lm  # noqa: E402
from keras_kd.export import convert  # noqa: E402
from tests.conftest import BACKEND  # noqa: E402
from tests.helpers import to_numpy  # noqa: E402

L = 16
PROMPTS = [[72, 101, 108, 108, 111], [0], [200, 17, 3, 99, 150, 7, 31]]


def tiny_lm(seed):
    """The tiny GPT-2 with large random weights (NumPy's, the same on every
    backend): embeddings N(0, 1), kernels N(0, 4 / shape[0]). Keras's
    initial weights give near-flat logits (|logit| < 0.2) and an LM that
    repeats its last token; these give logits up to ~18 and varied text."""
    lm = build_causal_lm("tiny", sequence_length=L)
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


@pytest.fixture(scope="module")
def lm():
    return tiny_lm(seed=0)


@pytest.fixture(scope="module")
def float32_export(lm, tmp_path_factory):
    path = tmp_path_factory.mktemp("lm") / "lm.tflite"
    return path, export.lm_to_tflite(lm, path, L, latency_runs=5)


def keras_logits(lm, ids):
    """The Keras LM's logits on one unpadded sequence: (len, vocab)."""
    ids = np.asarray(ids, "int32")[None]
    return to_numpy(lm({"token_ids": ids,
                        "padding_mask": np.ones_like(ids)}))[0]


def padded(ids):
    """``(token_ids, padding_mask)``, int32 (1, L): ids padded with 0."""
    token_ids = np.zeros((1, L), "int32")
    token_ids[0, :len(ids)] = ids
    return token_ids, (np.arange(L) < len(ids)).astype("int32")[None]


def padded_keras_logits(lm, ids):
    token_ids, mask = padded(ids)
    return to_numpy(lm({"token_ids": token_ids, "padding_mask": mask}))[0]


def file_logits(path, ids):
    """Independent LiteRT run: ids padded with 0 to the file's length."""
    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    runner = interpreter.get_signature_runner()
    token_ids, mask = padded(ids)
    (logits,) = runner(token_ids=token_ids, padding_mask=mask).values()
    return logits[0]


def test_float32_logits_equal_keras(lm, float32_export):
    path, report = float32_export
    assert report.size_bytes == os.path.getsize(path)
    assert report.converted_in == ("process" if BACKEND == "tensorflow"
                                   else "subprocess")
    assert report.flex_ops == [] and report.latency_ms_median > 0
    # Float32 reorders sums only: differences are rounding, ~1e-6 here.
    assert report.max_abs_diff < 1e-4
    interpreter = Interpreter(model_path=str(path))
    shapes = {d["name"]: (tuple(d["shape"]), d["dtype"]) for d in
              interpreter.get_signature_runner().get_input_details().values()}
    assert shapes == {"serving_default_token_ids:0": ((1, L), np.int32),
                      "serving_default_padding_mask:0": ((1, L), np.int32)}
    for ids in PROMPTS + [list(range(40, 40 + L))]:
        # The file's logits on the padded sequence equal the Keras LM's on
        # the unpadded one: padding at the end changes no real position.
        expected = keras_logits(lm, ids)
        assert np.abs(expected).max() > 3  # not near-flat logits
        np.testing.assert_allclose(file_logits(path, ids)[:len(ids)],
                                   expected, rtol=0, atol=1e-4)
        np.testing.assert_allclose(
            export.LiteRTCausalLM(path).logits(ids), expected, atol=1e-4)


def test_greedy_generation_equals_keras_generate(lm, float32_export):
    path, _ = float32_export
    lite = export.LiteRTCausalLM(path)
    for prompt in PROMPTS:
        new = L - len(prompt) - 2
        token_ids = np.zeros((1, len(prompt) + new), "int32")
        token_ids[0, :len(prompt)] = prompt
        mask = np.arange(token_ids.shape[1])[None] < len(prompt)
        expected = to_numpy(lm.generate(
            {"token_ids": token_ids, "padding_mask": mask},
            stop_token_ids=None)["token_ids"])[0]
        generated = lite.generate(prompt, new)
        np.testing.assert_array_equal(generated, expected)
        np.testing.assert_array_equal(
            export.litert_generate(path, prompt, new), expected)
        # Not a tie-break accident: at every generated position the chosen
        # token leads the next one by 1e-2 or more (measured: 0.02), some
        # 1000 times the float32 differences between file and Keras.
        logits = np.sort(keras_logits(lm, expected[:-1])[len(prompt) - 1:])
        assert np.min(logits[:, -1] - logits[:, -2]) > 1e-2
        assert len(set(expected[len(prompt):].tolist())) > 1
    # A stop token ends generation and is kept.
    first = int(lite.generate(PROMPTS[0], 1)[-1])
    np.testing.assert_array_equal(
        lite.generate(PROMPTS[0], 5, stop_token_ids=[first]),
        PROMPTS[0] + [first])


def test_dynamic_range_is_smaller_and_reports_its_difference(
        lm, float32_export, tmp_path):
    float_path, float_report = float32_export
    path = tmp_path / "lm_dynamic.tflite"
    report = export.lm_to_tflite(lm, path, L, quantize="dynamic",
                                 sample_token_ids=PROMPTS, latency_runs=0)
    assert report.size_bytes == os.path.getsize(path)
    # Dynamic range stores int8 copies of the tensors of 1024 or more
    # elements only: here the (256, 16) embedding, the rest of the tiny LM
    # stays float32, so the file is only a little smaller.
    assert report.size_bytes < float_report.size_bytes - 4096

    def int8_shapes(file):
        return [tuple(d["shape"]) for d in Interpreter(
            model_path=str(file)).get_tensor_details()
            if d["dtype"] == np.int8 and len(d["shape"]) == 2]

    assert int8_shapes(path) and set(int8_shapes(path)) == {(256, 16)}
    assert int8_shapes(float_path) == []
    # The report compares every position, padding included.
    diff = max(np.abs(file_logits(path, ids) - padded_keras_logits(lm, ids))
               .max() for ids in PROMPTS)
    assert 1e-4 < diff < 1.0  # int8 weights: a real, bounded difference
    np.testing.assert_allclose(report.max_abs_diff, diff, rtol=1e-4)


def test_failed_verification_leaves_an_existing_file(lm, tmp_path,
                                                     monkeypatch):
    other = tmp_path / "other.tflite"
    export.lm_to_tflite(tiny_lm(seed=1), other, L, latency_runs=0)
    wrong = other.read_bytes()  # a valid LM file of another model
    path = tmp_path / "lm.tflite"
    path.write_bytes(b"previous export")
    monkeypatch.setattr(convert, "tflite_bytes",
                        lambda *args: (wrong, "process"))
    with pytest.raises(export.ExportError, match="differs from the Keras"):
        export.lm_to_tflite(lm, path, L, latency_runs=0)
    assert path.read_bytes() == b"previous export"
    assert sorted(os.listdir(tmp_path)) == ["lm.tflite", "other.tflite"]


def test_bad_arguments_name_the_fix(lm, float32_export, tmp_path):
    inputs = keras.Input((4,))
    mlp = keras.Model(inputs, keras.layers.Dense(3)(inputs))
    with pytest.raises(ValueError, match="kd.export.to_tflite"):
        export.lm_to_tflite(mlp, tmp_path / "m.tflite", 4)
    with pytest.raises(ValueError, match="kd.export.lm_to_tflite"):
        export.to_tflite(lm, tmp_path / "m.tflite")  # two inputs
    with pytest.raises(ValueError, match="quantize='dynamic'"):
        export.lm_to_tflite(lm, tmp_path / "m.tflite", L, quantize="int8")
    with pytest.raises(ValueError, match=f"sequence_length <= {L}"):
        export.lm_to_tflite(lm, tmp_path / "m.tflite", L + 1)
    with pytest.raises(ValueError, match=r"\[0, 256\)"):
        export.lm_to_tflite(lm, tmp_path / "m.tflite", L,
                            sample_token_ids=[[1, 256]])
    path, _ = float32_export
    with pytest.raises(ValueError, match="longer sequence_length"):
        export.litert_generate(path, [1, 2, 3], L - 2)
    with pytest.raises(ValueError, match="at least one token"):
        export.litert_generate(path, [], 3)
    assert os.listdir(tmp_path) == []


def test_token_ids_outside_the_vocabulary_or_not_integers_are_refused(
        lm, float32_export, tmp_path):
    """#17, #25: -5 read as 251 and 2**32 + 5 as 5 (int32 wrap-around), an
    id of 256 or more failed deep in LiteRT ("gather index out of bounds"),
    floats were truncated by generate() and a batch flattened into one
    prompt."""
    path, _ = float32_export
    lite = export.LiteRTCausalLM(path)
    vocabulary = r"\[0, 256\) \(the vocabulary size 256\)"
    for ids in ([1, -5, 3], [1, 2**32 + 5], [1, 256], [300]):
        bad = next(i for i in ids if not 0 <= i < 256)
        with pytest.raises(ValueError, match=vocabulary + f"; got {bad} at"):
            lite.logits(ids)
        with pytest.raises(ValueError, match=vocabulary):
            lite.generate(ids, 2)
    with pytest.raises(ValueError, match=r"sample_token_ids\[1\] must be "
                       r"ids in \[0, 256\)"):
        export.lm_to_tflite(lm, tmp_path / "m.tflite", L,
                            sample_token_ids=[[1, 2], [1, 2**32 + 5]])
    for floats in ([1.7, 2.2], np.array([1.0, 2.0])):
        with pytest.raises(TypeError, match="floats are not truncated"):
            lite.generate(floats, 2)
        with pytest.raises(TypeError, match="floats are not truncated"):
            lite.logits(floats)
    with pytest.raises(ValueError, match=r"holds 2 sequences.*one sequence"):
        lite.generate([[1, 2], [3, 4]], 2)
    with pytest.raises(ValueError, match=r"holds 2 sequences"):
        lite.logits(np.array([[1, 2], [3, 4]]))
    # One row, (1, n) as keras-hub's token_ids, is that sequence.
    np.testing.assert_array_equal(lite.generate([[1, 2]], 3),
                                  lite.generate([1, 2], 3))
    np.testing.assert_allclose(lite.logits(np.array([[1, 2]], "int32")),
                               keras_logits(lm, [1, 2]), atol=1e-4)
    # The ids that remain are the Keras LM's own: uint8 bytes included.
    np.testing.assert_allclose(lite.logits(np.array([72, 255], np.uint8)),
                               keras_logits(lm, [72, 255]), atol=1e-4)
    with pytest.raises(ValueError, match="max_new_tokens must be an int"):
        lite.generate([1, 2], True)
    assert os.listdir(tmp_path) == []


def test_stop_token_ids_take_one_id_or_several(float32_export):
    """#25: stop_token_ids=5 failed with "'int' object is not iterable"."""
    path, _ = float32_export
    lite = export.LiteRTCausalLM(path)
    prompt = PROMPTS[0]
    free = lite.generate(prompt, 6).tolist()
    second = free[len(prompt) + 1]
    # Stops after the first generated token equal to the stop id, kept.
    stop = free.index(second, len(prompt)) + 1
    assert stop < len(free)
    for stop_ids in (second, np.int64(second), [second], (7, second)):
        assert lite.generate(prompt, 6, stop_token_ids=stop_ids).tolist() \
            == free[:stop]
    with pytest.raises(TypeError, match="stop_token_ids must be integer"):
        lite.generate(prompt, 6, stop_token_ids=[1.5])
    with pytest.raises(ValueError, match=r"stop_token_ids must be ids in "
                       r"\[0, 256\)"):
        lite.generate(prompt, 6, stop_token_ids=256)
