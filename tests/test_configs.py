"""Tests of configs, presets and overrides."""

import dataclasses
import json
import pathlib

import pytest

from nri_jax import configs


@pytest.mark.parametrize("name", sorted(configs.PRESETS))
def test_presets_build_and_round_trip(name):
    config = configs.get_preset(name)
    assert configs.Config.from_dict(config.to_dict()) == config


def test_paper_presets_follow_the_reference():
    c = configs.get_preset("springs5")
    assert (c.data.n_train, c.data.n_valid, c.data.n_test) == (50_000, 10_000, 10_000)
    assert (c.train.epochs, c.train.batch_size, c.train.learning_rate) == (500, 128, 5e-4)
    assert (c.train.lr_decay_every, c.train.lr_decay_factor) == (200, 0.5)
    assert c.train.variance == 5e-5 and c.model.tau == 0.5 and c.train.prediction_steps == 10
    assert configs.get_preset("kuramoto10").train.variance == 1e-2
    assert configs.get_preset("charged10").data.n_objects == 10
    # The reference's RNN decoder: ground truth while step <= 49 - 10 (40 inputs),
    # the summed messages divided by the state dimension.
    assert c.train.burn_in_steps == len([s for s in range(48) if s <= 49 - 10])
    assert c.model.rnn_message_scale == "state_dims"


def test_field_names_are_unique_across_parts():
    names = [f.name for cls in (configs.DataConfig, configs.TrainConfig,
                                configs.ModelConfig) for f in dataclasses.fields(cls)]
    assert len(names) == len(set(names))


def test_override_replaces_and_validates():
    c = configs.override(configs.get_preset("tiny"), epochs=7, encoder="cnn", n_objects=3)
    assert (c.train.epochs, c.model.encoder, c.data.n_objects) == (7, "cnn", 3)
    with pytest.raises(ValueError, match="unknown config field"):
        configs.override(c, epochz=3)


@pytest.mark.parametrize("field, value", [
    ("n_train", 0), ("n_objects", 1), ("system", "pendulum"), ("epochs", -1),
    ("batch_size", 0), ("learning_rate", 0.0), ("variance", -1.0), ("prior", "laplace"),
    ("n_edge_types", 1), ("tau", 0.0), ("encoder", "transformer"), ("n_devices", 0),
    ("clip_grad_norm", 0.0), ("clip_grad_norm", -1.0), ("clip_grad_norm", float("inf")),
])
def test_invalid_values_fail_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        configs.override(configs.get_preset("tiny"), **{field: value})


def test_unknown_preset_lists_the_choices():
    with pytest.raises(ValueError, match="unknown preset 'nope'.*quick"):
        configs.get_preset("nope")


@pytest.mark.parametrize("preset, shipped", [("springs5-cpu", "springs5"),
                                             ("springs10-cpu", "springs10"),
                                             ("charged5-cpu", "charged5"),
                                             ("charged10-cpu", "charged10"),
                                             ("kuramoto5-cpu", "kuramoto5"),
                                             ("kuramoto10-cpu", "kuramoto10")])
def test_cpu_presets_are_the_shipped_models_settings(preset, shipped):
    """Each CPU preset is the exact config its shipped model was trained with (so its
    stated figure is that model's), the start model's path aside, resolved the same."""
    run = configs.PRETRAINED_DIR / shipped
    recorded = configs.Config.from_dict(json.loads((run / "config.json").read_text()))
    config = configs.get_preset(preset)
    starts = [c.train.init_from and pathlib.Path(c.train.init_from) for c in (config, recorded)]
    assert starts[0] == (starts[1] and configs.PRETRAINED_DIR.parent / starts[1])
    assert config.train.lr_schedule == "cosine"  # which does not read the step decay's fields
    unread = dict(init_from=None, lr_decay_every=1, lr_decay_factor=1.0)
    assert configs.override(config, **unread) == configs.override(recorded, **unread)
