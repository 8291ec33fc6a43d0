"""End-to-end runs of the experiment shell on the tiny preset: train, resume, evaluate."""

import json
import shutil

import jax
import numpy as np
import pytest

import evaluate
import train
from nri_jax import configs, experiment
from simulators import datasets, formats

pytestmark = pytest.mark.e2e


class Interrupt(Exception):
    pass


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny preset (3 epochs) and one uninterrupted run of it."""
    root = tmp_path_factory.mktemp("tiny")
    config = configs.override(configs.get_preset("tiny"), epochs=3,
                              data_dir=str(root / "data"))
    report = experiment.train_and_evaluate(config, root / "run", log=lambda _: None)
    return config, root, report


def _params(run_dir, checkpoint):
    run = experiment.load_run(run_dir, checkpoint=checkpoint)
    return jax.device_get(run.state.params), run.epoch


def test_run_directory_is_complete(tiny):
    _, root, report = tiny
    run = root / "run"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1, 2]
    for r in records:
        assert np.isfinite(r["train"]["loss"]) and np.isfinite(r["valid"]["nll"])
        assert 0.0 <= r["valid"]["edge_accuracy"] <= 1.0
    for key in ("edge_accuracy", "edge_accuracy_best_permutation", "nll", "mse_by_horizon"):
        assert key in report
    assert len(report["mse_by_horizon"]) == 20
    assert report["edge_accuracy_best_permutation"] >= report["edge_accuracy"]
    assert json.loads((run / "report.json").read_text()) == report
    assert (run / "report.md").read_text().startswith("| metric")
    assert json.loads((run / "config.json").read_text())["train"]["epochs"] == 3


def test_killed_and_resumed_run_matches_uninterrupted(tiny):
    config, root, report = tiny

    def interrupt_in_epoch_2(line):  # raised before epoch 2 is checkpointed
        if line.startswith("epoch 2/"):
            raise Interrupt

    with pytest.raises(Interrupt):
        experiment.train_and_evaluate(config, root / "resumed", log=interrupt_in_epoch_2)
    assert not (root / "resumed" / "report.json").exists()
    resumed = experiment.train_and_evaluate(config, root / "resumed", resume=True,
                                            log=lambda _: None)
    assert resumed == report
    for checkpoint in ("latest", "best"):
        (a, epoch_a), (b, epoch_b) = _params(root / "run", checkpoint), \
            _params(root / "resumed", checkpoint)
        assert epoch_a == epoch_b
        jax.tree.map(np.testing.assert_array_equal, a, b)
    lines = (root / "resumed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [0, 1, 2]


def test_refuses_to_overwrite_a_run(tiny):
    config, root, _ = tiny
    before = (root / "run" / "metrics.jsonl").read_text()
    with pytest.raises(experiment.RunDirError, match="not empty"):
        experiment.train_and_evaluate(config, root / "run", log=lambda _: None)
    other = configs.override(config, learning_rate=1.0)
    with pytest.raises(experiment.RunDirError, match="config differs"):
        experiment.train_and_evaluate(other, root / "run", resume=True, log=lambda _: None)
    assert (root / "run" / "metrics.jsonl").read_text() == before


def test_evaluate_cli_on_reference_layout_matches_native(tiny, tmp_path):
    _, root, report = tiny
    raw = formats.read_dataset(root / "data")
    formats.write_dataset(tmp_path / "ref", raw.splits, raw.metadata, format="reference")
    (tmp_path / "ref" / "metadata.json").unlink()  # the original code writes none
    assert evaluate.main([str(root / "run"), "--out", str(tmp_path / "native.json")]) == 0
    assert evaluate.main([str(root / "run"), "--data", str(tmp_path / "ref"),
                          "--out", str(tmp_path / "ref.json")]) == 0
    native = json.loads((tmp_path / "native.json").read_text())
    assert native == report
    assert json.loads((tmp_path / "ref.json").read_text()) == native


def test_another_dataset_is_normalised_with_the_runs_statistics(tiny, tmp_path):
    """`--data` with a different training split: the test split is normalised with
    the run's training extremes, so an unchanged test split gives the same report."""
    _, root, report = tiny
    raw = formats.read_dataset(root / "data")
    splits = {name: dict(arrays) for name, arrays in raw.splits.items()}
    splits["train"]["loc"] = 3.0 * splits["train"]["loc"]  # other extremes
    splits["train"]["vel"] = 0.5 * splits["train"]["vel"]
    formats.write_dataset(tmp_path / "other", splits, raw.metadata, format="reference")
    run = experiment.load_run(root / "run", data_dir=tmp_path / "other")
    # Independent NumPy float64: extremes of the run's own training split, [S, T, N, 2] -> [S, N, T, 4].
    train, test = raw.splits["train"], raw.splits["test"]
    scaled = [2 * (test[q] - train[q].min()) / (train[q].max() - train[q].min()) - 1
              for q in ("loc", "vel")]
    expected = np.concatenate(scaled, axis=-1).transpose(0, 2, 1, 3)
    # float32 storage of values in about [-1, 1]: a few float32 ulps.
    np.testing.assert_allclose(np.asarray(run.splits["test"].features), expected,
                               rtol=0, atol=1e-6)
    again, _ = experiment.evaluate_run(root / "run", data_dir=tmp_path / "other",
                                       out=tmp_path / "r.json", log=lambda _: None)
    assert again == report


