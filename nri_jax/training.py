"""Train state and the jitted train / validation / test steps.

Every step returns *sums* over its batch (of per-example losses, confusion
counts, squared errors) together with the number of examples, so an epoch's
metrics are exact averages whatever the batch sizes, accumulated on the device
without a host synchronisation per step. `summarise` turns the sums into the
numbers a person reads.

Loss normalisation (the reference's, NRI_REFERENCE section 3): the Gaussian
NLL and the KL are each summed over one example (frames, objects, dims; edges,
types) and divided by the number of objects N; the loss is the batch mean of
that. It is applied visibly in `_loss_terms`.
"""

from __future__ import annotations

import ctypes
import functools
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from nri_jax import data as data_lib
from nri_jax import decoders, losses, metrics, sampling
from nri_jax.configs import Config, TrainConfig
from nri_jax.model import NRI, decoder_protocol
from nri_jax.rollouts import ONE_STEP, Teaching

Metrics = dict[str, jax.Array]


class TrainState(flax.struct.PyTreeNode):
    """Everything that changes during training, as one pytree (checkpointed whole)."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any


def learning_rate_schedule(cfg: TrainConfig, steps_per_epoch: int) -> optax.Schedule:
    """The learning rate at each step.

    A linear warm-up from 0 over `warmup_epochs`, then `lr_schedule`: "step"
    multiplies `learning_rate` by `lr_decay_factor` every `lr_decay_every`
    epochs (the reference); "cosine" decays it to 0 along a half cosine over
    the remaining epochs of the run.
    """
    warmup = cfg.warmup_epochs * steps_per_epoch
    if cfg.lr_schedule == "step":
        decay = optax.exponential_decay(
            cfg.learning_rate, transition_steps=cfg.lr_decay_every * steps_per_epoch,
            decay_rate=cfg.lr_decay_factor, staircase=True)
    else:
        decay = optax.cosine_decay_schedule(
            cfg.learning_rate, decay_steps=(cfg.epochs - cfg.warmup_epochs) * steps_per_epoch)
    if not warmup:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, cfg.learning_rate, warmup), decay],
                                [warmup])


def make_optimizer(cfg: TrainConfig, steps_per_epoch: int) -> optax.GradientTransformation:
    """Adam (no weight decay) on the scheduled learning rate, as the reference.

    With `clip_grad_norm`, the gradient is first scaled down to that global norm.
    """
    adam = optax.adam(learning_rate_schedule(cfg, steps_per_epoch))
    if cfg.clip_grad_norm is None:
        return adam
    return optax.chain(optax.clip_by_global_norm(cfg.clip_grad_norm), adam)


def init_state(key: jax.Array, model: NRI, tx: optax.GradientTransformation,
               example: jax.Array) -> TrainState:
    """Initialises parameters from `key` and a [B, N, T, D] example batch."""
    params_key, gumbel_key, dropout_key = jax.random.split(key, 3)
    # One jitted init compiles once instead of op by op (~2x faster start-up).
    init = jax.jit(functools.partial(model.init, train=False))
    variables = init({"params": params_key, "gumbel": gumbel_key, "dropout": dropout_key},
                     example)
    params = variables["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      batch_stats=variables.get("batch_stats", {}),
                      opt_state=tx.init(params))


def _kl(probs: jax.Array, config: Config) -> jax.Array:
    """Per-example KL of the edge posterior to the configured prior, [B]."""
    if config.train.prior == "uniform":
        return losses.kl_categorical_uniform(probs)
    log_prior = losses.sparsity_log_prior(config.model.n_edge_types,
                                          no_edge_prob=config.train.no_edge_prob)
    return losses.kl_categorical(probs, log_prior)


def training_teaching(config: Config, n_frames: int) -> Teaching:
    """The teaching of the configured decoder's training rollouts over `n_frames` frames."""
    return decoder_protocol(config.model).training(n_frames, config.train.prediction_steps,
                                                   config.train.burn_in_steps)


def _loss_terms(output, inputs: jax.Array, config: Config) -> tuple[jax.Array, jax.Array]:
    """Per-example NLL and KL, each divided by N (the reference normalisation), [B]."""
    return _nll(output.predictions, inputs, config), _kl(output.probs, config) / inputs.shape[1]


