"""keras_kd.pruning.prune_transformer: keras-hub GPT-2, BERT and Gemma pruned
in width and depth, checked against planted dead parts, masked originals,
blocks skipped by hand and NumPy."""

import keras
import numpy as np
import pytest

from keras_kd.pruning.transformers import prune_transformer

keras_hub = pytest.importorskip("keras_hub")

V, T = 64, 8


# Pruning keras-hub transformers (weights copied with NumPy): no backend-specific path of its own (the Keras
# and keras-kd calls it makes are tested on every backend elsewhere), so CI runs
# this file under one backend (tests/conftest.py, `one_backend`; a test's own
# mark wins).
pytestmark = pytest.mark.one_backend("torch")


def _tokens(n=6, seed=0, segments=False):
    rng = np.random.default_rng(seed)
    mask = np.ones((n, T), "int32")
    mask[0, 5:] = 0  # one padded row: importances average real tokens only
    x = {"token_ids": rng.integers(1, V, (n, T)).astype("int32") * mask,
         "padding_mask": mask}
    if segments:
        x["segment_ids"] = np.zeros((n, T), "int32")
    return x


def _gpt2(layers=3, heads=2, hidden=16, units=24):
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=V, num_layers=layers, num_heads=heads,
        hidden_dim=hidden, intermediate_dim=units, max_sequence_length=T,
        dropout=0.0)
    return keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)


def _gemma():
    backbone = keras_hub.models.GemmaBackbone(
        vocabulary_size=V, num_layers=2, num_query_heads=4,
        num_key_value_heads=2, hidden_dim=16, intermediate_dim=32,
        head_dim=4)
    return keras_hub.models.GemmaCausalLM(backbone=backbone, preprocessor=None)


def _bert():
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=V, num_layers=2, num_heads=2, hidden_dim=16,
        intermediate_dim=24, max_sequence_length=T, dropout=0.0)
    return keras_hub.models.BertTextClassifier(
        backbone=backbone, num_classes=3, preprocessor=None, dropout=0.0)


def _out(model, x):
    return keras.ops.convert_to_numpy(model(x, training=False))


def _weights(model):
    return {v.path: v for v in model.backbone.weights}


def _set(model, path, edit):
    variable = _weights(model)[path]
    array = keras.ops.convert_to_numpy(variable).copy()
    edit(array)
    variable.assign(array)


def _twin(model):
    """An independent copy of a keras-hub task, same weights."""
    twin = type(model).from_config(model.get_config())
    twin.set_weights(model.get_weights())
    return twin


def _zero_rows(rows):
    def edit(a):
        a[rows] = 0.0
    return edit


def _zero_cols(cols):
    def edit(a):
        a[..., cols] = 0.0
    return edit


def test_dead_mlp_units_of_gpt2_are_pruned_exactly():
    lm, x = _gpt2(), _tokens()
    dead = {0: [1, 5, 9, 20], 1: [0, 2, 3, 23], 2: [4, 7, 8, 11]}
    for b, units in dead.items():
        p = f"transformer_layer_{b}/feedforward_"
        _set(lm, p + "intermediate_dense/kernel", _zero_cols(units))
        _set(lm, p + "intermediate_dense/bias", _zero_cols(units))
        _set(lm, p + "output_dense/kernel", _zero_rows(units))
    small, report = prune_transformer(lm, intermediate=20, calibration_data=x)
    for b, units in dead.items():
        kept = report["layers"][f"block_{b}"]["units"]
        assert sorted(set(range(24)) - set(kept)) == units
    assert small.backbone.intermediate_dim == 20
    np.testing.assert_allclose(_out(small, x), _out(lm, x), atol=1e-5)


