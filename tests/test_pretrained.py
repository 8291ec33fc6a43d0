"""The shipped models (`pretrained/<name>`) and the export that makes them.

Each shipped model must recover the graphs of trajectories it has never seen,
drawn here with a key that no split of its training data used, within a few
points of the accuracy its report states.
"""

import json
import pathlib
import shutil

import jax
import numpy as np
import pytest

from nri_jax import checkpointing, configs, experiment, metrics
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


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny trained run (it learns little; the export must keep what it has)."""
    workdir = tmp_path_factory.mktemp("export") / "run"
    config = configs.override(configs.get_preset("tiny"), epochs=1,
                              data_dir=str(workdir.parent / "data"))
    experiment.train_and_evaluate(config, workdir, log=lambda _: None)
    return workdir


@pytest.fixture(scope="module")
def exported(trained):
    """`trained` exported with float32 storage, and its report."""
    out = trained.parent / "exported"
    return out, experiment.export_run(trained, out, dtype="float32", log=lambda _: None)


def test_export_round_trip_keeps_the_report(trained, exported):
    source = json.loads((trained / experiment.REPORT_JSON).read_text())
    out, report = exported
    # float32 storage: the same parameters, so the same test report (same data, same keys).
    for key in ("edge_accuracy", "nll", "mse"):
        np.testing.assert_allclose(report[key], source[key], rtol=1e-5, err_msg=key)
    assert not (out / "checkpoints").exists()
    info = json.loads((out / experiment.EXPORT_FILE).read_text())
    assert info["dtype"] == "float32" and info["epoch"] == source["epoch"]
    # The exported directory evaluates by itself, its dataset regenerated from the config.
    again, _ = experiment.evaluate_run(out, out=out.parent / "again.json", log=lambda _: None)
    np.testing.assert_allclose(again["nll"], source["nll"], rtol=1e-5)


def test_export_half_precision_rounds_parameters_only(trained, tmp_path):
    run = experiment.load_run(trained)
    variables = {"params": run.state.params, "batch_stats": run.state.batch_stats}
    info = checkpointing.save_variables(tmp_path / "half.msgpack", variables, dtype="float16")
    half = checkpointing.load_variables(tmp_path / "half.msgpack", variables,
                                        sha256=info["sha256"])
    for full, back in zip(jax.tree.leaves(variables["params"]), jax.tree.leaves(half["params"])):
        full = np.asarray(full)
        assert back.dtype == full.dtype
        np.testing.assert_array_equal(back, full.astype(np.float16).astype(full.dtype))
    for full, kept in zip(jax.tree.leaves(variables["batch_stats"]),
                          jax.tree.leaves(half["batch_stats"])):
        np.testing.assert_array_equal(kept, np.asarray(full))


def test_export_refuses_to_overwrite(trained, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(experiment.RunDirError, match="not empty"):
        experiment.export_run(trained, out, log=lambda _: None)
    assert (out / "notes.txt").read_text() == "keep me"


def test_damaged_export_is_named(exported, tmp_path):
    out = shutil.copytree(exported[0], tmp_path / "damaged")
    data = bytearray((out / experiment.PARAMS_FILE).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (out / experiment.PARAMS_FILE).write_bytes(bytes(data))
    with pytest.raises(checkpointing.CheckpointError, match="params.msgpack.*digest"):
        experiment.load_model(out)


def test_parameters_of_another_model_are_refused(exported, tmp_path):
    out = shutil.copytree(exported[0], tmp_path / "other")
    config = json.loads((out / experiment.CONFIG_FILE).read_text())
    config["model"]["encoder_hidden"] *= 2
    (out / experiment.CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(checkpointing.CheckpointError, match="shape"):
        experiment.load_model(out)


def test_load_model_reads_a_run_directorys_best_checkpoint(trained):
    _, _, variables = experiment.load_model(trained)
    run = experiment.load_run(trained)
    expected = {"params": run.state.params, "batch_stats": run.state.batch_stats}
    assert jax.tree.structure(variables) == jax.tree.structure(expected)
    for got, want in zip(jax.tree.leaves(variables), jax.tree.leaves(expected)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


@pytest.mark.parametrize("source", ["trained", "exported"])
def test_init_from_starts_from_the_source_parameters(source, trained, exported, tmp_path):
    source_dir = trained if source == "trained" else exported[0]
    start = experiment.load_model(source_dir)[2]["params"]
    # Another object count (the encoder and decoder do not depend on it) and a learning
    # rate so small that one epoch of Adam moves no float32 parameter: what the run
    # ends with is what it started from.
    base = configs.override(configs.get_preset("tiny"), epochs=1, n_objects=4,
                            learning_rate=1e-30, data_dir=str(tmp_path / "data"))
    ends = {}
    for name, init_from in (("init", str(source_dir)), ("random", None)):
        config = configs.override(base, init_from=init_from)
        experiment.train_and_evaluate(config, tmp_path / name, log=lambda _: None)
        ends[name] = experiment.load_model(tmp_path / name)[2]["params"]
    for want, got, random in zip(jax.tree.leaves(start), jax.tree.leaves(ends["init"]),
                                 jax.tree.leaves(ends["random"])):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-30)
    assert not all(np.allclose(a, b) for a, b in zip(jax.tree.leaves(start),
                                                     jax.tree.leaves(ends["random"])))


@pytest.mark.parametrize("part", ["encoder", "decoder"])
def test_init_parts_loads_one_part_of_another_model(part, trained, tmp_path):
    start = experiment.load_model(trained)[2]["params"]
    other = "decoder" if part == "encoder" else "encoder"
    # The other part is wider than the source's: only `part` can be loaded.
    config = configs.override(configs.get_preset("tiny"), epochs=1, learning_rate=1e-30,
                              init_from=str(trained), data_dir=str(trained.parent / "data"),
                              **{f"{other}_hidden": 32})
    with pytest.raises(ValueError, match=f"{other}.*must have the same encoder, decoder"):
        experiment.train_and_evaluate(config, tmp_path / "all", log=lambda _: None)
    config = configs.override(config, init_parts=part)
    experiment.train_and_evaluate(config, tmp_path / "run", log=lambda _: None)
    end = experiment.load_model(tmp_path / "run")[2]["params"]
    for want, got in zip(jax.tree.leaves(start[part]), jax.tree.leaves(end[part])):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6, atol=1e-30)
    assert {a.shape for a in jax.tree.leaves(end[other])} != {
        a.shape for a in jax.tree.leaves(start[other])}


def test_init_from_another_model_fails_before_any_file(trained, tmp_path):
    config = configs.override(configs.get_preset("tiny"), epochs=1, decoder_hidden=32,
                              init_from=str(trained), data_dir=str(trained.parent / "data"))
    with pytest.raises(ValueError, match=r"decoder.*this model's has shape \(2, 32\)"):
        experiment.train_and_evaluate(config, tmp_path / "run", log=lambda _: None)
    assert not (tmp_path / "run").exists()
    config = configs.override(config, decoder_hidden=16, init_from=str(tmp_path / "none"))
    with pytest.raises(experiment.RunDirError, match="not a run directory"):
        experiment.train_and_evaluate(config, tmp_path / "run", log=lambda _: None)
    assert not (tmp_path / "run").exists()
