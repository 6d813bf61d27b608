"""Sequence parallelism (pararnn.seq_parallel): one sequence split along time over the fake
CPU devices of tests/conftest.py. References: float64 NumPy loops written in tests/cells.py
and jax.grad of a plain lax.scan. Tolerance 1e-10 (float64): the sharded solve does the same
arithmetic as the single-device one up to the order of the cross-device fold (measured
≤ 4e-16 for Newton, ≤ 7e-14 for quasi-Newton, whose residual tolerance is 1e-13)."""

import numpy as np
import pytest
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P
from flax import nnx

import pararnn
import pararnn.nn as pnn
from cells import CELLS, numpy_loop

T_ODD = 61  # not divisible by 4 or 8: solve_sharded pads the end and cuts it off


@pytest.fixture(scope="module")
def seq8():
    return Mesh(np.array(jax.devices()[:8]), ("seq",))


@pytest.fixture(scope="module")
def data2_seq4():
    return Mesh(np.array(jax.devices()[:8]).reshape(2, 4), ("data", "seq"))


def _scan(cell, p, h0, xs):
    return jax.lax.scan(lambda h, x: (cell.jax_step(h, x, p),) * 2, h0, xs)[1]


def _assert_trees_close(got, want, tol):
    for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=0,
                                   atol=tol * max(1.0, float(jnp.abs(w).max())))


@pytest.mark.parametrize("method", ["newton", pytest.param("quasi", marks=pytest.mark.slow)])
# default suite: the diagonal cell (block and dense linear solves across devices are in
# test_linear_recurrence_with_seq_axis); the block and dense Newton solves (~20 s each) in the slow stage
@pytest.mark.parametrize("name", [n if n == "gru_diag" else pytest.param(n, marks=pytest.mark.slow)
                                  for n in sorted(CELLS)])
def test_sharded_solve_equals_the_loop_with_exact_gradients(seq8, name, method):
    cell = CELLS[name]
    p, xs, h0 = cell.params(), cell.inputs(T_ODD), cell.h0()

    def sharded(p, xs, h0):
        return pararnn.solve_sharded(cell.jax_step, h0, xs, p, mesh=seq8, jacobian=cell.jacobian,
                                     method=method, return_info=True)

    hs, info = jax.jit(sharded)(p, xs, h0)
    np.testing.assert_allclose(np.asarray(hs), numpy_loop(cell, h0, xs, p), rtol=0, atol=1e-10)
    single = pararnn.solve(cell.jax_step, h0, xs, p, jacobian=cell.jacobian, method=method)
    np.testing.assert_allclose(np.asarray(hs), np.asarray(single), rtol=0, atol=1e-10)
    assert bool(info.converged) and not bool(info.fell_back)

    weights = jnp.arange(1.0, T_ODD + 1).reshape((T_ODD,) + (1,) * h0.ndim)
    loss = lambda hs: jnp.sum(jnp.sin(hs) * weights)
    got = jax.jit(jax.grad(lambda p, xs, h0: loss(sharded(p, xs, h0)[0]), argnums=(0, 1, 2)))(p, xs, h0)
    want = jax.grad(lambda p, xs, h0: loss(_scan(cell, p, h0, xs)), argnums=(0, 1, 2))(p, xs, h0)
    _assert_trees_close(got, want, 1e-10)


def test_batch_and_sequence_mesh(data2_seq4):
    """(data = 2, seq = 4): batch split over data, time over seq; the two data groups take
    different numbers of quasi-Newton iterations, which must not desynchronise the
    collectives (every device runs the loop until all are done)."""
    cell = CELLS["gru_dense"]
    p, h0 = cell.params(), cell.h0()
    xs = jnp.stack([cell.inputs(T_ODD, seed=s) for s in range(4)])
    h0s = jnp.stack([h0 * (1 + 0.5 * s) for s in range(4)])

    def sharded(p, xs, h0s):
        return pararnn.solve_sharded(cell.jax_step, h0s, xs, p, mesh=data2_seq4,
                                     batch_axis="data", jacobian="dense", method="quasi")

    hs = jax.jit(sharded)(p, xs, h0s)
    for i in range(4):
        np.testing.assert_allclose(np.asarray(hs[i]), numpy_loop(cell, h0s[i], xs[i], p),
                                   rtol=0, atol=1e-10)
    loss = lambda hs: jnp.sum(jnp.cos(hs))
    got = jax.jit(jax.grad(lambda p, xs: loss(sharded(p, xs, h0s)), argnums=(0, 1)))(p, xs)
    want = jax.grad(lambda p, xs: loss(jax.vmap(lambda h, x: _scan(cell, p, h, x))(h0s, xs)),
                    argnums=(0, 1))(p, xs)
    _assert_trees_close(got, want, 1e-10)


@pytest.mark.parametrize("structure, a_shape, s_shape", [
    ("diagonal", (64, 3), (3,)), ("block", (64, 2, 2, 2), (2, 2)), ("dense", (64, 3, 3), (3,))])
