"""Cluster-GCN on a graph too large for one dense adjacency: memory and time per epoch.

    python benchmarks/gnn_subgraphs.py                          # 200k nodes, 2 epochs
    python benchmarks/gnn_subgraphs.py --mode full              # whole-graph steps instead
    python benchmarks/gnn_subgraphs.py --nodes 20000 --epochs 3 # a quick look

Draws an SBM (`--blocks` equal blocks, expected `--degree-in` neighbours inside
a node's block and `--degree-out` outside it, node features N(signal e_block, I)),
labels `--train-share` of the nodes, and trains a 2-layer GCN (sparse: gather +
segment sum) with Adam:

- `--mode cluster` (Cluster-GCN): the nodes are cut into `--clusters` runs of a
  breadth-first order; each step trains on the subgraph induced by
  `--clusters-per-batch` random clusters, padded to one static shape.
- `--mode full`: each step is the whole graph (one step per epoch).

A dense float32 adjacency of 200k nodes would take 160 GB; the sparse full
graph fits, so `--mode full` is the comparison of what batching saves. Peak
RSS (ru_maxrss) is per process, so run each mode in its own process. Reported
(one line each, then a JSON summary): generation and partition times, peak RSS
after building the data and after training, wall time of every epoch (the
first includes compilation) and the test accuracy after the last epoch
(batchwise predictions in cluster mode, whole-graph in full mode).
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np

from nri_jax.gnn import datasets, fit, models, probes, subgraphs
from nri_jax.gnn.gcn import MultiLayerGCN


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("cluster", "full"), default="cluster")
    parser.add_argument("--nodes", type=int, default=200_000)
    parser.add_argument("--blocks", type=int, default=10)
    parser.add_argument("--degree-in", type=float, default=8.0)
    parser.add_argument("--degree-out", type=float, default=2.0)
    parser.add_argument("--features", type=int, default=32)
    parser.add_argument("--signal", type=float, default=1.0)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--train-share", type=float, default=0.1)
    parser.add_argument("--clusters", type=int, default=200)
    parser.add_argument("--clusters-per-batch", type=int, default=10)
    parser.add_argument("--partition", choices=subgraphs.PARTITIONS, default="bfs")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--learning-rate", type=float, default=1e-2)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def make_graph(key, args):
    """SBM graph, labels, training mask and CSR adjacency (host arrays)."""
    size = args.nodes // args.blocks
    p_in = args.degree_in / (size - 1)
    p_out = args.degree_out / (args.nodes - size)
    graph, labels = datasets.stochastic_block_model(
        key, [size] * args.blocks, p_in, p_out, n_features=args.features,
        feature_signal=args.signal)
    train = datasets.split_nodes(jax.random.fold_in(key, 1), labels,
                                 int(args.train_share * size))
    m = len(graph.senders) // 2
    pairs = np.stack([graph.senders[:m], graph.receivers[:m]], axis=1)
    return graph, labels, train, subgraphs.csr_adjacency(pairs, len(labels))


def node_loss(model, labels, train):
    """Mean cross-entropy over the batch's real training nodes."""
    labels, train = jnp.asarray(labels), jnp.asarray(train)

    def loss_fn(params, batch, key):
        graph, ids, mask = batch
        per_node = models.cross_entropy(model.apply(params, graph).nodes, labels[ids])
        return models.masked_mean(per_node, mask & train[ids])

    return loss_fn


