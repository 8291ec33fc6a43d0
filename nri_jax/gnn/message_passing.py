"""Generic message passing: message, aggregate, update.

    m_k  = phi_m([v_sender(k), v_receiver(k), e_k])          one message per edge
    a_i  = agg_{k -> i} m_k                                  over i's incoming edges
    v'_i = phi_u([v_i, a_i])

with agg one of

    "sum"                sum_k m_k
    "mean"               sum_k m_k / (number of incoming edges)
    "max"                elementwise max_k m_k
    "softmax-attention"  sum_k alpha_k m_k, alpha = softmax over i's incoming
                         edges of a score s_k (learned from [v_s, v_r, e], or given)

A node with no incoming edge aggregates to 0 under every rule (jax's segment
max would give -inf, a softmax over nothing is undefined).

jraph's segment ops on JAX 0.10 (checked by the tests): segment_sum and
segment_mean are right, segment_max gives -inf at empty segments (its
`segment_max_or_constant` gives 0 and is used here), and segment_softmax gives
NaN for a receiver whose scores are all -inf (masked edges), so the softmax
here is written out with that case defined (all weights 0).

Padding (`jraph.pad_with_graphs`): real nodes receive from real edges only, so
no padding row reaches a real one; padding rows stay finite.
"""

from __future__ import annotations

from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import jraph
from jax import lax

from nri_jax import graphs
from nri_jax.gnn import padding
from nri_jax.gnn.graph_network import MLP, check_aggregation, check_graph_features, \
    check_widths, segment_reduce

AGGREGATIONS = ("sum", "mean", "max", "softmax-attention")


def segment_softmax(logits: jax.Array, segment_ids: jax.Array, num_segments: int) -> jax.Array:
    """Softmax of `logits` within each segment; a logit of -inf gets weight 0.

    Args:
      logits: [R] or [R, H] (H independent softmaxes, e.g. attention heads).
      segment_ids: int [R], the segment of each row, in [0, num_segments).
      num_segments: S, static.

    Returns:
      Weights of the shape of `logits`, summing to 1 over each segment that has
      a finite logit; a segment whose logits are all -inf gets weights 0 (not
      NaN, as `jraph.segment_softmax` gives), with finite gradients.
    """
    maxima = jraph.segment_max(logits, segment_ids, num_segments)
    # The shift only guards exp against overflow: it cancels, so no gradient flows through it.
    maxima = lax.stop_gradient(jnp.where(jnp.isfinite(maxima), maxima, 0))
    unnormalised = jnp.exp(logits - maxima[segment_ids])
    totals = jraph.segment_sum(unnormalised, segment_ids, num_segments)
    return unnormalised / jnp.where(totals > 0, totals, 1)[segment_ids]


def _check_messages(messages, receivers, how, scores) -> None:
    if messages.ndim < 2:
        raise ValueError(f"messages must be [E, ..., F] with one row per edge, "
                         f"got shape {messages.shape}")
    if receivers.shape != messages.shape[:1]:
        raise ValueError(f"receivers must be [{messages.shape[0]}] (one per message row), "
                         f"got shape {receivers.shape}")
    if how != "softmax-attention":
        if scores is not None:
            raise ValueError(f"scores are only read by how='softmax-attention', got how={how!r}")
    elif scores is None:
        raise ValueError("scores must be given for how='softmax-attention', got None")
    elif scores.ndim >= messages.ndim or scores.shape != messages.shape[:scores.ndim]:
        raise ValueError(f"scores must be [E] or a leading part of messages' shape "
                         f"{messages.shape[:-1]}, got shape {scores.shape}")


def aggregate(messages: jax.Array, receivers: jax.Array, n_nodes: int, how: str,
              scores: jax.Array | None = None) -> jax.Array:
    """Reduces the messages arriving at each node.

    Args:
      messages: [E, F] (or [E, H, F]), one row per edge.
      receivers: int [E], the node each message arrives at, in [0, n_nodes).
      n_nodes: N, static.
      how: "sum", "mean", "max" or "softmax-attention".
      scores: for "softmax-attention" only: [E] (or [E, H]) scores, softmaxed
        over each receiver's incoming edges; -inf excludes an edge.

    Returns:
      [N, F] (or [N, H, F]). A node with no incoming edge (or, for attention,
      none with a finite score) gets 0 under every rule.
    """
    check_aggregation("how", how, AGGREGATIONS)
    _check_messages(messages, receivers, how, scores)
    if how != "softmax-attention":
        return segment_reduce(messages, receivers, n_nodes, how)
    weights = segment_softmax(scores, receivers, n_nodes)
    weights = weights.reshape(weights.shape + (1,) * (messages.ndim - weights.ndim))
    return jraph.segment_sum(weights * messages, receivers, n_nodes)


class MessagePassing(nn.Module):
    """One round of message passing with MLP message and update functions.

    Attributes:
      message_widths: layer widths of phi_m (`message` MLP); the message width
        is the last.
      update_widths: layer widths of phi_u (`update` MLP); the new node width
        is the last.
      aggregation: "sum", "mean", "max" or "softmax-attention". Attention
        learns a linear score (`score`, a Dense to 1) of [v_s, v_r, e] unless
        scores are passed to the call.
      activation: between the layers of each MLP (not after the last).
    """

    message_widths: Sequence[int] = (64,)
    update_widths: Sequence[int] = (64,)
    aggregation: str = "sum"
    activation: Callable[[jax.Array], jax.Array] = nn.relu

    def __post_init__(self):
        check_widths("message_widths", self.message_widths)
        check_widths("update_widths", self.update_widths)
        check_aggregation("aggregation", self.aggregation, AGGREGATIONS)
        super().__post_init__()

    @nn.compact
    def __call__(self, graph: jraph.GraphsTuple,
                 scores: jax.Array | None = None) -> jraph.GraphsTuple:
        """Args:
          graph: nodes [sum N, F], edges [sum E, F_e] or None.
          scores: optional [sum E] edge scores for "softmax-attention" (e.g. edge
            logits, -inf to exclude an edge); learned when None.

        Returns:
          The graph with nodes [sum N, update_widths[-1]]; edges and globals
          unchanged.
        """
        check_graph_features(graph)
        nodes = jnp.asarray(graph.nodes)
        edges = None if graph.edges is None else jnp.asarray(graph.edges)
        inputs = graphs.node_to_edge(nodes, graph.senders, graph.receivers, edges, axis=0)
        messages = MLP(self.message_widths, self.activation, name="message")(inputs)
        if self.aggregation == "softmax-attention" and scores is None:
            scores = nn.Dense(1, name="score")(inputs)[:, 0]
        incoming = aggregate(messages, jnp.asarray(graph.receivers), padding.n_nodes(graph),
                             self.aggregation, scores)
        new_nodes = MLP(self.update_widths, self.activation, name="update")(
            jnp.concatenate([nodes, incoming], axis=-1))
        return graph._replace(nodes=new_nodes)