def _recorded_epochs(run, epochs, record) -> list[list]:
    """Runs the real epoch loop with a step that only calls `record(split, indices, key)`;
    returns each epoch's records."""
    out = []

    def recording_step(state, split, indices, key):
        out[-1].append(record(split, np.asarray(indices), key))
        sums = {"count": np.float32(len(indices)), "nonfinite_steps": np.int32(0),
                "first_nonfinite_step": np.int32(2 ** 31 - 1),
                "confusion": np.eye(2, dtype=np.float32)}
        return state, sums

    for epoch in epochs:
        out.append([])
        experiment._train_epoch(run, recording_step, epoch)
    return out


def test_every_epoch_shuffles_with_its_own_key(tiny):
    """The epoch loop hands `shuffled_batches` and the steps a fresh key per epoch,
    and the same epoch of a resumed run the same key (one permutation per epoch)."""
    config, root, _ = tiny
    run = experiment.load_run(root / "run", splits=("train",))
    records = _recorded_epochs(run, (0, 1, 0), lambda split, indices, key: (
        np.asarray(indices), np.asarray(jax.random.key_data(key))))
    (order_0, keys_0), (order_1, keys_1), (again, keys_again) = (
        (np.concatenate([i for i, _ in r]), np.stack([k for _, k in r])) for r in records)
    n = run.steps_per_epoch * config.train.batch_size
    for order in (order_0, order_1):  # each epoch: distinct training examples
        assert len(set(order.tolist())) == n
        assert order.min() >= 0 and order.max() < run.sizes["train"]
    assert not np.array_equal(order_0, order_1)
    assert len({k.tobytes() for k in np.concatenate([keys_0, keys_1])}) == 2 * len(keys_0)
    np.testing.assert_array_equal(order_0, again)
    np.testing.assert_array_equal(keys_0, keys_again)


def test_seeds_reach_the_data_and_the_initial_state(tiny, tmp_path):
    """`data_seed` picks the generated trajectories and `seed` the initial parameters;
    the same seed gives the same values."""
    config, root, _ = tiny
    dataset, _ = experiment.load_data(config.data)
    other, _ = experiment.load_data(
        configs.override(config, data_seed=config.data.data_seed + 1,
                         data_dir=str(tmp_path / "data")).data)
    assert not np.array_equal(np.asarray(dataset.test.features[:4]),
                              np.asarray(other.test.features[:4]))

    def initial_params(seed, name):
        run = experiment.Run(configs.override(config, seed=seed), dataset, tmp_path / name,
                             dataset.train.features.shape[2], splits=("train",))
        return jax.device_get(run.state.params)

    first, again, changed = (initial_params(s, n) for s, n in ((0, "a"), (0, "b"), (1, "c")))
    jax.tree.map(np.testing.assert_array_equal, first, again)
    assert not np.array_equal(first["encoder"]["node_mlp"]["fc1"]["kernel"],
                              changed["encoder"]["node_mlp"]["fc1"]["kernel"])


def test_online_data_trains_on_fresh_trajectories_each_epoch(tiny, tmp_path):
    """--online-data: each epoch's training split is that epoch's fresh trajectories
    (the same for the same epoch, so runs resume exactly); valid and test stay fixed."""
    config, root, _ = tiny
    config = configs.override(config, online_data=True)
    run = experiment.load_run(root / "run", splits=("train", "valid"))
    run.config = config
    stored_valid = np.asarray(run.splits["valid"].features)

    def rows_of(batches, features):
        return [bool(np.any(np.all(row == features, axis=(1, 2, 3)))) for row in batches]

    first, second, again = (np.concatenate(r) for r in _recorded_epochs(
        run, (0, 1, 0), lambda split, indices, key: np.asarray(split.features)[indices]))
    fresh = [datasets.fresh_training_split(
        run.dataset, datasets.online_key(jax.random.key(config.data.data_seed), epoch)).features
        for epoch in (0, 1)]
    stored = np.asarray(run.dataset.train.features)
    assert first.shape[1:] == stored.shape[1:]
    # Each epoch's batches are rows of its own fresh split, none of another's.
    assert all(rows_of(first, fresh[0])) and all(rows_of(second, fresh[1]))
    assert not any(rows_of(first, fresh[1]) + rows_of(second, fresh[0]))
    assert not any(rows_of(first, stored) + rows_of(second, stored))
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(run.splits["valid"].features, stored_valid)
    report = experiment.train_and_evaluate(
        configs.override(config, epochs=2), tmp_path / "online", log=lambda _: None)
    assert np.isfinite(report["nll"]) and len(report["mse_by_horizon"]) == 20


