"""Frozen experiment configs and named presets.

A `Config` is three frozen dataclasses: what data to train on (`DataConfig`),
which model (`nri_jax.model.ModelConfig`) and how to train it
(`TrainConfig`). Presets are plain functions returning a `Config`; command-line
flags override single fields with `override`. Field names are unique across
the three parts so that every field is also a flag of the same name.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import typing
from typing import Any, Callable

from nri_jax.model import DECODERS, ModelConfig

SYSTEMS = ("springs", "charged", "kuramoto")
PRIORS = ("uniform", "sparse")
# What a run trains (TrainConfig.method).
METHODS = ("nri", "supervised", "true-graph", "full-graph")
# Which parts of the model TrainConfig.init_from loads.
INIT_PARTS = ("all", "encoder", "decoder")
LR_SCHEDULES = ("step", "cosine")
# The shipped trained models (`pretrained/<benchmark>`), next to the library in a
# source checkout or an editable install; presets that fine-tune start from them.
PRETRAINED_DIR = pathlib.Path(__file__).resolve().parent.parent / "pretrained"


def _check(condition: bool, name: str, value: Any, requirement: str) -> None:
    if not condition:
        raise ValueError(f"{name} must be {requirement}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Which dataset to train on; generated (and cached) when `data_dir` is unset.

    Attributes:
      system: "springs", "charged" or "kuramoto".
      n_objects: N, the number of interacting objects.
      n_train, n_valid, n_test: trajectories per split.
      data_dir: a dataset directory: used as it is when it exists (native or
        reference layout, whatever its sizes), generated from these settings
        when it does not; None caches under `data/` named after the settings.
      data_seed: seed of the generated dataset.
    """

    system: str = "springs"
    n_objects: int = 5
    n_train: int = 50_000
    n_valid: int = 10_000
    n_test: int = 10_000
    data_dir: str | None = None
    data_seed: int = 42

    def __post_init__(self):
        _check(self.system in SYSTEMS, "system", self.system, f"one of {SYSTEMS}")
        _check(self.n_objects >= 2, "n_objects", self.n_objects, ">= 2")
        for name in ("n_train", "n_valid", "n_test"):
            _check(getattr(self, name) > 0, name, getattr(self, name), "positive")
        _check(self.data_seed >= 0, "data_seed", self.data_seed, ">= 0")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation and loss settings (reference defaults, NRI_REFERENCE section 3).

    Attributes:
      epochs: passes over the training split.
      batch_size: global batch, split evenly over devices.
      learning_rate: Adam step size.
      lr_decay_every: epochs between learning-rate decays (staircase).
      lr_decay_factor: multiplier applied at each decay.
      lr_schedule: "step" (decay by `lr_decay_factor` every `lr_decay_every`
        epochs, the reference) or "cosine" (a half cosine from
        `learning_rate` to 0 over the epochs after the warm-up).
      warmup_epochs: epochs of linear warm-up from 0 to `learning_rate`
        before the schedule starts.
      clip_grad_norm: scale the gradient down to this global norm before Adam
        when it is larger; None: no clipping (the reference). One outlier batch
        (a rollout that diverges) otherwise fills Adam's second-moment estimate
        with its square, which takes thousands of steps to decay (BENCHMARKS.md,
        "charged10-cpu").
      variance: fixed variance of the Gaussian likelihood.
      prediction_steps: the MLP decoder sees ground truth every this many frames.
      burn_in_steps: the RNN decoder sees ground truth for this many inputs;
        None means `T - prediction_steps` (39 of 49 frames). The reference's
        loop tests `step <= T - prediction_steps` and so feeds one more, 40:
        the paper presets set 40.
      prior: "uniform" or "sparse" prior over edge types for the KL term.
      no_edge_prob: prior mass on edge type 0 for the sparse prior.
      eval_batch_size: batch size of validation and test passes.
      seed: seed of initialisation, shuffling and sampling.
      online_data: train on fresh trajectories every epoch, simulated like the
        stored training split (same size, frames and physics) from
        `data_seed` and the epoch, and normalised with the stored split's
        statistics; validation and test stay the stored splits.
      augment: give every training trajectory a random exact symmetry each
        epoch (`simulators.symmetries`): a relabelling of its objects and, for
        springs and charged, one of the box's 8 rotations and reflections.
      n_devices: devices to shard the batch over; None uses all visible ones.
      method: what the run trains: "nri" (the VAE, NLL + KL), "supervised"
        (the encoder alone, cross-entropy on the true edge labels: the paper's
        upper bound for edge recovery), "true-graph" or "full-graph" (the
        decoder alone, NLL of its predictions through the true or the fully
        connected graph: the paper's prediction baselines).
      init_from: start from the parameters and BatchNorm statistics of this
        run directory's best checkpoint, or of an exported run (`pretrained/`),
        instead of a random initialisation; the optimiser starts afresh. The
        model's shapes must match; the dataset may differ (another object
        count, another system). None: a random initialisation.
      init_parts: what init_from loads: "all", or only the "encoder" or the
        "decoder" (its parameters and BatchNorm statistics; the other part
        starts from its random initialisation and may differ from the source's).
    """

    epochs: int = 500
    batch_size: int = 128
    learning_rate: float = 5e-4
    lr_decay_every: int = 200
    lr_decay_factor: float = 0.5
    lr_schedule: str = "step"
    warmup_epochs: int = 0
    clip_grad_norm: float | None = None
    variance: float = 5e-5
    prediction_steps: int = 10
    burn_in_steps: int | None = None
    prior: str = "uniform"
    no_edge_prob: float = 0.91
    eval_batch_size: int = 256
    seed: int = 0
    online_data: bool = False
    augment: bool = False
    n_devices: int | None = None
    method: str = "nri"
    init_from: str | None = None
    init_parts: str = "all"

    def __post_init__(self):
        for name in ("epochs", "batch_size", "lr_decay_every", "prediction_steps",
                     "eval_batch_size"):
            _check(getattr(self, name) > 0, name, getattr(self, name), "positive")
        _check(0 < self.learning_rate < math.inf, "learning_rate", self.learning_rate,
               "positive and finite")
        _check(0 < self.lr_decay_factor <= 1, "lr_decay_factor", self.lr_decay_factor,
               "in (0, 1]")
        _check(self.lr_schedule in LR_SCHEDULES, "lr_schedule", self.lr_schedule,
               f"one of {LR_SCHEDULES}")
        _check(0 <= self.warmup_epochs < self.epochs, "warmup_epochs", self.warmup_epochs,
               f"in [0, epochs={self.epochs})")
        _check(self.clip_grad_norm is None or 0 < self.clip_grad_norm < math.inf,
               "clip_grad_norm", self.clip_grad_norm, "positive and finite, or None")
        _check(0 < self.variance < math.inf, "variance", self.variance, "positive and finite")
        _check(self.burn_in_steps is None or self.burn_in_steps > 0, "burn_in_steps",
               self.burn_in_steps, "positive or None")
        _check(self.prior in PRIORS, "prior", self.prior, f"one of {PRIORS}")
        _check(0 < self.no_edge_prob < 1, "no_edge_prob", self.no_edge_prob, "in (0, 1)")
        _check(self.n_devices is None or self.n_devices > 0, "n_devices", self.n_devices,
               "positive or None")
        _check(self.method in METHODS, "method", self.method, f"one of {METHODS}")
        _check(self.init_parts in INIT_PARTS, "init_parts", self.init_parts,
               f"one of {INIT_PARTS}")


@dataclasses.dataclass(frozen=True)
class Config:
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()

    def __post_init__(self):
        decoder, method = DECODERS[self.model.decoder], self.train.method
        if method == "nri" and not decoder.reads_graph:
            raise ValueError(f"decoder {self.model.decoder!r} reads no graph, so NRI's encoder "
                             "would learn nothing from it: train it alone with "
                             "method='full-graph'")
        if method in ("true-graph", "full-graph") and not decoder.learned:
            raise ValueError(f"decoder {self.model.decoder!r} has no parameters: "
                             f"method={method!r} would have nothing to train")
        if self.model.encoder == "correlation-lstm":
            _check_corr_lstm(self)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        return cls(DataConfig(**d["data"]), ModelConfig(**d["model"]), TrainConfig(**d["train"]))


def _check_corr_lstm(config: Config) -> None:
    """Corr. (LSTM) is a second stage: a classifier on a trained single LSTM's states."""
    m, t = config.model, config.train
    wanted = {"decoder": (m.decoder, "lstm-single"), "method": (t.method, "supervised"),
              "init_parts": (t.init_parts, "decoder")}
    for name, (value, needed) in wanted.items():
        if value != needed or not t.init_from:
            raise ValueError(
                f"encoder 'correlation-lstm' classifies the hidden states of a trained single "
                f"LSTM: it needs decoder='lstm-single', method='supervised', init_from=<a run "
                f"of --decoder lstm-single> and init_parts='decoder'; got {name}={value!r}, "
                f"init_from={t.init_from!r}")


# The reference's RNN burn-in on its 49-frame training trajectories: ground truth while
# `step <= 49 - prediction_steps`, i.e. for the first 40 inputs.
REFERENCE_BURN_IN_STEPS = 40


def _paper(system: str, n_objects: int) -> Config:
    """The paper's protocol: 50k/10k/10k data, 500 epochs, batch 128, Adam 5e-4.

    With the reference's RNN-decoder conventions (used only with `--decoder
    rnn`): messages divided by the state dimension, 40 ground-truth inputs.
    """
    variance = 1e-2 if system == "kuramoto" else 5e-5
    return Config(DataConfig(system=system, n_objects=n_objects),
                  ModelConfig(rnn_message_scale="state_dims"),
                  TrainConfig(variance=variance, burn_in_steps=REFERENCE_BURN_IN_STEPS))


def quick() -> Config:
    """The README's default job: springs 5 to ~95% edge accuracy on a 2-core CPU.

    Departs from the paper's settings for speed: 10k training trajectories,
    12 epochs of batch 32 (four times the paper's updates per sample: at this
    budget the accuracy follows the number of updates, and at hidden 128 a
    sample costs only about a tenth more in batches of 32 than of 128), hidden
    size 128, learning rate 1e-3 halved after 7 epochs, `skip_first` (edge
    type 0 is "no interaction", so the decoder computes one message MLP
    instead of two and the encoder's labelling cannot come out swapped) and
    bfloat16 matrix products (with the default decoder rematerialisation
    measured 1.26x faster than float32 without it on 2 CPU cores at the same
    accuracy). Measured on a 2-core Intel Xeon: 2.5 minutes from an empty
    directory, 95.4-96.0% test edge accuracy over two seeds, where batch 128
    for 20 epochs (the preset until 2026-12-07) took 3 min 40 s for 94.0-95.2%;
    on a 2-core Zen 4 3 min 25 s for 95.8% against 5 min 49 s for 95.3%
    (BENCHMARKS.md, "The default job").
    """
    return Config(
        DataConfig(n_train=10_000, n_valid=1_000, n_test=1_000),
        ModelConfig(encoder_hidden=128, decoder_hidden=128, skip_first=True,
                    compute_dtype="bfloat16"),
        TrainConfig(epochs=12, batch_size=32, learning_rate=1e-3, lr_decay_every=7),
    )


def springs5_cpu() -> Config:
    """Springs 5 on a 2-core CPU in about half an hour: the quick model, longer.

    The quick preset's model (hidden 128, `skip_first`, bfloat16 products) on a
    fresh 10k training split every epoch (`online_data`) for 100 epochs, Adam
    1e-3 with one epoch of warm-up and a cosine decay to 0. Measured: 99.25%
    test edge accuracy on 10k test trajectories (the paper: 99.9% after 500
    epochs of 50k; BENCHMARKS.md, "Time to accuracy").
    """
    return Config(
        DataConfig(n_train=10_000, n_valid=2_000, n_test=10_000),
        ModelConfig(encoder_hidden=128, decoder_hidden=128, skip_first=True,
                    compute_dtype="bfloat16"),
        TrainConfig(epochs=100, batch_size=128, learning_rate=1e-3, lr_schedule="cosine",
                    warmup_epochs=1, online_data=True),
    )


def _ten_objects_from(config: Config, shipped: str, *, epochs: int, **changes: Any) -> Config:
    """A 5-object CPU preset moved to 10 objects (1k validation trajectories) for
    `epochs`, starting from its shipped model `pretrained/<shipped>`."""
    return override(config, n_objects=10, n_valid=1_000, epochs=epochs,
                    init_from=str(PRETRAINED_DIR / shipped), **changes)


def springs10_cpu() -> Config:
    """Springs 10 on a 2-core CPU in under half an hour: the springs 5 model, fine-tuned.

    `springs5_cpu` at 10 objects for 30 epochs (1k validation trajectories),
    starting from the shipped springs 5 model (`pretrained/springs5`: the
    encoder and decoder are the same functions for any object count). Measured:
    92.5% test edge accuracy on 10k test trajectories in 23 minutes on a 2-core
    Zen 5 (the paper: 98.4% after 500 epochs of 50k; 20 epochs from scratch
    reached 78.9%; BENCHMARKS.md, "Time to accuracy").
    """
    return _ten_objects_from(springs5_cpu(), "springs5", epochs=30)


def charged5_cpu() -> Config:
    """Charged 5 on a 2-core CPU in under an hour: `springs5_cpu`, both types, longer.

    `springs5_cpu` without `skip_first` (in the charged system both edge types
    interact, with opposite signs) for 200 epochs of a fresh 10k. Measured:
    71.4% test edge accuracy on 10k test trajectories in 53 minutes on a 2-core
    Zen 5 (the paper: 82.1% after 500 epochs of 50k; BENCHMARKS.md, "charged5-cpu").
    """
    return override(springs5_cpu(), system="charged", skip_first=False, epochs=200)


def charged10_cpu() -> Config:
    """Charged 10 on a 2-core CPU in under an hour: the charged 5 model, fine-tuned.

    `charged5_cpu` at 10 objects for 35 epochs (1k validation trajectories),
    starting from the shipped charged 5 model (`pretrained/charged5`), as
    `springs10_cpu` starts from springs 5, with the gradient's norm clipped
    to 1e5: unclipped, the charged 5 decoder's first rollouts over 10 objects
    diverged (a first epoch's mean loss of 1.1e9). Measured: 61.5% test edge
    accuracy on 10k test trajectories in 44 minutes on a 2-core Zen 5, no
    better than the charged 5 model after one epoch (62.0% validation; the
    paper: 70.8%; BENCHMARKS.md, "charged10-cpu").
    """
    return _ten_objects_from(charged5_cpu(), "charged5", epochs=35, clip_grad_norm=1e5)


def kuramoto5_cpu() -> Config:
    """Kuramoto 5 on a 2-core CPU in under an hour: `springs5_cpu` with the CNN encoder.

    The CNN encoder is the one that left chance on Kuramoto in short runs where
    the MLP encoder did not (BENCHMARKS.md, "Kuramoto 5: why it stays near
    chance"); the MLP decoder, variance 5e-5 (the paper's 1e-2 lets the KL hold
    the posterior at uniform). Measured: 71.2% test edge accuracy on 10k test
    trajectories in 29 minutes on a 2-core Zen 5 (the paper: 96.0%;
    BENCHMARKS.md, "kuramoto5-cpu").
    """
    return override(springs5_cpu(), system="kuramoto", encoder="cnn", epochs=50)


def kuramoto10_cpu() -> Config:
    """Kuramoto 10 on a 2-core CPU in under an hour: the Kuramoto 5 model, fine-tuned.

    `kuramoto5_cpu` at 10 objects for 15 epochs (1k validation trajectories),
    starting from the shipped Kuramoto 5 model (`pretrained/kuramoto5`), as
    `springs10_cpu` starts from springs 5. Measured: 57.6% test edge accuracy
    on 10k test trajectories in 48 minutes on a 2-core Zen 5, no better than
    the Kuramoto 5 model after one epoch (57.4% validation; the paper: 75.7%;
    BENCHMARKS.md, "kuramoto10-cpu").
    """
    return _ten_objects_from(kuramoto5_cpu(), "kuramoto5", epochs=15)


def tiny() -> Config:
    """Seconds on a CPU: for tests and smoke runs, learns nothing useful."""
    return Config(
        DataConfig(n_train=64, n_valid=32, n_test=32),
        ModelConfig(encoder_hidden=16, decoder_hidden=16),
        TrainConfig(epochs=2, batch_size=16, eval_batch_size=16),
    )


PRESETS: dict[str, Callable[[], Config]] = {
    "quick": quick,
    "tiny": tiny,
    "springs5-cpu": springs5_cpu,
    "springs10-cpu": springs10_cpu,
    "charged5-cpu": charged5_cpu,
    "charged10-cpu": charged10_cpu,
    "kuramoto5-cpu": kuramoto5_cpu,
    "kuramoto10-cpu": kuramoto10_cpu,
    **{f"{s}{n}": (lambda s=s, n=n: _paper(s, n)) for s in SYSTEMS for n in (5, 10)},
}


def get_preset(name: str) -> Config:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]()


def fields() -> dict[str, tuple[str, type, Any]]:
    """Every overridable field: name -> (part, type, default of the plain Config)."""
    out = {}
    for part, cls in (("data", DataConfig), ("model", ModelConfig), ("train", TrainConfig)):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            out[f.name] = (part, hints[f.name], f.default)
    return out


def override(config: Config, **changes: Any) -> Config:
    """Returns `config` with the named fields replaced (validated again).

    Raises:
      ValueError: for an unknown field name or an invalid value.
    """
    known = fields()
    unknown = sorted(set(changes) - set(known))
    if unknown:
        raise ValueError(f"unknown config field(s) {unknown}")
    parts = {"data": {}, "model": {}, "train": {}}
    for name, value in changes.items():
        parts[known[name][0]][name] = value
    return Config(*(dataclasses.replace(getattr(config, p), **kv) for p, kv in parts.items()))
