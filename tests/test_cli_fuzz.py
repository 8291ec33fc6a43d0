"""Invalid command-line values for train.py, evaluate.py and `python -m simulators.generate`.

Each must exit non-zero with a message naming the offending flag (or field) and the value,
before any long work: no dataset simulated, nothing written or changed on disk.
"""

import json
import re

import pytest

import evaluate
import train
from nri_jax import configs
from simulators import datasets, generate
from test_faults import snapshot, write_random_dataset


def tiny(*argv: str) -> list[str]:
    """train.py on the tiny preset with its data and run directory under {tmp}."""
    return ["--preset", "tiny", "--data-dir", "{tmp}/data", "--workdir", "{tmp}/run", *argv]


def springs(*argv: str) -> list[str]:
    """A 4-4-4 springs dataset into {tmp}/gen."""
    return ["--system", "springs", "--n-train", "4", "--n-valid", "4", "--n-test", "4",
            "--out", "{tmp}/gen", *argv]


# (id, argv, patterns that must each match one line of stderr); {name} stands for a path:
# {tmp} the test's empty directory, the others the `files` fixture's entries.
TRAIN = [
    ("n_train 0", tiny("--n-train", "0"), [r"n_train.* 0\b"]),
    ("n_valid -5", tiny("--n-valid", "-5"), [r"n_valid.* -5\b"]),
    ("n_train not a number", tiny("--n-train", "abc"), [r"--n-train.*'abc'"]),
    ("n_objects 1", tiny("--n-objects", "1"), [r"n_objects.* 1\b"]),
    ("data_seed -1", tiny("--data-seed", "-1"), [r"data_seed.* -1\b"]),
    ("batch_size 0", tiny("--batch-size", "0"), [r"batch_size.* 0\b"]),
    ("batch_size -16", tiny("--batch-size", "-16"), [r"batch_size.* -16\b"]),
    ("epochs 0", tiny("--epochs", "0"), [r"epochs.* 0\b"]),
    ("epochs -1", tiny("--epochs", "-1"), [r"epochs.* -1\b"]),
    ("encoder_hidden 0", tiny("--encoder-hidden", "0"), [r"encoder_hidden.* 0\b"]),
    ("decoder_hidden -8", tiny("--decoder-hidden", "-8"), [r"decoder_hidden.* -8\b"]),
    ("n_edge_types 0", tiny("--n-edge-types", "0"), [r"n_edge_types.* 0\b"]),
    ("n_edge_types 1", tiny("--n-edge-types", "1"), [r"n_edge_types.* 1\b"]),
    ("tau 0", tiny("--tau", "0.0"), [r"tau.* 0\.0\b"]),
    ("tau -0.5", tiny("--tau", "-0.5"), [r"tau.* -0\.5\b"]),
    ("tau nan", tiny("--tau", "nan"), [r"tau.* nan\b"]),
    ("learning_rate 0", tiny("--learning-rate", "0.0"), [r"learning_rate.* 0\.0\b"]),
    ("learning_rate -0.001", tiny("--learning-rate", "-0.001"), [r"learning_rate.* -0\.001\b"]),
    ("learning_rate inf", tiny("--learning-rate", "inf"), [r"learning_rate.* inf\b"]),
    ("variance 0", tiny("--variance", "0.0"), [r"variance.* 0\.0\b"]),
    ("lr_decay_factor 0", tiny("--lr-decay-factor", "0.0"), [r"lr_decay_factor.* 0\.0\b"]),
    ("prediction_steps 0", tiny("--prediction-steps", "0"), [r"prediction_steps.* 0\b"]),
    ("burn_in_steps 0", tiny("--burn-in-steps", "0"), [r"burn_in_steps.* 0\b"]),
    ("no_edge_prob 1", tiny("--no-edge-prob", "1.0"), [r"no_edge_prob.* 1\.0\b"]),
    ("encoder_dropout 1", tiny("--encoder-dropout", "1.0"), [r"encoder_dropout.* 1\.0\b"]),
    ("eval_batch_size 0", tiny("--eval-batch-size", "0"), [r"eval_batch_size.* 0\b"]),
    ("eval_batch_size -4", tiny("--eval-batch-size", "-4"), [r"eval_batch_size.* -4\b"]),
    ("batch larger than n_train", tiny("--batch-size", "128"), [r"batch_size.*\b128\b"]),
    ("n_train smaller than batch", tiny("--n-train", "8"),
     [r"batch_size.*\b16\b|n_train.*\b8\b"]),
    ("batch larger than the dataset", tiny("--data-dir", "{small}"), [r"batch_size.*\b16\b"]),
    ("unknown preset", tiny("--preset", "nope"), [r"--preset.*'nope'"]),
    ("unknown system", tiny("--system", "nope"), [r"system.*'nope'"]),
    ("unknown encoder", tiny("--encoder", "gnn"), [r"encoder.*'gnn'"]),
    ("unknown decoder", tiny("--decoder", "transformer"), [r"decoder.*'transformer'"]),
    ("unknown prior", tiny("--prior", "laplace"), [r"prior.*'laplace'"]),
    ("unknown method", tiny("--method", "lstm"), [r"method.*'lstm'"]),
    ("unknown compute dtype", tiny("--compute-dtype", "float16"), [r"compute_dtype.*'float16'"]),
    ("prediction_steps beyond the frames", tiny("--prediction-steps", "49"),
     [r"prediction_steps=49\b"]),
    ("burn_in_steps beyond the frames", tiny("--decoder", "rnn", "--burn-in-steps", "1000"),
     [r"burn_in_steps=1000\b"]),
    # The test's one-step NLL over the last 49 frames would overlap the encoder's first 49.
    ("test frames overlap the encoder's", tiny("--data-dir", "{short_test}"),
     [r"test trajectories have 60 frames.*at least 2 x 49"]),
    ("test frames too few for the recurrent decoder", tiny("--decoder", "rnn", "--data-dir",
                                                           "{no_test_frames}"),
     [r"test trajectories have 49 frames.*at least 2 x 49"]),
    ("num_processes 0", tiny("--num-processes", "0"), [r"num_processes.* 0\b"]),
    ("process_id outside the run", tiny("--num-processes", "2", "--process-id", "2"),
     [r"process_id.* 2\b"]),
    ("n_devices 0", tiny("--n-devices", "0"), [r"n_devices.* 0\b"]),
    ("n_devices above visible", tiny("--n-devices", "99"), [r"n_devices.*\b99\b"]),
    ("unknown flag", tiny("--bogus", "1"), [r"unrecognized arguments: --bogus 1"]),
    ("resume a missing run", tiny("--resume"), [r"--resume.*{tmp}/run/config\.json"]),
    ("resume without workdir", ["--preset", "tiny", "--resume"], [r"--resume.*--workdir"]),
]

