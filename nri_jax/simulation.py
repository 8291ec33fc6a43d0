"""A decoder that knows the physics: the sampled edges drive the project's own simulator.

The paper's simulation decoder (its "NRI (sim.)" rows): instead of learned message
MLPs, the prediction of frame t+1 is the true simulator run from frame t for one
frame's worth of integration steps, with the interaction strengths the edge-type
weights imply. Being the same JAX code that generated the data, it is differentiable
with `jax.grad` with respect to the weights, and so trains the encoder alone: what the
encoder learns when the dynamics are known exactly. (The original implementation's
version stopped working after PyTorch 0.2.)

Edge (i <- j) with weights ``w[k]`` gets the expected coupling under them, exact for
one-hot weights:
  springs: spring constant ``k_ij = sum_k w[k] spring_constants[k]``;
  charged: ``c_ij = strength (w[1] - w[0])``, the expected sign of ``q_i q_j`` (type 1
  is like charges, ``q_i q_j = +1``, as the labels are ``int((q_i q_j + 1) / 2)``).
The force on i sums its incoming edges, so a directed (asymmetric) sample is allowed.
Features are normalised with the training extremes: a step denormalises the frame,
runs `sample_every` steps of `simulators.box` (forces, clipping, walls: the generator's
own) and normalises the result.
"""

from __future__ import annotations

import functools

from typing import Any, ClassVar, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from nri_jax import graphs
from nri_jax.decoders import check_edges
from nri_jax.encoders import check_trajectories
from nri_jax.rollouts import MARKOVIAN, Protocol, Teaching
from simulators import box, charged, datasets, springs

SIMULATED_SYSTEMS = ("springs", "charged")


class Physics(NamedTuple):
    """What a decoder must know about the data to simulate it.

    Attributes:
      system: "springs" or "charged" (the systems the decoder can simulate).
      settings: the dataset's physics settings as sorted ``(name, value)`` pairs
        (`simulators.datasets.physics_parameters`: every default filled in).
      stats: the training split's normalisation extremes (`datasets.NormStats`),
        None for Kuramoto data.
    """

    system: str
    settings: tuple[tuple[str, Any], ...]
    stats: tuple[float, float, float, float] | None

    @classmethod
    def of(cls, system: str, physics: dict | None, stats) -> "Physics":
        """From a system name, its (possibly partial) physics settings and the stats."""
        settings = datasets.physics_parameters(system, physics)
        return cls(system, tuple(sorted(settings.items())),
                   None if stats is None else tuple(float(s) for s in stats))

    @classmethod
    def of_dataset(cls, dataset) -> "Physics":
        """The physics of a `simulators.datasets.Dataset` (its metadata's or the defaults)."""
        return cls.of(dataset.system, dataset.metadata.get("physics"), dataset.stats)


def _check(physics: Physics | None, n_edge_types: int) -> None:
    """Raises ValueError when the decoder cannot simulate `physics` with these edge types."""
    if physics is None:
        raise ValueError("the simulation decoder needs the data's physics: build the model as "
                         "NRI(config, physics=simulation.Physics.of_dataset(dataset))")
    if physics.system not in SIMULATED_SYSTEMS:
        raise ValueError(f"the simulation decoder simulates {SIMULATED_SYSTEMS}, "
                         f"not {physics.system!r}")
    settings = dict(physics.settings)
    types = len(settings["spring_constants"]) if physics.system == "springs" else 2
    if n_edge_types != types:
        raise ValueError(f"the simulation decoder on {physics.system} needs n_edge_types="
                         f"{types} (one per interaction the simulator knows), got {n_edge_types}")


def couplings(physics: Physics, edges: jax.Array) -> jax.Array:
    """Edge-type weights [B, E, K] -> the simulator's pair couplings [N, N, B].

    Row i, column j is the coupling of edge (i <- j): a spring constant (springs) or
    ``k q_i q_j`` (charged); the diagonal is 0.
    """
    settings = dict(physics.settings)
    if physics.system == "springs":
        per_type = np.asarray(settings["spring_constants"], np.float64)
    else:
        per_type = settings["strength"] * np.array([-1.0, 1.0])
    values = jnp.einsum("bek,k->be", edges, per_type.astype(edges.dtype))
    return jnp.moveaxis(graphs.edge_list_to_matrix(values), 0, -1)


