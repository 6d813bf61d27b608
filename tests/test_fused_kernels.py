"""The fused kernels below ``solve``: the fused linear recurrence (interpret mode), the lane
interpreter that runs a step on register tiles, the CUDA lowering (no GPU needed: it catches
operations the Pallas Triton backend cannot lower), layout validation and the automatic
choice of the fused path."""

import re

import numpy as np
import pytest
import jax
import jax.numpy as jnp

import pararnn
from pararnn.kernels import TRITON_CUSTOM_CALL, FusedStepError, StepPlan
from pararnn.kernels import solve_glue
from pararnn.kernels.lanes import LaneValue
from pararnn.scan import default_algorithm
from pararnn.structure import BLOCK, DIAGONAL
from fused_cases import make_case


# ---- the fused linear recurrence --------------------------------------------------------------
def _numpy_linear(a, b, h0, block, reverse):
    a, b, h = np.asarray(a, np.float64), np.asarray(b, np.float64), np.asarray(h0, np.float64)
    t = b.shape[0]
    out = np.empty_like(b)
    for i in (range(t - 1, -1, -1) if reverse else range(t)):
        h = (np.einsum("nij,jn->in", a[i], h) if block else a[i] * h) + b[i]
        out[i] = h
    return out


def _linear_inputs(t, seed=0):
    k = jax.random.split(jax.random.key(seed), 6)
    diag = (jax.random.uniform(k[0], (t, 2, 16), jnp.float32, -1, 1),
            jax.random.normal(k[1], (t, 2, 16), jnp.float32),
            jax.random.normal(k[2], (2, 16), jnp.float32))
    block = (0.5 * jax.random.normal(k[3], (t, 16, 2, 2), jnp.float32),
             jax.random.normal(k[4], (t, 2, 16), jnp.float32),
             jax.random.normal(k[5], (2, 16), jnp.float32))
    return diag, block


def _check_linear(t, configs):
    """``configs``: (structure, reverse) pairs, solved in one jit and compared with a float64
    loop (float32 against float64: a few ulps per step of a contracting recurrence)."""
    diag, block = _linear_inputs(t)
    args = {"diagonal": diag, "block": block}

    @jax.jit
    def run(args):
        return [pararnn.linear_recurrence(*args[st], structure=st, reverse=rev, algorithm="fused")
                for st, rev in configs]

    for got, (st, rev) in zip(run(args), configs):
        assert got.dtype == jnp.float32
        want = _numpy_linear(*args[st], block=st == "block", reverse=rev)
        np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=0, atol=2e-5)


def test_fused_linear_recurrence_matches_a_numpy_loop():
    """A diagonal recurrence on a (2, 16) state (two tiles per step) forward and a 2×2-block
    one in reverse; the other combinations and the gradients run with -m slow."""
    _check_linear(7, [("diagonal", False), ("block", True)])


@pytest.mark.slow
@pytest.mark.parametrize("t", [1, 7, 1000, 4097])
def test_fused_linear_recurrence_every_case(t):
    _check_linear(t, [(st, rev) for st in ("diagonal", "block") for rev in (False, True)])


@pytest.mark.slow
def test_fused_linear_recurrence_gradients_match_autodiff_of_the_sequential_scan():
    diag, block = _linear_inputs(9, seed=1)
    w = jax.random.normal(jax.random.key(9), diag[1].shape, jnp.float32)
    configs = [(diag, "diagonal", True), (block, "block", False)]

    def loss(args, st, rev, alg):
        return jnp.sum(w * jnp.sin(pararnn.linear_recurrence(*args, structure=st, reverse=rev,
                                                             algorithm=alg)))

    grads = jax.jit(lambda: [jax.grad(loss)(args, st, rev, alg) for alg in ("fused", "sequential")
                             for args, st, rev in configs])()
    # float32 reverse-mode sums of a few products: agree to a few ulps of |g| ~ 1
    for got, want in zip(grads[:2], grads[2:]):
        for g, r in zip(got, want):
            np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=0, atol=1e-5)


