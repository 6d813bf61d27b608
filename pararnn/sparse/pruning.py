"""Magnitude pruning as an optax transformation, and the sparsity of a parameter tree.

``optax.chain(optax.adam(1e-3), magnitude_pruning(0.9))`` trains as usual and, at the
scheduled steps, keeps only the largest-magnitude weights of the prunable leaves. The masks
live in the transformation's state; a pruned weight's update becomes ``−param``, so after
``optax.apply_updates`` it is exactly zero, and it stays zero at every later step whatever
the optimiser before it proposes (its momentum is ignored, not reset).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = ["magnitude_pruning", "MagnitudePruningState", "magnitude_prune", "sparsity",
           "SCHEDULES", "where_matrices", "where_names", "schedule_sparsity"]

SCHEDULES = ("one_shot", "periodic", "polynomial")
SCOPES = ("global", "per_leaf")
Where = Callable[[tuple, Any], bool]


# Leaf names that are never weight matrices even when stored 2-D: biases and norm scales, and
# the Para cells' per-channel vectors stacked over gates — ``a`` (diagonal recurrence, (G, H)),
# ``b`` (biases, (G, H)) and ``p`` (ParaLSTM peepholes, (2, H)).
NOT_MATRICES = frozenset({"bias", "scale", "a", "b", "p"})


def where_matrices(path: tuple, leaf: Any) -> bool:
    """The default prunable set: weight matrices (ndim >= 2), not biases, norm scales or the
    Para cells' stacked per-channel vectors (leaf names in :data:`NOT_MATRICES`)."""
    return jnp.ndim(leaf) >= 2 and _leaf_name(path) not in NOT_MATRICES


def _leaf_name(path: tuple) -> str:
    """The parameter's name: the last path key, skipping the ``.value`` attribute that
    ``nnx.State`` paths end with."""
    names = [_key_name(k) for k in path]
    names = [n for n in names if n not in ("value", "raw_value")]
    return names[-1] if names else ""


def _key_name(k) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def where_names(*names: str) -> Where:
    """A ``where`` selecting matrices whose path has a key equal to one of ``names``,
    e.g. ``where_names("W_h")`` prunes only the hidden-to-hidden matrices."""
    wanted = set(names)

    def where(path, leaf):
        return jnp.ndim(leaf) >= 2 and any(_key_name(k) in wanted for k in path)

    return where


def _select(params, where: Where | None):
    """(all leaves, treedef, indices of prunable leaves)."""
    where = where_matrices if where is None else where
    if not callable(where):
        raise TypeError(f"where must be a callable (path, leaf) -> bool or None, got {where!r}.")
    with_path, treedef = jax.tree_util.tree_flatten_with_path(params)
    chosen = tuple(i for i, (path, leaf) in enumerate(with_path) if bool(where(path, leaf)))
    return [leaf for _, leaf in with_path], treedef, chosen


def _check_target(target) -> None:
    if isinstance(target, jax.core.Tracer):
        return  # a traced target (e.g. swept under jit) cannot be checked here
    if isinstance(target, bool) or not isinstance(target, (int, float, np.floating, np.integer, jax.Array)) \
            or np.ndim(target) != 0 or not 0.0 <= float(target) <= 1.0:
        raise ValueError(f"magnitude_pruning: target_sparsity must be a number in [0, 1], got {target!r}.")


def _new_masks(leaves, old_masks, target, scope: str):
    """Keep the largest |w|; ``round(target · n)`` weights pruned (globally or per leaf).
    Already pruned weights rank below every live one, so masks only ever shrink; ties are
    broken by position (stable sort), so the count is exact."""
    keys = [jnp.where(m, jnp.abs(w), -1).astype(jnp.float32 if w.dtype != jnp.float64 else w.dtype)
            for w, m in zip(leaves, old_masks)]

    def keep_top(key_flat):
        n = key_flat.shape[0]
        k = jnp.round(jnp.asarray(target, jnp.float32) * n).astype(jnp.int32)
        order = jnp.argsort(key_flat, stable=True)
        rank = jnp.zeros((n,), jnp.int32).at[order].set(jnp.arange(n, dtype=jnp.int32))
        return rank >= k

    if scope == "per_leaf":
        return tuple(keep_top(key.ravel()).reshape(key.shape) for key in keys)
    dtype = jnp.float64 if any(k.dtype == jnp.float64 for k in keys) else jnp.float32
    flat = jnp.concatenate([k.ravel().astype(dtype) for k in keys])
    keep = keep_top(flat)
    out, start = [], 0
    for key in keys:
        out.append(keep[start:start + key.size].reshape(key.shape))
        start += key.size
    return tuple(out)