GENERATE = [
    ("n_train 0", springs("--n-train", "0"), [r"--n-train.* 0\b"]),
    ("n_train not a number", springs("--n-train", "abc"), [r"--n-train.*'abc'"]),
    ("n_objects 1", springs("--n-objects", "1"), [r"--n-objects.* 1\b"]),
    ("unknown system", springs("--system", "nope"), [r"--system.*'nope'"]),
    ("seed -1", springs("--seed", "-1"), [r"--seed.* -1\b"]),
    ("chunk_size 0", springs("--chunk-size", "0"), [r"--chunk-size.* 0\b"]),
    ("n_frames_test 0", springs("--n-frames-test", "0"), [r"--n-frames-test.* 0\b"]),
    ("sample_every 0", springs("--sample-every", "0"), [r"--sample-every.* 0\b"]),
    ("dt negative", springs("--dt", "-0.1"), [r"dt.* -0\.1\b"]),
    ("box_size 0", springs("--box-size", "0.0"), [r"box_size.* 0\.0\b"]),
    ("unknown format", springs("--format", "hdf5"), [r"--format.*'hdf5'"]),
    ("setting of another system", springs("--system", "kuramoto", "--box-size", "5.0"),
     [r"--box-size.*kuramoto"]),
    ("n_devices 0", springs("--n-devices", "0"), [r"n.devices.* 0\b"]),
    ("n_devices above visible", springs("--n-devices", "99"), [r"n.devices.*\b99\b"]),
    ("out is not a dataset", springs("--out", "{occupied}"), [r"{occupied}.*exists"]),
]

