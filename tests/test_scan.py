"""pararnn.linear_recurrence against a plain NumPy float64 loop, every structure, both
directions, every algorithm."""

import numpy as np
import pytest
import jax.numpy as jnp

from pararnn import linear_recurrence

ALGORITHMS = ["tree", "chunked", "sequential", "auto"]


def numpy_linear_loop(structure, a, b, h0, reverse):
    a, b, h = np.asarray(a, np.float64), np.asarray(b, np.float64), np.asarray(h0, np.float64)
    out = np.empty_like(b)
    for t in (range(b.shape[0] - 1, -1, -1) if reverse else range(b.shape[0])):
        if structure == "diagonal":
            h = a[t] * h + b[t]
        elif structure == "dense":
            h = a[t] @ h + b[t]
        else:  # block: a[t] (N, K, K) acts on h (K, N) channel by channel
            h = np.stack([a[t, n] @ h[:, n] for n in range(h.shape[1])], axis=1) + b[t]
        out[t] = h
    return out


def make_problem(structure, t, seed=0):
    rng = np.random.default_rng(seed)
    if structure == "diagonal":
        h0 = rng.normal(size=(5,))
        a = rng.uniform(-1.0, 1.0, size=(t, 5))
    elif structure == "block":
        h0 = rng.normal(size=(2, 3))
        a = 0.6 * rng.uniform(-1.0, 1.0, size=(t, 3, 2, 2))
    else:
        h0 = rng.normal(size=(4,))
        a = 0.45 * rng.normal(size=(t, 4, 4))
    b = rng.normal(size=(t,) + h0.shape)
    return a, b, h0


@pytest.mark.parametrize("structure", ["diagonal", "block", "dense"])
@pytest.mark.parametrize("t", [1, 2, 3, 17, 1000])
@pytest.mark.parametrize("reverse", [False, True])
def test_matches_numpy_loop_float64(structure, t, reverse):
    a, b, h0 = make_problem(structure, t)
    want = numpy_linear_loop(structure, a, b, h0, reverse)
    for algorithm in ALGORITHMS:
        got = linear_recurrence(a, b, h0, structure=structure, reverse=reverse, algorithm=algorithm)
        assert got.dtype == jnp.float64
        # float64 with contractive coefficients: rounding stays at a few ulps of |h| ~ 1.
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12, err_msg=algorithm)


@pytest.mark.parametrize("structure", ["diagonal", "block", "dense"])
def test_chunk_sizes_that_do_not_divide_t(structure):
    a, b, h0 = make_problem(structure, 37, seed=3)
    want = numpy_linear_loop(structure, a, b, h0, False)
    for chunk in [1, 2, 5, 36, 37, 64]:
        got = linear_recurrence(a, b, h0, structure=structure, algorithm="chunked", chunk_size=chunk)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12, err_msg=f"chunk_size={chunk}")


@pytest.mark.parametrize("dtype,atol", [(jnp.float32, 1e-5), (jnp.bfloat16, 3e-2)])
def test_low_precision_accumulates_in_float32(dtype, atol):
    # 4096 steps with |a| up to 0.999: long memory, where bf16 accumulation would drift by
    # far more than bf16's own rounding of the inputs and output (~4e-3 relative).
    rng = np.random.default_rng(0)
    a = rng.uniform(0.9, 0.999, size=(4096, 8))
    b = 0.01 * rng.normal(size=(4096, 8))
    h0 = np.ones(8)
    a_l, b_l, h0_l = (jnp.asarray(v, dtype) for v in (a, b, h0))
    want = numpy_linear_loop("diagonal", np.asarray(a_l, np.float64), np.asarray(b_l, np.float64),
                             np.asarray(h0_l, np.float64), False)
    for algorithm in ["tree", "chunked", "sequential"]:
        got = linear_recurrence(a_l, b_l, h0_l, structure="diagonal", algorithm=algorithm)
        assert got.dtype == dtype
        np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=0, atol=atol, err_msg=algorithm)


def test_bad_inputs_name_the_argument():
    a, b, h0 = make_problem("diagonal", 6)
    with pytest.raises(ValueError, match="structure must be one of"):
        linear_recurrence(a, b, h0, structure="diag")
    with pytest.raises(ValueError, match=r"a must have shape \(6, 5\)"):
        linear_recurrence(a[:, :4], b, h0, structure="diagonal")
    with pytest.raises(ValueError, match=r"b must have shape \(T, \*h0.shape\)"):
        linear_recurrence(a, b[:, :4], h0, structure="diagonal")
    with pytest.raises(ValueError, match="h0 must be 2-D"):
        linear_recurrence(a, b, h0, structure="block")
    with pytest.raises(TypeError, match="floating dtype"):
        linear_recurrence(a, b, np.zeros(5, np.int32), structure="diagonal")
    with pytest.raises(ValueError, match="algorithm must be one of"):
        linear_recurrence(a, b, h0, structure="diagonal", algorithm="magic")
