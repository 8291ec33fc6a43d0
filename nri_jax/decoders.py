"""Decoders: predict trajectories [B, N, T, D] given edge-type weights [B, E, K].

Both decoders pass messages along every edge of the fully connected graph with
one message MLP per edge type (`gnn.rgcn.TypedMessages`, an R-GCN layer whose
per-type map is an MLP of sender and receiver); an edge's message is the sum
over types of the type's MLP output times the edge's weight for that type. The
weights `edges` may be Gumbel-softmax samples, one-hot ground-truth labels
(`one_hot_edges`) or a fully connected graph (`fully_connected_edges`), so the
paper's "true graph" and "full graph" baselines run through the same code. With
`skip_first`, type 0 means "no interaction": its MLP is never evaluated and it
sends nothing (its parameters still exist, as in the reference).

Outputs: `predictions` [B, N, T-1, D], where predictions[:, :, t] is the
prediction of frame t+1 of `inputs`.
"""

from __future__ import annotations

import math
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from nri_jax import graphs
from nri_jax.encoders import check_trajectories
from nri_jax.gnn.rgcn import MESSAGE_PRODUCTS, TypedMessages
from nri_jax.nn import MessageGRUCell, check_compute_dtype, hidden_relu, torch_dense
from nri_jax.rollouts import MARKOVIAN, RECURRENT, Protocol, Teaching

# Divisors of the recurrent decoder's summed incoming messages (RNNDecoder.message_scale).
RNN_MESSAGE_SCALES = ("incoming", "state_dims")


def maybe_remat(step_cls, remat: bool, keep_messages: bool = False):
    """The scan body, rematerialised in the backward pass when `remat`.

    Memory: without remat, the backward pass keeps every step's activations
    ([B, blocks, E, H] arrays, ~13 MB each at the paper's size, several per step);
    with remat only the step inputs are kept and the step's forward is recomputed
    during the backward pass (about a third more decoder arithmetic). With
    `keep_messages` the message MLPs' second-layer outputs are kept as well
    (`rgcn.MESSAGE_PRODUCTS`, float32, one [rows, H] array per edge type and
    step), so the recomputation skips the decoder's largest products; without
    `remat` there is nothing to choose, and asking for it is an error.
    """
    if keep_messages and not remat:
        raise ValueError("remat_keeps_messages=True needs remat=True: it chooses what remat "
                         "keeps, and without remat every activation is kept")
    if not remat:
        return step_cls
    policy = (jax.checkpoint_policies.save_only_these_names(MESSAGE_PRODUCTS) if keep_messages
              else jax.checkpoint_policies.nothing_saveable)
    return nn.remat(step_cls, policy=policy)


def _decoder_fields(config) -> dict:
    """The keyword arguments every decoder takes, from a `model.ModelConfig`."""
    return dict(hidden=config.decoder_hidden, n_edge_types=config.n_edge_types,
                skip_first=config.skip_first, dropout=config.decoder_dropout,
                compute_dtype=config.compute_dtype, remat=config.remat,
                remat_keeps_messages=config.remat_keeps_messages,
                chunk_size=config.decoder_chunk_size)


