"""The backward pass, chosen independently of the forward: every (forward, backward) pair
gives the gradients of a plain lax.scan (float64: measured ≤ 8e-15 relative; 1e-12 allowed),
the sequential adjoint stores no Jacobians, and the layers' automatic choices are never the
slow dense path."""

import dataclasses

import numpy as np
import pytest
import jax
import jax.extend
import jax.numpy as jnp
from flax import nnx

import pararnn
import pararnn.nn as pnn
from cells import CELLS

PAIRS = [("newton", "parallel"), ("newton", "sequential"), ("quasi", "sequential"),
         ("sequential", "parallel"), ("sequential", "sequential"), ("sequential", "autodiff")]


@pytest.mark.parametrize("method, backward", PAIRS)
@pytest.mark.parametrize("name", sorted(CELLS))
def test_every_forward_backward_pair_is_exact(name, method, backward):
    cell = CELLS[name]
    p, xs, h0 = cell.params(), cell.inputs(64), cell.h0()

    def scan_loss(p, xs, h0):
        hs = jax.lax.scan(lambda h, x: (cell.jax_step(h, x, p),) * 2, h0, xs)[1]
        return jnp.sum(jnp.sin(hs) * jnp.arange(1.0, 65.0).reshape((64,) + (1,) * h0.ndim))

    def solve_loss(p, xs, h0):
        hs = pararnn.solve(cell.jax_step, h0, xs, p, jacobian=cell.jacobian, method=method,
                           backward=backward, fallback="raise")
        return jnp.sum(jnp.sin(hs) * jnp.arange(1.0, 65.0).reshape((64,) + (1,) * h0.ndim))

    ref = jax.grad(scan_loss, argnums=(0, 1, 2))(p, xs, h0)
    got = jax.jit(jax.grad(solve_loss, argnums=(0, 1, 2)))(p, xs, h0)
    for g, r in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(ref)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=0,
                                   atol=1e-12 * float(jnp.abs(r).max()))


def _jaxpr_shapes(fn, *args):
    """Every intermediate shape in the (fully inlined) jaxpr of ``fn``."""
    shapes = set()

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            for v in eqn.outvars:
                shapes.add(tuple(getattr(v.aval, "shape", ())))
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                walk(sub)

    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return shapes


def test_sequential_adjoint_never_forms_dense_jacobians():
    """A dense cell's parallel adjoint needs T·D² memory (T Jacobians); the sequential one
    must not hold anything of shape (T, D, D)."""
    cell = CELLS["gru_dense"]
    t, d = 40, cell.state_shape[0]
    p, xs, h0 = cell.params(), cell.inputs(t), cell.h0()

    def loss(p, backward):
        return jnp.sum(pararnn.solve(cell.jax_step, h0, xs, p, jacobian="dense",
                                     method="sequential", backward=backward))

    parallel = _jaxpr_shapes(jax.grad(lambda p: loss(p, "parallel")), p)
    sequential = _jaxpr_shapes(jax.grad(lambda p: loss(p, "sequential")), p)
    assert (t, d, d) in parallel  # the check can see a dense Jacobian stack when there is one
    assert (t, d, d) not in sequential


# GRU (dense: the sequential adjoint is its default) in the default suite; ParaGRU (19 s) slow
@pytest.mark.parametrize("layer_cls", [pytest.param(pnn.ParaGRU, marks=pytest.mark.slow), pnn.GRU],
                         ids=lambda c: c.__name__)
def test_layer_backward_choices_agree(layer_cls):
    """The layer's sequential forward with each backward (the adjoint ones project inside the
    scan and differentiate the projection in one batched VJP) matches autodiff."""
    layer = layer_cls(4, 6, param_dtype=jnp.float64, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (2, 30, 4), jnp.float64)
    graph, state = nnx.split(layer)

    def grads(mode, backward):
        def loss(state, x):
            model = nnx.merge(graph, state)
            model.solver = dataclasses.replace(model.solver, backward=backward)
            return jnp.sum(jnp.cos(model(x, mode=mode)))
        return jax.grad(loss, argnums=(0, 1))(state, x)

    ref = grads("sequential", "autodiff")
    for mode, backward in (("sequential", "parallel"), ("sequential", "sequential"),
                           ("parallel", "parallel"), ("parallel", "sequential")):
        got = grads(mode, backward)
        for g, r in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(ref)):
            np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=0,
                                       atol=1e-11 * max(1.0, float(jnp.abs(r).max())))


