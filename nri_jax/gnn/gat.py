"""Multi-head graph attention (Velickovic et al. 2018), on edge lists and on dense sets.

For each head h, with z_i = W_h v_i:

    e_ij     = LeakyReLU_0.2(a_h^T [z_i || z_j])      i receives from j
    alpha_ij = softmax_j e_ij                         over i's incoming edges
    v'_i     = sum_j alpha_ij z_j

and the heads are concatenated ([sum N, H * F]) or averaged ([sum N, F]). The
vector a_h = [a_receiver || a_sender] is stored as its two halves, so
a^T [z_i || z_j] = a_receiver . z_i + a_sender . z_j; the sparse `GAT` and the
dense `DenseAttention` share parameter names and give the same result on the
same neighbourhoods.

`GAT` appends one self-loop per node by default (the paper's i in N(i)), whether
or not the graph has one; duplicate edges each take part in the softmax. A node
with no incoming edge (self-loops off) gets 0 before the bias. `DenseAttention`
takes an adjacency [B, N, N] (receiver row, sender column) as a hard mask or as
an additive bias; a row that excludes every node gets 0, never NaN.

Padding (`jraph.pad_with_graphs`): real nodes receive from real edges (and their
own self-loop) only, so the softmax of a real node never sees a padding row.
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import jraph
from jax import lax

from nri_jax import graphs
from nri_jax.gnn import padding
from nri_jax.gnn.graph_network import check_aggregation, check_graph_features
from nri_jax.gnn.message_passing import segment_softmax
from nri_jax.nn import rows

ADJACENCY_MODES = ("mask", "bias")
# The split attention vector: fan-in over the head's features.
_attention_init = nn.initializers.lecun_normal(in_axis=-1, out_axis=-2)


def _check_positive(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _check_rate(name: str, value) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")


class _HeadsMixin:
    """The parameters and head combination GAT and DenseAttention share."""

    def _check_attributes(self):
        _check_positive("features", self.features)
        _check_positive("num_heads", self.num_heads)
        _check_rate("attention_dropout", self.attention_dropout)

    def _project(self, nodes: jax.Array):
        """[..., F_in] -> z [..., H, F] and the two halves of a^T [z_i || z_j], [..., H]."""
        heads, features = self.num_heads, self.features
        z = nn.Dense(heads * features, use_bias=False, name="linear")(nodes)
        z = z.reshape(z.shape[:-1] + (heads, features))
        a_receiver = self.param("attention_receiver", _attention_init, (heads, features))
        a_sender = self.param("attention_sender", _attention_init, (heads, features))
        return (z, jnp.einsum("...hf,hf->...h", z, a_receiver),
                jnp.einsum("...hf,hf->...h", z, a_sender))

    def _combine(self, heads: jax.Array) -> jax.Array:
        """[..., H, F] -> [..., H * F] (concat) or [..., F] (mean), plus the bias."""
        if self.concat:
            out = heads.reshape(heads.shape[:-2] + (heads.shape[-2] * heads.shape[-1],))
        else:
            out = jnp.mean(heads, axis=-2)
        if self.use_bias:
            bias = self.param("bias", nn.initializers.zeros, (out.shape[-1],))
            out = out + rows(bias, out)
        return out if self.activation is None else self.activation(out)


class GAT(_HeadsMixin, nn.Module):
    """One multi-head graph attention layer on a `jraph.GraphsTuple`.

    Attributes:
      features: F, the width of each head.
      num_heads: H >= 1.
      concat: concatenate the heads ([sum N, H * F]); otherwise average them.
      add_self_loops: attend to each node's own features too.
      negative_slope: of the LeakyReLU on the attention logits.
      attention_dropout: dropout rate on the attention weights (rng 'dropout').
      use_bias: add a bias after combining the heads.
      activation: applied last, or None (the paper's ELU is for the caller).

    The attention weights before dropout, [E (+ sum N), H] in the order of the
    edges and then the self-loops, are sown as `intermediates/attention`.
    """

    features: int
    num_heads: int = 1
    concat: bool = True
    add_self_loops: bool = True
    negative_slope: float = 0.2
    attention_dropout: float = 0.0
    use_bias: bool = True
    activation: Callable[[jax.Array], jax.Array] | None = None

    def __post_init__(self):
        self._check_attributes()
        super().__post_init__()

    @nn.compact
    def __call__(self, graph: jraph.GraphsTuple, *,
                 deterministic: bool = True) -> jraph.GraphsTuple:
        """Args:
          graph: nodes [sum N, F_in]; graph.edges is not read.
          deterministic: no attention dropout (evaluation).

        Returns:
          The graph with nodes [sum N, H * F] (concat) or [sum N, F];
          edges and globals unchanged.
        """
        check_graph_features(graph._replace(edges=None))
        n_nodes = padding.n_nodes(graph)
        senders, receivers = jnp.asarray(graph.senders), jnp.asarray(graph.receivers)
        if self.add_self_loops:
            loops = jnp.arange(n_nodes, dtype=senders.dtype)
            senders = jnp.concatenate([senders, loops])
            receivers = jnp.concatenate([receivers, loops])
        z, to_receiver, to_sender = self._project(jnp.asarray(graph.nodes))
        logits = nn.leaky_relu(graphs.gather_receivers(to_receiver, receivers, axis=0)
                               + graphs.gather_senders(to_sender, senders, axis=0),
                               self.negative_slope)
        weights = segment_softmax(logits, receivers, n_nodes)
        self.sow("intermediates", "attention", weights)
        weights = nn.Dropout(self.attention_dropout)(weights, deterministic=deterministic)
        sent = graphs.gather_senders(z, senders, axis=0)
        heads = jraph.segment_sum(weights[..., None] * sent, receivers, n_nodes)
        return graph._replace(nodes=self._combine(heads))


def masked_softmax(logits: jax.Array, axis: int = -1) -> jax.Array:
    """Softmax along `axis` where -inf logits get weight 0 and an all -inf row gets 0s."""
    maxima = jnp.max(logits, axis=axis, keepdims=True)
    maxima = lax.stop_gradient(jnp.where(jnp.isfinite(maxima), maxima, 0))
    unnormalised = jnp.exp(logits - maxima)
    totals = jnp.sum(unnormalised, axis=axis, keepdims=True)
    return unnormalised / jnp.where(totals > 0, totals, 1)


class DenseAttention(_HeadsMixin, nn.Module):
    """GAT attention over a set of N nodes, every pair a candidate edge.

    Attributes:
      features, num_heads, concat, negative_slope, attention_dropout, use_bias,
      activation: as in `GAT`.
      adjacency_mode: how the call's adjacency [B, N, N] enters the logits:
        "mask": node i attends to j only where adjacency[b, i, j] != 0 (the
        rest get -inf); "bias": adjacency[b, i, j] is added to the logit e_ij
        (e.g. log edge probabilities; -inf excludes a pair).

    The attention weights before dropout, [B, H, N, N], are sown as
    `intermediates/attention`.
    """

    features: int
    num_heads: int = 1
    concat: bool = True
    adjacency_mode: str = "mask"
    negative_slope: float = 0.2
    attention_dropout: float = 0.0
    use_bias: bool = True
    activation: Callable[[jax.Array], jax.Array] | None = None

    def __post_init__(self):
        self._check_attributes()
        check_aggregation("adjacency_mode", self.adjacency_mode, ADJACENCY_MODES)
        super().__post_init__()

    @nn.compact
    def __call__(self, nodes: jax.Array, adjacency: jax.Array | None = None, *,
                 deterministic: bool = True) -> jax.Array:
        """Args:
          nodes: [B, N, F_in].
          adjacency: [B, N, N], receiver row i, sender column j; None: every
            node attends to every node, itself included.
          deterministic: no attention dropout (evaluation).

        Returns:
          [B, N, H * F] (concat) or [B, N, F].
        """
        if nodes.ndim != 3:
            raise ValueError(f"nodes must be [B, N, F], got shape {nodes.shape}")
        b, n, _ = nodes.shape
        if adjacency is not None and adjacency.shape != (b, n, n):
            raise ValueError(f"adjacency must be [{b}, {n}, {n}], got shape {adjacency.shape}")
        if (adjacency is not None and self.adjacency_mode == "bias"
                and not jnp.issubdtype(adjacency.dtype, jnp.floating)):
            raise ValueError(f"adjacency must be float for adjacency_mode='bias', "
                             f"got {adjacency.dtype}")
        z, to_receiver, to_sender = self._project(nodes)  # [B, N, H, F], [B, N, H] twice
        # [B, H, N_receiver, N_sender]
        logits = nn.leaky_relu(jnp.transpose(to_receiver, (0, 2, 1))[:, :, :, None]
                               + jnp.transpose(to_sender, (0, 2, 1))[:, :, None, :],
                               self.negative_slope)
        if adjacency is not None:
            adjacency = adjacency[:, None, :, :]
            if self.adjacency_mode == "mask":
                logits = jnp.where(adjacency != 0, logits, -jnp.inf)
            else:
                logits = logits + adjacency
        weights = masked_softmax(logits)
        self.sow("intermediates", "attention", weights)
        weights = nn.Dropout(self.attention_dropout)(weights, deterministic=deterministic)
        return self._combine(jnp.einsum("bhij,bjhf->bihf", weights, z))