def test_augment_trains_on_transformed_trajectories_each_epoch(tiny):
    """--augment: each epoch's batches are symmetric images of the stored trajectories they
    index (the same images for the same epoch), new ones every epoch."""
    config, root, _ = tiny
    run = experiment.load_run(root / "run", splits=("train",))
    run.config = configs.override(config, augment=True)
    stats = run.dataset.stats
    stored = datasets.denormalise(np.asarray(run.dataset.train.features, np.float64), stats)

    def radii(features):  # per trajectory: sorted |x| and |v|, invariant under the symmetries
        return np.sort(np.hypot(features[..., 0::2], features[..., 1::2]).reshape(
            len(features), -1), axis=1)

    first, second, again = ([(np.asarray(f, np.float64), i) for f, i in r]
                            for r in _recorded_epochs(run, (0, 1, 0), lambda split, indices, key: (
                                np.asarray(split.features)[indices], indices)))
    for epoch in (first, second):
        for features, indices in epoch:
            physical = datasets.denormalise(features, stats)
            np.testing.assert_allclose(radii(physical), radii(stored[indices]), atol=1e-4)
            assert not np.allclose(physical, stored[indices], atol=1e-3)
    for (a, _), (b, _) in zip(first, again):
        np.testing.assert_array_equal(a, b)
    images = [{int(i): row for features, indices in epoch for i, row in zip(indices, features)}
              for epoch in (first, second)]
    common = sorted(set(images[0]) & set(images[1]))
    assert common and sum(not np.array_equal(images[0][i], images[1][i]) for i in common) \
        > 0.8 * len(common)  # another symmetry for most trajectories in the next epoch


def test_evaluate_writes_plots(tiny):
    _, root, _ = tiny
    assert evaluate.main([str(root / "run"), "--out", str(root / "plots.json"), "--plots"]) == 0
    pngs = sorted(p.name for p in (root / "run" / "plots").glob("*.png"))
    assert pngs == ["graphs.png", "mse_by_horizon.png", "training_curves.png",
                    "trajectory_0.png", "trajectory_1.png"]


def test_clear_errors_for_bad_run_dirs(tiny, tmp_path, capsys):
    _, root, _ = tiny
    assert evaluate.main([str(tmp_path)]) == 1
    assert "config.json is missing" in capsys.readouterr().err
    assert train.main(["--preset", "tiny", "--workdir", str(tmp_path / "x"), "--resume"]) == 1
    assert "nothing to resume" in capsys.readouterr().err


def test_train_cli_rejects_bad_flags_before_work(capsys):
    with pytest.raises(SystemExit):
        train.main(["--preset", "tiny", "--n-edge-types", "1"])
    assert "n_edge_types" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train.main(["--preset", "nope"])


def test_edge_accuracy_rises_well_above_chance(tmp_path):
    """Springs 5: ~250 steps take the encoder from chance (0.5) to >= 0.7 on the test split.

    An encoder that ignores its input, or a sampler that cuts the gradient to
    the encoder, stays at the majority rate of about 0.5.
    """
    config = configs.override(
        configs.get_preset("quick"), n_train=4000, n_valid=200, n_test=200,
        encoder_hidden=64, decoder_hidden=64, epochs=4, batch_size=64, learning_rate=1e-3,
        skip_first=True, data_dir=str(tmp_path / "data"))
    report = experiment.train_and_evaluate(config, tmp_path / "run", log=lambda _: None)
    assert report["edge_accuracy_best_permutation"] >= 0.7


def test_a_run_trained_on_more_devices_evaluates_here(tiny, tmp_path):
    """The report does not depend on the device count, so evaluation uses what is here."""
    _, root, report = tiny
    shutil.copytree(root / "run", tmp_path / "run")
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    config["train"]["n_devices"] = len(jax.devices()) + 3  # more than this machine has
    (tmp_path / "run" / "config.json").write_text(json.dumps(config))
    again, _ = experiment.evaluate_run(tmp_path / "run", out=tmp_path / "r.json",
                                       log=lambda _: None)
    assert again == report