# ---- the lane interpreter ---------------------------------------------------------------------
def _on_tiles(step, h, x, p, structure=DIAGONAL):
    """Evaluate ``step`` through the lane interpreter, with every channel in one (D,) tile,
    eagerly (no kernel): the structural rewriting is what is tested."""
    plan = StepPlan(step, h, jax.tree_util.tree_map(lambda l: l[None], x), p,
                    structure=structure)

    def lanes(op, arr):
        arr = jnp.asarray(arr).reshape(op.shape)
        if op.channel:
            tiles = tuple(arr[i] for i in np.ndindex(*op.lead))
        else:
            tiles = tuple(arr[i] for i in np.ndindex(*op.shape))
        return LaneValue(op.lead, tiles, op.channel, op.dtype)

    xv = [lanes(op, a[0]) for op, a in zip(plan.x_operands, plan.x_arrays(
        jax.tree_util.tree_map(lambda l: l[None], x)))]
    sv = [lanes(op, a) for op, a in zip(plan.s_operands, plan.static_arrays(p, ()))]
    hv = LaneValue(h.shape[:-1], tuple(h[i] for i in np.ndindex(*h.shape[:-1])), True, h.dtype)
    out = plan.step(hv, xv, sv)
    return jnp.stack([jnp.broadcast_to(e, h.shape[-1:]) for e in out.elems]).reshape(h.shape)