def advance(physics: Physics, pair_couplings: jax.Array, frame: jax.Array) -> jax.Array:
    """Simulates one frame ahead: normalised [B, N, 4] -> normalised [B, N, 4].

    `pair_couplings` [N, N, B] as `couplings` gives them.
    """
    settings = dict(physics.settings)
    force = springs.spring_forces if physics.system == "springs" else charged.coulomb_forces
    state = datasets.denormalise(frame, physics.stats)
    position, velocity = (jnp.moveaxis(state[..., s], 0, -1) for s in (slice(0, 2), slice(2, 4)))
    x, v = box.run(force, position, velocity, pair_couplings, n_frames=1,
                   sample_every=settings["sample_every"], box_size=settings["box_size"],
                   dt=settings["dt"], max_force=settings["max_force"])
    state = jnp.concatenate([jnp.moveaxis(x[0], -1, 0), jnp.moveaxis(v[0], -1, 0)], axis=-1)
    return datasets.normalise(state, physics.stats)


@jax.custom_vjp
def finite_cotangent(x: jax.Array) -> jax.Array:
    """The identity, whose backward pass sets non-finite cotangent entries to 0.

    Close encounters of charged particles make the simulator's Jacobians large
    (the force ~ 1/r^2, its derivative ~ 1/r^3 in the component the clip leaves
    alone), and their product over the frames of an open-loop rollout can
    overflow float32: one inf or NaN would then reach every parameter through
    the optimiser. Guarding each frame's inputs drops the gradient of the
    encounter that overflowed (the path through it says nothing usable about the
    couplings) and keeps the rest of the batch's.
    """
    return x


finite_cotangent.defvjp(lambda x: (x, None),
                        lambda _, g: (jnp.where(jnp.isfinite(g), g, jnp.zeros_like(g)),))


class SimulationDecoder(nn.Module):
    """Markovian decoder without parameters: each step is the true simulator.

    Step s predicts frame s+1 from the ground-truth frame s or its own previous
    prediction (`teaching`, any rule); the frames are simulated one after the
    other, each rematerialised in the backward pass (only the frames are kept:
    a frame is `sample_every` integration steps).

    Attributes:
      physics: the data's system, physics settings and normalisation (`Physics`).
      n_edge_types: K; must be the number of interactions the simulator knows
        (springs: one per spring constant; charged: 2).
    """

    physics: Physics | None = None
    n_edge_types: int = 2
    protocol: ClassVar[Protocol] = MARKOVIAN
    reads_graph: ClassVar[bool] = True
    learned: ClassVar[bool] = False

    @classmethod
    def from_config(cls, config, physics: Physics | None = None) -> "SimulationDecoder":
        """The decoder a `model.ModelConfig` describes, for data with `physics`."""
        return cls(physics=physics, n_edge_types=config.n_edge_types)

    def __call__(self, inputs: jax.Array, edges: jax.Array, *, train: bool,
                 teaching: Teaching | None = None) -> jax.Array:
        """inputs [B, N, T, D], edges [B, E, K] -> predictions [B, N, T-1, D].

        `train` changes nothing (nothing is learned, nothing is random).
        """
        del train
        _check(self.physics, self.n_edge_types)
        check_trajectories(inputs)
        check_edges(edges, inputs, self.n_edge_types)
        if self.physics.stats is None or inputs.shape[-1] != 4:
            raise ValueError(f"the simulation decoder needs normalised (x, y, vx, vy) features "
                             f"and their statistics, got shape {inputs.shape}, stats "
                             f"{self.physics.stats}")
        t = inputs.shape[2]
        teaching = self.protocol.training(t) if teaching is None else teaching
        pair_couplings = couplings(self.physics, edges)
        step = jax.checkpoint(functools.partial(advance, self.physics))

        def body(previous, xs):
            truth, read_truth = xs
            predicted = step(finite_cotangent(pair_couplings),
                             finite_cotangent(jnp.where(read_truth, truth, previous)))
            return predicted, predicted

        frames = jnp.moveaxis(inputs, 2, 0)[:-1]  # [T-1, B, N, D], frame s read by step s
        _, ys = lax.scan(body, frames[0], (frames, jnp.asarray(teaching.ground_truth(t - 1))))
        return jnp.moveaxis(ys, 0, 2)