def _nll(predictions: jax.Array, inputs: jax.Array, config: Config) -> jax.Array:
    """Per-example Gaussian NLL of predictions of frames 1.. of `inputs`, divided by N, [B]."""
    nll = losses.gaussian_nll(predictions, inputs[:, :, 1:], variance=config.train.variance)
    return nll / inputs.shape[1]


def _cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example cross-entropy of the edge types, averaged over the edges, [B]."""
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels), axis=-1)


def given_edges(config: Config, labels: jax.Array) -> jax.Array | None:
    """The graph a decoder-only method decodes through, [B, E, K] one-hot: the true
    graph or every edge of type 1; None for the methods that train the encoder."""
    k = config.model.n_edge_types
    if config.train.method == "true-graph":
        return decoders.one_hot_edges(labels, k)
    if config.train.method == "full-graph":
        return decoders.fully_connected_edges(labels.shape[0], labels.shape[1], k)
    return None


def selection_metric(config: Config) -> str:
    """The validation metric whose minimum picks the best checkpoint: the NLL, or for
    the supervised encoder (no decoder trained) the cross-entropy."""
    return "cross_entropy" if config.train.method == "supervised" else "nll"


def _edge_metrics(logits: jax.Array, labels: jax.Array, weights: jax.Array,
                  n_types: int) -> Metrics:
    confusion = metrics.edge_confusion(logits, labels, n_types=n_types)
    return {"confusion": jnp.einsum("b,bij->ij", weights, confusion)}


def _jit(step: Callable, mesh) -> Callable:
    """Jits a step; on a mesh, its outputs (state, metric sums) come back replicated."""
    if mesh is None:
        return jax.jit(step)
    return jax.jit(step, out_shardings=data_lib.replicated(mesh))


def make_train_step(model: NRI, tx: optax.GradientTransformation, config: Config,
                    mesh=None) -> Callable:
    """Builds the jitted `train_step(state, split, indices, key) -> (state, metrics)`.

    `indices` [B] selects the batch from the device-resident `split`. What the
    step trains is `config.train.method`'s: the VAE (NLL + KL), the encoder alone
    (cross-entropy) or the decoder alone through a given graph (NLL); the other
    part's parameters get no gradient and its BatchNorm statistics stay as they are.
    """
    method = config.train.method

    def loss_fn(params, state, batch, key):
        gumbel_key, dropout_key = jax.random.split(key)
        variables = {"params": params, "batch_stats": state.batch_stats}
        apply = functools.partial(model.apply, variables, batch.features, train=True,
                                  rngs={"gumbel": gumbel_key, "dropout": dropout_key},
                                  mutable=["batch_stats"])
        x, teaching = batch.features, training_teaching(config, batch.features.shape[2])
        given = given_edges(config, batch.labels)
        if method == "supervised":
            logits, updates = apply(method=NRI.encode)
            ce = _cross_entropy(logits, batch.labels)
            terms = {"loss": ce, "cross_entropy": ce}
        elif given is not None:
            logits = None
            predictions, updates = apply(given, teaching=teaching, method=NRI.decode)
            nll = _nll(predictions, x, config)
            terms = {"loss": nll, "nll": nll, "mse": metrics.mse(predictions, x[:, :, 1:])}
        else:
            output, updates = apply(teaching=teaching)
            logits = output.logits
            nll, kl = _loss_terms(output, x, config)
            terms = {"loss": nll + kl, "nll": nll, "kl": kl,
                     "mse": metrics.mse(output.predictions, x[:, :, 1:])}
        batch_stats = {**state.batch_stats, **updates.get("batch_stats", {})}
        return jnp.mean(terms["loss"]), (batch_stats, terms, logits)

    def train_step(state: TrainState, split: data_lib.Split, indices, key):
        batch = data_lib.gather(split, indices, mesh)
        grads, (batch_stats, terms, logits) = jax.grad(loss_fn, has_aux=True)(
            state.params, state, batch, key)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        new_state = TrainState(step=state.step + 1,
                               params=optax.apply_updates(state.params, updates),
                               batch_stats=batch_stats, opt_state=opt_state)
        ones = jnp.ones(indices.shape, jnp.float32)
        finite = jnp.isfinite(jnp.sum(terms["loss"]))
        sums = {
            "count": jnp.sum(ones),
            **{name: jnp.sum(value) for name, value in terms.items()},
            # Before clipping; a step's norm times its batch size, so that the
            # epoch's figure is the mean over steps.
            "grad_norm": optax.tree.norm(grads) * jnp.sum(ones),
            "nonfinite_steps": jnp.where(finite, 0, 1),
            "first_nonfinite_step": jnp.where(finite, jnp.iinfo(jnp.int32).max, state.step),
        }
        if logits is not None:
            sums.update(_edge_metrics(logits, batch.labels, ones, config.model.n_edge_types))
        return new_state, sums

    return _jit(train_step, mesh)


def compile_ahead(step: Callable, *args) -> None:
    """Compiles the jitted `step` for `args` before its first call (which then finds it
    in the cache) and hands the compiler's freed heap back to the system.

    Peak memory: XLA's compiler frees a few hundred MB when it finishes, which glibc
    keeps mapped; compiled inside the first call, that step's temporaries come on top
    (CNN+MLP: ~280 MB more peak resident memory, BENCHMARKS.md, 2026-12-06).
    """
    step.lower(*args).compile()
    release_freed_heap()


def release_freed_heap() -> None:
    """Returns the C heap's free pages to the system (glibc's `malloc_trim`); does nothing
    where the C library has no such call."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError, TypeError):  # TypeError: no CDLL(None) on Windows
        return
    trim(0)


