"""bf16 products by operand layout, and the MLP decoder's message pass in two layouts.

    python benchmarks/layouts.py
    GLIBC_TUNABLES=glibc.malloc.hugetlb=1 python benchmarks/layouts.py   # fewer page faults

1. A [rows, H] x [H, H]-sized product (rows = 100 B, the message MLPs' shape) with its
   operands laid out each way a weight gradient or a feature-major forward pass could
   meet them: which layouts XLA on this CPU runs on its fast path. "a" and "g" are
   [rows, H] (row-major, as the model's activations), "a_t" and "g_t" [H, rows].
2. One decoder step's message pass (springs 5 shapes: B examples x 5 rollout blocks x 20
   edges, H, bf16, skip_first), forward and backward without remat: the library's
   `TypedMessages` + `graphs.edge_to_node` against the same parameters with the edge
   arrays feature-major ([H, rows]: every product in a fast layout, no transposes). The
   values and gradients are compared (they agree to bf16 rounding).

Outputs of a jitted call are fresh buffers whose pages fault in on first write
(BENCHMARKS.md, 2026-12-07): the products here write at most [rows, H] float32.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hlo import best_seconds  # noqa: E402


def product_layouts(rows: int, width: int, repeats: int) -> dict[str, float]:
    """GFLOP/s of a^T g-sized bf16 products (float32 sums) with each operand layout."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    key_a, key_g, key_w = jax.random.split(jax.random.key(0), 3)
    a = jax.random.normal(key_a, (rows, width)).astype(jnp.bfloat16)
    g = jax.random.normal(key_g, (rows, width)).astype(jnp.bfloat16)
    w = jax.random.normal(key_w, (width, width)).astype(jnp.bfloat16)
    a_t, g_t = jnp.asarray(a.T), jnp.asarray(g.T)  # materialised [H, rows]

    def contract(lhs_axis, rhs_axis):
        return jax.jit(lambda x, y: lax.dot_general(
            x, y, (((lhs_axis,), (rhs_axis,)), ((), ())), preferred_element_type=jnp.float32))

    cases = {
        "a @ w (forward, row-major)": (contract(1, 0), a, w),
        "w^T-stored @ a_t (forward, feature-major)": (contract(1, 0), w, a_t),
        "a^T g (weight gradient as the arrays lie)": (contract(0, 0), a, g),
        "a_t @ g (first operand already transposed)": (contract(1, 0), a_t, g),
        "a_t g_t^T (both feature-major)": (contract(1, 1), a_t, g_t),
    }
    flops = 2 * rows * width * width
    return {name: flops / best_seconds(fn, x, y, repeats=repeats) / 1e9
            for name, (fn, x, y) in cases.items()}


def message_layouts(batch: int, hidden: int, repeats: int) -> dict[str, float]:
    """Seconds of one message pass, forward and backward, in each layout; checks values."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    from jax import lax

    from nri_jax import graphs
    from nri_jax.gnn.rgcn import TypedMessages
    from nri_jax.nn import mixed_matmul

    blocks, n, d = 5, 5, 4
    senders, receivers = graphs.fully_connected_index(n)
    keys = jax.random.split(jax.random.key(1), 4)
    x = jax.random.normal(keys[0], (batch, blocks, n, d))
    edges = jax.nn.softmax(jax.random.normal(keys[1], (batch, 1, n * (n - 1), 2)), -1)
    cotangent = jax.random.normal(keys[2], (batch, blocks, n, hidden)) * 1e-2
    layer = TypedMessages(hidden, 2, True, nn.relu, 0.0, "bfloat16")
    params = layer.init(keys[3], x, edges)

    def row_major(p, x):
        incoming = graphs.edge_to_node(layer.apply(p, x, edges), receivers, n,
                                       indices_are_sorted=True)
        return jnp.sum(incoming * cotangent), incoming

    @jax.custom_vjp
    def product_t(w, h_t):  # w [H_in, H_out], h_t [H_in, ...] -> [H_out, ...], bf16 products
        return product_t_fwd(w, h_t)[0]

    def product_t_fwd(w, h_t):
        h16 = h_t.astype(jnp.bfloat16).reshape(h_t.shape[0], -1)
        out = jnp.dot(w.T.astype(jnp.bfloat16), h16, preferred_element_type=jnp.float32)
        return out.reshape((w.shape[1],) + h_t.shape[1:]), (w.astype(jnp.bfloat16), h16)

    def product_t_bwd(residuals, g_t):
        w16, h16 = residuals
        g16 = g_t.astype(jnp.bfloat16).reshape(g_t.shape[0], -1)
        dh = jnp.dot(w16, g16, preferred_element_type=jnp.float32)
        dw_t = lax.dot_general(g16, h16, (((1,), (1,)), ((), ())),
                               preferred_element_type=jnp.float32)
        return dw_t.T, dh.reshape((w16.shape[0],) + g_t.shape[1:])

    product_t.defvjp(product_t_fwd, product_t_bwd)

    def feature_major(p, x):
        q = p["params"]
        w1, b1 = q["first_kernel"][1], q["first_bias"][1]
        w2, b2 = q["second_kernel"][1], q["second_bias"][1]
        per_node_s = jnp.moveaxis(mixed_matmul(x, w1[:d]), -1, 0)  # [H, B, blocks, N]
        per_node_r = jnp.moveaxis(mixed_matmul(x, w1[d:]), -1, 0)
        first = (jnp.take(per_node_s, senders, axis=-1) + jnp.take(per_node_r, receivers, axis=-1)
                 + b1[:, None, None, None])
        second = product_t(w2, nn.relu(first))
        messages = nn.relu(second + b2[:, None, None, None]) * jnp.moveaxis(edges[..., 1:], -1, 0)
        incoming = messages.reshape(hidden, batch, blocks, n, n - 1).sum(-1)
        return jnp.sum(jnp.moveaxis(incoming, 0, -1) * cotangent), jnp.moveaxis(incoming, 0, -1)

    steps = {name: jax.jit(jax.value_and_grad(fn, argnums=(0, 1), has_aux=True))
             for name, fn in (("row-major (the library)", row_major),
                              ("feature-major", feature_major))}
    (_, want), (want_p, want_x) = steps["row-major (the library)"](params, x)
    (_, got), (got_p, got_x) = steps["feature-major"](params, x)
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(got_x, want_x, rtol=1e-2, atol=1e-4)
    np.testing.assert_allclose(got_p["params"]["second_kernel"][1],
                               want_p["params"]["second_kernel"][1], rtol=1e-2, atol=1e-3)
    return {name: best_seconds(step, params, x, repeats=repeats) for name, step in steps.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    rows = 100 * args.batch
    print(f"bf16 products, {rows} x {args.hidden} operands (GFLOP/s, best of {args.repeats}):")
    for name, rate in product_layouts(rows, args.hidden, args.repeats).items():
        print(f"  {name:45s} {rate:7.0f}")
    print(f"message pass of one decoder step, B={args.batch} H={args.hidden}, forward + backward "
          f"(ms, best of {args.repeats}; values checked equal):")
    for name, seconds in message_layouts(args.batch, args.hidden, args.repeats).items():
        print(f"  {name:45s} {seconds * 1e3:7.2f}")


if __name__ == "__main__":
    main()
