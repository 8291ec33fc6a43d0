"""PairNorm (Zhao & Akoglu 2020) per graph of a batch, and a residual wrapper.

PairNorm keeps node features of deep GNNs from collapsing onto one another
(over-smoothing). Within each graph g, with mean mu_g over its nodes:

    "PN"      v'_i = s * (v_i - mu_g) / sqrt(eps + mean_{j in g} ||v_j - mu_g||^2)
    "PN-SI"   v'_i = s * (v_i - mu_g) / sqrt(eps + ||v_i - mu_g||^2)    (scale individually)
    "PN-SCS"  v'_i = s * v_i / sqrt(eps + ||v_i||^2) - mu_g             (scale, then centre)

so "PN" leaves each graph with mean 0 and mean squared row norm s^2 (up to
eps). The paper normalises one graph; a batch is normalised graph by graph
here, with each graph's statistics over its own nodes. Padding nodes belong to
padding graphs (`jraph.pad_with_graphs`), so they never enter a real graph's
statistics; eps keeps a padding graph of identical (zero) rows finite.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import jraph

from nri_jax.gnn import padding
from nri_jax.gnn.graph_network import check_aggregation, check_graph_features

PAIR_NORM_MODES = ("PN", "PN-SI", "PN-SCS")


def _squared_norm(x: jax.Array) -> jax.Array:
    return jnp.sum(x * x, axis=-1, keepdims=True)


def pair_norm(graph: jraph.GraphsTuple, *, scale: float = 1.0, mode: str = "PN",
              epsilon: float = 1e-5) -> jraph.GraphsTuple:
    """PairNorm of each graph's node features.

    Args:
      graph: nodes [sum N, F].
      scale: s > 0, the target root mean squared row norm ("PN") or row norm.
      mode: "PN", "PN-SI" or "PN-SCS" (module docstring).
      epsilon: eps >= 0 under the square roots.

    Returns:
      The graph with normalised nodes [sum N, F]; edges and globals unchanged.
    """
    check_graph_features(graph)
    check_aggregation("mode", mode, PAIR_NORM_MODES)
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale!r}")
    if not epsilon >= 0:
        raise ValueError(f"epsilon must be >= 0, got {epsilon!r}")
    x = jnp.asarray(graph.nodes)
    n_graph = graph.n_node.shape[0]
    index = padding.node_graph_index(graph)
    count = jnp.maximum(graph.n_node, 1).astype(x.dtype).reshape(n_graph, 1)
    mean = (jraph.segment_sum(x, index, n_graph) / count)[index]
    if mode == "PN-SCS":
        return graph._replace(nodes=scale * x / jnp.sqrt(epsilon + _squared_norm(x)) - mean)
    centred = x - mean
    if mode == "PN-SI":
        return graph._replace(nodes=scale * centred / jnp.sqrt(epsilon + _squared_norm(centred)))
    spread = jraph.segment_sum(_squared_norm(centred), index, n_graph) / count
    return graph._replace(nodes=scale * centred / jnp.sqrt(epsilon + spread[index]))


class PairNorm(nn.Module):
    """`pair_norm` as a layer (no parameters).

    Attributes:
      scale: s > 0.
      mode: "PN", "PN-SI" or "PN-SCS".
      epsilon: eps >= 0 under the square roots.
    """

    scale: float = 1.0
    mode: str = "PN"
    epsilon: float = 1e-5

    def __post_init__(self):
        check_aggregation("mode", self.mode, PAIR_NORM_MODES)
        if not self.scale > 0:
            raise ValueError(f"scale must be > 0, got {self.scale!r}")
        if not self.epsilon >= 0:
            raise ValueError(f"epsilon must be >= 0, got {self.epsilon!r}")
        super().__post_init__()

    def __call__(self, graph: jraph.GraphsTuple) -> jraph.GraphsTuple:
        """nodes [sum N, F] -> [sum N, F], per graph."""
        return pair_norm(graph, scale=self.scale, mode=self.mode, epsilon=self.epsilon)


class Residual(nn.Module):
    """x + layer(x) on the node features of a graph layer.

    The wrapped layer maps a GraphsTuple to a GraphsTuple; its edges and globals
    are kept as it returns them. When the layer changes the node width, the
    input nodes pass through a bias-free linear projection (`projection`) to
    the new width first.

    Attributes:
      layer: the graph layer; its parameters live under `layer`.
    """

    layer: nn.Module

    @nn.compact
    def __call__(self, graph: jraph.GraphsTuple, *args, **kwargs) -> jraph.GraphsTuple:
        """Args: graph with nodes [sum N, F]; `args`, `kwargs` go to the layer.

        Returns:
          The layer's graph with nodes [sum N, F'] = layer nodes + (projected) input nodes.
        """
        check_graph_features(graph)
        out = self.layer(graph, *args, **kwargs)
        skip, new = graph.nodes, out.nodes
        if new.ndim != 2 or new.shape[0] != skip.shape[0]:
            raise ValueError(f"layer must return nodes [{skip.shape[0]}, F'], got {new.shape}")
        if new.shape[-1] != skip.shape[-1]:
            skip = nn.Dense(new.shape[-1], use_bias=False, name="projection")(skip)
        return out._replace(nodes=new + skip)
