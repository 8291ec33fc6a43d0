"""Edge index and message passing against dense NumPy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nri_jax import graphs


@pytest.mark.parametrize("n", [2, 3, 5, 7])
def test_index_is_row_major_off_diagonal(n):
    senders, receivers = graphs.fully_connected_index(n)
    # Reference order: off-diagonal entries of an [N, N] matrix, row-major.
    expected = [(i, j) for i in range(n) for j in range(n) if j != i]
    assert list(zip(receivers.tolist(), senders.tolist())) == expected
    assert np.all(np.diff(receivers) >= 0)


def test_edge_matrix_round_trip_matches_labels_convention():
    rng = np.random.default_rng(0)
    matrix = rng.integers(0, 3, size=(2, 4, 4))
    labels = np.stack([m[~np.eye(4, dtype=bool)] for m in matrix])  # dataset convention
    as_list = jax.jit(graphs.edge_matrix_to_list)(jnp.asarray(matrix))
    np.testing.assert_array_equal(as_list, labels)
    back = jax.jit(graphs.edge_list_to_matrix)(as_list)
    np.testing.assert_array_equal(back, matrix * (1 - np.eye(4, dtype=int)))


def test_n_objects_from_edges():
    assert graphs.n_objects_from_edges(20) == 5
    assert graphs.n_objects_from_edges(2) == 2
    with pytest.raises(ValueError, match="n_edges"):
        graphs.n_objects_from_edges(7)
    with pytest.raises(ValueError, match="n_objects"):
        graphs.fully_connected_index(1)


def test_node_to_edge_against_explicit_indexing():
    rng = np.random.default_rng(1)
    b, n, f, fe = 3, 4, 2, 3
    nodes = rng.normal(size=(b, n, f))
    edge_feats = rng.normal(size=(b, n * (n - 1), fe))
    senders, receivers = graphs.fully_connected_index(n)
    out = jax.jit(lambda x, e: graphs.node_to_edge(x, senders, receivers, e))(
        jnp.asarray(nodes, jnp.float32), jnp.asarray(edge_feats, jnp.float32))
    expected = np.zeros((b, n * (n - 1), 2 * f + fe))
    e = 0
    for i in range(n):
        for j in range(n):
            if j != i:
                expected[:, e] = np.concatenate([nodes[:, j], nodes[:, i], edge_feats[:, e]], -1)
                e += 1
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def _dense_reference(edges, n, reduce):
    """Per receiver, reduce over the N-1 senders with an adjacency matrix (float64)."""
    b, _, f = edges.shape
    senders, receivers = graphs.fully_connected_index(n)
    incidence = np.zeros((n, n * (n - 1)))  # incidence[i, e] = 1 if edge e arrives at i
    incidence[receivers, np.arange(n * (n - 1))] = 1
    if reduce == "sum":
        return np.einsum("ie,bef->bif", incidence, edges)
    if reduce == "mean":
        return np.einsum("ie,bef->bif", incidence, edges) / incidence.sum(1)[:, None]
    masked = np.where(incidence[None, :, :, None] > 0, edges[:, None], -np.inf)
    return masked.max(axis=2)


@pytest.mark.parametrize("reduce", ["sum", "mean", "max"])
@pytest.mark.parametrize("n", [2, 5])
def test_edge_to_node_against_dense_reference(reduce, n):
    rng = np.random.default_rng(2)
    edges = rng.normal(size=(3, n * (n - 1), 4))
    _, receivers = graphs.fully_connected_index(n)
    fn = jax.jit(lambda e: graphs.edge_to_node(e, receivers, n, reduce=reduce))
    np.testing.assert_allclose(fn(jnp.asarray(edges, jnp.float32)),
                               _dense_reference(edges, n, reduce), rtol=1e-5, atol=1e-6)


def test_edge_to_node_on_other_axis_and_bad_reduce():
    rng = np.random.default_rng(3)
    edges = rng.normal(size=(6, 3, 2)).astype(np.float32)  # [E, B, F] for N=3, edge axis 0
    _, receivers = graphs.fully_connected_index(3)
    out = jax.jit(lambda e: graphs.edge_to_node(e, receivers, 3, axis=0))(edges)
    ref = _dense_reference(np.moveaxis(edges, 0, 1), 3, "sum")
    np.testing.assert_allclose(np.moveaxis(np.asarray(out), 0, 1), ref, rtol=1e-5)
    with pytest.raises(ValueError, match="reduce"):
        graphs.edge_to_node(edges, receivers, 3, reduce="median")


@pytest.mark.parametrize("n", [2, 3, 5])
def test_fully_connected_fast_path_equals_segment_sum(n):
    rng = np.random.default_rng(4)
    edges = jnp.asarray(rng.normal(size=(2, 3, n * (n - 1), 5)), jnp.float32)
    _, receivers = graphs.fully_connected_index(n)
    fast = jax.jit(graphs.sum_incoming_fully_connected, static_argnums=1)(edges, n)
    general = graphs.edge_to_node(edges, receivers, n, indices_are_sorted=True)
    # Two programs may add the N-1 <= 4 float32 terms in different orders (on a GPU):
    # results then differ by up to 2 (N-2) 2^-24 sum|x| <= 2.5e-6 for these inputs.
    np.testing.assert_allclose(fast, general, rtol=1e-5, atol=3e-6)
    with pytest.raises(ValueError, match="edges"):
        graphs.sum_incoming_fully_connected(edges, n + 1)


def test_graphs_tuple_agrees_with_batched_layout():
    rng = np.random.default_rng(5)
    b, n, f = 3, 4, 2
    nodes = jnp.asarray(rng.normal(size=(b, n, f)), jnp.float32)
    edge_feats = jnp.asarray(rng.normal(size=(b, n * (n - 1), 1)), jnp.float32)
    graph = jax.jit(graphs.fully_connected_graphs)(nodes, edge_feats)
    assert graph.nodes.shape == (b * n, f) and graph.edges.shape == (b * n * (n - 1), 1)
    np.testing.assert_array_equal(graph.n_node, [n] * b)
    senders, receivers = graphs.fully_connected_index(n)
    batched = graphs.node_to_edge(nodes, senders, receivers, edge_feats)
    flat = graphs.node_to_edge(graph.nodes, graph.senders, graph.receivers, graph.edges)
    np.testing.assert_allclose(flat.reshape(batched.shape), batched)
    summed = graphs.edge_to_node(flat, graph.receivers, b * n)
    # Sums of 3 terms in possibly different orders (GPU scatter-adds are unordered):
    # they differ by up to 4 * 2^-24 sum|x| <= 1.3e-6 here, hence an absolute floor.
    np.testing.assert_allclose(summed.reshape(b, n, -1),
                               graphs.edge_to_node(batched, receivers, n), rtol=1e-6, atol=2e-6)
    with pytest.raises(ValueError, match="nodes"):
        graphs.fully_connected_graphs(nodes[0])


def _numpy_gather_and_transpose(x, c, index):
    """x[..., index, :] and its VJP applied to c: the cotangent summed back per node."""
    back = np.zeros_like(x)
    for e, node in enumerate(index):
        back[..., node, :] += c[..., e, :]
    return x[..., index, :], back


@pytest.mark.parametrize("n", [2, 3, 5, 10])
def test_dense_fully_connected_path_against_numpy_and_the_segment_path(x64, n):
    """Values and gradients of the dense path (host index) against float64 NumPy loops
    and against the general path (the same index as a jax array: jnp.take, segment_sum)."""
    rng = np.random.default_rng(6)
    senders, receivers = graphs.fully_connected_index(n)
    nodes = rng.normal(size=(2, 3, n, 4))
    edges = rng.normal(size=(2, 3, n * (n - 1), 4))
    c_edges, c_nodes = rng.normal(size=edges.shape), rng.normal(size=nodes.shape)
    ops = {  # name: (fn(x, index), input, cotangent, index)
        "senders": (graphs.gather_senders, nodes, c_edges, senders),
        "receivers": (graphs.gather_receivers, nodes, c_edges, receivers),
        "sum": (lambda e, r: graphs.edge_to_node(e, r, n), edges, c_nodes, receivers),
        "mean": (lambda e, r: graphs.edge_to_node(e, r, n, reduce="mean"), edges, c_nodes,
                 receivers),
    }
    for name, (fn, x, c, index) in ops.items():
        if name in ("senders", "receivers"):
            want, want_grad = _numpy_gather_and_transpose(x, c, index)
        else:  # the sum over incoming edges is the transpose of the receiver gather
            want_grad, want = _numpy_gather_and_transpose(c, x, index)
            if name == "mean":
                want, want_grad = want / (n - 1), want_grad / (n - 1)
        for idx in (index, jnp.asarray(index)):  # dense path, then the general one
            value, vjp = jax.vjp(jax.jit(lambda x, idx=idx: fn(x, idx)), jnp.asarray(x))
            np.testing.assert_allclose(value, want, rtol=1e-12, atol=1e-12, err_msg=name)
            np.testing.assert_allclose(vjp(jnp.asarray(c))[0], want_grad, rtol=1e-12,
                                       atol=1e-12, err_msg=name)


def test_dense_path_is_taken_for_the_host_index_only():
    """The dense path leaves no gather or scatter in the program; the general one does."""
    senders, receivers = graphs.fully_connected_index(5)
    x = jnp.ones((2, 5, 3))

    def program(idx_s, idx_r):
        loss = lambda x: jnp.sum(graphs.edge_to_node(
            graphs.gather_senders(x, idx_s) * graphs.gather_receivers(x, idx_r), idx_r, 5))
        return jax.jit(jax.grad(loss)).lower(x).as_text()

    dense, general = program(senders, receivers), program(jnp.asarray(senders),
                                                          jnp.asarray(receivers))
    assert "gather" not in dense and "scatter" not in dense
    assert "gather" in general and "scatter" in general
    big = graphs.DENSE_MAX_OBJECTS + 1
    s_big, _ = graphs.fully_connected_index(big)
    assert "gather" in jax.jit(lambda x: graphs.gather_senders(x, s_big)).lower(
        jnp.ones((big, 1))).as_text()
