"""Deep Graph Infomax (Velickovic et al. 2019): node embeddings without labels.

    H  = encoder(A, X)             [N, D], GCN layers with PReLU
    H~ = encoder(A, shuffle(X))    the corruption: node feature rows permuted
    s  = sigmoid(mean_i H_i)       [D], the graph summary
    D(h, s) = h^T W s              bilinear discriminator (logit)
    loss = BCE(D(H_i, s), 1) + BCE(D(H~_i, s), 0)   per node

The encoder must tell the real graph's nodes from those of a graph whose
features were moved to random nodes, against a summary of the real one: what
it keeps is what neighbourhoods share, e.g. their block in an SBM. For one
unpadded graph (the summary is a mean over all node rows).
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import jraph
import optax

from nri_jax.gnn.gcn import GCN


class InfomaxLogits(NamedTuple):
    """Discriminator logits of the real nodes [N] and the corrupted ones [N], and the
    real embeddings H [N, D]."""

    positive: jax.Array
    negative: jax.Array
    embeddings: jax.Array


def shuffle_rows(key: jax.Array, nodes: jax.Array) -> jax.Array:
    """DGI's corruption: the rows of nodes [N, F] in a random order."""
    return jax.random.permutation(key, nodes, axis=0)


class InfomaxEncoder(nn.Module):
    """GCN layers, each followed by a PReLU: nodes [N, F] -> [N, widths[-1]].

    Attributes:
      widths: the GCN layers' widths.
    """

    widths: Sequence[int] = (64,)

    @nn.compact
    def __call__(self, graph: jraph.GraphsTuple) -> jax.Array:
        for i, width in enumerate(self.widths):
            graph = GCN(width, name=f"gcn_{i}")(graph)
            graph = graph._replace(nodes=nn.PReLU(name=f"prelu_{i}")(graph.nodes))
        return graph.nodes


class DeepGraphInfomax(nn.Module):
    """The encoder and the bilinear discriminator.

    Attributes:
      widths: the encoder's GCN widths; D = widths[-1].
    """

    widths: Sequence[int] = (64,)

    def setup(self):
        self.encoder = InfomaxEncoder(self.widths)
        self.bilinear = self.param("bilinear", nn.initializers.glorot_uniform(),
                                   (self.widths[-1], self.widths[-1]))

    def embed(self, graph: jraph.GraphsTuple) -> jax.Array:
        """graph with nodes [N, F] -> H [N, D]."""
        return self.encoder(graph)

    def __call__(self, graph: jraph.GraphsTuple, corrupted_nodes: jax.Array) -> InfomaxLogits:
        """Args:
          graph: nodes [N, F].
          corrupted_nodes: [N, F], e.g. `shuffle_rows(key, graph.nodes)`.

        Returns:
          InfomaxLogits: positive [N], negative [N], embeddings [N, D].
        """
        if corrupted_nodes.shape != graph.nodes.shape:
            raise ValueError(f"corrupted_nodes must be {graph.nodes.shape} like graph.nodes, "
                             f"got {corrupted_nodes.shape}")
        real = self.encoder(graph)
        fake = self.encoder(graph._replace(nodes=corrupted_nodes))
        summary = jax.nn.sigmoid(jnp.mean(real, axis=0))
        scored = self.bilinear @ summary  # [D]: W s, shared by every node
        return InfomaxLogits(real @ scored, fake @ scored, real)


def infomax_losses(logits: InfomaxLogits) -> tuple[jax.Array, jax.Array]:
    """BCE per node: real nodes labelled 1 ([N]), corrupted ones 0 ([N])."""
    return (optax.sigmoid_binary_cross_entropy(logits.positive, jnp.ones_like(logits.positive)),
            optax.sigmoid_binary_cross_entropy(logits.negative,
                                               jnp.zeros_like(logits.negative)))
