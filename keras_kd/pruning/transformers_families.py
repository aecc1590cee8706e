"""What each keras-hub transformer family lets `prune_transformer` cut.

A family says how to read its sizes from a backbone's config, how to write
new sizes back, and which axis of each weight holds which dimension. Axis
roles: ``H`` hidden (embedding) channels, ``N`` query heads, ``K`` key/value
heads, ``Dq`` query/key channels of a head, ``Dv`` value channels of a head,
``I`` MLP intermediate units; ``None`` is never cut (vocabulary, positions,
segments). Nothing here imports keras-hub: backbones are recognised by their
class name.
"""

import re

BLOCK = re.compile(r"^(transformer_layer|decoder_block)_(\d+)/(.*)$")

_MHA_ROLES = (  # keras MultiHeadAttention (GPT-2's and BERT's blocks)
    (r"query/kernel$", ("H", "N", "Dq")),
    (r"query/bias$", ("N", "Dq")),
    (r"key/kernel$", ("H", "N", "Dq")),
    (r"key/bias$", ("N", "Dq")),
    (r"value/kernel$", ("H", "N", "Dv")),
    (r"value/bias$", ("N", "Dv")),
    (r"attention_output/kernel$", ("N", "Dv", "H")),
    (r"attention_output/bias$", ("H",)),
    (r"feedforward_intermediate_dense/kernel$", ("H", "I")),
    (r"feedforward_intermediate_dense/bias$", ("I",)),
    (r"feedforward_output_dense/kernel$", ("I", "H")),
    (r"feedforward_output_dense/bias$", ("H",)),
    (r"norm/(gamma|beta)$", ("H",)),
)

_GEMMA_ROLES = (
    (r"query/kernel$", ("N", "H", "Dq")),
    (r"key/kernel$", ("K", "H", "Dq")),
    (r"value/kernel$", ("K", "H", "Dv")),
    (r"attention_output/kernel$", ("N", "Dv", "H")),
    (r"ffw_gating(_2)?/kernel$", ("H", "I")),
    (r"ffw_linear/kernel$", ("I", "H")),
    (r"norm/scale$", ("H",)),
)

_TOP_ROLES = (
    (r"^token_embedding/embeddings$", (None, "H")),
    (r"^token_embedding/reverse_embeddings$", ("H", None)),
    (r"^(position|segment)_embedding/embeddings$", (None, "H")),
    (r"^pooled_dense/kernel$", ("H", "H")),
    (r"^pooled_dense/bias$", ("H",)),
    (r"norm(alization)?/(gamma|beta|scale)$", ("H",)),
)


class Family:
    """The prunable dimensions of one keras-hub backbone class.

    Example:

    >>> gemma = FAMILIES["GemmaBackbone"]
    >>> config = dict(num_layers=2, hidden_dim=16, num_query_heads=4,
    ...               num_key_value_heads=2, head_dim=4, intermediate_dim=32)
    >>> gemma.sizes(config)
    {'L': 2, 'H': 16, 'N': 4, 'K': 2, 'D': 4, 'I': 16}
    >>> gemma.axis_roles("decoder_block_0/attention/key/kernel", 3)
    ('K', 'H', 'Dq')
    """

    def __init__(self, name, heads_key, kv_key, head_dim_key, mlp_factor,
                 roles, head_dim_prunable, note):
        self.name, self.heads_key, self.kv_key = name, heads_key, kv_key
        self.head_dim_key, self.mlp_factor = head_dim_key, mlp_factor
        self.roles, self.head_dim_prunable = roles, head_dim_prunable
        self.note = note

    def sizes(self, config):
        """``dict(L, H, N, K, D, I)`` of a backbone config."""
        heads = config[self.heads_key]
        head_dim = (config[self.head_dim_key] if self.head_dim_key
                    else config["hidden_dim"] // heads)
        return {"L": config["num_layers"], "H": config["hidden_dim"],
                "N": heads, "K": config[self.kv_key] if self.kv_key else heads,
                "D": head_dim,
                "I": config["intermediate_dim"] // self.mlp_factor}

    def config(self, config, sizes):
        """``config`` with the new ``sizes`` written in."""
        new = dict(config)
        new.update(num_layers=sizes["L"], hidden_dim=sizes["H"],
                   intermediate_dim=sizes["I"] * self.mlp_factor)
        new[self.heads_key] = sizes["N"]
        if self.kv_key:
            new[self.kv_key] = sizes["K"]
        return new

    def axis_roles(self, path, ndim):
        """The roles of a weight's axes, from its path."""
        match = BLOCK.match(path)
        table = self.roles if match else _TOP_ROLES
        rest = match.group(3) if match else path
        for pattern, roles in table:
            if re.search(pattern, rest) and len(roles) == ndim:
                return roles
        raise ValueError(
            f"prune_transformer does not know the weight '{path}' of a "
            f"{self.name}; it cannot slice it.")


_TIED = ("head size = hidden_dim / num_heads in its config, so removing "
         "heads keeps the hidden size only by widening the remaining heads, "
         "which the config cannot hold with the old weights. Prune heads "
         "together with hidden = heads x head size (whole heads removed), or "
         "keep the heads and prune hidden: every head then loses the same "
         "number of query/key and value channels")

FAMILIES = {
    "GPT2Backbone": Family(
        "GPT2Backbone", "num_heads", None, None, 1, _MHA_ROLES, True,
        "GPT2Backbone: prunable heads, intermediate, hidden, layers; " + _TIED
        + "."),
    "BertBackbone": Family(
        "BertBackbone", "num_heads", None, None, 1, _MHA_ROLES, True,
        "BertBackbone: prunable heads, intermediate, hidden, layers; " + _TIED
        + "."),
    "GemmaBackbone": Family(
        "GemmaBackbone", "num_query_heads", "num_key_value_heads", "head_dim",
        2, _GEMMA_ROLES, False,
        "GemmaBackbone: prunable query heads (the same number kept in every "
        "key/value group), key/value groups (kv_heads=, each with its query "
        "heads), intermediate units (the config's intermediate_dim is twice "
        "the units), hidden, layers. head_dim is its own config entry, so "
        "heads prune without touching hidden; it cannot shrink (rotary "
        "embeddings pair channel i with i + head_dim / 2 at frequencies set "
        "by head_dim). Pruning hidden changes the embedding scale "
        "sqrt(hidden_dim) the backbone multiplies by."),
}
"""The supported backbone classes by name."""


def family_of(backbone):
    """The `Family` of a keras-hub backbone, or a refusal naming those
    supported."""
    name = type(backbone).__name__
    if name not in FAMILIES:
        raise ValueError(
            f"prune_transformer supports the keras-hub backbones "
            f"{sorted(FAMILIES)} and their tasks; got a {name}. Other "
            "Functional models prune with keras_kd.pruning.prune.")
    return FAMILIES[name]