@pytest.mark.parametrize("layer_cls", [pnn.GRU, pnn.LSTM, pnn.Elman], ids=lambda c: c.__name__)
def test_dense_layers_never_default_to_the_dense_parallel_adjoint(layer_cls):
    """Issue 17: a dense GRU (hidden 256, batch 8, T = 2048) trained 38× slower with the old
    default (parallel forward + parallel dense adjoint over T·D² Jacobians) than with the
    sequential scan. Whatever the backend, the default must not store T dense Jacobians."""
    layer = layer_cls(8, 256, rngs=nnx.Rngs(0))
    for backend in ("cpu", "gpu"):
        forward, backward = layer.paths(8, 2048, backend=backend)
        assert backward != "parallel", (backend, forward, backward)
    assert layer.paths(8, 2048, backend="cpu")[0] == "sequential"


def test_memory_guard_picks_a_path_that_fits_or_names_the_sizes(monkeypatch):
    """With a (pretend) 8 MiB device: the automatic choices avoid the parallel passes whose
    working set would not fit, and an explicit parallel request fails at trace time with the
    sizes named instead of crashing XLA out of memory."""
    import pararnn.working_set as ws

    monkeypatch.setattr(ws, "device_memory_bytes", lambda backend=None: 8 * 2**20)
    cell = CELLS["gru_dense"]
    p, h0 = cell.params(), cell.h0()
    xs = cell.inputs(20_000)
    need = ws.working_set_bytes(pararnn.structure.DENSE, 20_000, h0.shape, h0.dtype,
                                pass_="forward")
    assert need > 8 * 2**20
    layer = pnn.GRU(8, 64, rngs=nnx.Rngs(0))
    assert layer.paths(64, 4096, backend="gpu") == ("sequential", "sequential")
    assert layer.paths(1, 1024, backend="gpu")[0] == "quasi"  # small enough: still parallel
    with pytest.raises(ws.WorkingSetError, match=r"T=20000, state \(4,\) float64, dense"):
        pararnn.solve(cell.jax_step, h0, xs, p, jacobian="dense", method="newton")
    short = cell.inputs(2000)
    with pytest.raises(ws.WorkingSetError, match="backward='parallel'"):
        jax.grad(lambda p: jnp.sum(pararnn.solve(cell.jax_step, h0, xs, p, jacobian="dense",
                                                 method="sequential", backward="parallel")))(p)
    hs = pararnn.solve(cell.jax_step, h0, short, p, jacobian="dense", method="auto")
    assert hs.shape == (2000,) + h0.shape


def test_cpu_dense_backward_follows_the_measured_crossover():
    """CPU, dense cells, sequential forward (benchmarks/RESULTS.md "Defaults"): narrow states
    and small batches backpropagate through the scan (GRU hidden 64, batch 8: 0.5× the
    sequential adjoint's time); one wide sequence or a wide batch solve the adjoint by a
    reverse scan of VJPs (LSTM hidden 256, batch 8: state 512 × 8)."""
    gru = pnn.GRU(8, 64, rngs=nnx.Rngs(0))
    assert gru.paths(8, 2048, backend="cpu") == ("sequential", "autodiff")
    wide = pnn.GRU(8, 256, rngs=nnx.Rngs(0))
    assert wide.paths(1, 256, backend="cpu") == ("sequential", "sequential")
    assert wide.paths(8, 256, backend="cpu") == ("sequential", "autodiff")
    lstm = pnn.LSTM(8, 256, rngs=nnx.Rngs(0))
    assert lstm.paths(8, 2048, backend="cpu") == ("sequential", "sequential")
    # a parallel forward never gets "autodiff" (it has no scan to backpropagate through)
    assert gru.paths(8, 2048, mode="parallel", backend="cpu")[1] == "sequential"
    # the solve API resolves the same way, and its gradient is the scan's
    cell = CELLS["gru_dense"]
    p, h0, xs = cell.params(), cell.h0(), cell.inputs(64)
    auto = jax.grad(lambda p: jnp.sum(pararnn.solve(cell.jax_step, h0, xs, p, jacobian="dense",
                                                    method="sequential") ** 2))(p)
    scan = jax.grad(lambda p: jnp.sum(pararnn.solve(cell.jax_step, h0, xs, p, jacobian="dense",
                                                    method="sequential", backward="autodiff") ** 2))(p)
    for a, b in zip(jax.tree_util.tree_leaves(auto), jax.tree_util.tree_leaves(scan)):
        np.testing.assert_array_equal(a, b)  # the same computation (float64 here)
