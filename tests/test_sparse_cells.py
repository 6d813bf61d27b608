"""Masked and block-sparse cells on the parallel solver equal a plain lax.scan written here
from the GRU/LSTM/Elman equations with explicitly masked weights — outputs and gradients —
and masked weights get exactly zero gradient."""

import networkx as nx
import numpy as np
import pytest
import jax
import jax.numpy as jnp
from flax import nnx

import pararnn
from pararnn.sparse import (BlockCell, BlockSparseRNN, GraphRNN, SparseGRU, block_layout, dense_to_block,
                            graph_mask, layer_dag, masked_cell_type, random_dag)

T, IN, D = 12, 3, 6
# float64 throughout: the solve stops at residual <= 1e-13 (pararnn.default_tol), and the
# parallel and sequential paths round differently, so states agree to ~1e-12 after T steps;
# gradients go through one more (adjoint) solve: 1e-9 leaves room for that.
TOL_Y, TOL_G = 1e-10, 1e-9


def sig(v):
    return 1 / (1 + jnp.exp(-v))


def ref_step(kind, h, x, p):
    """The cell equations (Flax gate order), written independently of pararnn.cells."""
    if kind == "elman":
        return jnp.tanh(x @ p["W_i"] + p["b"] + h @ p["W_h"])
    if kind == "gru":
        xi, hh = (x @ p["W_i"] + p["b"]).reshape(3, D), (h @ p["W_h"]).reshape(3, D)
        r, z = sig(xi[0] + hh[0]), sig(xi[1] + hh[1])
        n = jnp.tanh(xi[2] + r * hh[2])
        return (1 - z) * n + z * h
    c, hv = h[:D], h[D:]
    y = (x @ p["W_i"] + p["b"] + hv @ p["W_h"]).reshape(4, D)
    c = sig(y[1]) * c + sig(y[0]) * jnp.tanh(y[2])
    return jnp.concatenate([c, sig(y[3]) * jnp.tanh(c)])


def ref_outputs(kind, raw, mask_h, mask_i, x, h0):
    p = dict(raw, W_h=raw["W_h"] * mask_h, W_i=raw["W_i"] * mask_i)
    _, hs = jax.lax.scan(lambda h, xt: (ref_step(kind, h, xt, p),) * 2, h0, x)
    return hs[:, D:] if kind == "lstm" else hs


def problem(kind, seed=0):
    g = {"gru": 3, "lstm": 4, "elman": 1}[kind]
    r = np.random.default_rng(seed)
    unit = graph_mask("erdos_renyi", D, p=0.5, seed=seed) | np.eye(D, dtype=bool)
    mask_i = r.random((IN, g * D)) < 0.6        # a per-weight (pruning-style) input mask
    cell = masked_cell_type(kind)(IN, D)
    # Masked-out weights hold non-zero values: the masks, not the init, must remove them.
    shapes = {"W_i": (IN, g * D), "b": (g * D,), "W_h": (D, g * D)}
    raw = {k: jnp.asarray(r.normal(size=shape) * (0.5 if k == "W_h" else 1.0) / np.sqrt(D))
           for k, shape in shapes.items()}
    params = dict(raw, mask_h=jnp.asarray(np.tile(unit, (1, g)), jnp.float64),
                  mask_i=jnp.asarray(mask_i, jnp.float64))
    x = jnp.asarray(r.normal(size=(T, IN)))
    h0 = jnp.asarray(0.3 * r.normal(size=cell.state_shape))
    w_out = jnp.asarray(r.normal(size=(T, D)))
    return cell, params, raw, np.tile(unit, (1, g)), mask_i, x, h0, w_out


