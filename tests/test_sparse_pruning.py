"""Magnitude pruning: target reached at the scheduled step, the largest weights kept (against
a NumPy ranking written here), pruned weights exactly zero through further training."""

import numpy as np
import pytest
import jax
import jax.numpy as jnp
import optax

from pararnn.sparse import magnitude_prune, magnitude_pruning, sparsity, where_names


def make_params(seed=0):
    r = np.random.default_rng(seed)
    return {"W_h": jnp.asarray(r.normal(size=(6, 18))), "W_i": jnp.asarray(r.normal(size=(4, 18))),
            "b": jnp.asarray(r.normal(size=(18,)))}


def loss(p):
    # Pulls every weight towards 1: a pruned weight would move if it were not held at zero.
    return sum(jnp.sum((w - 1.0) ** 2) for w in jax.tree_util.tree_leaves(p))


def numpy_keep(params, names, fraction):
    """Reference: the kept set is the round((1 − s)·n) largest |w| over all named leaves."""
    flat = np.concatenate([np.abs(np.asarray(params[k])).ravel() for k in names])
    k = int(round(fraction * flat.size))
    threshold = np.sort(flat)[k - 1] if k else -np.inf
    return {name: np.abs(np.asarray(params[name])) > threshold for name in names}


@pytest.fixture
def standard_promotion():
    # optax's Adam mixes int32 step counts and Python floats, which strict promotion rejects.
    with jax.numpy_dtype_promotion("standard"):
        yield


def train(tx, params, steps):
    state = tx.init(params)
    history = []
    update = jax.jit(lambda p, s: tx.update(jax.grad(loss)(p), s, p))
    for _ in range(steps):
        updates, state = update(params, state)
        params = optax.apply_updates(params, updates)
        history.append(params)
    return history


def test_one_shot_prunes_at_begin_step_keeps_largest_and_stays_zero(standard_promotion):
    p0 = make_params()
    tx = optax.chain(optax.adam(0.05), magnitude_pruning(0.75, begin_step=3))
    hist = train(tx, p0, 10)
    assert sparsity(hist[2]) == 0.0            # updates 0, 1, 2: nothing pruned yet
    assert sparsity(hist[3]) == 0.75           # update 3 prunes to the target, exactly
    keep = numpy_keep(hist[2], ["W_h", "W_i"], 0.75)   # ranked on the params it saw
    for name in ("W_h", "W_i"):
        assert np.array_equal(np.asarray(hist[3][name]) != 0, keep[name])
        for later in hist[3:]:                 # Adam's momentum would move them: still 0
            assert np.all(np.asarray(later[name])[~keep[name]] == 0.0)
    assert np.all(np.asarray(hist[-1]["b"]) != 0)  # biases are not prunable by default
    assert sparsity(hist[-1]) == 0.75


def test_polynomial_schedule_follows_cubic_ramp_and_hits_target(standard_promotion):
    tx = optax.chain(optax.sgd(0.01), magnitude_pruning(0.9, schedule="polynomial", begin_step=2,
                                                         end_step=8, frequency=3))
    hist = train(tx, make_params(1), 10)
    n = 6 * 18 + 4 * 18  # 180: 0.75·n and 0.5·n are whole counts
    expected = {}
    level = 0.0
    for step in range(10):
        if step in (2, 5, 8):  # the grid begin + k·frequency, which ends on end_step
            level = round(0.9 * (1 - (1 - (step - 2) / 6) ** 3) * n) / n
        expected[step] = level
    assert [sparsity(p) for p in hist] == pytest.approx([expected[s] for s in range(10)], abs=1e-12)
    assert sparsity(hist[8]) == pytest.approx(0.9, abs=0.5 / n)


def test_periodic_and_per_leaf(standard_promotion):
    tx = optax.chain(optax.sgd(0.01), magnitude_pruning(0.5, schedule="periodic", begin_step=1,
                                                         frequency=2, scope="per_leaf"))
    hist = train(tx, make_params(2), 4)
    assert sparsity(hist[0]) == 0.0
    for p in hist[1:]:
        for name in ("W_h", "W_i"):
            assert np.mean(np.asarray(p[name]) == 0) == 0.5  # each leaf at the target


def test_transform_under_strict_promotion_and_where():
    # No optimiser in front: the transformation itself must not rely on implicit promotion.
    params = make_params(3)
    tx = magnitude_pruning(0.5, where=where_names("W_h"))
    state = tx.init(params)
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    updates, state = jax.jit(tx.update)(zeros, state, params)
    new = optax.apply_updates(params, updates)
    assert np.mean(np.asarray(new["W_h"]) == 0) == 0.5
    assert np.array_equal(new["W_i"], params["W_i"])
    assert sparsity(new, where=where_names("W_h")) == 0.5
    pruned, masks = magnitude_prune(params, 0.5, where=where_names("W_h"))
    assert np.array_equal(pruned["W_h"], new["W_h"]) and masks["b"] is None


@pytest.mark.parametrize("kwargs, match", [
    ({"target_sparsity": 1.5}, "target_sparsity must be a number in \\[0, 1\\], got 1.5"),
    ({"target_sparsity": 0.5, "schedule": "cosine"}, "schedule must be one of"),
    ({"target_sparsity": 0.5, "schedule": "polynomial"}, "needs end_step > begin_step"),
    ({"target_sparsity": 0.5, "scope": "layer"}, "scope must be one of"),
    ({"target_sparsity": 0.5, "frequency": 0}, "frequency must be an int >= 1"),
])
def test_pruning_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        magnitude_pruning(**kwargs)
    with pytest.raises(ValueError, match="needs params"):
        tx = magnitude_pruning(0.5)
        tx.update(make_params(), tx.init(make_params()))


def test_default_where_prunes_only_weight_matrices_of_para_cells():
    """ParaGRU/ParaLSTM store biases ``b``, diagonal recurrences ``a`` and peepholes ``p`` as
    2-D (gates, H) arrays: the default selection must skip them and prune only ``B``."""
    from flax import nnx
    import pararnn.nn as pnn
    for layer_cls in (pnn.ParaGRU, pnn.ParaLSTM):
        state = nnx.state(layer_cls(4, 8, rngs=nnx.Rngs(0)), nnx.Param)
        pruned = magnitude_prune(state, 0.5)
        for (path, original), leaf in zip(jax.tree_util.tree_flatten_with_path(state)[0],
                                          jax.tree_util.tree_leaves(pruned)):
            name = [str(getattr(k, "key", getattr(k, "name", k))) for k in path
                    if getattr(k, "name", None) != "value"][-1]
            zeros = float(np.mean(np.asarray(leaf) == 0))
            if name in ("a", "b", "p") or np.ndim(leaf) < 2:
                np.testing.assert_array_equal(np.asarray(leaf), np.asarray(original))
            else:
                assert abs(zeros - 0.5) < 0.05, (layer_cls.__name__, name, zeros)
