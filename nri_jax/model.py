"""The NRI variational autoencoder: encode -> sample edge types -> decode.

    variables = model.init({"params": k0, "gumbel": k1, "dropout": k2}, x, train=False)
    output, updates = model.apply(variables, x, train=True,
                                  rngs={"gumbel": k1, "dropout": k2}, mutable=["batch_stats"])

RNG streams: 'gumbel' (edge samples; needed in eval too, where samples are hard)
and 'dropout' (training only, when a dropout rate is > 0). BatchNorm running
statistics live in 'batch_stats' and are updated only when `train` is True.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import flax.linen as nn
import jax

from nri_jax import attention, correlation, decoders, encoders, lstm, sampling, simulation
from nri_jax.nn import COMPUTE_DTYPES
from nri_jax.rollouts import Protocol, Teaching

ENCODERS = {"mlp": encoders.MLPEncoder, "cnn": encoders.CNNEncoder,
            "attention": attention.AttentionEncoder,
            "correlation": correlation.CorrelationEncoder,
            "correlation-lstm": correlation.CorrelationLSTMEncoder}
DECODERS = {"mlp": decoders.MLPDecoder, "rnn": decoders.RNNDecoder,
            "simulation": simulation.SimulationDecoder, "lstm-single": lstm.LSTMDecoder,
            "lstm-joint": lstm.JointLSTMDecoder}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture of the NRI model (defaults: the paper's springs setting).

    Attributes:
      n_edge_types: K >= 2 edge types.
      encoder: "mlp", "cnn", "attention" (per-object trajectory embeddings,
        rounds of multi-head attention over the other objects, then the
        edge head: `attention.AttentionEncoder`), "correlation" (the paper's
        correlation baseline:
        per-dimension correlations of each pair's trajectories into a small MLP,
        `correlation.CorrelationEncoder`; train it with method "supervised") or
        "correlation-lstm" (the same on the hidden states of a trained single
        LSTM, which the decoder "lstm-single" holds; `correlation`'s docstring).
      encoder_hidden: encoder width H.
      encoder_dropout: dropout rate in the encoder's MLP blocks (and CNN).
      factor: factor-graph encoder (edge -> node -> edge round) if True.
      decoder: "mlp" (Markovian), "rnn" (recurrent) or "simulation" (the true
        simulator driven by the edge weights, no parameters; springs and
        charged data: `simulation.SimulationDecoder`); or a graph-free
        baseline, "lstm-single" or "lstm-joint" (`lstm.LSTMDecoder`), trained
        alone with a decoder-only method.
      decoder_hidden: decoder width H.
      decoder_dropout: dropout rate in the decoder.
      skip_first: edge type 0 means "no interaction" in the decoder.
      tau: Gumbel-softmax temperature.
      hard: straight-through hard samples in training (eval is always hard).
      compute_dtype: "float32" or "bfloat16", the dtype of the large matrix
        products (encoder MLPs / convolutions, message and output MLPs, GRU),
        which accumulate in float32 either way. Parameters, optimiser state,
        BatchNorm, the residual update, sampling and losses stay float32.
      rnn_message_scale: the recurrent decoder's divisor of the summed incoming
        messages: "incoming" (N-1, an average) or "state_dims" (D, as the
        reference; the paper presets use it). Equal at N=5, D=4.
      decoder_chunk_size: decode the batch in chunks of at least this many
        examples, one chunk after the other inside the decoder's scan (the
        most chunks that divide the batch evenly; None: the whole batch at
        once). Results are the same up to the order of float sums, with about
        half the activation memory for chunks of 32 at batch 128. Speed depends
        on the CPU's caches and the width: the MLP decoder at hidden 256 ran
        faster when a chunk's edge arrays fit one core's L2 (bf16 1.28-1.5x in
        chunks of 32 on an Intel Xeon with 2 MiB of L2 per core, 1.15x since
        `nn.hidden_relu` sped up the whole batch; 1.12-1.16x,
        float32 1.14-1.23x, in chunks of 16 on a Zen 4 with 1 MiB), not at
        hidden 128; the recurrent decoder is slower (BENCHMARKS.md, "Same run as
        the original on an Intel Xeon with AMX; decoding in chunks", "Decoding
        in chunks and keeping the message products on a Zen 4").
      remat: recompute the decoder's per-step activations in the backward pass
        instead of storing them (the default). It costs about a third more
        decoder arithmetic and saves more time than that: without it every
        decoder step writes its activations into stacked buffers that the
        backward pass slices again (and, in bfloat16, XLA rewrites the whole
        stacked buffer at each step). Measured on 2 CPU cores, batch 128:
        1.10-1.33x faster in float32, 1.14-2.38x in bfloat16, XLA temporaries
        0.9-1.8 GB -> 0.1-0.24 GB for the MLP and RNN decoders (BENCHMARKS.md,
        "Same run as the original"). Results agree to float32 round-off.
      remat_keeps_messages: with `remat`, keep the message MLPs' second-layer
        outputs (float32, one [rows, H] array per edge type and decoder step)
        for the backward pass, so it does not recompute the decoder's largest
        products: more memory (about 240 MiB at the paper's size, batch 128)
        for fewer products. It pays where products are slow next to memory
        traffic: float32 MLP+MLP 1.04-1.13x faster on a Zen 4 (1.01-1.04x on
        an Intel Xeon), bfloat16 not (0.97-1.02x on the Zen 4, 0.59x on the
        Intel Xeon with AMX; BENCHMARKS.md, "Decoding in chunks and keeping
        the message products on a Zen 4", "Keeping the message products on the
        Intel Xeon"). The same results.
    """

    n_edge_types: int = 2
    encoder: str = "mlp"
    encoder_hidden: int = 256
    encoder_dropout: float = 0.0
    factor: bool = True
    decoder: str = "mlp"
    decoder_hidden: int = 256
    decoder_dropout: float = 0.0
    skip_first: bool = False
    tau: float = 0.5
    hard: bool = False
    compute_dtype: str = "float32"
    remat: bool = True
    remat_keeps_messages: bool = False
    rnn_message_scale: str = "incoming"
    decoder_chunk_size: int | None = None

    def __post_init__(self):
        checks = [
            ("n_edge_types", self.n_edge_types >= 2, ">= 2"),
            ("encoder", self.encoder in ENCODERS, f"one of {sorted(ENCODERS)}"),
            ("decoder", self.decoder in DECODERS, f"one of {sorted(DECODERS)}"),
            ("encoder_hidden", self.encoder_hidden > 0, "> 0"),
            ("decoder_hidden", self.decoder_hidden > 0, "> 0"),
            ("encoder_dropout", 0 <= self.encoder_dropout < 1, "in [0, 1)"),
            ("decoder_dropout", 0 <= self.decoder_dropout < 1, "in [0, 1)"),
            ("tau", self.tau > 0, "> 0"),
            ("compute_dtype", self.compute_dtype in COMPUTE_DTYPES,
             f"one of {sorted(COMPUTE_DTYPES)}"),
            ("rnn_message_scale", self.rnn_message_scale in decoders.RNN_MESSAGE_SCALES,
             f"one of {decoders.RNN_MESSAGE_SCALES}"),
            ("decoder_chunk_size", self.decoder_chunk_size is None or self.decoder_chunk_size > 0,
             "positive or None"),
            ("remat_keeps_messages", self.remat or not self.remat_keeps_messages,
             "False without remat (it chooses what remat keeps)"),
        ]
        for name, ok, requirement in checks:
            if not ok:
                raise ValueError(f"ModelConfig.{name} must be {requirement}, "
                                 f"got {getattr(self, name)!r}")


