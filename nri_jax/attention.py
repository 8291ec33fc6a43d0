"""Attention encoder: trajectories [B, N, T, D] -> edge-type logits [B, E, K].

Each object's whole trajectory is embedded by an MLP (as in `encoders.MLPEncoder`),
then refined by rounds of multi-head dot-product attention over the fully
connected graph of objects: every receiver i attends over its N-1 senders j != i
(the diagonal is masked), so each object's embedding can depend on the others
with weights that depend on the pair. Per round, for head h with width F:

    q_i, k_i, v_i = W_q x_i, W_k x_i, W_v x_i          (one fused product, [H, 3 h F])
    alpha_hij     = softmax_{j != i} (q_hi . k_hj / sqrt(F))
    a_i           = W_o concat_h (sum_{j != i} alpha_hij v_hj)
    x_i          <- MLP([x_i || a_i])

The edge embeddings [sender || receiver] then go through an edge MLP and the
encoders' shared `encoders.EdgeHead` (factor or non-factor), ending in K logits
per edge in `graphs.fully_connected_index` order.

Why not `nri_jax.gnn.gat.DenseAttention`: its projections are plain float32
`nn.Dense` layers (no `compute_dtype`), and GAT's additive score
LeakyReLU(a_r . z_i + a_s . z_j) ranks the senders in the same order for every
receiver, whereas the edge types here are properties of the pair; the scaled
dot product scores each pair on its own.
"""

from __future__ import annotations

import math
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from nri_jax import graphs
from nri_jax.encoders import EdgeHead, _encoder_fields, check_trajectories
from nri_jax.nn import MLP, check_compute_dtype, reference_dense


def _check_positive(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def attention_weights(queries: jax.Array, keys: jax.Array) -> jax.Array:
    """Scaled dot-product attention of every receiver over the other objects.

    Args:
      queries: [B, N, heads, F], the receivers' queries.
      keys: [B, N, heads, F], the senders' keys.

    Returns:
      [B, N_receiver, N_sender, heads] float32 weights: for each receiver i and
      head they sum to 1 over the senders j != i; the diagonal is exactly 0.
    """
    n, width = queries.shape[1], queries.shape[-1]
    # N x N scores per head and example: tiny products, kept float32 like the logits.
    scores = jnp.einsum("bihf,bjhf->bijh", queries, keys) / math.sqrt(width)
    off_diagonal = ~jnp.eye(n, dtype=bool)[None, :, :, None]  # [1, N_receiver, N_sender, 1]
    # N >= 2, so every row keeps N-1 finite scores and the softmax never sees an all -inf row.
    return jax.nn.softmax(jnp.where(off_diagonal, scores, -jnp.inf), axis=2)


class MultiHeadAttention(nn.Module):
    """One round of multi-head attention over the fully connected graph of objects.

    Attributes:
      features: H, the output width.
      num_heads: number of heads; each has width ceil(H / num_heads).
      compute_dtype: dtype of the query/key/value and output projections
        ("float32" or "bfloat16", float32 sums either way).

    The attention weights [B, N_receiver, N_sender, heads] are sown as
    `intermediates/attention`.
    """

    features: int
    num_heads: int = 4
    compute_dtype: str = "float32"

    @nn.compact
    def __call__(self, nodes: jax.Array) -> jax.Array:
        """nodes [B, N, F_in] -> attended messages [B, N, H]."""
        _check_positive("num_heads", self.num_heads)
        b, n, _ = nodes.shape
        heads, cd = self.num_heads, self.compute_dtype
        width = -(-self.features // heads)
        qkv = reference_dense(3 * heads * width, name="qkv", compute_dtype=cd)(nodes)
        qkv = qkv.reshape(b, n, 3, heads, width)
        queries, keys, values = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [B, N, heads, F]
        weights = attention_weights(queries, keys)
        self.sow("intermediates", "attention", weights)
        attended = jnp.einsum("bijh,bjhf->bihf", weights, values)
        return reference_dense(self.features, name="out", compute_dtype=cd)(
            attended.reshape(b, n, heads * width))


class AttentionEncoder(nn.Module):
    """Node MLP -> rounds of attention + node MLP -> n2e -> edge MLP (= skip) -> EdgeHead.

    Attributes:
      hidden: H, the width of every block.
      n_edge_types: K.
      dropout: dropout rate inside every MLP block (training only).
      factor: the factor-graph `EdgeHead` (edge -> node -> edge round) if True.
      compute_dtype: "float32" or "bfloat16", the dtype of the MLPs' and the
        attention projections' products.
      num_heads: attention heads per round.
      rounds: rounds of attention (each followed by a node MLP on [x || a]).
    """

    hidden: int = 256
    n_edge_types: int = 2
    dropout: float = 0.0
    factor: bool = True
    compute_dtype: str = "float32"
    num_heads: int = 4
    rounds: int = 2
    reads_decoder: ClassVar[bool] = False  # built from the config alone

    @classmethod
    def from_config(cls, config) -> "AttentionEncoder":
        """The encoder a `model.ModelConfig` describes (default heads and rounds)."""
        return cls(**_encoder_fields(config))

    @nn.compact
    def __call__(self, inputs: jax.Array, *, train: bool) -> jax.Array:
        """inputs [B, N, T, D] -> edge-type logits [B, E, K]."""
        check_trajectories(inputs)
        check_compute_dtype(self.compute_dtype)
        _check_positive("rounds", self.rounds)
        b, n, t, d = inputs.shape
        h, cd = self.hidden, self.compute_dtype
        x = MLP(h, h, self.dropout, cd, name="node_mlp")(inputs.reshape(b, n, t * d),
                                                         train=train)
        for r in range(self.rounds):
            messages = MultiHeadAttention(h, self.num_heads, cd, name=f"attention_{r}")(x)
            x = MLP(h, h, self.dropout, cd, name=f"update_{r}")(
                jnp.concatenate([x, messages], axis=-1), train=train)
        senders, receivers = graphs.fully_connected_index(n)
        x = MLP(h, h, self.dropout, cd, name="edge_mlp")(
            graphs.node_to_edge(x, senders, receivers), train=train)
        return EdgeHead(h, self.n_edge_types, self.dropout, self.factor, cd, name="head")(
            x, train=train)