def schedule_sparsity(step, target, schedule: str, begin_step: int, end_step: int | None,
                      frequency: int):
    """``(prune_now, sparsity)`` at update ``step`` (0-based count of updates so far).

    - one_shot: prune once, at ``begin_step``, to ``target``.
    - periodic: prune to ``target`` at ``begin_step + k·frequency`` (until ``end_step``). With
      a constant target this finds the same mask as one_shot (pruned weights are held at
      zero, so they stay the smallest); it differs when the target changes between events
      (a traced target) — for gradual pruning use ``polynomial``.
    - polynomial: at ``begin_step + k·frequency`` and at ``end_step``, to Zhu & Gupta's cubic
      ramp ``target · (1 − (1 − (step − begin)/(end − begin))³)``, which reaches ``target``
      exactly at ``end_step``.
    """
    step = jnp.asarray(step, jnp.int32)
    target = jnp.asarray(target, jnp.float32)
    if schedule == "one_shot":
        return step == begin_step, target
    since = step - begin_step
    on_grid = (since >= 0) & (since % frequency == 0)
    if schedule == "periodic":
        live = on_grid if end_step is None else on_grid & (step <= end_step)
        return live, target
    span = float(end_step - begin_step)
    frac = jnp.clip(since.astype(jnp.float32) / span, 0.0, 1.0)
    live = (on_grid | (step == end_step)) & (step <= end_step)
    return live, target * (1.0 - (1.0 - frac) ** 3)


class MagnitudePruningState(NamedTuple):
    """``count``: updates seen (int32); ``masks``: one boolean mask per prunable leaf, in
    flattening order (True = kept)."""

    count: jax.Array
    masks: tuple[jax.Array, ...]


