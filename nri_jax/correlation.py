"""The paper's correlation baselines for edge recovery, "Corr. (path)" and "Corr. (LSTM)".

How far do plain statistics of the trajectories go? For every directed edge
(i <- j) the encoder takes the Pearson correlation over time between the two
objects' trajectories, one per state dimension (x with x, y with y, ... : D
numbers), and a small MLP maps them to edge-type logits. Trained on the true
labels (`--method supervised`) it is the learned-threshold classifier of the
paper's baseline; it cannot see anything a correlation does not.

"Corr. (LSTM)" correlates, instead of the trajectories, the hidden states of the
single LSTM baseline (`lstm.LSTMDecoder`, one LSTM per object) trained on
prediction beforehand: H correlations per edge, one per hidden unit. It is a
second stage on top of a trained LSTM run, whose parameters the model's own
decoder holds (`--decoder lstm-single --init-from LSTM_RUN --init-parts
decoder`); the classifier alone learns, the LSTM stays as it was trained.
"""

from __future__ import annotations

from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from nri_jax import graphs
from nri_jax.encoders import check_trajectories
from nri_jax.lstm import LSTMDecoder
from nri_jax.nn import reference_dense

# Added to every variance before dividing: a constant coordinate (an object at rest)
# correlates 0 with anything instead of giving NaN.
VARIANCE_FLOOR = 1e-8


def pair_correlations(inputs: jax.Array) -> jax.Array:
    """Per-dimension Pearson correlations over time of every edge's two objects.

    Args:
      inputs: [B, N, T, D] trajectories.

    Returns:
      [B, E, D]: entry (b, e, d) correlates dimension d of the sender and of the
      receiver of edge e (`graphs.fully_connected_index` order) over the T frames.
    """
    check_trajectories(inputs)
    centred = inputs - jnp.mean(inputs, axis=2, keepdims=True)
    scaled = centred * jax.lax.rsqrt(jnp.mean(centred ** 2, axis=2, keepdims=True)
                                     + VARIANCE_FLOOR)
    senders, receivers = graphs.fully_connected_index(inputs.shape[1])
    return jnp.mean(scaled[:, senders] * scaled[:, receivers], axis=2)


class CorrelationEncoder(nn.Module):
    """Correlations [B, E, F] -> MLP (F -> H -> H, ReLU) -> logits [B, E, K].

    Attributes:
      hidden: H, the classifier's width.
      n_edge_types: K.
    """

    hidden: int = 256
    n_edge_types: int = 2
    reads_decoder: ClassVar[bool] = False

    @classmethod
    def from_config(cls, config) -> "CorrelationEncoder":
        """The encoder a `model.ModelConfig` describes (its width and edge types)."""
        return cls(hidden=config.encoder_hidden, n_edge_types=config.n_edge_types)

    def correlations(self, inputs: jax.Array) -> jax.Array:
        """inputs [B, N, T, D] -> [B, E, D], the trajectories' `pair_correlations`."""
        return pair_correlations(inputs)

    @nn.compact
    def __call__(self, inputs: jax.Array, *, train: bool) -> jax.Array:
        """inputs [B, N, T, D] -> edge-type logits [B, E, K] (`train` changes nothing)."""
        del train
        x = self.correlations(inputs)
        for layer in range(2):
            x = nn.relu(reference_dense(self.hidden, name=f"fc{layer}")(x))
        return reference_dense(self.n_edge_types, name="out")(x)


class CorrelationLSTMEncoder(CorrelationEncoder):
    """"Corr. (LSTM)": correlations of a trained single LSTM's hidden states
    [B, E, H_lstm] -> the same classifier (module docstring).

    Attributes:
      lstm: the model's decoder, a single `lstm.LSTMDecoder` (shared: its
        parameters live, and are loaded, under the decoder's name). No gradient
        reaches it from the classifier's loss.
    """

    lstm: LSTMDecoder | None = None
    reads_decoder: ClassVar[bool] = True

    @classmethod
    def from_config(cls, config, decoder: LSTMDecoder) -> "CorrelationLSTMEncoder":
        """The encoder a `model.ModelConfig` describes, reading `decoder`'s states."""
        return cls(hidden=config.encoder_hidden, n_edge_types=config.n_edge_types, lstm=decoder)

    def correlations(self, inputs: jax.Array) -> jax.Array:
        """inputs [B, N, T, D] -> [B, E, H_lstm], correlations over the T-1 states
        after frames 0..T-2."""
        if not isinstance(self.lstm, LSTMDecoder):
            raise ValueError(f"CorrelationLSTMEncoder needs the single LSTM decoder, got "
                             f"{type(self.lstm).__name__}")
        return pair_correlations(jax.lax.stop_gradient(self.lstm.hidden_states(inputs)))