def test_dead_query_heads_and_kv_groups_of_gemma_are_pruned_exactly():
    lm, x = _gemma(), _tokens()
    # block 0: query heads 1 and 2 (one in each key/value group) write zero
    _set(lm, "decoder_block_0/attention/attention_output/kernel",
         _zero_rows([1, 2]))
    _set(lm, "decoder_block_1/attention/attention_output/kernel",
         _zero_rows([0, 3]))
    small, report = prune_transformer(lm, heads=2, calibration_data=x)
    assert report["layers"]["block_0"]["heads"] == [0, 3]
    assert report["layers"]["block_1"]["heads"] == [1, 2]
    assert small.backbone.num_query_heads == 2
    assert small.backbone.num_key_value_heads == 2
    np.testing.assert_allclose(_out(small, x), _out(lm, x), atol=1e-5)

    # a whole key/value group whose query heads all write zero
    lm = _gemma()
    for b in (0, 1):
        _set(lm, f"decoder_block_{b}/attention/attention_output/kernel",
             _zero_rows([2, 3]))
    small, report = prune_transformer(lm, heads=2, kv_heads=1,
                                      calibration_data=x)
    assert report["layers"]["block_1"]["kv_heads"] == [0]
    assert report["layers"]["block_1"]["heads"] == [0, 1]
    assert small.backbone.num_key_value_heads == 1
    np.testing.assert_allclose(_out(small, x), _out(lm, x), atol=1e-5)


def _masked_gemma(lm, report):
    """The original with every removed query head's output rows, removed
    group's heads and removed unit's down-projection rows zeroed."""
    twin = _twin(lm)
    for name, entry in report["layers"].items():
        b = entry["source"]
        gone = sorted(set(range(4)) - set(entry["heads"]))
        _set(twin, f"decoder_block_{b}/attention/attention_output/kernel",
             _zero_rows(gone))
        units = sorted(set(range(16)) - set(entry["units"]))
        _set(twin, f"decoder_block_{b}/ffw_linear/kernel", _zero_rows(units))
    return twin


def test_pruned_gemma_equals_the_original_with_the_removed_parts_zeroed():
    lm, x = _gemma(), _tokens()
    small, report = prune_transformer(lm, heads=2, kv_heads=1,
                                      intermediate=10, calibration_data=x)
    reference = _out(_masked_gemma(lm, report), x)
    np.testing.assert_allclose(_out(small, x), reference, atol=1e-5)
    # and it is not the unpruned model: the test would see a wrong slice
    assert np.abs(_out(lm, x) - reference).max() > 1e-3
    assert small.backbone.intermediate_dim == 20  # Gemma: twice the units


def test_pruned_bert_classifier_equals_the_masked_original():
    model, x = _bert(), _tokens(segments=True)
    small, report = prune_transformer(model, intermediate=12,
                                      calibration_data=x)
    # without segment ids the calibration uses segment 0, as x does
    _, again = prune_transformer(
        model, intermediate=12, calibration_data={
            k: v for k, v in x.items() if k != "segment_ids"})
    assert again["layers"] == report["layers"]
    twin = _twin(model)
    for entry in report["layers"].values():
        gone = sorted(set(range(24)) - set(entry["units"]))
        _set(twin, f"transformer_layer_{entry['source']}/"
             "feedforward_output_dense/kernel", _zero_rows(gone))
    assert type(small).__name__ == "BertTextClassifier"
    np.testing.assert_allclose(_out(small, x), _out(twin, x), atol=1e-5)
    # whole heads and hidden channels: the pooler and the classifier's own
    # kernel are cut on the hidden axis too
    small, report = prune_transformer(model, heads=1, hidden=8,
                                      calibration_data=x)
    kept = report["hidden"]
    old = {v.path: keras.ops.convert_to_numpy(v) for v in model.weights}
    new = {v.path: keras.ops.convert_to_numpy(v) for v in small.weights}
    np.testing.assert_array_equal(new["pooled_dense/kernel"],
                                  old["pooled_dense/kernel"][kept][:, kept])
    head = [p for p in new if p.endswith("kernel") and new[p].shape == (8, 3)]
    assert len(head) == 1
    np.testing.assert_array_equal(new[head[0]], old[head[0]][kept])
    assert _out(small, x).shape == (6, 3)


