"""Deep GCN stacks for measuring over-smoothing, and the embedding spread they keep.

Repeated propagation by D^-1/2 (A + I) D^-1/2 pulls the node features of a
connected graph towards its top eigenvector, so a deep plain GCN gives every
node nearly the same (degree-scaled) embedding (Li et al. 2018). `DeepGCN`
stacks `depth` GCN layers of one width, optionally each inside a residual
connection and followed by PairNorm (Zhao & Akoglu 2020), between a linear
input and a linear output layer, and `mean_pairwise_distance` measures how far
apart the final embeddings stay (Zhao & Akoglu's "row-diff").
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import jraph

from nri_jax.gnn.gcn import GCN
from nri_jax.gnn.norm import PairNorm, Residual


class DeepGCN(nn.Module):
    """Dense -> `depth` x [GCN + ReLU (+ residual) (+ PairNorm)] -> Dense.

    Attributes:
      depth: number of GCN layers, >= 1.
      width: their width.
      n_classes: C, the output width.
      pair_norm: PairNorm ("PN", scale 1) after every GCN layer.
      residual: each GCN layer inside `Residual` (v + relu(GCN(v))).
    """

    depth: int
    width: int
    n_classes: int
    pair_norm: bool = False
    residual: bool = False

    def __post_init__(self):
        if not isinstance(self.depth, int) or self.depth < 1:
            raise ValueError(f"depth must be a positive int, got {self.depth!r}")
        super().__post_init__()

    @nn.compact
    def __call__(self, graph: jraph.GraphsTuple) -> tuple[jax.Array, jax.Array]:
        """graph with nodes [N, F] -> (logits [N, n_classes], embeddings [N, width]),
        the embeddings being the last GCN block's output."""
        graph = graph._replace(nodes=nn.Dense(self.width, name="input")(graph.nodes))
        for i in range(self.depth):
            if self.residual:  # unbound (parent=None): Residual adopts it as `layer`
                layer = GCN(self.width, activation=nn.relu, parent=None)
                graph = Residual(layer, name=f"residual_{i}")(graph)
            else:
                graph = GCN(self.width, activation=nn.relu, name=f"gcn_{i}")(graph)
            if self.pair_norm:
                graph = PairNorm()(graph)
        return nn.Dense(self.n_classes, name="output")(graph.nodes), graph.nodes


@jax.jit
def mean_pairwise_distance(embeddings: jax.Array) -> jax.Array:
    """Mean Euclidean distance over all ordered pairs i != j of rows: [N, F] -> scalar.

    Formed from the N x N Gram matrix: for the examples' few thousand nodes.
    """
    n = embeddings.shape[0]
    squared = jnp.sum(embeddings * embeddings, axis=-1)
    gram = embeddings @ embeddings.T
    d2 = jnp.maximum(squared[:, None] + squared[None, :] - 2 * gram, 0)
    off = ~jnp.eye(n, dtype=bool)
    # sqrt has an infinite slope at 0: keep the diagonal (and exact ties) away from it.
    distances = jnp.where(off & (d2 > 0), jnp.sqrt(jnp.where(d2 > 0, d2, 1)), 0)
    return jnp.sum(distances) / max(n * (n - 1), 1)


def relative_pairwise_distance(embeddings: jax.Array) -> jax.Array:
    """`mean_pairwise_distance` over the mean row norm: scale-free, 0 when every row is
    the same, scalar."""
    norms = jnp.mean(jnp.linalg.norm(embeddings, axis=-1))
    return mean_pairwise_distance(embeddings) / jnp.maximum(norms, 1e-12)
