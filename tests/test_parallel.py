"""Data parallelism: several devices and several processes give the one-device result.

JAX fixes the number of CPU devices when it starts, so each check runs in a
fresh subprocess: one with 4 forced CPU devices, and two processes joined by
`jax.distributed` over loopback.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from nri_jax import experiment

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Three train steps and one validation step of the same model from the same
# state, batches and keys, on a mesh of 1 and of 4 devices. S = 50 does not
# divide over 4 devices, so the padding of the sharded split is exercised.
FOUR_DEVICES = r"""
import json, sys
import jax
jax.config.update("jax_num_cpu_devices", 4)
import numpy as np
from nri_jax import configs, training, data as data_lib
from nri_jax.model import NRI

B, N, T, D, S = 16, 5, 12, 4, 50
config = configs.override(configs.get_preset("tiny"), n_objects=N, batch_size=B,
                          eval_batch_size=B, prediction_steps=5, variance=1e-2,
                          learning_rate=1e-3)
rng = np.random.default_rng(0)
features = rng.normal(size=(S, N, T, D)).astype(np.float32)
labels = rng.integers(0, 2, size=(S, N * (N - 1))).astype(np.int32)
model = NRI(config.model)
tx = training.make_optimizer(config.train, 3)
state0 = training.init_state(jax.random.key(0), model, tx, features[:1])
batches = data_lib.shuffled_batches(jax.random.key(1), S, B)
out, info = {}, {}
for n in (1, 4):
    mesh = data_lib.make_mesh(n)
    split = data_lib.put_split(features, labels, mesh)
    step = training.make_train_step(model, tx, config, mesh)
    state = jax.jit(lambda s: s, out_shardings=data_lib.replicated(mesh))(state0)
    for i in range(3):
        state, sums = step(state, split, batches[i], jax.random.key(10 + i))
    evaluation = training.make_eval_step(model, config, mesh)(
        state, split, np.arange(B), np.ones(B, np.float32), jax.random.key(20))
    leaves = jax.tree.leaves(jax.device_get((state.params, state.batch_stats)))
    out.update({f"{n}/state/{i}": leaf for i, leaf in enumerate(leaves)})
    out.update({f"{n}/train/{k}": v for k, v in jax.device_get(sums).items()})
    out.update({f"{n}/eval/{k}": v for k, v in jax.device_get(evaluation).items()})
    info[n] = {
        "split_devices": len(split.features.sharding.device_set),
        "rows_per_device": sorted(s.data.shape[0] for s in split.features.addressable_shards),
        "state_devices": len(jax.tree.leaves(state.params)[0].sharding.device_set),
        "hlo": step.lower(state, split, batches[0], jax.random.key(0)).compile().as_text(),
    }
np.savez(sys.argv[1] + ".npz", **out)
with open(sys.argv[1] + ".json", "w") as f:
    json.dump(info, f)
"""


@pytest.fixture(scope="module")
def four_devices(tmp_path_factory):
    prefix = str(tmp_path_factory.mktemp("four") / "result")
    # CPU devices even where a GPU is the default backend (it would offer one device).
    subprocess.run([sys.executable, "-c", FOUR_DEVICES, prefix], cwd=ROOT, check=True,
                   timeout=600, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    arrays = np.load(prefix + ".npz")
    info = {int(k): v for k, v in json.loads(pathlib.Path(prefix + ".json").read_text()).items()}
    return arrays, info


def test_four_devices_give_the_one_device_parameters(four_devices):
    """Same parameters, BatchNorm statistics and metric sums within float32 rounding.

    Measured: at most 1.2e-7 apart. BatchNorm statistics taken per device
    (over 4 examples instead of 16) would change the running statistics
    themselves, not their rounding.
    """
    arrays, _ = four_devices
    names = sorted(k[2:] for k in arrays.files if k.startswith("1/"))
    assert len([n for n in names if n.startswith("state/")]) > 10
    for name in names:
        one, four = arrays["1/" + name], arrays["4/" + name]
        np.testing.assert_allclose(four, one, rtol=1e-5, atol=1e-6, err_msg=name)
    assert float(arrays["4/train/count"]) == 16


def test_four_device_step_is_sharded_with_a_cross_device_reduction(four_devices):
    _, info = four_devices
    assert info[4]["split_devices"] == 4 and info[4]["rows_per_device"] == [13] * 4
    assert info[4]["state_devices"] == 4  # replicated on every device
    assert "all-reduce" in info[4]["hlo"]  # the gradient sum over devices
    assert "all-reduce" not in info[1]["hlo"]  # a positive control for the search
    # Activations stay where their rows are: nothing of the batch's size is gathered (a
    # BatchNorm whose row sums were blocked across the batch axis gathered its cotangent).
    assert "all-gather" not in info[4]["hlo"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(args, **kwargs):
    return subprocess.Popen([sys.executable, "train.py", "--preset", "tiny", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"},
                            **kwargs)


def _finish(process, timeout=600):
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output
    return output


@pytest.mark.e2e
def test_two_processes_train_together_like_one(tmp_path):
    if "jax_cpu_collectives_implementation" not in jax.config.values:
        pytest.skip("this jaxlib has no CPU collectives (gloo) for a multi-process CPU run")
    common = ["--data-dir", str(tmp_path / "data")]  # generated by process 0 of the pair
    port = _free_port()
    processes = [_train([*common, "--workdir", str(tmp_path / "two"),
                         "--coordinator-address", f"127.0.0.1:{port}", "--num-processes", "2",
                         "--process-id", str(i)]) for i in range(2)]
    outputs = [_finish(p) for p in processes]
    _finish(_train([*common, "--workdir", str(tmp_path / "one")]))
    assert "epoch 2/2" in outputs[0] and "epoch" not in outputs[1]  # process 0 logs
    one, two = tmp_path / "one", tmp_path / "two"
    assert len((two / "metrics.jsonl").read_text().splitlines()) == 2  # written once
    for checkpoint in ("best", "latest"):
        steps = lambda run: sorted(p.name for p in (run / "checkpoints" / checkpoint).iterdir())
        assert steps(two) == steps(one)  # the same checkpoints, no leftovers
    report_one = json.loads((one / "report.json").read_text())
    report_two = json.loads((two / "report.json").read_text())
    for key in ("nll", "edge_accuracy", "mse_by_horizon"):
        np.testing.assert_allclose(report_two[key], report_one[key], rtol=1e-3, err_msg=key)
    for checkpoint in ("best", "latest"):
        a = experiment.load_run(one, checkpoint=checkpoint).state.params
        b = experiment.load_run(two, checkpoint=checkpoint).state.params
        jax.tree.map(lambda x, y: np.testing.assert_allclose(y, x, rtol=1e-4, atol=1e-6), a, b)
