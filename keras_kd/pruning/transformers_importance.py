"""Minitron's activation importances of a keras-hub transformer.

One pass over calibration tokens records, inside every block, what each
part writes, and averages over the tokens that are not padding
(``padding_mask``):

- head h: the norm of its share of the attention output,
  ``mean_t ||o_{t,h} W_O[h]||_2`` (``o_{t,h}``: the head's attention-weighted
  values; ``W_O[h]``: its rows of the output projection);
- MLP unit i: ``mean_t |a_{t,i}| * ||W_down[i]||_2`` (``a``: the input of
  the down projection, i.e. after the activation and the gate);
- hidden channel c: ``sum over the model's normalization layers of
  mean_t |LN(x)_{t,c}|`` (Minitron's embedding-channel importance);
- query/key channel j of head h: ``mean_t |q_{t,h,j}| * mean_t |k_{t,h,j}|``;
  value channel j: ``mean_t |o_{t,h,j}| * ||W_O[h, j]||_2``;
- block b: ``mean_t (1 - cos(x_t, y_t))`` of its input x and output y
  (Men et al. 2024, "ShortGPT"; Minitron's depth importance).

Multiplying by the norm of the outgoing weights makes a head or unit whose
output projection is zero score exactly 0, however large its activation, so
it is pruned first (Sun et al. 2024 rank by the activation alone).
"""

import contextlib

import keras
import numpy as np


class _Mean:
    """A running weighted mean over tokens."""

    def __init__(self):
        self.total, self.weight = 0.0, 0.0

    def add(self, values, mask):
        # values (B, T, ...), mask (B, T)
        m = mask.reshape(mask.shape + (1,) * (values.ndim - 2))
        self.total = self.total + (values * m).sum(axis=(0, 1))
        self.weight += float(mask.sum())

    @property
    def value(self):
        return self.total / max(self.weight, 1.0)


def _np(x):
    return np.asarray(keras.ops.convert_to_numpy(x), dtype=np.float64)


def _sublayers(block):
    found = {}
    for layer in block._flatten_layers(include_self=False, recursive=True):
        found.setdefault(layer.name, layer)
    return found


@contextlib.contextmanager
def _recording(layers_and_hooks):
    """Replaces each layer's ``call`` by one that hands the first input and
    the output to ``hook``, for the duration of the block."""
    for layer, hook in layers_and_hooks:
        original = layer.call

        def call(*args, _original=original, _hook=hook, **kwargs):
            out = _original(*args, **kwargs)
            _hook(args[0], out)
            return out

        layer.call = call
    try:
        yield
    finally:
        for layer, _ in layers_and_hooks:
            del layer.call


def _batches(data, batch_size, inputs):
    """Dict batches of bounded calibration data; a missing padding mask
    (or BERT's segment ids) among ``inputs`` is all ones (zeros)."""
    if isinstance(data, (tuple, list)) and data and isinstance(data[0], dict):
        data = data[0]
    if not isinstance(data, dict) or "token_ids" not in data:
        raise ValueError(
            "calibration_data must be a dict of NumPy arrays with "
            "'token_ids' (and 'padding_mask', plus 'segment_ids' for BERT), "
            f"as the backbone takes them, or an (x, y) tuple of one; got "
            f"{type(data).__name__}. A data set or generator, which may be "
            "endless, is not read: take a bounded sample of your data, e.g. "
            "a few hundred windows, as arrays.")
    arrays = {k: np.asarray(v) for k, v in data.items()}
    n = len(arrays["token_ids"])
    for name in ("padding_mask", "segment_ids"):  # all real, one segment
        if name in inputs and name not in arrays:
            arrays[name] = (np.ones_like if name == "padding_mask"
                            else np.zeros_like)(arrays["token_ids"])
    for start in range(0, n, batch_size):
        yield {k: v[start:start + batch_size] for k, v in arrays.items()}


def _input_names(model):
    spec = model.input
    return set(spec) if isinstance(spec, dict) else {"token_ids"}


