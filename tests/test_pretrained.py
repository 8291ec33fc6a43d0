"""Exporting a run (`experiment.export_run`) and loading its parameters.

The run is the tiny trained one of `conftest.tiny_run`; `test_init_from.py`
starts new runs from it.
"""

import json
import shutil

import jax
import numpy as np
import pytest

from nri_jax import checkpointing, experiment


def test_export_round_trip_keeps_the_report(tiny_run, tiny_export):
    source = json.loads((tiny_run / experiment.REPORT_JSON).read_text())
    out, report = tiny_export
    # float32 storage: the same parameters, so the same test report (same data, same keys).
    for key in ("edge_accuracy", "nll", "mse"):
        np.testing.assert_allclose(report[key], source[key], rtol=1e-5, err_msg=key)
    assert not (out / "checkpoints").exists()
    info = json.loads((out / experiment.EXPORT_FILE).read_text())
    assert info["dtype"] == "float32" and info["epoch"] == source["epoch"]
    # The exported directory evaluates by itself, its dataset regenerated from the config.
    again, _ = experiment.evaluate_run(out, out=out.parent / "again.json", log=lambda _: None)
    np.testing.assert_allclose(again["nll"], source["nll"], rtol=1e-5)


def test_export_half_precision_rounds_parameters_only(tiny_run, tmp_path):
    run = experiment.load_run(tiny_run)
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


def test_export_refuses_to_overwrite(tiny_run, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(experiment.RunDirError, match="not empty"):
        experiment.export_run(tiny_run, out, log=lambda _: None)
    assert (out / "notes.txt").read_text() == "keep me"


def test_damaged_export_is_named(tiny_export, tmp_path):
    out = shutil.copytree(tiny_export[0], tmp_path / "damaged")
    data = bytearray((out / experiment.PARAMS_FILE).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (out / experiment.PARAMS_FILE).write_bytes(bytes(data))
    with pytest.raises(checkpointing.CheckpointError, match="params.msgpack.*digest"):
        experiment.load_model(out)


def test_parameters_of_another_model_are_refused(tiny_export, tmp_path):
    out = shutil.copytree(tiny_export[0], tmp_path / "other")
    config = json.loads((out / experiment.CONFIG_FILE).read_text())
    config["model"]["encoder_hidden"] *= 2
    (out / experiment.CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(checkpointing.CheckpointError, match="shape"):
        experiment.load_model(out)


def test_load_model_reads_a_run_directorys_best_checkpoint(tiny_run):
    _, _, variables = experiment.load_model(tiny_run)
    run = experiment.load_run(tiny_run)
    expected = {"params": run.state.params, "batch_stats": run.state.batch_stats}
    assert jax.tree.structure(variables) == jax.tree.structure(expected)
    for got, want in zip(jax.tree.leaves(variables), jax.tree.leaves(expected)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