def make_eval_step(model: NRI, config: Config, mesh=None) -> Callable:
    """Builds the jitted validation step: hard samples, one-step predictions.

    `eval_step(state, split, indices, weights, key) -> metrics`; rows with
    weight 0 (padding) do not count. The supervised encoder is scored by its
    cross-entropy and edge accuracy, a decoder-only method by its NLL through
    the given graph.
    """
    method = config.train.method

    def eval_step(state: TrainState, split: data_lib.Split, indices, weights, key):
        batch = data_lib.gather(split, indices, mesh)
        x = batch.features
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        sums = {"count": jnp.sum(weights)}
        given = given_edges(config, batch.labels)
        if method == "supervised":
            logits = model.apply(variables, x, train=False, method=NRI.encode)
            ce = _cross_entropy(logits, batch.labels)
            return {**sums, "loss": weights @ ce, "cross_entropy": weights @ ce,
                    **_edge_metrics(logits, batch.labels, weights, config.model.n_edge_types)}
        if given is not None:
            predictions = model.apply(variables, x, given, train=False, teaching=ONE_STEP,
                                      method=NRI.decode)
            nll = _nll(predictions, x, config)
            return {**sums, "loss": weights @ nll, "nll": weights @ nll,
                    "mse": weights @ metrics.mse(predictions, x[:, :, 1:])}
        output = model.apply(variables, x, train=False, rngs={"gumbel": key}, teaching=ONE_STEP)
        nll, kl = _loss_terms(output, x, config)
        mse = metrics.mse(output.predictions, x[:, :, 1:])
        return {
            **sums,
            "loss": weights @ (nll + kl),
            "nll": weights @ nll,
            "kl": weights @ kl,
            "mse": weights @ mse,
            **_edge_metrics(output.logits, batch.labels, weights, config.model.n_edge_types),
        }

    return _jit(eval_step, mesh)


def open_loop(model: NRI, variables, x: jax.Array, edges: jax.Array, config: Config,
              n_encoder_frames: int) -> jax.Array:
    """Open-loop predictions of frames t_enc+1..t_enc+H from ground-truth frame t_enc,
    as the decoder's protocol says (`rollouts.Protocol.open_loop`).

    Args:
      x: [B, N, T, D] test trajectories; edges: [B, E, K] decoder graph.

    Returns:
      [B, N, H, D] predictions, H = the protocol's `horizon`.
    """
    protocol = decoder_protocol(config.model)
    t_enc = n_encoder_frames
    horizon = protocol.horizon(x.shape[2], t_enc)
    start, teaching = protocol.open_loop(t_enc)
    predictions = model.apply(variables, x[:, :, start: t_enc + horizon + 1], edges,
                              train=False, teaching=teaching, method=NRI.decode)
    return predictions[:, :, t_enc - start:]


