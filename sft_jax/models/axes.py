"""Logical axis names, defined once for every model family.

Parameters and key activations carry these names (`nn.with_logical_partitioning`,
`nn.with_logical_constraint`); `sft_jax/parallel.py` maps them to mesh axes with a list of
rules from the config. A name without a rule is replicated. One array never repeats a
name (flax rejects that), which is why a square [D, D] kernel is named ('embed', 'mlp').

Where each name appears (einsum letters from `layers.py` in brackets):

| name         | dimension                                   | used by                        |
|--------------|---------------------------------------------|--------------------------------|
| `batch`      | examples in a batch [B]                     | activations                    |
| `length`     | sequence positions [T, S]                   | activations                    |
| `vocab`      | token vocabulary [V]                        | word embeddings, LM heads      |
| `position`   | rows of a learned position table            | absolute position embeddings   |
| `token_type` | rows of the segment (token type) table      | BERT token-type embeddings     |
| `embed`      | model width [D]                             | nearly every parameter         |
| `heads`      | query heads [N]                             | q / out projections            |
| `kv_heads`   | key/value heads [K] (grouped-query attn.)   | k / v projections when K != N  |
| `kv`         | per-head width [H]                          | q / k / v / out projections    |
| `mlp`        | feed-forward width [F]; pooler output       | mlp in/out, pooler             |
| `classes`    | classifier outputs                          | classification heads           |
| `layers`     | stacked layers (reserved for `nn.scan`)     | not used yet                   |
"""

BATCH = "batch"
LENGTH = "length"
VOCAB = "vocab"
POSITION = "position"
TOKEN_TYPE = "token_type"
EMBED = "embed"
HEADS = "heads"
KV_HEADS = "kv_heads"
KV = "kv"
MLP = "mlp"
CLASSES = "classes"
LAYERS = "layers"

ALL: tuple[str, ...] = (
    BATCH,
    LENGTH,
    VOCAB,
    POSITION,
    TOKEN_TYPE,
    EMBED,
    HEADS,
    KV_HEADS,
    KV,
    MLP,
    CLASSES,
    LAYERS,
)
"""Every logical name a model in `sft_jax.models` may use."""