def cluster_epochs(key, args, model, graph, labels, train, adjacency, log):
    """Cluster-GCN training; returns epoch times and the batchwise test accuracy."""
    start = time.perf_counter()
    clusters = subgraphs.partition_nodes(jax.random.fold_in(key, 2), adjacency, args.clusters,
                                         method=args.partition)
    kept = float(np.mean(clusters[graph.senders] == clusters[graph.receivers]))
    log(f"partition ({args.partition}): {time.perf_counter() - start:.2f} s, "
        f"{kept:.1%} of the edges inside a cluster")
    batches = lambda k: subgraphs.cluster_batches(  # noqa: E731 (a list per epoch)
        k, adjacency, graph.nodes, clusters, clusters_per_batch=args.clusters_per_batch)
    init, step = fit.make_train_step(node_loss(model, labels, train), args.learning_rate)
    params = model.init(jax.random.fold_in(key, 3), batches(key)[0].graph)
    opt_state, times = init(params), []
    for epoch in range(args.epochs):
        start = time.perf_counter()
        for batch in batches(jax.random.fold_in(key, 100 + epoch)):
            params, opt_state, loss = step(params, opt_state, tuple(batch), key)
        jax.block_until_ready(params)
        times.append(time.perf_counter() - start)
        log(f"epoch {epoch + 1}: {times[-1]:.2f} s, last batch loss {float(loss):.3f}, "
            f"{step._cache_size()} compiled step shape(s)")
    predict = jax.jit(lambda p, g: jnp.argmax(model.apply(p, g).nodes, -1))
    hits = total = 0
    for batch in batches(jax.random.fold_in(key, 999)):
        test = batch.mask & ~train[batch.node_ids]
        predicted = np.asarray(predict(params, batch.graph))
        hits += int(np.sum((predicted == labels[batch.node_ids]) & test))
        total += int(np.sum(test))
    return times, hits / total


def full_epochs(key, args, model, graph, labels, train, log):
    """Whole-graph steps; returns epoch times and the test accuracy."""
    full = jax.tree.map(jnp.asarray, graph)
    batch = (full, jnp.arange(len(labels), dtype=jnp.int32), jnp.ones(len(labels), bool))
    init, step = fit.make_train_step(node_loss(model, labels, train), args.learning_rate)
    params = model.init(jax.random.fold_in(key, 3), full)
    opt_state, times = init(params), []
    for epoch in range(args.epochs):
        start = time.perf_counter()
        params, opt_state, loss = step(params, opt_state, batch, key)
        jax.block_until_ready(params)
        times.append(time.perf_counter() - start)
        log(f"epoch {epoch + 1}: {times[-1]:.2f} s, loss {float(loss):.3f}")
    predicted = jnp.argmax(model.apply(params, full).nodes, -1)
    return times, float(probes.masked_accuracy(predicted, jnp.asarray(labels),
                                                jnp.asarray(~train)))


def main(argv=None) -> dict:
    args = parse_args(argv)
    log = lambda message: print(message, flush=True)  # noqa: E731
    key = jax.random.key(args.seed)
    start = time.perf_counter()
    graph, labels, train, adjacency = make_graph(key, args)
    n, e = len(labels), len(graph.senders)
    log(f"SBM: {n} nodes, {e // 2} edges, mean degree {e / n:.2f}, generated in "
        f"{time.perf_counter() - start:.2f} s; a dense float32 adjacency would be "
        f"{4 * n * n / 1e9:.0f} GB")
    rss_data = peak_rss_mb()
    log(f"peak RSS after building the data: {rss_data:.0f} MB")
    model = MultiLayerGCN((args.hidden, args.blocks))
    if args.mode == "cluster":
        times, accuracy = cluster_epochs(key, args, model, graph, labels, train, adjacency, log)
    else:
        times, accuracy = full_epochs(key, args, model, graph, labels, train, log)
    summary = {"mode": args.mode, "nodes": n, "edges": e // 2, "epochs": args.epochs,
               "epoch_seconds": [round(t, 3) for t in times],
               "test_accuracy": round(accuracy, 4), "peak_rss_mb_data": round(rss_data),
               "peak_rss_mb": round(peak_rss_mb()), "chance": round(1 / args.blocks, 4)}
    if args.mode == "cluster":
        summary.update(clusters=args.clusters, clusters_per_batch=args.clusters_per_batch,
                       partition=args.partition)
    log(f"test accuracy {accuracy:.3f} (chance {1 / args.blocks:.3f}); peak RSS "
        f"{summary['peak_rss_mb']} MB")
    log(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