class NRIOutput(NamedTuple):
    """What one forward pass returns.

    Attributes:
      logits: [B, E, K] encoder logits.
      probs: [B, E, K] softmax(logits), the edge posterior q(z | x).
      edges: [B, E, K] the edge weights the decoder used (sample or given graph).
      predictions: [B, N, T'-1, D] predictions of frames 1..T'-1 of the decoder inputs.
    """

    logits: jax.Array
    probs: jax.Array
    edges: jax.Array
    predictions: jax.Array


class NRI(nn.Module):
    """Neural Relational Inference (Kipf et al., 2018).

    Attributes:
      config: the architecture.
      physics: the data's system, physics and normalisation
        (`simulation.Physics.of_dataset`), which the simulation decoder needs;
        the learned decoders ignore it.
    """

    config: ModelConfig
    physics: simulation.Physics | None = None

    def setup(self):
        c = self.config
        self.decoder = DECODERS[c.decoder].from_config(c, physics=self.physics)
        encoder = ENCODERS[c.encoder]
        # An encoder that reads the decoder (Corr. (LSTM)) shares it: one set of parameters.
        self.encoder = (encoder.from_config(c, decoder=self.decoder) if encoder.reads_decoder
                        else encoder.from_config(c))

    def __call__(self, inputs: jax.Array, *, train: bool, decoder_inputs: jax.Array | None = None,
                 edges: jax.Array | None = None, teaching: Teaching | None = None) -> NRIOutput:
        """Encodes `inputs`, samples edge types and decodes `decoder_inputs`.

        Args:
          inputs: [B, N, T, D] trajectories for the encoder.
          train: training mode (soft samples unless config.hard, dropout, batch
            statistics) or evaluation (hard samples, running statistics).
          decoder_inputs: [B, N, T', D] trajectories to predict (default: inputs).
          edges: [B, E, K] edge weights to decode with instead of a sample (the
            true-graph or full-graph baselines).
          teaching: which decoder steps read ground truth (`rollouts.Teaching`);
            default: the decoder's training rollout with the reference's 10
            prediction steps (`decoder_protocol(config).training`).

        Returns:
          NRIOutput.
        """
        logits = self.encode(inputs, train=train)
        if edges is None:
            edges = self.sample_edges(logits, train=train)
        decoder_inputs = inputs if decoder_inputs is None else decoder_inputs
        predictions = self.decode(decoder_inputs, edges, train=train, teaching=teaching)
        return NRIOutput(logits, jax.nn.softmax(logits, axis=-1), edges, predictions)

    def encode(self, inputs: jax.Array, *, train: bool) -> jax.Array:
        """inputs [B, N, T, D] -> edge-type logits [B, E, K]."""
        return self.encoder(inputs, train=train)

    def sample_edges(self, logits: jax.Array, *, train: bool) -> jax.Array:
        """Gumbel-softmax sample [B, E, K] from the 'gumbel' stream; always hard in eval."""
        hard = self.config.hard or not train
        return sampling.gumbel_softmax(self.make_rng("gumbel"), logits, tau=self.config.tau,
                                       hard=hard)

    def decode(self, inputs: jax.Array, edges: jax.Array, *, train: bool,
               teaching: Teaching | None = None) -> jax.Array:
        """inputs [B, N, T, D], edges [B, E, K] -> predictions [B, N, T-1, D]."""
        return self.decoder(inputs, edges, train=train, teaching=teaching)


def decoder_protocol(config: ModelConfig) -> Protocol:
    """The rollout protocol (training teaching, test) of the decoder `config` names."""
    return DECODERS[config.decoder].protocol