# The run in {run} was trained on 5 objects; {data3} holds 3.
EVALUATE = [
    ("missing run directory", ["{tmp}/nope"], [r"{tmp}/nope.*config\.json"]),
    ("unreadable config.json", ["{garbled}"], [r"{garbled}.*unreadable"]),
    ("other number of objects", ["{run}", "--data", "{data3}"],
     [r"n_objects=5", r"{data3}.* 3 objects"]),
    ("missing --data directory", ["{run}", "--data", "{tmp}/nope"], [r"--data.*{tmp}/nope"]),
    ("--out in a missing directory", ["{run}", "--out", "{tmp}/no/report.json"],
     [r"--out.*{tmp}/no/report\.json"]),
    ("run without checkpoints", ["{run}"], [r"{run}/checkpoints/best"]),
    ("two runs without --table", ["{run}", "{garbled}"], [r"one run directory at a time, got 2"]),
    ("--table with --plots", ["--table", "{run}", "--plots"], [r"--table.*--plots"]),
]

CASES = ([pytest.param(train.main, argv, patterns, id=f"train: {name}")
          for name, argv, patterns in TRAIN]
         + [pytest.param(generate.main, argv, patterns, id=f"generate: {name}")
            for name, argv, patterns in GENERATE]
         + [pytest.param(evaluate.main, argv, patterns, id=f"evaluate: {name}")
            for name, argv, patterns in EVALUATE])


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Datasets with 5 and 3 objects, a small one, two with too few test frames, and run
    directories without checkpoints."""
    root = tmp_path_factory.mktemp("cli")
    data5 = write_random_dataset(root / "data5", sizes=(16, 8, 8))
    write_random_dataset(root / "data3", n_objects=3, sizes=(16, 8, 8))
    write_random_dataset(root / "small", sizes=(8, 4, 4))
    write_random_dataset(root / "short_test", sizes=(16, 8, 8), frames={"test": 60})
    write_random_dataset(root / "no_test_frames", sizes=(16, 8, 8), frames={"test": 49})
    (root / "occupied").mkdir()
    (root / "occupied" / "notes.txt").write_text("not a dataset\n")
    config = configs.override(configs.get_preset("tiny"), data_dir=str(data5))
    dataset = datasets.load_dataset(data5)
    for name in ("run", "garbled"):
        (root / name).mkdir()
        (root / name / "config.json").write_text(json.dumps(config.to_dict()))
        (root / name / "data.json").write_text(json.dumps(
            {"path": str(data5), "n_encoder_frames": 49, **datasets.describe(dataset)}))
    (root / "garbled" / "config.json").write_text("{not json")
    return root


def _no_simulation(*args, **kwargs):
    raise AssertionError("long work started: a dataset is being simulated")


def _fill(text: str, paths: dict, escape=lambda s: s) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: escape(str(paths[m.group(1)])), text)


@pytest.mark.parametrize("main, argv, patterns", CASES)
def test_invalid_value_fails_fast_naming_it(main, argv, patterns, tmp_path, files, capsys,
                                           monkeypatch):
    monkeypatch.setattr(datasets, "generate_split", _no_simulation)
    paths = {"tmp": tmp_path, **{p.name: p for p in files.iterdir()}}
    before = snapshot(tmp_path), snapshot(files)
    try:
        code = main([_fill(arg, paths) for arg in argv])
    except SystemExit as exit:
        code = exit.code
    err = capsys.readouterr().err
    assert code not in (0, None), err
    for pattern in patterns:
        pattern = _fill(pattern, paths, re.escape)
        assert re.search(pattern, err), f"{pattern!r} not in stderr:\n{err}"
    assert snapshot(tmp_path) == before[0], "wrote into the working directory"
    assert snapshot(files) == before[1], "changed the run or dataset files"