def test_linear_recurrence_with_seq_axis(seq8, structure, a_shape, s_shape):
    rng = np.random.default_rng(0)
    a = jnp.asarray(0.9 * rng.uniform(-1, 1, size=a_shape))
    b, h0 = jnp.asarray(rng.normal(size=(64,) + s_shape)), jnp.asarray(rng.normal(size=s_shape))
    for reverse in (False, True):
        want = np.zeros((64,) + s_shape)  # NumPy loop
        h = np.asarray(h0)
        for t in (range(63, -1, -1) if reverse else range(64)):
            at = np.asarray(a[t])
            h = (at * h if structure == "diagonal" else
                 np.einsum("nij,jn->in", at, h) if structure == "block" else at @ h) + np.asarray(b[t])
            want[t] = h
        fn = jax.shard_map(lambda a, b, h0: pararnn.linear_recurrence(
            a, b, h0, structure=structure, reverse=reverse, seq_axis="seq"),
            mesh=seq8, in_specs=(P("seq"), P("seq"), P()), out_specs=P("seq"))
        np.testing.assert_allclose(np.asarray(jax.jit(fn)(a, b, h0)), want, rtol=0, atol=1e-12)


def _chaotic_logistic(h, x, r):
    return r * h * (1 - h) * (1 - x) + x


def test_fallback_returns_the_sequential_answer_on_every_device(seq8):
    """Chaotic map: Newton stalls; the pipelined sequential fallback runs across the devices
    and every device reports the fallback."""
    xs = jnp.asarray(np.random.default_rng(0).uniform(0, 0.05, size=(400, 3)))
    h0, r = jnp.full((3,), 0.3), jnp.asarray(3.9)

    def local(xs):
        hs, info = pararnn.solve(_chaotic_logistic, h0, xs, r, seq_axis="seq", return_info=True)
        return hs, info.fell_back[None], info.stalled[None]

    fn = jax.shard_map(local, mesh=seq8, in_specs=P("seq"), out_specs=(P("seq"),) * 3)
    hs, fell_back, stalled = jax.jit(fn)(xs)
    assert np.all(np.asarray(fell_back)) and np.all(np.asarray(stalled))
    single = pararnn.solve(_chaotic_logistic, h0, xs, r, method="sequential")
    np.testing.assert_array_equal(np.asarray(hs), np.asarray(single))  # bitwise


# slow (15 s and more): the default suite trains a sequence-parallel language model instead
# (test_train_seq.py), whose recurrent layers run with seq_axis
@pytest.mark.parametrize("layer_cls", [pytest.param(pnn.ParaGRU, marks=pytest.mark.slow),
                                       pytest.param(pnn.ParaLSTM, marks=pytest.mark.slow)],
                         ids=lambda c: c.__name__)
def test_layer_with_seq_axis(data2_seq4, layer_cls):
    """A layer inside shard_map over (data, seq): outputs, the final state (of the whole
    sequence, on every device) and gradients equal the unsplit layer's."""
    ref = layer_cls(4, 6, param_dtype=jnp.float64, rngs=nnx.Rngs(0))
    split = layer_cls(4, 6, param_dtype=jnp.float64, seq_axis="seq", rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (4, 40, 4), jnp.float64)
    graph, state = nnx.split(split)
    ref_graph = nnx.split(ref)[0]

    def run(state, x):
        return jax.shard_map(lambda s, x: nnx.merge(graph, s)(x, return_state=True),
                             mesh=data2_seq4, in_specs=(P(), P("data", "seq")),
                             out_specs=(P("data", "seq"), P("data")))(state, x)

    y, h = jax.jit(run)(state, x)
    y_ref, h_ref = ref(x, mode="sequential", return_state=True)
    np.testing.assert_allclose(np.asarray(y), np.asarray(y_ref), rtol=0, atol=1e-10)
    np.testing.assert_allclose(np.asarray(h), np.asarray(h_ref), rtol=0, atol=1e-10)
    got = jax.jit(jax.grad(lambda s, x: jnp.sum(jnp.sin(run(s, x)[0])), argnums=(0, 1)))(state, x)
    want = jax.grad(lambda s, x: jnp.sum(jnp.sin(nnx.merge(ref_graph, s)(x, mode="sequential"))),
                    argnums=(0, 1))(state, x)
    _assert_trees_close(got, want, 1e-10)


def test_bad_seq_axis_is_named(seq8):
    cell = CELLS["gru_diag"]
    p, xs, h0 = cell.params(), cell.inputs(16), cell.h0()
    with pytest.raises(ValueError, match="seq_axis='seq' is not a mesh axis bound here"):
        pararnn.solve(cell.jax_step, h0, xs, p, seq_axis="seq")
    with pytest.raises(ValueError, match="parallel adjoint split across the devices"):
        jax.shard_map(lambda xs: pararnn.solve(cell.jax_step, h0, xs, p, seq_axis="seq",
                                               backward="sequential"),
                      mesh=seq8, in_specs=P("seq"), out_specs=P("seq"))(xs)
    with pytest.raises(ValueError, match=r"seq_axis='time' is not an axis of the mesh"):
        pararnn.solve_sharded(cell.jax_step, h0, xs, p, mesh=seq8, seq_axis="time")
