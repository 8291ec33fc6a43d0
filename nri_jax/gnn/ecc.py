"""Edge-conditioned convolution (Simonovsky & Komodakis 2017).

A filter-generating network maps each edge's features to a weight matrix, which
is applied to the sender's features:

    Theta_k = reshape(F(e_k), [F_in, F_out])
    v'_i    = agg_{k -> i} v_sender(k) Theta_k + v_i W_root + b

with agg the mean over incoming edges (the paper's) or their sum. A node with no
incoming edges keeps only its root term. The root weight and bias let a node
see its own features, which the paper's convolution leaves to self-loops.

Padding: real nodes receive from real edges only (`jraph.pad_with_graphs`), so
padded rows never reach a real node.
"""

from __future__ import annotations

from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import jraph

from nri_jax import graphs
from nri_jax.gnn import padding
from nri_jax.gnn.graph_network import MLP, check_aggregation, check_graph_features, \
    check_widths, segment_reduce


class EdgeConditionedConv(nn.Module):
    """Edge-conditioned convolution on a `jraph.GraphsTuple` with edge features.

    Attributes:
      features: F_out, the width of the new node features.
      filter_widths: hidden widths of the filter-generating MLP (may be empty: a
        linear map of the edge features); its last layer, `dense_{len}`, is
        added here with F_in * F_out outputs.
      aggregation: "mean" (the paper's) or "sum" over incoming edges.
      use_bias: add the bias b to the root term.
      activation: between the filter MLP's layers.
    """

    features: int
    filter_widths: Sequence[int] = (32,)
    aggregation: str = "mean"
    use_bias: bool = True
    activation: Callable[[jax.Array], jax.Array] = nn.relu

    def __post_init__(self):
        if not isinstance(self.features, int) or self.features < 1:
            raise ValueError(f"features must be a positive int, got {self.features!r}")
        check_widths("filter_widths", self.filter_widths, allow_empty=True)
        check_aggregation("aggregation", self.aggregation, ("mean", "sum"))
        super().__post_init__()

    @nn.compact
    def __call__(self, graph: jraph.GraphsTuple) -> jraph.GraphsTuple:
        """Args: graph with nodes [sum N, F_in] and edges [sum E, F_e].

        Returns:
          The graph with nodes [sum N, features]; edges and globals unchanged.
        """
        check_graph_features(graph, edges_required=True)
        nodes = graph.nodes
        f_in, f_out = nodes.shape[-1], self.features
        filters = MLP(tuple(self.filter_widths) + (f_in * f_out,), self.activation,
                      name="filter_mlp")(graph.edges)
        filters = filters.reshape(padding.n_edges(graph), f_in, f_out)
        sent = graphs.gather_senders(nodes, graph.senders, axis=0)
        messages = jnp.einsum("ki,kio->ko", sent, filters)
        incoming = segment_reduce(messages, graph.receivers, padding.n_nodes(graph),
                                  self.aggregation)
        root = nn.Dense(f_out, use_bias=self.use_bias, name="root")(nodes)
        return graph._replace(nodes=incoming + root)
