"""Matplotlib figures of graphs, trajectories and training curves.

Every function takes host arrays and returns a `matplotlib.figure.Figure`; the
caller decides whether to show or save it. Edge order everywhere is the
library's: row-major off-diagonal entries of the [N, N] matrix, receiver = row.
"""

from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np


def edges_to_matrix(values: np.ndarray, n_objects: int) -> np.ndarray:
    """[E] per-edge values -> [N, N] matrix (receiver = row), NaN on the diagonal."""
    matrix = np.full((n_objects, n_objects), np.nan)
    matrix[~np.eye(n_objects, dtype=bool)] = values
    return matrix


def graph_comparison(true_labels: np.ndarray, edge_probs: np.ndarray, *,
                     titles: Sequence[str] | None = None):
    """Adjacency heatmaps: true graph above, inferred P(edge type != 0) below.

    Args:
      true_labels: [B, E] integer edge types of B examples.
      edge_probs: [B, E, K] inferred edge-type probabilities.
    """
    n_examples, n_edges = true_labels.shape
    n_objects = int(round((1 + np.sqrt(1 + 4 * n_edges)) / 2))
    fig, axes = plt.subplots(2, n_examples, figsize=(2.6 * n_examples, 5.2), squeeze=False)
    for b in range(n_examples):
        rows = ((true_labels[b] > 0).astype(float), 1.0 - edge_probs[b, :, 0])
        for r, (values, name) in enumerate(zip(rows, ("true", "inferred P(edge)"))):
            ax = axes[r, b]
            image = ax.imshow(edges_to_matrix(values, n_objects), vmin=0, vmax=1, cmap="Blues")
            ax.set_title(f"{titles[b] if titles else f'example {b}'}: {name}", fontsize=8)
            ax.set_xlabel("sender")
            ax.set_ylabel("receiver")
            ax.set_xticks(range(n_objects))
            ax.set_yticks(range(n_objects))
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.6, label="edge")
    return fig


def trajectories(true: np.ndarray, predicted: np.ndarray | None = None, *,
                 labels: np.ndarray | None = None, title: str = "trajectories"):
    """Object paths in the plane, optionally with predictions and the true graph.

    Args:
      true: [N, T, D] ground truth, the first two features are (x, y).
      predicted: [N, T', D] predictions of frames 1..T' (dashed), or None.
      labels: [E] edge types; edges with type != 0 are drawn between the
        objects' first positions.
    """
    n_objects = true.shape[0]
    fig, ax = plt.subplots(figsize=(5, 5))
    colors = plt.cm.tab10(np.arange(n_objects) % 10)
    if labels is not None:
        adjacency = edges_to_matrix(labels.astype(float), n_objects)
        for i in range(n_objects):
            for j in range(i + 1, n_objects):
                if adjacency[i, j] > 0 or adjacency[j, i] > 0:
                    ax.plot(*zip(true[i, 0, :2], true[j, 0, :2]), color="grey", lw=0.8,
                            alpha=0.6)
    for i in range(n_objects):
        ax.plot(true[i, :, 0], true[i, :, 1], color=colors[i], label=f"object {i}")
        ax.scatter(true[i, 0, 0], true[i, 0, 1], color=colors[i], s=20)
        if predicted is not None:
            ax.plot(predicted[i, :, 0], predicted[i, :, 1], color=colors[i], ls="--")
    ax.set_title(title + ("  (solid: true, dashed: predicted)" if predicted is not None else ""),
                 fontsize=9)
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_aspect("equal", adjustable="datalim")
    ax.legend(fontsize=7, loc="best")
    return fig