@pytest.mark.parametrize("kind, method", [
    ("gru", "newton"), ("lstm", "quasi"),
    pytest.param("elman", "newton", marks=pytest.mark.slow),  # default suite time budget
])
def test_masked_cell_parallel_equals_scan_outputs_and_grads(kind, method):
    cell, params, raw, mask_h, mask_i, x, h0, w_out = problem(kind)

    def loss_solve(p, x, h0):
        hs, info = pararnn.solve(cell.step, h0, cell.project(p, x), p, jacobian=cell.jacobian,
                                 method=method, jacobian_diagonal=cell.jacobian_diagonal, return_info=True)
        return jnp.sum(cell.output(hs) * w_out), (cell.output(hs), info.fell_back)

    def loss_ref(p, x, h0):
        y = ref_outputs(kind, p, jnp.asarray(mask_h, jnp.float64), jnp.asarray(mask_i, jnp.float64), x, h0)
        return jnp.sum(y * w_out), y

    (l1, (y1, fell_back)), g1 = jax.jit(jax.value_and_grad(loss_solve, (0, 1, 2), has_aux=True))(params, x, h0)
    (l2, y2), g2 = jax.jit(jax.value_and_grad(loss_ref, (0, 1, 2), has_aux=True))(raw, x, h0)
    assert not fell_back  # the parallel iteration itself converged (no sequential fallback)
    np.testing.assert_allclose(y1, y2, atol=TOL_Y, rtol=0)
    for name in ("W_i", "b", "W_h"):
        np.testing.assert_allclose(g1[0][name], g2[0][name], atol=TOL_G, rtol=0)
    np.testing.assert_allclose(g1[1], g2[1], atol=TOL_G, rtol=0)
    np.testing.assert_allclose(g1[2], g2[2], atol=TOL_G, rtol=0)
    # masked weights: exactly zero gradient (and the test is not vacuous: the rest is not)
    assert np.all(np.asarray(g1[0]["W_h"])[~mask_h] == 0.0) and np.any(np.asarray(g1[0]["W_h"])[mask_h] != 0)
    assert np.all(np.asarray(g1[0]["W_i"])[~mask_i] == 0.0)
    assert np.all(np.asarray(g1[0]["mask_h"]) == 0.0)  # masks sit behind stop_gradient


@pytest.mark.parametrize("kind", ["gru", pytest.param("lstm", marks=pytest.mark.slow)])
def test_block_layout_equals_masked_dense(kind):
    """A mask whose connected components are scrambled, unequal blocks: permuted, padded
    and solved with the "block" structure it equals the masked dense cell run sequentially."""
    d = 7
    r = np.random.default_rng(4)
    comp = np.array([0, 1, 0, 2, 1, 0, 1])          # blocks of sizes 3, 3, 1 (padded to 3)
    unit = (comp[:, None] == comp[None, :]) & (r.random((d, d)) < 0.8) | np.eye(d, dtype=bool)
    dense_cell = masked_cell_type(kind)(IN, d)
    g = 3 if kind == "gru" else 4
    params = {"W_i": r.normal(size=(IN, g * d)), "b": 0.1 * r.normal(size=(g * d,)),
              "W_h": 0.5 * r.normal(size=(d, g * d)) / np.sqrt(d), "mask_h": np.tile(unit, (1, g)).astype(float)}
    params = {k: jnp.asarray(v) for k, v in params.items()}
    x = jnp.asarray(r.normal(size=(T, IN)))
    perm, sizes = block_layout(unit)
    assert sizes == (3, 3, 1)
    bparams, blocks, index = dense_to_block(params, kind, perm, sizes)
    bcell = BlockCell(IN, blocks * max(sizes), kind=kind, blocks=blocks)
    def run_dense(p, x):  # the masked dense cell (checked above) in a plain lax.scan
        _, hs = jax.lax.scan(lambda h, u: (dense_cell.step(h, u, p),) * 2,
                             dense_cell.initial_state(jnp.float64), dense_cell.project(p, x))
        return dense_cell.output(hs)

    def run_block(p, x):
        hs, info = pararnn.solve(bcell.step, bcell.initial_state(jnp.float64), bcell.project(p, x), p,
                                 jacobian=bcell.jacobian, method="newton", return_info=True)
        return bcell.output(hs)[:, index], info

    def both(bp, p, x):
        (yb, info), yd = run_block(bp, x), run_dense(p, x)
        # The backward pass uses the block Jacobian exactly: a wrong one shows in gb.
        gb = jax.grad(lambda x: jnp.sum(jnp.sin(run_block(bp, x)[0])))(x)
        gd = jax.grad(lambda x: jnp.sum(jnp.sin(run_dense(p, x))))(x)
        return yb, yd, gb, gd, info

    yb, yd, gb, gd, info = jax.jit(both)(bparams, params, x)
    assert not info.fell_back and info.iterations <= 8  # Newton with the block Jacobian converged
    np.testing.assert_allclose(yb, yd, atol=TOL_Y, rtol=0)
    np.testing.assert_allclose(gb, gd, atol=TOL_G, rtol=0)


