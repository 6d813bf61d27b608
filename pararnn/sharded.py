"""``solve_sharded``: :func:`pararnn.solve` on global arrays, the time axis split over a mesh
axis (sequence parallelism without writing the ``shard_map`` yourself)."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from .newton import solve

__all__ = ["solve_sharded"]


def _pad_time(tree: Any, axis: int, pad: int) -> Any:
    """Repeat the last time step ``pad`` times: steps after the end never change the states
    before it, and an input like the last one keeps the padded dynamics as tame as the real."""
    if not pad:
        return tree

    def one(leaf):
        widths = [(0, 0)] * leaf.ndim
        widths[axis] = (0, pad)
        return jnp.pad(leaf, widths, mode="edge")

    return jax.tree_util.tree_map(one, tree)


def _explicit(mesh: Mesh) -> bool:
    return any(t == AxisType.Explicit for t in getattr(mesh, "axis_types", ()))


def solve_sharded(step: Callable, h0: jax.Array, xs: Any, params: Any, *, mesh: Mesh,
                  seq_axis: str = "seq", batch_axis: str | None = None, **solve_kwargs):
    """All states of ``h_t = step(h_{t−1}, xs[t], params)``, with time split over the devices
    of ``mesh``'s ``seq_axis``.

    Args:
      step, params: as in :func:`pararnn.solve` (``params`` replicated on every device).
      h0: ``S`` — or ``(B, *S)`` with ``batch_axis``.
      xs: pytree of global arrays ``(T, ...)`` — or ``(B, T, ...)`` with ``batch_axis`` —,
        sharded along time over ``seq_axis`` (or replicated/unsharded: they are resharded).
        T need not be divisible by the axis size: the sequence is padded at its end by
        repeating the last input (the states up to T do not depend on what follows) and the
        result cut back to T.
      mesh: a :class:`jax.sharding.Mesh` with an axis named ``seq_axis``.
      seq_axis: the mesh axis for time.
      batch_axis: optional mesh axis over which a leading batch axis of ``h0`` and ``xs`` is
        split (e.g. ``"data"`` of a (data, seq) mesh); each device then solves its batch
        slice with ``jax.vmap``.
      **solve_kwargs: passed to :func:`pararnn.solve` (``jacobian``, ``method``, ``tol``,
        ``return_info``, …). ``init``, if given, is laid out like ``hs``.

    Returns:
      ``hs`` ``(T, *S)`` (``(B, T, *S)``), sharded along time over ``seq_axis``; with
      ``return_info=True`` also the :class:`pararnn.SolveInfo` of the whole sequence.
    """
    if not isinstance(mesh, Mesh):
        raise TypeError(f"solve_sharded: mesh must be a jax.sharding.Mesh, got {type(mesh).__name__}.")
    for name, axis in (("seq_axis", seq_axis), ("batch_axis", batch_axis)):
        if axis is not None and axis not in mesh.axis_names:
            raise ValueError(f"solve_sharded: {name}={axis!r} is not an axis of the mesh "
                             f"(axes {mesh.axis_names}).")
    if "seq_axis" in solve_kwargs:
        raise TypeError("solve_sharded: pass the sequence axis as seq_axis=, once.")
    time_axis = 0 if batch_axis is None else 1
    leaves = jax.tree_util.tree_leaves(xs)
    if not leaves or any(jnp.ndim(l) <= time_axis for l in leaves):
        raise ValueError(f"solve_sharded: every leaf of xs needs a time axis at position "
                         f"{time_axis} ({'(B, T, ...)' if batch_axis else '(T, ...)'}).")
    t = jnp.shape(leaves[0])[time_axis]
    n = mesh.shape[seq_axis]
    pad = -t % n
    xs = _pad_time(xs, time_axis, pad)
    init = solve_kwargs.pop("init", None)
    if init is not None:
        init = _pad_time(jnp.asarray(init), time_axis, pad)
    return_info = solve_kwargs.pop("return_info", False)

    def local(h0, xs, params, init):
        def one(h0, xs, init):
            return solve(step, h0, xs, params, seq_axis=seq_axis, return_info=True, init=init,
                         **solve_kwargs)
        if batch_axis is None:
            return one(h0, xs, init)
        return jax.vmap(one, in_axes=(0, 0, None if init is None else 0))(h0, xs, init)

    seq_spec = P(seq_axis) if batch_axis is None else P(batch_axis, seq_axis)
    h0_spec = P() if batch_axis is None else P(batch_axis)
    info_spec = P() if batch_axis is None else P(batch_axis)
    specs_xs = jax.tree_util.tree_map(lambda _: seq_spec, xs)
    fn = jax.shard_map(local, mesh=mesh,
                       in_specs=(h0_spec, specs_xs, P(), None if init is None else seq_spec),
                       out_specs=(seq_spec, info_spec), check_vma=False)
    args = (h0, xs, params, init)
    if _explicit(mesh):  # explicit-sharding meshes do not reshard implicitly
        specs = (h0_spec, specs_xs, jax.tree_util.tree_map(lambda _: P(), params),
                 None if init is None else seq_spec)
        args = tuple(a if a is None else jax.tree_util.tree_map(
            lambda leaf, spec: jax.sharding.reshard(leaf, NamedSharding(mesh, spec)), a, sp)
            for a, sp in zip(args, specs))
    hs, info = fn(*args)
    if pad:
        if _explicit(mesh):  # a sharded dimension cannot be cut to a non-divisible length
            hs = jax.sharding.reshard(hs, NamedSharding(mesh, h0_spec))
        hs = jax.lax.slice_in_dim(hs, 0, t, axis=time_axis)
    return (hs, info) if return_info else hs
