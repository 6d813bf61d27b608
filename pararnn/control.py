"""Control flow that stays cheap under ``jax.vmap``.

``lax.cond`` with a batched predicate is turned into ``select`` by ``vmap``: both branches run
for every batch member. For a rarely-taken branch (the sequential fallback of a solve that
did not converge) that doubles the cost of every converged solve. A ``while_loop`` with a
batched predicate instead runs its body only while *some* member needs it, so a branch
expressed as a loop that runs at most once costs nothing when no member takes it.
"""

from __future__ import annotations

from typing import Callable, TypeVar

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["run_if", "run_if_any", "match_varying", "to_varying"]

T = TypeVar("T")


def run_if(pred: jax.Array, fn: Callable[[T], T], operand: T) -> T:
    """``fn(operand) if pred else operand``, skipping ``fn`` entirely when ``pred`` is False.

    Unlike ``lax.cond`` this stays a real branch under ``jax.vmap``: ``fn`` runs (for the
    whole batch) only if any member's ``pred`` is True, and only those members take its
    result. ``fn`` must return a pytree with the structure, shapes and dtypes of ``operand``,
    and should compute from ``operand`` only (see below). Not differentiable (it is meant
    for forward passes under a custom VJP).

    XLA hoists loop-invariant work out of loops — including the whole of ``fn`` if ``fn``
    reads only values from outside the loop, which would make it run unconditionally. So
    the operand's floating leaves are passed to ``fn`` with a data dependence on the loop
    predicate (``+ 0·pred``): anything ``fn`` derives from its operand stays inside.
    """

    def cond(carry):
        return carry[0]

    def body(carry):
        p, x = carry
        zero = p.astype(jnp.float32) * 0.0
        x = jax.tree_util.tree_map(lambda l: _tie(l, zero), x)
        # `p & False` rather than a fresh constant: keeps p's shard_map varying axes.
        return jnp.logical_and(p, False), fn(x)

    return lax.while_loop(cond, body, (jnp.asarray(pred, bool), operand))[1]


def run_if_any(pred: jax.Array, fn: Callable[[T], T], operand: T, any_device: Callable) -> T:
    """:func:`run_if` whose branch runs on every device when ``pred`` holds on any of them
    (``any_device`` reduces the predicate across the devices of a ``shard_map``), each
    device then keeping ``fn``'s result only where its own ``pred`` holds. For branches
    that contain collectives, which must run on all devices or none."""

    def cond(carry):
        return carry[0]

    def body(carry):
        p, x = carry
        zero = p.astype(jnp.float32) * 0.0
        y = fn(jax.tree_util.tree_map(lambda l: _tie(l, zero), x))
        y = jax.tree_util.tree_map(lambda new, old: jnp.where(pred, new, old), y, x)
        return jnp.logical_and(p, False), y

    pred = jnp.asarray(pred, bool)
    operand = match_varying(operand, operand, pred)  # the selection mixes in pred's axes
    return lax.while_loop(cond, body, (any_device(pred), operand))[1]


def to_varying(x, axes: tuple):
    """``x`` marked varying over ``axes`` (inside ``shard_map``; a no-op where it already is,
    or where varying axes are not tracked)."""
    missing = tuple(a for a in axes if a not in _varying_axes(x))
    if not missing or not _tracks_varying(x):
        return x
    return lax.pcast(x, missing, to="varying")


def _tracks_varying(x) -> bool:
    aval = jax.typeof(x)
    return getattr(aval, "manual_axis_type", None) is not None or hasattr(aval, "vma")


def _tie(leaf, zero):
    leaf = jnp.asarray(leaf)
    if not jnp.issubdtype(leaf.dtype, jnp.inexact):
        return leaf
    return leaf + zero.astype(leaf.dtype)


def match_varying(x: T, *refs) -> T:
    """Mark ``x`` as varying over every ``shard_map`` mesh axis that any of ``refs`` varies over.

    Inside ``shard_map`` a loop carry that starts from a replicated constant (zeros, an
    identity, a replicated ``h0``) but is updated with per-device data must be declared
    varying up front, or ``scan``/``while_loop`` reject the carry's changing type. Outside
    ``shard_map`` this is the identity.
    """
    axes: set = set()
    for r in jax.tree_util.tree_leaves(refs):
        axes |= _varying_axes(r)
    if not axes:
        return x

    def fix(leaf):
        missing = axes - _varying_axes(leaf)
        return lax.pcast(leaf, tuple(sorted(missing)), to="varying") if missing else leaf

    return jax.tree_util.tree_map(fix, x)


def _varying_axes(x) -> set:
    """The shard_map mesh axes ``x`` varies over (empty outside shard_map)."""
    aval = jax.typeof(x)
    mat = getattr(aval, "manual_axis_type", None)  # JAX >= 0.9
    if mat is not None:
        return set(mat.varying)
    return set(getattr(aval, "vma", None) or ())  # older JAX
