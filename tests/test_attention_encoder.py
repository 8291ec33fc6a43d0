"""The attention encoder: one attention layer against float64 NumPy, permutation
equivariance, bfloat16 products under jit, the model registry, and learning springs."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from nri_jax import attention, configs, graphs, training
from nri_jax import data as data_lib
from nri_jax.model import ENCODERS, NRI, ModelConfig
from helpers import numpy_variables, small_springs_splits


def _float64(tree):
    return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), tree)


def _attention_reference(params, nodes, heads):
    """Float64 multi-head attention written loop by loop from the module's docstring.

    Returns (weights [B, N_receiver, N_sender, heads], output [B, N, H]).
    """
    b, n, _ = nodes.shape
    qkv = nodes @ params["qkv"]["kernel"] + params["qkv"]["bias"]
    width = qkv.shape[-1] // (3 * heads)
    # Fused columns: the queries, then the keys, then the values; each head's F in order.
    block = lambda part, h: qkv[..., (part * heads + h) * width:(part * heads + h + 1) * width]
    weights = np.zeros((b, n, n, heads))
    heads_out = np.zeros((b, n, heads * width))
    for e in range(b):
        for h in range(heads):
            q, k, v = (block(part, h)[e] for part in range(3))
            for i in range(n):
                senders = [j for j in range(n) if j != i]  # the receiver itself is excluded
                scores = np.array([q[i] @ k[j] / np.sqrt(width) for j in senders])
                alpha = np.exp(scores - scores.max())
                alpha /= alpha.sum()
                weights[e, i, senders, h] = alpha
                heads_out[e, i, h * width:(h + 1) * width] = sum(
                    a * v[j] for a, j in zip(alpha, senders))
    return weights, heads_out @ params["out"]["kernel"] + params["out"]["bias"]


@pytest.mark.parametrize("features, heads", [(6, 2), (5, 2), (4, 1)],
                         ids=["two_heads", "uneven_width", "one_head"])
def test_attention_layer_matches_float64_reference(x64, features, heads):
    layer = attention.MultiHeadAttention(features, heads)
    nodes = np.random.default_rng(0).normal(size=(2, 4, 7))
    variables = _float64(numpy_variables(layer, nodes))
    run = jax.jit(lambda v, x: layer.apply(v, x, mutable=["intermediates"]))
    out, state = run(variables, nodes)
    (weights,) = state["intermediates"]["attention"]
    want_weights, want_out = _attention_reference(variables["params"], nodes, heads)
    assert out.dtype == np.float64 and weights.shape == (2, 4, 4, heads)
    np.testing.assert_array_equal(np.diagonal(weights, axis1=1, axis2=2), 0)
    np.testing.assert_allclose(weights, want_weights, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(out, want_out, rtol=1e-10, atol=1e-12)


def test_attention_weights_of_two_objects_are_one_hot_on_the_other():
    q, k = (jnp.asarray(np.random.default_rng(s).normal(size=(3, 2, 2, 4)), jnp.float32)
            for s in (1, 2))
    weights = jax.jit(attention.attention_weights)(q, k)
    np.testing.assert_array_equal(weights, np.broadcast_to(
        np.array([[0.0, 1.0], [1.0, 0.0]])[None, :, :, None], (3, 2, 2, 2)))


def _edge_permutation(perm):
    """Index map: logits of the permuted objects at e' = original logits at map[e']."""
    senders, receivers = graphs.fully_connected_index(len(perm))
    position = {(r, s): e for e, (r, s) in enumerate(zip(receivers, senders))}
    return np.array([position[(perm[r], perm[s])] for r, s in zip(receivers, senders)])


@pytest.mark.parametrize("factor, shape, k", [(True, (2, 5, 6, 3), 3), (False, (3, 4, 5, 2), 2)],
                         ids=["factor", "no_factor"])
def test_logits_are_permutation_equivariant(factor, shape, k):
    """Relabelling the objects relabels the edges, in eval mode (running statistics) and
    in train mode (batch statistics pool all rows, which a permutation only reorders)."""
    module = attention.AttentionEncoder(16, k, factor=factor, num_heads=2)
    x = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    variables = numpy_variables(module, x, train=False)
    both_modes = jax.jit(lambda v, x: jnp.stack([
        module.apply(v, x, train=train, mutable=["batch_stats"])[0] for train in (False, True)]))

    def run(x):
        # Full float32 products: the permuted run sums in another order, within round-off.
        with jax.default_matmul_precision("highest"):
            return np.asarray(both_modes(variables, x))

    logits = run(x)
    assert logits.shape == (2, shape[0], shape[1] * (shape[1] - 1), k)
    perm = np.roll(np.arange(shape[1]), 1)
    permuted = run(x[:, perm])
    np.testing.assert_allclose(permuted, logits[:, :, _edge_permutation(perm)],
                               rtol=1e-4, atol=1e-5)
    assert not np.allclose(permuted, logits, atol=1e-3)  # the check can fail


def test_bfloat16_products_under_jit():
    x = np.random.default_rng(4).normal(size=(4, 5, 8, 3)).astype(np.float32)
    full, mixed = (attention.AttentionEncoder(16, 2, dropout=0.2, compute_dtype=c)
                   for c in ("float32", "bfloat16"))
    variables = numpy_variables(full, x, train=False)
    params = jax.eval_shape(lambda: mixed.init(jax.random.key(0), x, train=False))["params"]
    assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(
        variables["params"])
    assert all(a.dtype == jnp.float32 for a in jax.tree_util.tree_leaves(params))

    def logits(module, params, key):
        return module.apply({"params": params, "batch_stats": variables["batch_stats"]}, x,
                            train=True, rngs={"dropout": key}, mutable=["batch_stats"])[0]

    def loss(params, key):
        y = logits(mixed, params, key)
        return jnp.sum(y ** 2), y

    step = jax.jit(jax.value_and_grad(loss, has_aux=True))
    (_, got), grads = step(variables["params"], jax.random.key(1))
    (_, other), _ = step(variables["params"], jax.random.key(2))
    assert step._cache_size() == 1  # a second call: no recompilation
    want = jax.jit(lambda p, k: logits(full, p, k))(variables["params"], jax.random.key(1))
    assert got.dtype == jnp.float32
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree_util.tree_leaves(grads))
    # About eight products deep, each rounding its inputs to 2^-8 (BatchNorm renormalises
    # in between): a few 2^-8 units on O(1) logits.
    assert np.max(np.abs(got - want)) < 0.05 * max(1.0, np.max(np.abs(want)))
    assert not np.array_equal(got, want)  # the bfloat16 products are really taken
    assert not np.allclose(got, other)  # dropout draws from the 'dropout' stream


def test_selected_by_the_model_config():
    config = ModelConfig(encoder="attention", encoder_hidden=12, n_edge_types=3,
                         encoder_dropout=0.1, factor=False, compute_dtype="bfloat16")
    encoder = ENCODERS["attention"].from_config(config)
    assert isinstance(encoder, attention.AttentionEncoder) and not encoder.reads_decoder
    assert (encoder.hidden, encoder.n_edge_types, encoder.dropout, encoder.factor,
            encoder.compute_dtype) == (12, 3, 0.1, False, "bfloat16")
    x = jnp.zeros((2, 3, 4, 2))
    shapes = jax.eval_shape(lambda: NRI(config).init(
        {"params": jax.random.key(0), "gumbel": jax.random.key(1)}, x, train=False))
    assert "attention_1" in shapes["params"]["encoder"]
    with pytest.raises(ValueError, match="rounds"):
        attention.AttentionEncoder(8, 2, rounds=0).init(jax.random.key(0), x, train=False)
    with pytest.raises(ValueError, match="inputs"):
        encoder.init(jax.random.key(0), jnp.zeros((2, 3, 4)), train=False)


@pytest.fixture(scope="module")
def springs(tmp_path_factory):
    return small_springs_splits(tmp_path_factory.mktemp("springs") / "data")


def _supervised_accuracies(train, valid, label_sets, epochs=3, batch=64):
    """Valid edge accuracy of the attention encoder trained on each set of train labels."""
    config = configs.override(configs.get_preset("tiny"), method="supervised",
                              encoder="attention", encoder_hidden=32, batch_size=batch,
                              learning_rate=3e-3)
    model = NRI(config.model)
    tx = optax.adam(config.train.learning_rate)
    step = training.make_train_step(model, tx, config)  # one compilation for every label set
    encode = jax.jit(lambda v, x: model.apply(v, x, train=False, method=NRI.encode))
    accuracies = []
    for labels in label_sets:
        state = training.init_state(jax.random.key(0), model, tx, train.features[:2])
        split = data_lib.Split(train.features, labels)
        for epoch in range(epochs):
            order = jax.random.permutation(jax.random.key(epoch), len(labels))
            for i in range(len(labels) // batch):
                state, _ = step(state, split, order[i * batch:(i + 1) * batch],
                                jax.random.key(i))
        logits = encode({"params": state.params, "batch_stats": state.batch_stats},
                        valid.features)
        accuracies.append(float(jnp.mean(jnp.argmax(logits, -1) == valid.labels)))
    return accuracies


def test_supervised_attention_encoder_learns_springs_and_shuffled_labels_do_not(springs):
    train, valid = springs
    # Labels of other trajectories: as many edges of each type, no relation to these.
    shuffled = jax.random.permutation(jax.random.key(5), train.labels, axis=0)
    learned, control = _supervised_accuracies(train, valid, [train.labels, shuffled])
    chance = max(float(jnp.mean(valid.labels)), 1 - float(jnp.mean(valid.labels)))
    assert learned > 0.75, (learned, chance)  # 0.85 measured; the shuffled control 0.51
    assert control < chance + 0.05, (control, chance)