def training_curves(records: Sequence[dict]):
    """Loss terms and edge accuracy per epoch from metrics.jsonl records (the terms the
    run's method reports: NLL and KL, or the supervised encoder's cross-entropy)."""
    epochs = [r["epoch"] + 1 for r in records]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    first = records[0]
    for split, style in (("train", "-"), ("valid", "--")):
        for key, name in (("nll", "NLL"), ("cross_entropy", "cross-entropy")):
            if key in first[split]:
                ax_loss.plot(epochs, [r[split][key] for r in records], style,
                             label=f"{split} {name}")
        if "edge_accuracy_best_permutation" in first[split]:
            ax_acc.plot(epochs, [r[split]["edge_accuracy_best_permutation"] for r in records],
                        style, label=f"{split} (best permutation)")
    if "kl" in first["train"]:
        ax_loss.plot(epochs, [r["train"]["kl"] for r in records], ":", label="train KL")
    ax_loss.set_yscale("symlog")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("per-object loss")
    ax_loss.set_title("losses")
    ax_loss.legend()
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("edge accuracy")
    ax_acc.set_ylim(0, 1.02)
    ax_acc.set_title("edge recovery")
    ax_acc.legend()
    fig.tight_layout()
    return fig


def mse_by_horizon(mse: Sequence[float], *, label: str = "NRI"):
    """Open-loop prediction MSE against the prediction horizon (log scale)."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.semilogy(np.arange(1, len(mse) + 1), mse, marker="o", ms=3, label=label)
    ax.set_xlabel("prediction horizon (frames)")
    ax.set_ylabel("MSE (normalised units)")
    ax.set_title("open-loop prediction error")
    ax.legend()
    fig.tight_layout()
    return fig


def graph_on_positions(positions: np.ndarray, edge_values: np.ndarray, *, ax=None,
                       title: str = "interaction graph", threshold: float = 0.05,
                       color: str = "black"):
    """A directed graph drawn over the objects: one arrow sender -> receiver per edge.

    Each arrow's opacity is the edge's value (e.g. a 0/1 label or the inferred
    P(edge type != 0)); edges below `threshold` are not drawn. Arrows are
    slightly curved, so that i -> j and j -> i stay apart.

    Args:
      positions: [N, 2] where to draw the objects.
      edge_values: [E] values in [0, 1], E = N(N-1) in the library's edge order.
      ax: axes to draw into; None makes a new figure.
      title: the axes title.
      threshold: smallest value drawn.
      color: arrow colour.

    Returns:
      The figure holding the axes. Every arrow has gid "sender->receiver".
    """
    from matplotlib.patches import FancyArrowPatch

    n_objects = positions.shape[0]
    if edge_values.shape != (n_objects * (n_objects - 1),):
        raise ValueError(f"edge_values must be [E] = [{n_objects * (n_objects - 1)}] for "
                         f"{n_objects} objects, got shape {edge_values.shape}")
    if ax is None:
        _, ax = plt.subplots(figsize=(4, 4))
    matrix = edges_to_matrix(np.clip(edge_values, 0.0, 1.0), n_objects)
    for receiver, sender in zip(*np.nonzero(~np.eye(n_objects, dtype=bool))):
        value = matrix[receiver, sender]
        if value < threshold:
            continue
        arrow = FancyArrowPatch(positions[sender], positions[receiver], arrowstyle="-|>",
                                mutation_scale=10, connectionstyle="arc3,rad=0.12",
                                color=color, alpha=float(value), lw=1.2, shrinkA=6, shrinkB=6)
        arrow.set_gid(f"{sender}->{receiver}")
        ax.add_patch(arrow)
    colors = plt.cm.tab10(np.arange(n_objects) % 10)
    ax.scatter(positions[:, 0], positions[:, 1], c=colors, s=60, zorder=3)
    for i, (x, y) in enumerate(positions[:, :2]):
        ax.annotate(str(i), (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_aspect("equal", adjustable="datalim")
    return ax.figure


def energy_over_time(times: np.ndarray, kinetic: np.ndarray, potential: np.ndarray, *,
                     title: str = "energy"):
    """Kinetic, potential and total energy per frame, and the total's relative drift.

    Args:
      times: [T] frame times.
      kinetic, potential: [T] energies (e.g. `analysis.springs_energy`).
    """
    total = kinetic + potential
    fig, (ax_energy, ax_drift) = plt.subplots(1, 2, figsize=(10, 3.5))
    for values, name in ((kinetic, "kinetic"), (potential, "potential"), (total, "total")):
        ax_energy.plot(times, values, label=name)
    ax_energy.set_xlabel("time")
    ax_energy.set_ylabel("energy")
    ax_energy.set_title(title)
    ax_energy.legend()
    ax_drift.plot(times, (total - total[0]) / total[0], label="(E(t) - E(0)) / E(0)")
    ax_drift.set_xlabel("time")
    ax_drift.set_ylabel("relative change")
    ax_drift.set_title("total energy drift")
    ax_drift.legend()
    fig.tight_layout()
    return fig


def phases(times: np.ndarray, phase: np.ndarray, *, title: str = "Kuramoto oscillators"):
    """Unwrapped phases and sin(phase) of N oscillators over time.

    Args:
      times: [T] frame times.
      phase: [T, N] phases (radians).
    """
    fig, (ax_phase, ax_sin) = plt.subplots(1, 2, figsize=(10, 3.5))
    for i in range(phase.shape[1]):
        ax_phase.plot(times, phase[:, i], label=f"object {i}")
        ax_sin.plot(times, np.sin(phase[:, i]), label=f"object {i}")
    ax_phase.set_xlabel("time")
    ax_phase.set_ylabel("phase (rad, unwrapped)")
    ax_phase.set_title(f"{title}: phase")
    ax_phase.legend(fontsize=7)
    ax_sin.set_xlabel("time")
    ax_sin.set_ylabel("sin(phase)")
    ax_sin.set_title(f"{title}: sin(phase)")
    ax_sin.legend(fontsize=7)
    fig.tight_layout()
    return fig


def edge_type_probabilities(edge_probs: np.ndarray, labels: np.ndarray, *,
                            title: str = "edge-type probabilities"):
    """Stacked bars of q(z = k) for every edge, with the true type marked.

    Args:
      edge_probs: [E, K] probabilities of one example.
      labels: [E] true edge types.
    """
    n_edges, n_types = edge_probs.shape
    n_objects = int(round((1 + np.sqrt(1 + 4 * n_edges)) / 2))
    receivers, senders = np.nonzero(~np.eye(n_objects, dtype=bool))
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * n_edges), 3.5))
    bottom = np.zeros(n_edges)
    for k in range(n_types):
        ax.bar(np.arange(n_edges), edge_probs[:, k], bottom=bottom, label=f"q(type {k})")
        bottom += edge_probs[:, k]
    ax.scatter(np.arange(n_edges), labels / max(n_types - 1, 1), marker="x", color="black",
               zorder=3, label="true type / (K-1)")
    ax.set_xticks(np.arange(n_edges))
    ax.set_xticklabels([f"{s}->{r}" for r, s in zip(receivers, senders)], rotation=90,
                       fontsize=7)
    ax.set_xlabel("edge (sender->receiver)")
    ax.set_ylabel("probability")
    ax.set_ylim(0, 1.05)
    ax.set_title(title)
    ax.legend(fontsize=7, loc="upper right", bbox_to_anchor=(1.0, -0.3), ncol=n_types + 1)
    fig.tight_layout()
    return fig


def accuracy_by_confidence(calibration, *, title: str = "edge accuracy by confidence"):
    """Accuracy per confidence bin, against the bin's mean confidence.

    Args:
      calibration: an `analysis.Calibration` (bin_edges, count, confidence, accuracy).
    """
    bounds = np.asarray(calibration.bin_edges)
    centres, widths = (bounds[1:] + bounds[:-1]) / 2, np.diff(bounds)
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.bar(centres, np.nan_to_num(np.asarray(calibration.accuracy)), width=0.9 * widths,
           color="C0", alpha=0.7, label="accuracy")
    ax.plot(centres, np.asarray(calibration.confidence), "o--", color="C1",
            label="mean confidence (= accuracy if calibrated)")
    for x, n in zip(centres, np.asarray(calibration.count)):
        ax.annotate(f"n={int(n)}", (x, 0.02), ha="center", fontsize=7, color="white"
                    if n else "grey")
    ax.set_xlabel("confidence max_k q(z = k)")
    ax.set_ylabel("fraction of edges correct")
    ax.set_ylim(0, 1.05)
    ax.set_title(title)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return fig