def activation_importance(backbone, family, data, batch_size=16):
    """Per-block importances of heads, channels and units, hidden channels
    and block scores from one pass over ``data`` (see the module's text).

    Returns:
        A dict: ``"heads"`` (L, N), ``"query_key"`` (L, N, D),
        ``"value"`` (L, N, D), ``"units"`` (L, I), ``"hidden"`` (H,),
        ``"blocks"`` (L,), NumPy float64.

    Example:

    >>> import keras_hub
    >>> from keras_kd.pruning.transformers_families import family_of
    >>> backbone = keras_hub.models.GPT2Backbone(
    ...     vocabulary_size=32, num_layers=2, num_heads=2, hidden_dim=8,
    ...     intermediate_dim=16, max_sequence_length=4)
    >>> x = {"token_ids": np.ones((2, 4), "int32"),
    ...      "padding_mask": np.ones((2, 4), "int32")}
    >>> scores = activation_importance(backbone, family_of(backbone), x)
    >>> scores["heads"].shape, scores["units"].shape, scores["blocks"].shape
    ((2, 2), (2, 16), (2,))
    """
    blocks = list(backbone.transformer_layers)
    means = {key: [_Mean() for _ in blocks] for key in (
        "heads", "value", "query", "key", "units", "blocks")}
    hidden = {}
    state = {"mask": None}
    hooks = []

    def norm_hook(name):
        def hook(_, out):
            hidden.setdefault(name, _Mean()).add(np.abs(_np(out)),
                                                 state["mask"])
        return hook

    for b, block in enumerate(blocks):
        sub = _sublayers(block)
        w_out = _np(sub["attention_output"].kernel)  # (N, D, H)
        w_out_norm = np.linalg.norm(w_out, axis=-1)  # (N, D)
        down = sub.get("feedforward_output_dense") or sub["ffw_linear"]
        down_norm = np.linalg.norm(_np(down.kernel), axis=-1)  # (I,)

        def attention(o, _, b=b, w_out=w_out, w_out_norm=w_out_norm):
            o = _np(o)  # (B, T, N, D)
            heads = np.linalg.norm(np.einsum("btnd,ndh->btnh", o, w_out),
                                   axis=-1)
            means["heads"][b].add(heads, state["mask"])
            means["value"][b].add(np.abs(o) * w_out_norm, state["mask"])

        def mlp(a, _, b=b, down_norm=down_norm):
            means["units"][b].add(np.abs(_np(a)) * down_norm, state["mask"])

        def projection(key, b=b):
            def hook(_, out):
                means[key][b].add(np.abs(_np(out)), state["mask"])
            return hook

        def block_hook(x, y, b=b):
            x, y = _np(x), _np(y if not isinstance(y, (tuple, list))
                                else y[0])
            cos = (x * y).sum(-1) / np.maximum(
                np.linalg.norm(x, axis=-1) * np.linalg.norm(y, axis=-1),
                1e-12)
            means["blocks"][b].add(1.0 - cos, state["mask"])

        hooks += [(sub["attention_output"], lambda o, out, f=attention: f(
            o, out)), (down, mlp), (sub["query"], projection("query")),
            (sub["key"], projection("key")), (block, block_hook)]
        hooks += [(layer, norm_hook(f"{b}/{name}")) for name, layer in
                  sub.items() if "norm" in name]
    hooks += [(layer, norm_hook(layer.name)) for layer in backbone.layers
              if "norm" in layer.name]
    with _recording(hooks):
        for batch in _batches(data, batch_size, _input_names(backbone)):
            state["mask"] = np.asarray(batch["padding_mask"], np.float64)
            backbone(batch, training=False)
    if means["blocks"][0].weight == 0:
        raise ValueError("calibration_data holds no token that is not "
                         "padding; give it some text.")
    stack = {key: np.stack([m.value for m in values])
             for key, values in means.items()}
    query, key = stack.pop("query"), stack.pop("key")
    if key.shape[1] != query.shape[1]:  # grouped query attention
        key = np.repeat(key, query.shape[1] // key.shape[1], axis=1)
    stack["query_key"] = query * key
    stack["hidden"] = sum(m.value for m in hidden.values())
    return stack