@pytest.mark.slow  # ~3 s; the default suite's budget keeps one lowering and one solve per structure
def test_lane_interpreter_handles_structural_operations_on_leading_axes():
    d = 5

    def step(h, x, p):  # h (2, d), x (4, d), p: (3, d) per channel, (2, 2) shared
        g = x.reshape(2, 2, d).transpose(1, 0, 2)  # leading axes only
        mixed = g.sum(axis=1)
        z = jax.nn.relu(jnp.concatenate([mixed, p["a"][:1]], 0))  # custom_jvp inside
        gate = jnp.where(z[0] > 0.5, jax.nn.sigmoid(z[1]), jnp.clip(z[2], -1, 1))
        both = jnp.stack([gate * h[0], jnp.tanh(h[1] + p["s"][0, 1])])
        padded = jnp.pad(both, ((1, 0), (0, 0)))[1:]
        return padded[::-1][::-1] * p["s"][1, 0] + jnp.ones_like(h) * jnp.max(p["a"][1:], axis=0)

    k = jax.random.split(jax.random.key(3), 4)
    h = jax.random.normal(k[0], (2, d), jnp.float32)
    x = jax.random.normal(k[1], (4, d), jnp.float32)
    p = {"a": jax.random.normal(k[2], (3, d), jnp.float32), "s": jnp.asarray([[0.5, 0.2], [1.5, 0.0]], jnp.float32)}
    got = _on_tiles(step, h, x, p)
    np.testing.assert_allclose(np.asarray(got), np.asarray(step(h, x, p)), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("bad_step,primitive", [
    (lambda h, x, p: h * jnp.sum(h) + x, "reduce_sum"),
    (lambda h, x, p: jnp.roll(h, 1) + x, "channel axis"),
    (lambda h, x, p: jnp.tanh(p @ h) + x, "dot_general"),
    (lambda h, x, p: h[::-1] * 0.5 + x, "channel axis"),
])
def test_a_step_that_mixes_channels_cannot_be_fused(bad_step, primitive):
    h0 = jnp.zeros(8, jnp.float32)
    xs = jnp.ones((5, 8), jnp.float32)
    p = jnp.eye(8, dtype=jnp.float32)
    with pytest.raises(FusedStepError, match=re.escape(primitive)) as err:
        pararnn.solve(bad_step, h0, xs, p, algorithm="fused")
    assert "elementwise over the channel" in str(err.value)


def test_layout_errors_name_the_leaf_and_the_shapes():
    def step(h, x, p):
        return jnp.tanh(h * p["w"][0, 0] + x)

    h0 = jnp.zeros(8, jnp.float32)
    xs = jnp.ones((5, 8), jnp.float32)
    with pytest.raises(FusedStepError, match=r"params\['w'\] has shape \[30, 30\].*D=8"):
        pararnn.solve(step, h0, xs, {"w": jnp.ones((30, 30), jnp.float32)}, algorithm="fused")
    with pytest.raises(FusedStepError, match="jacobian='diagonal' and 'block', got 'dense'"):
        pararnn.solve(lambda h, x, p: jnp.tanh(h + x), h0, xs, None, jacobian="dense",
                      algorithm="fused")
    with pytest.raises(FusedStepError, match="at least one \\(channel\\) axis"):
        pararnn.solve(lambda h, x, p: jnp.tanh(h + x), jnp.zeros((), jnp.float32),
                      jnp.ones((5,), jnp.float32), None, algorithm="fused")
    with pytest.raises(FusedStepError, match=r"state of shape \[20, 8\] does not fit"):
        pararnn.solve(lambda h, x, p: jnp.tanh(h + x), jnp.zeros((20, 8), jnp.float32),
                      jnp.ones((5, 20, 8), jnp.float32), None, algorithm="fused")
    with pytest.raises(FusedStepError, match="register tiles per time step"):
        pararnn.solve(lambda h, x, p: jnp.tanh(h + x.sum(0)), h0, jnp.ones((5, 40, 8), jnp.float32),
                      None, algorithm="fused")


# ---- CUDA lowering on this CPU-only machine -----------------------------------------------------
def _triton_calls(fn, *args) -> int:
    text = jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",)).as_text()
    return len(re.findall(r"custom_call @" + re.escape(TRITON_CUSTOM_CALL), text))


@pytest.mark.parametrize("name,dtype", [("paragru", jnp.float32), ("paralstm", jnp.bfloat16),
                                        pytest.param("user", jnp.float32, marks=pytest.mark.slow)])
def test_fused_solve_and_its_gradient_lower_to_the_triton_kernel(name, dtype):
    """Lowering runs the whole Pallas → Triton IR translation of the kernels (forward and
    adjoint), so an operation the Triton backend cannot lower fails here."""
    case = make_case(name, 300, dtype=dtype)

    def fwd(h0, xs, p):
        return pararnn.solve(case.step, h0, xs, p, jacobian=case.jacobian, algorithm="fused")

    def loss(h0, xs, p):
        return jnp.sum(fwd(h0, xs, p).astype(jnp.float32) ** 2)

    # the gradient holds the forward kernel and the adjoint kernel
    assert _triton_calls(jax.grad(loss, argnums=(0, 1, 2)), case.h0, case.xs, case.params) == 2
    if name == "paragru":  # a batch is a grid axis of the same single kernel
        batched = jax.tree_util.tree_map(lambda l: jnp.stack([l, l]), case.xs)
        assert _triton_calls(jax.vmap(fwd, in_axes=(None, 0, None)), case.h0, batched,
                             case.params) == 1


@pytest.mark.slow
def test_fused_linear_recurrence_lowers_to_the_triton_kernel():
    diag, block = _linear_inputs(100)
    for args, st in ((diag, "diagonal"), (block, "block")):
        f = lambda a, b, h0: pararnn.linear_recurrence(a, b, h0, structure=st, algorithm="fused")
        # forward and transposed recurrence (its gradient)
        assert _triton_calls(jax.grad(lambda *a: f(*a).sum(), argnums=(0, 1, 2)), *args) == 2


# ---- automatic choice -------------------------------------------------------------------------
def test_auto_picks_the_fused_path_only_on_cuda_for_fusable_steps(monkeypatch):
    assert solve_glue.prefers_fused(DIAGONAL, (64,), backend="cuda")
    assert solve_glue.prefers_fused(BLOCK, (2, 64), backend="cuda")
    assert not solve_glue.prefers_fused(DIAGONAL, (64,), backend="cpu")
    assert not solve_glue.prefers_fused(DIAGONAL, (7,), backend="cuda")  # 1-lane tiles
    assert not solve_glue.prefers_fused(DIAGONAL, (32, 64), backend="cuda")  # 32 tiles a state
    assert not solve_glue.prefers_fused(BLOCK, (8, 64), backend="cuda")  # 64-tile Jacobians
    assert default_algorithm("diagonal", backend="cuda", state_shape=(64,)) == "fused"
    assert default_algorithm("dense", backend="cuda", state_shape=(64,)) == "tree"
    assert default_algorithm("diagonal", backend="cpu", state_shape=(64,)) == "chunked"

    h0, xs = jnp.zeros(8, jnp.float32), jnp.ones((5, 8), jnp.float32)
    fusable = lambda h, x, p: jnp.tanh(0.5 * h + x)
    mixing = lambda h, x, p: jnp.tanh(0.5 * jnp.roll(h, 1) + x)
    resolve = lambda step: solve_glue.resolve_solve_algorithm("auto", DIAGONAL, step, h0, xs,
                                                             None, "newton")
    assert resolve(fusable) == "auto"  # this machine is not a CUDA GPU
    monkeypatch.setattr(solve_glue, "is_cuda_backend", lambda backend=None: True)
    assert resolve(fusable) == "fused"
    assert resolve(mixing) == "auto"  # falls back to the XLA algorithms silently


def test_fused_is_refused_with_seq_axis():
    """The kernels solve a whole sequence on one device: seq_axis keeps the XLA scans."""
    a = np.zeros((8, 16), np.float32)
    with pytest.raises(ValueError, match="'fused' does not support seq_axis"):
        pararnn.linear_recurrence(a, a, a[0], structure="diagonal", algorithm="fused",
                                  seq_axis="seq")