def test_sparse_layer_modes_and_masks_are_not_params():
    mask = graph_mask("watts_strogatz", 8, k=2, p=0.3, seed=0)
    layer = SparseGRU(IN, 8, mask_h=mask, param_dtype=jnp.float64, rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, T, IN)))
    params = nnx.state(layer, nnx.Param)
    assert "mask_h" not in params and "W_h" in params  # an nnx.Optimizer(wrt=Param) skips masks

    @nnx.jit
    def run(layer, x):
        grads = nnx.grad(lambda m: jnp.sum(m(x) ** 2))(layer)
        return layer(x), layer(x, mode="sequential"), grads["W_h"][...]

    y_par, y_seq, g_wh = run(layer, x)
    np.testing.assert_allclose(y_par, y_seq, atol=TOL_Y, rtol=0)
    assert np.all(np.asarray(g_wh)[~np.tile(mask, (1, 3))] == 0.0)


@pytest.mark.slow
def test_block_sparse_layer_parallel_equals_sequential():
    layer = BlockSparseRNN(IN, 8, kind="lstm", blocks=4, param_dtype=jnp.float64, rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, T, IN)))
    y_par, y_seq = nnx.jit(lambda m, x: (m(x), m(x, mode="sequential")))(layer, x)
    assert y_par.shape == (2, T, 8) and layer.state_shape == (4, 4)  # [c_b; h_b] per block
    np.testing.assert_allclose(y_par, y_seq, atol=TOL_Y, rtol=0)


@pytest.mark.slow
def test_graph_rnn_parallel_equals_sequential():
    layout = layer_dag(random_dag("barabasi_albert", 6, m=2, seed=1))
    net = GraphRNN(IN, layout, kind="elman", param_dtype=jnp.float64, rngs=nnx.Rngs(1))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, T, IN)))
    y_par, y_seq = nnx.jit(lambda net, x: (net(x), net(x, mode="sequential")))(net, x)
    assert len(layout.sizes) > 1 and y_par.shape == (2, T, len(layout.outputs))
    np.testing.assert_allclose(y_par, y_seq, atol=TOL_Y, rtol=0)


def test_sparse_cell_errors():
    with pytest.raises(ValueError, match=r"mask must have shape \(6, 6\) .* or \(6, 18\) .*got \(5, 6\)"):
        masked_cell_type("gru")(IN, D).init(jax.random.key(0), mask_h=np.ones((5, 6), bool))
    with pytest.raises(ValueError, match="kind must be one of"):
        masked_cell_type("rnn")
    with pytest.raises(ValueError, match="blocks must be a positive int dividing hidden_features=6, got 4"):
        BlockCell(IN, D, kind="gru", blocks=4)
    with pytest.raises(ValueError, match="connects units of different blocks"):
        p = {"W_i": np.zeros((IN, 4)), "b": np.zeros(4), "W_h": np.zeros((4, 4)), "mask_h": np.ones((4, 4))}
        dense_to_block(p, "elman", np.arange(4), (2, 2))


# ---- independent NumPy references for the composite layers --------------------------------


def np_sigmoid(v):
    return 1 / (1 + np.exp(-v))


def np_cell_step(kind, h, x, w_i, b, w_h):
    """One step of a dense GRU / LSTM / Elman (Flax gate order) in NumPy: h (B, S), x (B, in)."""
    d = w_h.shape[0]
    if kind == "elman":
        return np.tanh(x @ w_i + b + h @ w_h)
    if kind == "gru":
        xi, hh = x @ w_i + b, h @ w_h
        r, z = np_sigmoid(xi[:, :d] + hh[:, :d]), np_sigmoid(xi[:, d:2 * d] + hh[:, d:2 * d])
        n = np.tanh(xi[:, 2 * d:] + r * hh[:, 2 * d:])
        return (1 - z) * n + z * h
    c, hv = h[:, :d], h[:, d:]
    y = x @ w_i + b + hv @ w_h
    i, f, g, o = (y[:, k * d:(k + 1) * d] for k in range(4))
    c = np_sigmoid(f) * c + np_sigmoid(i) * np.tanh(g)
    return np.concatenate([c, np_sigmoid(o) * np.tanh(c)], axis=1)