def _block_scores(lm, x):
    """1 - cos(block input, block output) averaged over real tokens, with
    the blocks called one by one by hand."""
    bb = lm.backbone
    mask = x["padding_mask"]
    tokens = bb.token_embedding(x["token_ids"])
    h = tokens + bb.position_embedding(tokens)
    scores = []
    for block in bb.transformer_layers:
        y = block(h, decoder_padding_mask=mask)
        a, c = keras.ops.convert_to_numpy(h), keras.ops.convert_to_numpy(y)
        cos = (a * c).sum(-1) / (np.linalg.norm(a, axis=-1)
                                 * np.linalg.norm(c, axis=-1))
        scores.append(((1 - cos) * mask).sum() / mask.sum())
        h = y
    return np.array(scores)


def test_depth_pruning_ranks_blocks_by_cosine_and_equals_skipping_them():
    lm, x = _gpt2(layers=3), _tokens()
    small, report = prune_transformer(lm, layers=2, calibration_data=x)
    expected = _block_scores(lm, x)
    np.testing.assert_allclose(report["block_scores"], expected, rtol=1e-4,
                               atol=1e-6)
    dropped = int(np.argmin(expected))
    assert report["kept_blocks"] == sorted(set(range(3)) - {dropped})
    # the original with the dropped block made the identity (pre-norm
    # blocks: zero what it adds to the residual stream)
    twin = _twin(lm)
    for part in ("self_attention/attention_output", "feedforward_output_dense"):
        for w in ("kernel", "bias"):
            _set(twin, f"transformer_layer_{dropped}/{part}/{w}",
                 lambda a: a.fill(0.0))
    np.testing.assert_allclose(_out(small, x), _out(twin, x), atol=1e-5)
    assert small.backbone.num_layers == 2


def test_gpt2_whole_heads_and_hidden_channels():
    lm, x = _gpt2(layers=2, heads=4, hidden=16), _tokens()
    # hidden channels 3 and 10 are zeroed by every normalization layer
    for path in _weights(lm):
        if "norm" in path:
            _set(lm, path, _zero_cols([3, 10]))
    small, report = prune_transformer(lm, heads=2, hidden=8,
                                      calibration_data=x)
    assert 3 not in report["hidden"] and 10 not in report["hidden"]
    config = small.backbone.get_config()
    assert (config["num_heads"], config["hidden_dim"]) == (2, 8)
    assert report["sizes_after"]["D"] == 4  # whole heads of 4 channels
    entry = report["layers"]["block_0"]
    old = keras.ops.convert_to_numpy(
        _weights(lm)["transformer_layer_0/self_attention/value/kernel"])
    new = keras.ops.convert_to_numpy(
        _weights(small)["transformer_layer_0/self_attention/value/kernel"])
    np.testing.assert_array_equal(
        new, old[report["hidden"]][:, entry["heads"]])
    # the tied output layer is the token embedding, cut on the hidden axis
    emb = keras.ops.convert_to_numpy(small.backbone.token_embedding.embeddings)
    np.testing.assert_array_equal(emb, keras.ops.convert_to_numpy(
        lm.backbone.token_embedding.embeddings)[:, report["hidden"]])
    assert _out(small, x).shape == (6, T, V)


def test_gpt2_narrower_heads_keep_their_attention_scores_scale():
    lm, x = _gpt2(layers=1, heads=2, hidden=16), _tokens()
    small, report = prune_transformer(lm, hidden=8, calibration_data=x)
    entry = report["layers"]["block_0"]
    assert report["sizes_after"]["D"] == 4 and entry["heads"] == [0, 1]
    path = "transformer_layer_0/self_attention/query/kernel"
    old = keras.ops.convert_to_numpy(_weights(lm)[path])[report["hidden"]]
    new = keras.ops.convert_to_numpy(_weights(small)[path])
    for h in range(2):
        # scores q.k / sqrt(4) of the kept channels equal q.k / sqrt(8)
        np.testing.assert_allclose(
            new[:, h], old[:, h][:, entry["query_key"][h]] * np.sqrt(4 / 8),
            rtol=1e-6)
    path = "transformer_layer_0/self_attention/attention_output/kernel"
    old = keras.ops.convert_to_numpy(_weights(lm)[path])
    new = keras.ops.convert_to_numpy(_weights(small)[path])
    for h in range(2):
        np.testing.assert_array_equal(
            new[h], old[h][entry["value"][h]][:, report["hidden"]])