def magnitude_pruning(target_sparsity: float, *, schedule: str = "one_shot", begin_step: int = 0,
                      end_step: int | None = None, frequency: int = 100, scope: str = "global",
                      where: Where | None = None) -> optax.GradientTransformation:
    """Magnitude pruning, to chain *after* an optimiser:
    ``optax.chain(optax.adam(lr), magnitude_pruning(0.8, schedule="polynomial", end_step=1000))``.

    Args:
      target_sparsity: final fraction of zeros among the prunable weights, in [0, 1]
        (``round(target · n)`` weights are pruned).
      schedule: ``"one_shot"`` (at ``begin_step``), ``"periodic"`` (every ``frequency``
        updates from ``begin_step`` to ``end_step``; pruned weights are held at zero and rank
        last, so with a constant target every event finds the first event's mask — it
        differs from one_shot only when the target changes between events) or
        ``"polynomial"`` (cubic ramp from 0 at ``begin_step`` to the target at ``end_step``,
        pruning every ``frequency`` updates). Steps count updates: the first is step 0.
      begin_step, end_step: the schedule's window (``end_step`` required for polynomial).
      frequency: updates between pruning events (periodic, polynomial).
      scope: ``"global"`` (one magnitude threshold over all prunable leaves, as the thesis
        does) or ``"per_leaf"`` (each leaf pruned to the target separately).
      where: ``where(path, leaf) -> bool`` selecting prunable leaves (path as in
        ``jax.tree_util.tree_flatten_with_path``); default :func:`where_matrices`.

    The update function needs ``params``. A pruned weight's update is ``−param``: after
    ``optax.apply_updates`` it is exactly 0, and stays 0.
    """
    _check_target(target_sparsity)
    if schedule not in SCHEDULES:
        raise ValueError(f"magnitude_pruning: schedule must be one of {SCHEDULES}, got {schedule!r}.")
    if scope not in SCOPES:
        raise ValueError(f"magnitude_pruning: scope must be one of {SCOPES}, got {scope!r}.")
    for name, value in (("begin_step", begin_step), ("frequency", frequency)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < (name == "frequency"):
            low = 1 if name == "frequency" else 0
            raise ValueError(f"magnitude_pruning: {name} must be an int >= {low}, got {value!r}.")
    if end_step is not None and (isinstance(end_step, bool) or not isinstance(end_step, (int, np.integer))
                                 or end_step < begin_step):
        raise ValueError(f"magnitude_pruning: end_step must be None or an int >= begin_step={begin_step}, "
                         f"got {end_step!r}.")
    if schedule == "polynomial" and (end_step is None or end_step <= begin_step):
        raise ValueError(f"magnitude_pruning: schedule='polynomial' needs end_step > begin_step={begin_step}, "
                         f"got end_step={end_step!r}.")

    def init_fn(params):
        leaves, _, chosen = _select(params, where)
        if not chosen:
            raise ValueError("magnitude_pruning: `where` selects no leaf of params; nothing to prune.")
        return MagnitudePruningState(jnp.zeros((), jnp.int32),
                                     tuple(jnp.ones(jnp.shape(leaves[i]), bool) for i in chosen))

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("magnitude_pruning: update needs params (call update(grads, state, params)).")
        leaves, treedef, chosen = _select(params, where)
        prunable = [leaves[i] for i in chosen]
        prune_now, level = schedule_sparsity(state.count, target_sparsity, schedule, begin_step,
                                             end_step, frequency)
        masks = jax.lax.cond(prune_now, lambda: _new_masks(prunable, state.masks, level, scope),
                             lambda: state.masks)
        u_leaves = treedef.flatten_up_to(updates)
        for i, m in zip(chosen, masks):
            u_leaves[i] = jnp.where(m, u_leaves[i], (-leaves[i]).astype(u_leaves[i].dtype))
        return treedef.unflatten(u_leaves), MagnitudePruningState(state.count + 1, masks)

    return optax.GradientTransformation(init_fn, update_fn)


def magnitude_prune(params, target_sparsity: float, *, scope: str = "global",
                    where: Where | None = None):
    """One-shot pruning outside training: ``(pruned_params, masks)`` where ``masks`` has the
    structure of ``params`` with a boolean array (True = kept) for prunable leaves and
    ``None`` elsewhere. Same ranking as :func:`magnitude_pruning`."""
    _check_target(target_sparsity)
    if scope not in SCOPES:
        raise ValueError(f"magnitude_prune: scope must be one of {SCOPES}, got {scope!r}.")
    leaves, treedef, chosen = _select(params, where)
    if not chosen:
        raise ValueError("magnitude_prune: `where` selects no leaf of params; nothing to prune.")
    prunable = [leaves[i] for i in chosen]
    masks = _new_masks(prunable, [jnp.ones(jnp.shape(w), bool) for w in prunable], target_sparsity, scope)
    out, mask_leaves = list(leaves), [None] * len(leaves)
    for i, m in zip(chosen, masks):
        out[i] = jnp.where(m, leaves[i], jnp.zeros((), leaves[i].dtype))
        mask_leaves[i] = m
    return treedef.unflatten(out), treedef.unflatten(mask_leaves)


def sparsity(params, where: Where | None = None) -> float:
    """Fraction of exact zeros among the prunable leaves (default: matrices)."""
    leaves, _, chosen = _select(params, where)
    if not chosen:
        raise ValueError("sparsity: `where` selects no leaf of params.")
    zeros = sum(int(np.sum(np.asarray(leaves[i]) == 0)) for i in chosen)
    total = sum(int(np.size(leaves[i])) for i in chosen)
    return zeros / total
