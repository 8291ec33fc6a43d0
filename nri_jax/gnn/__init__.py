"""A graph-network vocabulary on `jraph.GraphsTuple`: layers, readouts, pooling, norms.

Every layer takes a (possibly padded, `jraph.pad_with_graphs`) `GraphsTuple` and
returns one; padded nodes, edges and graphs never change a real one's result.
One module per idea:

    padding.py         masks and node -> graph indices of padded graphs
    message_passing.py the generic message / aggregate / update layer
    gcn.py             graph convolution (self-loops, symmetric normalisation)
    gat.py             multi-head graph attention; attention on a fully connected graph
    rgcn.py            relational GCN: K edge types, basis decomposition; typed
                       message MLPs (the message layer of NRI's decoders)
    graph_network.py   graph network block (edge, node, global updates), interaction network
    ecc.py             edge-conditioned convolution
    readout.py         node, edge and graph readouts (sum, mean, max, gated sum)
    norm.py            PairNorm and residual wrappers
    diffpool.py        hierarchical pooling (DiffPool)

Worked examples on graphs made without downloads (notebooks/04_gnn_toolkit.ipynb):

    datasets.py        stochastic block models, Erdos-Renyi, rings of cliques, graph
                       families for graph classification, edge and node splits
    models.py          node (GAT) and graph (readout, DiffPool) classifiers; per-example loss
    fit.py             full-batch Adam in one lax.scan; a jitted mini-batch step
    autoencoder.py     graph autoencoder (link prediction), AUC, average precision,
                       degree baseline
    infomax.py         Deep Graph Infomax (row-shuffle corruption, bilinear discriminator)
    probes.py          nearest-centroid probe of frozen embeddings
    oversmoothing.py   deep GCN stacks (PairNorm, residual), mean pairwise distance
    subgraphs.py       Cluster-GCN: node partitions, induced-subgraph batches
"""