def test_report_counts_parameters_and_flops():
    lm, x = _gpt2(layers=3, heads=2, hidden=16, units=24), _tokens()
    small, report = prune_transformer(lm, layers=2, hidden=8,
                                      intermediate=0.5, calibration_data=x)
    assert report["params_before"] == lm.count_params()
    assert report["params_after"] == small.count_params()
    # GPT-2 by hand: embeddings, then per block two LayerNorms, q/k/v/out
    # projections with biases and the MLP, then the final LayerNorm
    H, I, L = 8, 12, 2
    expected = (V + T) * H + L * (4 * H + 4 * (H * H + H)
                                  + 2 * H * I + I + H) + 2 * H
    assert small.count_params() == expected
    flops = 2 * (L * (4 * H * H + 2 * H * T + 2 * H * I) + H * V)
    assert report["flops_after"] == flops
    assert report["sizes_after"] == {"L": 2, "H": 8, "N": 2, "K": 2,
                                     "D": 4, "I": 12}
    # a backbone prunes to a backbone of its class, the same weights
    backbone, again = prune_transformer(lm.backbone, layers=2, hidden=8,
                                        intermediate=0.5, calibration_data=x)
    assert type(backbone).__name__ == "GPT2Backbone"
    assert again["params_after"] == backbone.count_params() == expected
    for a, b in zip(backbone.weights, small.backbone.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a),
                                      keras.ops.convert_to_numpy(b))


def test_pruned_task_saves_and_loads(tmp_path):
    lm, x = _gemma(), _tokens()
    small, _ = prune_transformer(lm, heads=2, intermediate=8, hidden=12,
                                 layers=1, calibration_data=x)
    path = str(tmp_path / "pruned.keras")
    small.save(path)
    loaded = keras.saving.load_model(path, compile=False)
    assert type(loaded).__name__ == "GemmaCausalLM"
    assert loaded.backbone.get_config()["hidden_dim"] == 12
    np.testing.assert_allclose(_out(loaded, x), _out(small, x), atol=1e-6)


def test_refusals_name_the_model_and_the_fix():
    lm, x = _gpt2(layers=2), _tokens()
    with pytest.raises(ValueError, match=r"GPT2Backbone.*pass hidden=8"):
        prune_transformer(lm, heads=1, calibration_data=x)
    with pytest.raises(ValueError, match="no separate key/value heads"):
        prune_transformer(lm, kv_heads=1, calibration_data=x)
    with pytest.raises(ValueError, match="intermediate=30.*24"):
        prune_transformer(lm, intermediate=30, calibration_data=x)
    with pytest.raises(ValueError, match="calibration_data="):
        prune_transformer(lm, layers=1)
    with pytest.raises(ValueError, match="dict of NumPy arrays.*endless"):
        prune_transformer(lm, layers=1, calibration_data=[1, 2, 3])
    with pytest.raises(ValueError, match=r"GemmaBackbone.*kv_heads \(2\)"):
        prune_transformer(_gemma(), heads=3, calibration_data=x)
    llama = keras_hub.models.LlamaBackbone(
        vocabulary_size=V, num_layers=1, num_query_heads=2,
        num_key_value_heads=1, hidden_dim=8, intermediate_dim=8)
    with pytest.raises(ValueError, match="got a LlamaBackbone"):
        prune_transformer(llama, layers=1, calibration_data=x)