def make_test_step(model: NRI, config: Config, n_encoder_frames: int, mesh=None) -> Callable:
    """Builds the jitted test step, the paper's protocol (NRI_REFERENCE section 3).

    The encoder sees the first `n_encoder_frames` frames; the NLL is of one-step
    predictions over the last `n_encoder_frames` frames; the open-loop MSE at
    horizons 1..H starts from the ground-truth frame `n_encoder_frames`. The
    supervised encoder reports edge recovery alone, a decoder-only method
    prediction alone (through its given graph). Every report also carries the
    static baseline's MSE at the same horizons (`static_mse_by_horizon`: frame
    `n_encoder_frames` repeated), which depends on the test data alone.
    """
    variables = lambda s: {"params": s.params, "batch_stats": s.batch_stats}
    t_enc = n_encoder_frames
    method = config.train.method

    def test_step(state: TrainState, split: data_lib.Split, indices, weights, key):
        batch = data_lib.gather(split, indices, mesh)
        x = batch.features
        horizon = decoder_protocol(config.model).horizon(x.shape[2], t_enc)
        targets = x[:, :, t_enc + 1: t_enc + horizon + 1]
        # The static baseline: the last frame the encoder saw, repeated.
        static = jnp.broadcast_to(x[:, :, t_enc: t_enc + 1], targets.shape)
        static_mse = metrics.mse_by_horizon(static, targets, prediction_steps=horizon)
        sums = {"count": jnp.sum(weights), "static_mse_by_horizon": weights @ static_mse}
        given = given_edges(config, batch.labels)
        if given is None:
            logits = model.apply(variables(state), x[:, :, :t_enc], train=False,
                                 method=NRI.encode)
            sums.update(_edge_metrics(logits, batch.labels, weights, config.model.n_edge_types))
            if method == "supervised":
                return {**sums, "cross_entropy": weights @ _cross_entropy(logits, batch.labels)}
        edges = (sampling.gumbel_softmax(key, logits, tau=config.model.tau, hard=True)
                 if given is None else given)
        tail = x[:, :, -t_enc:]
        one_step = model.apply(variables(state), tail, edges, train=False, teaching=ONE_STEP,
                               method=NRI.decode)
        predictions = open_loop(model, variables(state), x, edges, config, t_enc)
        mse_h = metrics.mse_by_horizon(predictions, targets, prediction_steps=horizon)
        return {
            **sums,
            "nll": weights @ _nll(one_step, tail, config),
            "mse": weights @ metrics.mse(one_step, tail[:, :, 1:]),
            "mse_by_horizon": weights @ mse_h,
        }

    return _jit(test_step, mesh)


def accumulate(total: Metrics | None, sums: Metrics) -> Metrics:
    """Adds one step's sums to the running totals (on the device, asynchronously)."""
    if total is None:
        return sums
    return {k: (jnp.minimum(total[k], v) if k == "first_nonfinite_step" else total[k] + v)
            for k, v in sums.items()}


def summarise(total: Metrics) -> dict[str, Any]:
    """Host-side means of accumulated sums, plus edge accuracies.

    `edge_accuracy` is the plain accuracy (argmax == label); with unsupervised
    edge types the learned labelling may come out permuted, so
    `edge_accuracy_best_permutation` relabels types by the single permutation
    that is best over the whole split.
    """
    total = jax.device_get(total)
    count = float(total["count"])
    out = {}
    for key, value in total.items():
        if key in ("count", "confusion", "nonfinite_steps", "first_nonfinite_step"):
            continue
        value = np.asarray(value, np.float64) / count
        out[key] = value.tolist() if value.ndim else float(value)
    if "confusion" not in total:  # a decoder-only method: no edges inferred
        return out
    confusion = np.asarray(total["confusion"], np.float64)
    out["edge_accuracy"] = float(np.trace(confusion) / confusion.sum())
    best, perm = metrics.best_permutation_accuracy(confusion)
    out["edge_accuracy_best_permutation"] = float(best)
    out["best_permutation"] = [int(p) for p in perm]
    return out