def batch_chunks(batch: int, chunk_size: int | None) -> int:
    """How many chunks a batch of `batch` examples is decoded in, one after the other.

    The most chunks, dividing `batch` evenly, of at least `chunk_size` examples
    each (at least one chunk); None: one chunk, the whole batch.
    """
    if chunk_size is None:
        return 1
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1 or None, got {chunk_size}")
    return max(c for c in range(1, max(batch // chunk_size, 1) + 1) if batch % c == 0)


def _split_chunks(x: jax.Array, chunks: int) -> jax.Array:
    """[B, ...] -> [B / C, C, ...]: chunk c holds examples c, C + c, 2C + c, ...

    Strided, so that a batch sharded in contiguous blocks over devices gives
    every chunk the same share of every device.
    """
    return x.reshape((x.shape[0] // chunks, chunks) + x.shape[1:])


def one_hot_edges(labels: jax.Array, n_types: int) -> jax.Array:
    """Integer edge labels [B, E] -> one-hot edge weights [B, E, K] (float32)."""
    if labels.ndim != 2:
        raise ValueError(f"labels must be [B, E], got shape {labels.shape}")
    return jax.nn.one_hot(labels, n_types, dtype=jnp.float32)


def fully_connected_edges(batch: int, n_edges: int, n_types: int, *,
                          edge_type: int = 1) -> jax.Array:
    """Every edge of type `edge_type` (default 1, "interacting"): [B, E, K] one-hot."""
    if not 0 <= edge_type < n_types:
        raise ValueError(f"edge_type must be in [0, {n_types}), got {edge_type}")
    return jnp.broadcast_to(jax.nn.one_hot(edge_type, n_types, dtype=jnp.float32),
                            (batch, n_edges, n_types))


def check_edges(edges: jax.Array, inputs: jax.Array, n_types: int) -> None:
    """Raises ValueError unless `edges` is [B, N(N-1), K] for `inputs` [B, N, T, D]."""
    b, n = inputs.shape[:2]
    expected = (b, n * (n - 1), n_types)
    if edges.shape != expected:
        raise ValueError(f"edges must be [B, E, K] = {expected}, got shape {edges.shape}")


def _output_mlp(x: jax.Array, hidden: int, out: int, dropout: float, train: bool,
                compute_dtype: str = "float32") -> jax.Array:
    """Linear -> ReLU -> dropout -> Linear -> ReLU -> dropout -> Linear (in a compact scope)."""
    drop = nn.Dropout(dropout)
    cd = compute_dtype
    x = drop(hidden_relu(torch_dense(hidden, x.shape[-1], name="out1", compute_dtype=cd)(x), cd),
             deterministic=not train)
    x = drop(hidden_relu(torch_dense(hidden, hidden, name="out2", compute_dtype=cd)(x), cd),
             deterministic=not train)
    return torch_dense(out, hidden, name="out3", compute_dtype=cd)(x)


class _MLPDecoderStep(nn.Module):
    """One Markovian step x_t -> x_{t+1} = x_t + f(x_t, messages), as a scan body."""

    hidden: int
    n_edge_types: int
    skip_first: bool
    dropout: float
    train: bool
    compute_dtype: str = "float32"
    steps: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, iteration: jax.Array, starts: jax.Array, edges: jax.Array):
        """One step of one batch chunk: scan index c * steps + s is step s of chunk c.

        x [b, blocks, N, D] (carry), iteration: the scan index; starts [b, C,
        blocks, N, D] and edges [b, C, 1, E, K] of all C chunks -> (x_next, x_next).
        """
        chunk, s = iteration // self.steps, iteration % self.steps
        x = jnp.where(s == 0, lax.dynamic_index_in_dim(starts, chunk, 1, keepdims=False), x)
        edges = lax.dynamic_index_in_dim(edges, chunk, 1, keepdims=False)
        n = x.shape[-2]
        _, receivers = graphs.fully_connected_index(n)
        messages = TypedMessages(self.hidden, self.n_edge_types, self.skip_first, nn.relu,
                                 self.dropout, self.compute_dtype, name="messages")(
            x, edges, train=self.train)
        incoming = graphs.edge_to_node(messages, receivers, n, reduce="sum",
                                       indices_are_sorted=True)
        delta = _output_mlp(jnp.concatenate([x, incoming], axis=-1), self.hidden, x.shape[-1],
                            self.dropout, self.train, self.compute_dtype)
        x_next = x + delta  # float32 in every compute dtype: the state must not drift
        return x_next, x_next


class MLPDecoder(nn.Module):
    """Markovian MLP decoder (269,828 parameters at D=4, H=256, K=2).

    Ground truth is fed every P = `teaching.period` frames and the model's own
    predictions in between (`rollouts.MARKOVIAN`): the T-1 targets split into
    blocks of P frames, each block rolled out from its first ground-truth
    frame. All blocks run in parallel inside one `lax.scan` over the steps.

    Work at the paper's size (N=5, T=49, D=4, H=256, K=2, P=10), forward, per
    sample: 6.6 MFLOP per step (80% in the message MLPs' second layers) x 50
    steps (5 blocks x 10) = 331 MFLOP; with the MLP encoder (21 MFLOP) 352 MFLOP,
    about 1.06 GFLOP forward + backward (the reference counts 1.08).
    `compute_dtype` ("float32" or "bfloat16") is the dtype of all products;
    `remat` recomputes each step's activations in the backward pass instead of
    storing them (less memory, more arithmetic), except the message products
    with `remat_keeps_messages` (`maybe_remat`). `chunk_size` decodes the batch
    in chunks of at least that many examples, one after the other in the same
    scan (`batch_chunks`): the same results, less activation memory.
    """

    hidden: int = 256
    n_edge_types: int = 2
    skip_first: bool = False
    dropout: float = 0.0
    compute_dtype: str = "float32"
    remat: bool = False
    remat_keeps_messages: bool = False
    chunk_size: int | None = None
    protocol: ClassVar[Protocol] = MARKOVIAN
    reads_graph: ClassVar[bool] = True
    learned: ClassVar[bool] = True

    @classmethod
    def from_config(cls, config, physics=None) -> "MLPDecoder":
        """The decoder a `model.ModelConfig` describes (learned: `physics` is not used)."""
        return cls(**_decoder_fields(config))

    @nn.compact
    def __call__(self, inputs: jax.Array, edges: jax.Array, *, train: bool,
                 teaching: Teaching | None = None) -> jax.Array:
        """inputs [B, N, T, D], edges [B, E, K] -> predictions [B, N, T-1, D].

        Args:
          teaching: which steps read ground truth (default: the training rollout,
            ground truth every 10 steps). Markovian, the decoder rolls every
            ground-truth block out at once, so the ground-truth steps must be
            evenly spaced: a burn-in of 1 (any period) or a period of 1.
        """
        check_trajectories(inputs)
        check_compute_dtype(self.compute_dtype)
        check_edges(edges, inputs, self.n_edge_types)
        b, n, t, d = inputs.shape
        if t < 2:
            raise ValueError(f"inputs must have T >= 2 frames, got shape {inputs.shape}")
        teaching = self.protocol.training(t) if teaching is None else teaching
        teaching.check()
        if teaching.burn_in > 1 and teaching.period != 1:
            raise ValueError(f"the Markovian decoder reads ground truth at evenly spaced steps: "
                             f"a burn-in of 1 or a period of 1, got {teaching}")
        period = 1 if teaching.burn_in > 1 else teaching.period or t - 1
        steps, n_blocks = min(period, t - 1), math.ceil((t - 1) / period)
        starts = jnp.swapaxes(inputs[:, :, :n_blocks * period:period], 1, 2)
        chunks = batch_chunks(b, self.chunk_size)
        starts, chunk_edges = _split_chunks(starts, chunks), _split_chunks(edges[:, None], chunks)
        body = maybe_remat(_MLPDecoderStep, self.remat, self.remat_keeps_messages)
        rollout = nn.scan(body, variable_broadcast="params",
                          in_axes=(0, nn.broadcast, nn.broadcast),
                          split_rngs={"params": False, "dropout": True}, length=chunks * steps)
        _, ys = rollout(self.hidden, self.n_edge_types, self.skip_first, self.dropout, train,
                        self.compute_dtype, steps, name="step")(
            starts[:, 0], jnp.arange(chunks * steps), starts, chunk_edges)
        # ys [C * S, b, blocks, N, D]: entry (c * S + s, r, block) is example r * C + c's
        # prediction of frame block * P + s + 1.
        ys = ys.reshape((chunks, steps) + ys.shape[1:])
        predictions = jnp.transpose(ys, (2, 0, 4, 3, 1, 5)).reshape(b, n, n_blocks * steps, d)
        return predictions[:, :, :t - 1]


class _RNNDecoderStep(nn.Module):
    """One recurrent step: messages from hidden states, GRU update, residual output."""

    hidden: int
    n_edge_types: int
    skip_first: bool
    dropout: float
    train: bool
    compute_dtype: str = "float32"
    message_scale: str = "incoming"

    @nn.compact
    def __call__(self, carry, xs, edges: jax.Array):
        """One step of one batch chunk (chunk-major iteration order).

        carry (hidden [b, N, H], last prediction [b, N, D]); xs (frame [b, N, D],
        use the frame?, first step of a chunk?, chunk index); edges [b, C, E, K]
        of all C chunks.
        """
        hidden, last_prediction = carry
        frame, use_frame, first, chunk = xs
        hidden = jnp.where(first, jnp.zeros_like(hidden), hidden)  # a new chunk starts afresh
        edges = lax.dynamic_index_in_dim(edges, chunk, 1, keepdims=False)
        x = jnp.where(use_frame, frame, last_prediction)
        n = x.shape[-2]
        _, receivers = graphs.fully_connected_index(n)
        typed = TypedMessages(self.hidden, self.n_edge_types, self.skip_first, jnp.tanh,
                              self.dropout, self.compute_dtype, name="messages")
        # Average over the active types, then divide the sum over incoming edges
        # by N-1 or, as the reference, by D (RNNDecoder.message_scale).
        messages = typed(hidden, edges, train=self.train) / typed.n_active_types
        divisor = n - 1 if self.message_scale == "incoming" else x.shape[-1]
        incoming = graphs.edge_to_node(messages, receivers, n, reduce="sum",
                                       indices_are_sorted=True) / divisor
        hidden = MessageGRUCell(self.hidden, self.compute_dtype, name="gru")(x, incoming, hidden)
        prediction = x + _output_mlp(hidden, self.hidden, x.shape[-1], self.dropout, self.train,
                                     self.compute_dtype)
        return (hidden, prediction), prediction


class RNNDecoder(nn.Module):
    """Recurrent (GRU-style) decoder (727,300 parameters at D=4, H=256, K=2).

    Each step computes messages from the objects' hidden states, aggregates them,
    updates each hidden state with a GRU whose inputs are the current frame and
    the aggregated message, and predicts x_{t+1} = x_t + MLP(hidden). The input
    at step s is the ground-truth frame s where `teaching` says so (in training
    the first `burn_in` steps, `rollouts.RECURRENT`) and the previous prediction
    otherwise; `lax.scan` over the T-1 steps.

    `message_scale` is the divisor of the sum of incoming messages:
    "incoming" (the default) divides by the number of incoming edges N-1, an
    average; "state_dims" divides by the state dimension D, as the reference
    does (its code divides by the size of the input's last axis, meant as an
    average). The two agree at the paper's N=5, D=4 and differ at N=10 (9 vs 4).
    `compute_dtype` ("float32" or "bfloat16") is the dtype of all products;
    `remat` recomputes each step's activations in the backward pass instead of
    storing them (less memory, more arithmetic), except the message products
    with `remat_keeps_messages` (`maybe_remat`). `chunk_size` as in MLPDecoder
    (slower here: the 48 steps become 48 x C steps of smaller products).
    """

    hidden: int = 256
    n_edge_types: int = 2
    skip_first: bool = False
    dropout: float = 0.0
    compute_dtype: str = "float32"
    remat: bool = False
    remat_keeps_messages: bool = False
    message_scale: str = "incoming"
    chunk_size: int | None = None
    protocol: ClassVar[Protocol] = RECURRENT
    reads_graph: ClassVar[bool] = True
    learned: ClassVar[bool] = True

    @classmethod
    def from_config(cls, config, physics=None) -> "RNNDecoder":
        """The decoder a `model.ModelConfig` describes (learned: `physics` is not used)."""
        return cls(**_decoder_fields(config), message_scale=config.rnn_message_scale)

    @nn.compact
    def __call__(self, inputs: jax.Array, edges: jax.Array, *, train: bool,
                 teaching: Teaching | None = None) -> jax.Array:
        """inputs [B, N, T, D], edges [B, E, K] -> predictions [B, N, T-1, D].

        Args:
          teaching: which steps read ground truth, any `Teaching` (default: the
            training rollout, a burn-in of T - 10 steps, at least 1). The
            reference's loop tests `s <= burn_in`, i.e. feeds one more
            ground-truth input than the number it is given: its 49-frame
            training rollouts are ``Teaching(burn_in=40)``.
        """
        check_trajectories(inputs)
        check_edges(edges, inputs, self.n_edge_types)
        check_compute_dtype(self.compute_dtype)
        if self.message_scale not in RNN_MESSAGE_SCALES:
            raise ValueError(f"message_scale must be one of {RNN_MESSAGE_SCALES}, "
                             f"got {self.message_scale!r}")
        b, n, t, d = inputs.shape
        if t < 2:
            raise ValueError(f"inputs must have T >= 2 frames, got shape {inputs.shape}")
        teaching = self.protocol.training(t) if teaching is None else teaching
        chunks, steps = batch_chunks(b, self.chunk_size), t - 1
        # Iteration c * (T-1) + s is step s of chunk c: frames [C * (T-1), b, N, D].
        frames = jnp.moveaxis(_split_chunks(inputs[:, :, :steps], chunks), (1, 3), (0, 1))
        frames = frames.reshape((chunks * steps,) + frames.shape[2:])
        step_of = np.tile(np.arange(steps), chunks)
        xs = (frames, jnp.asarray(teaching.ground_truth(steps)[step_of]), jnp.asarray(step_of == 0),
              jnp.asarray(np.repeat(np.arange(chunks, dtype=np.int32), steps)))
        carry = (jnp.zeros((b // chunks, n, self.hidden), inputs.dtype),
                 jnp.zeros_like(frames[0]))
        body = maybe_remat(_RNNDecoderStep, self.remat, self.remat_keeps_messages)
        rollout = nn.scan(body, variable_broadcast="params",
                          in_axes=(0, nn.broadcast), length=chunks * steps,
                          split_rngs={"params": False, "dropout": True})
        _, ys = rollout(self.hidden, self.n_edge_types, self.skip_first, self.dropout, train,
                        self.compute_dtype, self.message_scale, name="step")(
            carry, xs, _split_chunks(edges, chunks))
        # ys [C * (T-1), b, N, D] -> [b, C, N, T-1, D] -> [B, N, T-1, D], example r * C + c.
        ys = ys.reshape((chunks, steps) + ys.shape[1:])
        return jnp.transpose(ys, (2, 0, 3, 1, 4)).reshape(b, n, steps, d)
