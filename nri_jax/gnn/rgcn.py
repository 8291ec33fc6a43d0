"""Relational graph convolution (Schlichtkrull et al. 2018).

    v'_i = act(W_0 v_i + sum_k sum_{j in N_i^k} (1 / c_ik) W_k v_j + b)

over K edge types, with c_ik = |N_i^k| the number of edges of type k arriving at
i (duplicates count). Edge types are either ints [E] or soft weights [E, K], as
NRI's sampled edges are: an edge then sends W_k v_j with weight w_ek to every
type, and c_ik = sum of the type-k weights arriving at i (one-hot weights give
the integer case). A type that reaches i with total weight 0 adds nothing.

Basis decomposition (`num_bases` B): W_k = sum_b a_kb V_b, sharing B matrices V
among the K types.

Padding (`jraph.pad_with_graphs`): padding edges join padding nodes only, so
c_ik and the sums of a real node see real edges only.

`TypedMessages` is the same idea with the per-type linear map W_k v_j replaced
by a two-layer MLP of the sender and the receiver: the message layer of NRI's
decoders (Kipf et al. 2018), which weight each edge's K type messages by its
sampled edge types and then sum them at receivers.
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import jraph
from jax.ad_checkpoint import checkpoint_name

from nri_jax import graphs
from nri_jax.gnn import padding
from nri_jax.gnn.graph_network import check_graph_features
from nri_jax.nn import affine, hidden_relu, matmul, rows, torch_uniform

# One [F_in, F_out] matrix per leading index (type or basis): fan-in over F_in.
_kernels_init = nn.initializers.lecun_normal(in_axis=-2, out_axis=-1, batch_axis=(0,))
# a_kb: fan-in over the B bases, so that W_k keeps the variance of one V_b.
_coefficients_init = nn.initializers.lecun_normal(in_axis=-1, out_axis=-2)


def _check_positive(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def edge_type_weights(edge_types: jax.Array, num_edge_types: int, n_edges: int) -> jax.Array:
    """Int types [E] -> one-hot [E, K]; soft weights [E, K] pass through.

    An int type outside [0, K) gives a zero row (the edge is ignored); traced
    values cannot be checked.
    """
    if edge_types.shape == (n_edges,) and jnp.issubdtype(edge_types.dtype, jnp.integer):
        return jax.nn.one_hot(edge_types, num_edge_types)
    if edge_types.shape != (n_edges, num_edge_types) or not jnp.issubdtype(
            edge_types.dtype, jnp.floating):
        raise ValueError(f"edge_types must be int [{n_edges}] or float "
                         f"[{n_edges}, {num_edge_types}], got {edge_types.dtype} "
                         f"{edge_types.shape}")
    return edge_types


class RGCN(nn.Module):
    """One relational graph convolution layer.

    Attributes:
      features: F_out, the width of the new node features.
      num_edge_types: K >= 1.
      num_bases: B >= 1 to decompose W_k = sum_b a_kb V_b (parameters `bases`
        [B, F_in, F_out] and `coefficients` [K, B]); None for K free matrices
        (`kernels` [K, F_in, F_out]).
      self_connection: add W_0 v_i (`self_connection`, a Dense without bias).
      use_bias: add b.
      activation: applied last, or None.
    """

    features: int
    num_edge_types: int
    num_bases: int | None = None
    self_connection: bool = True
    use_bias: bool = True
    activation: Callable[[jax.Array], jax.Array] | None = None

    def __post_init__(self):
        _check_positive("features", self.features)
        _check_positive("num_edge_types", self.num_edge_types)
        if self.num_bases is not None:
            _check_positive("num_bases", self.num_bases)
        super().__post_init__()

    def _relation_kernels(self, f_in: int) -> jax.Array:
        """W_k, [K, F_in, F_out]."""
        shape = (f_in, self.features)
        if self.num_bases is None:
            return self.param("kernels", _kernels_init, (self.num_edge_types,) + shape)
        bases = self.param("bases", _kernels_init, (self.num_bases,) + shape)
        coefficients = self.param("coefficients", _coefficients_init,
                                  (self.num_edge_types, self.num_bases))
        return jnp.einsum("kb,bio->kio", coefficients, bases)

    @nn.compact
    def __call__(self, graph: jraph.GraphsTuple, edge_types: jax.Array) -> jraph.GraphsTuple:
        """Args:
          graph: nodes [sum N, F_in]; graph.edges is not read.
          edge_types: int [sum E] types in [0, K), or float [sum E, K]
            non-negative type weights.

        Returns:
          The graph with nodes [sum N, features]; edges and globals unchanged.
        """
        check_graph_features(graph._replace(edges=None))
        n_nodes, n_edges = padding.n_nodes(graph), padding.n_edges(graph)
        weights = edge_type_weights(jnp.asarray(edge_types), self.num_edge_types, n_edges)
        nodes = jnp.asarray(graph.nodes)
        receivers = jnp.asarray(graph.receivers)
        counts = jraph.segment_sum(weights, receivers, n_nodes)  # c_ik, [N, K]
        inverse = jnp.where(counts > 0, 1 / jnp.where(counts > 0, counts, 1), 0)
        # w_ek / c_{receiver(e), k}: each edge's share of its receiver's type-k mean.
        shares = weights * graphs.gather_receivers(inverse, receivers, axis=0)
        transformed = jnp.einsum("ni,kio->nko", nodes, self._relation_kernels(nodes.shape[-1]))
        sent = graphs.gather_senders(transformed, graph.senders, axis=0)  # [E, K, F_out]
        messages = jnp.einsum("ek,eko->eo", shares, sent)
        out = jraph.segment_sum(messages, receivers, n_nodes)
        if self.self_connection:
            out = out + nn.Dense(self.features, use_bias=False, name="self_connection")(nodes)
        if self.use_bias:
            out = out + self.param("bias", nn.initializers.zeros, (self.features,))[None, :]
        if self.activation is not None:
            out = self.activation(out)
        return graph._replace(nodes=out)


# The name of the message MLPs' second-layer outputs (before the activation) in a
# rematerialised scope: a `jax.checkpoint` policy can keep them (decoders.maybe_remat).
MESSAGE_PRODUCTS = "typed_message_products"


class TypedMessages(nn.Module):
    """Per-edge-type message MLPs of [sender, receiver], weighted by soft edge types.

    For the edge from sender j to receiver i with type weights w[k]:

        m = sum_k w[k] act(W2_k act(W1_k [v_j, v_i] + b1_k) + b2_k)

    over k >= 1 if `skip_first` (type 0 sends nothing; its parameters still
    exist, as in the NRI reference), else over all K types. The messages are
    returned per edge: the caller aggregates them (`graphs.edge_to_node`), as
    NRI's decoders do with their own scaling.

    The first layer on the concatenation is split as W1s_k v_j + W1r_k v_i, so
    it is computed per node (N rows) and gathered onto edges: on the fully
    connected graph 1/(N-1) of the direct cost. The second layers are one
    [rows, H] x [H, H] product per type (measured faster on CPU than one
    batched einsum over types).

    Attributes:
      hidden: H, width of both layers.
      n_edge_types: K.
      skip_first: type 0 sends no message.
      activation: nonlinearity after each layer (ReLU in NRI's MLP decoder,
        tanh in its recurrent one).
      dropout: dropout rate between the two layers (training only).
      compute_dtype: dtype of the products ("float32" or "bfloat16").
    """

    hidden: int
    n_edge_types: int
    skip_first: bool
    activation: Callable[[jax.Array], jax.Array]
    dropout: float = 0.0
    compute_dtype: str = "float32"

    @nn.compact
    def __call__(self, nodes: jax.Array, edge_types: jax.Array, senders=None, receivers=None,
                 *, train: bool = False) -> jax.Array:
        """Messages of every edge.

        Args:
          nodes: [..., N, F]: a batch of graphs sharing one edge index, or a
            `GraphsTuple`'s nodes [sum N, F].
          edge_types: [..., E, K] non-negative type weights (leading axes
            broadcast against the nodes').
          senders, receivers: int [E] indices into the node axis; None (both):
            the fully connected graph of N nodes (`graphs.fully_connected_index`,
            which takes the dense path).
          train: apply dropout.

        Returns:
          [..., E, H] messages, one per edge.
        """
        n, f = nodes.shape[-2:]
        k, h = self.n_edge_types, self.hidden
        if (senders is None) != (receivers is None):
            raise ValueError("senders and receivers must both be given or both be None")
        if senders is None:
            senders, receivers = graphs.fully_connected_index(n)
        n_edges = senders.shape[0]
        if edge_types.shape[-2:] != (n_edges, k):
            raise ValueError(f"edge_types must be [..., {n_edges}, {k}] (E edges, K types), "
                             f"got shape {edge_types.shape}")
        w1 = self.param("first_kernel", torch_uniform(2 * f), (k, 2 * f, h))
        b1 = self.param("first_bias", torch_uniform(2 * f), (k, h))
        w2 = self.param("second_kernel", torch_uniform(h), (k, h, h))
        b2 = self.param("second_bias", torch_uniform(h), (k, h))
        dropout = nn.Dropout(self.dropout)
        cd = self.compute_dtype
        messages = 0.0
        for t in range(1 if self.skip_first else 0, k):
            # Concatenation order [sender, receiver] as in graphs.node_to_edge. The
            # first bias is added per edge: on the senders' per-node part instead,
            # its gradient summed fewer rows but the recurrent decoder's float32
            # step ran 1.2x slower (BENCHMARKS.md, 2026-12-07).
            first = (graphs.gather_senders(matmul(nodes, w1[t, :f], cd), senders)
                     + graphs.gather_receivers(matmul(nodes, w1[t, f:], cd), receivers))
            first = first + rows(b1[t], first)
            hidden = dropout(self._hidden_activation(first), deterministic=not train)
            second = self.activation(checkpoint_name(affine(hidden, w2[t], b2[t], cd),
                                                     MESSAGE_PRODUCTS))
            messages = messages + second * edge_types[..., t:t + 1]
        return messages

    def _hidden_activation(self, x: jax.Array) -> jax.Array:
        """The activation between the two layers; a ReLU keeps its bfloat16 output for
        its backward pass when the second layer's product runs in bfloat16 (`hidden_relu`)."""
        if self.activation is jax.nn.relu:
            return hidden_relu(x, self.compute_dtype)
        return self.activation(x)

    @property
    def n_active_types(self) -> int:
        return self.n_edge_types - 1 if self.skip_first else self.n_edge_types
