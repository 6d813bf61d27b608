"""check_jacobian rejects false structure claims (which would give silently wrong answers)
and accepts true ones, including hand-written Jacobian callables."""

import numpy as np
import pytest
import jax
import jax.numpy as jnp

import pararnn
from pararnn import JacobianStructureError, check_jacobian
from cells import CELLS, GRU_DENSE, GRU_DIAG, LSTM_BLOCK


@pytest.mark.parametrize("cell", [GRU_DIAG, LSTM_BLOCK], ids=["diagonal", "block"])
def test_true_claims_pass(cell):
    p, x, h0 = cell.params(), cell.inputs(1)[0], cell.h0()
    assert check_jacobian(cell.jax_step, h0, x, p, jacobian=cell.jacobian) == 0.0


def test_dense_cell_declared_diagonal_is_caught():
    p, x, h0 = GRU_DENSE.params(), GRU_DENSE.inputs(1)[0], GRU_DENSE.h0()
    with pytest.raises(JacobianStructureError, match=r"not 'diagonal': entry ∂h_next\[\d\]/∂h\[\d\] = "):
        check_jacobian(GRU_DENSE.jax_step, h0, x, p, jacobian="diagonal")
    # ... and it matters: solving with the false claim does not give the loop's answer.
    xs = GRU_DENSE.inputs(50)
    wrong = pararnn.solve(GRU_DENSE.jax_step, h0, xs, p, jacobian="diagonal", fallback="none", max_iters=3)
    right = pararnn.solve(GRU_DENSE.jax_step, h0, xs, p, method="sequential")
    assert float(jnp.abs(wrong - right).max()) > 1e-6


def test_block_cell_declared_diagonal_is_caught():
    p, x, h0 = LSTM_BLOCK.params(), LSTM_BLOCK.inputs(1)[0], LSTM_BLOCK.h0()
    with pytest.raises(JacobianStructureError, match="not 'diagonal'"):
        check_jacobian(LSTM_BLOCK.jax_step, h0, x, p, jacobian="diagonal")


def test_coupling_across_channels_breaks_block_structure():
    def step(s, x, p):  # channel 0's c reads channel 1's h
        return jnp.tanh(s + x[0] + p * jnp.roll(s, 1, axis=1))
    h0 = jnp.zeros((2, 3))
    with pytest.raises(JacobianStructureError, match=r"not 'block': entry ∂h_next\[\d, \d\]/∂h\[\d, \d\]"):
        check_jacobian(step, h0, jnp.ones(3), jnp.asarray(0.3), jacobian="block")


def test_structure_hidden_at_zero_is_found_elsewhere():
    w = jnp.asarray(np.random.default_rng(0).normal(size=(4, 4)))
    step = lambda h, x, p: jnp.tanh(x + (p @ h) * h)  # Jacobian is diagonal at h = 0 only
    with pytest.raises(JacobianStructureError, match="random perturbation"):
        check_jacobian(step, jnp.zeros(4), jnp.ones(4), w, jacobian="diagonal")


def test_jacobian_callables_are_checked_against_autodiff():
    p, x, h0 = GRU_DIAG.params(), GRU_DIAG.inputs(1)[0], GRU_DIAG.h0()
    exact = lambda h, xx, pp: jax.jvp(lambda hh: GRU_DIAG.jax_step(hh, xx, pp), (h,), (jnp.ones_like(h),))[1]
    check_jacobian(GRU_DIAG.jax_step, h0, x, p, jacobian=exact)
    with pytest.raises(JacobianStructureError, match="disagrees with autodiff"):
        check_jacobian(GRU_DIAG.jax_step, h0, x, p, jacobian=lambda h, xx, pp: 1.01 * exact(h, xx, pp))