def np_run(kind, x, w_i, b, w_h):
    """x (B, T, in) → outputs (B, T, D) of a dense cell from the zero state."""
    d = w_h.shape[0]
    h = np.zeros((x.shape[0], 2 * d if kind == "lstm" else d))
    out = []
    for t in range(x.shape[1]):
        h = np_cell_step(kind, h, x[:, t], w_i, b, w_h)
        out.append(h[:, d:] if kind == "lstm" else h)
    return np.stack(out, 1)


def perturb_params(module, seed, scale=0.3):
    """Every nnx.Param + scale·N(0, 1) (masked-out weights become non-zero: the masks, not
    the init, must remove them)."""
    graph, params, rest = nnx.split(module, nnx.Param, ...)
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda p: p + scale * rng.normal(size=p.shape), params)
    return nnx.merge(graph, params, rest)


def test_graph_rnn_matches_a_numpy_loop_over_the_dag_edges():
    """Node-level reference written from the DAG itself: a node in layer l (its longest path
    from a source) reads the outputs of its predecessors only. Layer l's input rows are the
    nodes of the earlier layers with an edge into l, layer by layer in increasing order, each
    layer's nodes by id; the output is the sinks sorted by (layer, id)."""
    dag = random_dag("barabasi_albert", 7, m=2, seed=1)
    depth = {}
    for v in nx.topological_sort(dag):
        depth[v] = max((depth[u] + 1 for u in dag.predecessors(v)), default=0)
    layers = [sorted(v for v in dag if depth[v] == l) for l in range(max(depth.values()) + 1)]
    sources = [sorted({depth[u] for v in layer for u in dag.predecessors(v)}) for layer in layers]
    # the wiring is exercised: a skip connection and a layer reading two earlier layers
    assert any(depth[v] - depth[u] > 1 for u, v in dag.edges()) and max(len(s) for s in sources) >= 2
    net = perturb_params(GraphRNN(IN, layer_dag(dag), kind="elman", mode="sequential", param_dtype=jnp.float64,
                                  rngs=nnx.Rngs(1)), seed=2)
    x = np.random.default_rng(0).normal(size=(2, T, IN))
    outputs = {}  # node -> (B, T)
    for l, layer in enumerate(layers):
        p = net.layers[l]
        w_i, b, w_h = (np.asarray(getattr(p, k)[...]) for k in ("W_i", "b", "W_h"))
        if l == 0:
            inp, w_in = x, w_i
        else:
            feeders = [u for j in sources[l] for u in layers[j]]  # the rows of W_i, in order
            inp = np.stack([outputs[u] for u in feeders], axis=-1)
            edge = np.array([[dag.has_edge(u, v) for v in layer] for u in feeders])
            w_in = w_i * edge  # only the DAG's edges carry signal
        y = np_run("elman", inp, w_in, b, w_h)
        for pos, v in enumerate(layer):
            outputs[v] = y[..., pos]
    sinks = sorted((v for v in dag if dag.out_degree(v) == 0), key=lambda v: (depth[v], v))
    want = np.stack([outputs[v] for v in sinks], axis=-1)
    got = nnx.jit(lambda net, x: net(x))(net, jnp.asarray(x))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)  # float64 loops: measured 3e-16


def test_block_sparse_rnn_matches_independent_numpy_cells():
    """B dense GRU cells side by side, each on its own slice of units (unit b·s + i is unit i
    of block b), against B NumPy loops; the parallel solve with the block structure."""
    layer = perturb_params(BlockSparseRNN(IN, 8, kind="gru", blocks=4, param_dtype=jnp.float64,
                                          rngs=nnx.Rngs(0)), seed=3, scale=0.2)
    assert "mask_h" not in nnx.state(layer, nnx.Param)  # fixed masks: no optimiser touches them
    x = np.random.default_rng(1).normal(size=(2, T, IN))
    p = {k: np.asarray(getattr(layer, k)[...]) for k in ("W_i", "b", "W_h")}
    want = np.concatenate([np_run("gru", x, p["W_i"][k], p["b"][k], p["W_h"][k]) for k in range(4)], axis=-1)
    got = nnx.jit(lambda m, x: m(x))(layer, jnp.asarray(x))
    np.testing.assert_allclose(got, want, rtol=0, atol=TOL_Y)
