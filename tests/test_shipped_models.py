"""The shipped models (`pretrained/<name>`) recover unseen graphs.

Each shipped model must recover the graphs of trajectories it has never seen,
drawn here with a key that no split of its training data used, within a few
points of the accuracy its report states.
"""

import json
import pathlib

import jax
import numpy as np
import pytest

from nri_jax import experiment, metrics
from nri_jax.model import NRI
from simulators import datasets

ROOT = pathlib.Path(__file__).resolve().parent.parent
SHIPPED = sorted(p.name for p in (ROOT / "pretrained").glob("*")
                 if (p / experiment.EXPORT_FILE).is_file())
N_FRESH = 100  # trajectories per model: 1000-9000 edges
MARGIN = 0.04  # below the stated accuracy; the sampling error of N_FRESH graphs is ~0.01


def fresh_accuracy(run_dir: pathlib.Path, n_sims: int) -> float:
    """Best-permutation edge accuracy of an exported model on newly drawn trajectories."""
    config, model, variables = experiment.load_model(run_dir)
    data_info = json.loads((run_dir / experiment.DATA_FILE).read_text())
    system, n_objects = config.data.system, config.data.n_objects
    arrays = datasets.generate_split(jax.random.key(20261202), system, n_sims=n_sims,
                                     n_objects=n_objects,
                                     n_frames=data_info["n_encoder_frames"])
    stats = datasets.stats_from_dict(data_info["stats"])
    x = datasets.model_features({k: v for k, v in arrays.items() if k != "edges"}, stats)
    labels = datasets.labels_from_edges(system, arrays["edges"],
                                        n_edge_types=config.model.n_edge_types)
    logits = jax.jit(lambda v, x: model.apply(v, x, train=False, method=NRI.encode))(
        variables, x)
    confusion = metrics.edge_confusion(logits, labels, n_types=config.model.n_edge_types)
    return metrics.best_permutation_accuracy(np.asarray(confusion).sum(0))[0]  # over graphs


def test_every_benchmark_directory_is_an_exported_run():
    # A directory without export.json would be skipped silently by the test below.
    for path in (ROOT / "pretrained").glob("*"):
        if path.is_dir():
            assert (path / experiment.EXPORT_FILE).is_file(), path


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_recovers_unseen_graphs(name):
    run_dir = ROOT / "pretrained" / name
    stated = json.loads((run_dir / experiment.REPORT_JSON).read_text())
    accuracy = fresh_accuracy(run_dir, N_FRESH)
    assert accuracy >= stated["edge_accuracy_best_permutation"] - MARGIN, (name, accuracy)
