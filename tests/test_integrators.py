"""Shared integrators, array helpers and the recording loop."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from simulators import integrators, recording


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_unrolled_sum_matches_numpy(axis):
    values = np.random.default_rng(0).normal(size=(3, 4, 5)).astype(np.float32)
    summed = jax.jit(integrators.unrolled_sum, static_argnames="axis")(values, axis=axis)
    np.testing.assert_allclose(summed, values.sum(axis=axis), rtol=1e-6)


def test_pairwise_differences_with_batch_axes():
    # float32 inputs: a float64 x would be rounded first, and x_i - x_j cancels that
    # rounding's error into an unbounded relative error of the difference.
    x = np.random.default_rng(1).normal(size=(4, 2, 3)).astype(np.float32)  # [N, D, S]
    diff = jax.jit(integrators.pairwise_differences)(x)
    assert diff.shape == (4, 4, 2, 3)
    for i in range(4):
        for j in range(4):
            np.testing.assert_allclose(diff[i, j], x[i] - x[j], rtol=1e-6)


def test_off_diagonal_mask_broadcasts_over_batch():
    mask = integrators.off_diagonal(3, batch_ndim=2)
    assert mask.shape == (3, 3, 1, 1)
    np.testing.assert_array_equal(mask[..., 0, 0], ~np.eye(3, dtype=bool))


def test_reflect_cases():
    x = jnp.array([5.3, -5.2, 5.3, 4.0, -5.0])
    v = jnp.array([1.0, -2.0, -1.5, 3.0, -1.0])
    rx, rv = jax.jit(integrators.reflect, static_argnames="box_size")(x, v, box_size=5.0)
    np.testing.assert_allclose(rx, [4.7, -4.8, 4.7, 4.0, -5.0], rtol=1e-6)
    # Leaving the box: velocity points back in; on or inside the wall: untouched.
    np.testing.assert_allclose(rv, [-1.0, 2.0, -1.5, 3.0, -1.0])


def test_box_euler_step_against_hand_computation():
    force = lambda x: 300.0 * x  # large: every component is clipped
    init, step = integrators.box_euler(force, dt=0.1, max_force=1.0, box_size=1.0)
    x = jnp.array([[0.5, -0.2]])
    v = jnp.array([[4.0, 0.0]])
    state = jax.jit(step)(init(x, v))
    # v = v + dt * clip(F) = (4.1, -0.1); x = x + dt v = (0.91, -0.21): inside the box.
    np.testing.assert_allclose(state.velocity, [[4.1, -0.1]], rtol=1e-6)
    np.testing.assert_allclose(state.position, [[0.91, -0.21]], rtol=1e-6)
    np.testing.assert_allclose(state.force, [[1.0, -1.0]])
    state = step(state)
    # v = (4.2, -0.2), x = (1.33, -0.23) -> reflected to (0.67, -0.23) with v_x = -4.2.
    np.testing.assert_allclose(state.position, [[0.67, -0.23]], rtol=1e-5)
    np.testing.assert_allclose(state.velocity, [[-4.2, -0.2]], rtol=1e-5)


def test_rk4_slope_is_fourth_order_taylor_for_linear_ode(x64):
    # dy/dt = a y: one RK4 step multiplies y by 1 + h + h^2/2 + h^3/6 + h^4/24 (h = a dt).
    a, dt, y = -1.3, 0.2, jnp.array([1.0, 2.0])
    slope = jax.jit(lambda y: integrators.rk4_slope(lambda z: a * z, y, dt))(y)
    h = a * dt
    np.testing.assert_allclose(y + dt * slope, y * (1 + h + h**2 / 2 + h**3 / 6 + h**4 / 24),
                               rtol=1e-14)


def test_rk4_slope_with_prepare_matches_numpy_rk4(x64):
    # dy/dt = cos(y) + 0.5, with sin/cos prepared once per stage.
    def numpy_rk4(y, dt):
        f = lambda z: np.cos(z) + 0.5
        k1 = f(y)
        k2 = f(y + dt / 2 * k1)
        k3 = f(y + dt / 2 * k2)
        k4 = f(y + dt * k3)
        return (k1 + 2 * k2 + 2 * k3 + k4) / 6

    y = np.array([0.3, 2.0, -1.0])
    slope = integrators.rk4_slope(lambda sc: sc[1] + 0.5, jnp.asarray(y), 0.3,
                                  prepare=lambda z: (jnp.sin(z), jnp.cos(z)))
    np.testing.assert_allclose(slope, numpy_rk4(y, 0.3), rtol=1e-14)


def test_record_keeps_every_kth_state_without_the_initial_one():
    count = lambda state: state + 1
    frames = jax.jit(functools.partial(recording.record, count, n_frames=4, sample_every=3))(
        jnp.zeros(2))
    np.testing.assert_array_equal(frames[:, 0], [3, 6, 9, 12])
    unrolled = recording.record(count, jnp.zeros(2), n_frames=4, sample_every=3, unroll=3)
    np.testing.assert_array_equal(unrolled, frames)


def test_record_from_start_includes_the_initial_state():
    frames = recording.record_from_start(lambda s: {"t": s["t"] + 1}, {"t": jnp.zeros(())},
                                         n_frames=4, sample_every=5)
    np.testing.assert_array_equal(frames["t"], [0, 5, 10, 15])


def test_batch_axis_moves():
    tree = {"a": jnp.zeros((7, 2, 3)), "b": jnp.zeros((7,))}
    last = integrators.batch_last(tree)
    assert last["a"].shape == (2, 3, 7) and last["b"].shape == (7,)
    assert integrators.batch_first(last)["a"].shape == (7, 2, 3)


def test_map_chunks_pads_the_last_chunk_and_drops_its_extra_rows():
    tree = {"x": jnp.arange(10.0), "z": jnp.arange(20.0).reshape(10, 2)}
    fn = lambda t: {"y": 2 * t["x"] + t["z"][:, 0] * t["z"][:, 1]}
    expected = fn(tree)["y"]
    for chunk_size in (3, 5, 10, 16):
        out = jax.jit(integrators.map_chunks, static_argnums=(0, 2))(fn, tree, chunk_size)
        np.testing.assert_array_equal(out["y"], expected)
