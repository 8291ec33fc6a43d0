"""Runs that start from another run's or export's parameters (`--init-from`,
`--init-parts`), and refuse parameters of another model before writing anything.

The source is the tiny trained run of `conftest.tiny_run` and its export.
"""

import jax
import numpy as np
import pytest

from nri_jax import configs, experiment


@pytest.mark.parametrize("source", ["trained", "exported"])
def test_init_from_starts_from_the_source_parameters(source, tiny_run, tiny_export, tmp_path):
    source_dir = tiny_run if source == "trained" else tiny_export[0]
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
def test_init_parts_loads_one_part_of_another_model(part, tiny_run, tmp_path):
    start = experiment.load_model(tiny_run)[2]["params"]
    other = "decoder" if part == "encoder" else "encoder"
    # The other part is wider than the source's: only `part` can be loaded.
    config = configs.override(configs.get_preset("tiny"), epochs=1, learning_rate=1e-30,
                              init_from=str(tiny_run), data_dir=str(tiny_run.parent / "data"),
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


def test_init_from_another_model_fails_before_any_file(tiny_run, tmp_path):
    config = configs.override(configs.get_preset("tiny"), epochs=1, decoder_hidden=32,
                              init_from=str(tiny_run), data_dir=str(tiny_run.parent / "data"))
    with pytest.raises(ValueError, match=r"decoder.*this model's has shape \(2, 32\)"):
        experiment.train_and_evaluate(config, tmp_path / "run", log=lambda _: None)
    assert not (tmp_path / "run").exists()
    config = configs.override(config, decoder_hidden=16, init_from=str(tmp_path / "none"))
    with pytest.raises(experiment.RunDirError, match="not a run directory"):
        experiment.train_and_evaluate(config, tmp_path / "run", log=lambda _: None)
    assert not (tmp_path / "run").exists()
