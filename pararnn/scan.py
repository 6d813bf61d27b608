"""Linear recurrences ``h_t = A_t h_{t-1} + b_t`` for all t at once.

This is the linear solve inside every Newton iteration and the adjoint solve of every
backward pass. Three algorithms compute the same thing:

- ``"tree"``: :func:`jax.lax.associative_scan` over pairs ``(A, b)`` with
  ``(A₂, b₂) ∘ (A₁, b₁) = (A₂A₁, A₂b₁ + b₂)``; O(log T) depth, ~2T combines.
- ``"chunked"``: split time into chunks of length L; scan sequentially inside every chunk
  (vectorised across chunks), solve the short recurrence of chunk-end states with the tree,
  then fix up each chunk with its incoming state. O(T) work, O(L + log(T/L)) depth.
- ``"sequential"``: :func:`jax.lax.scan` over time; the reference, and often the fastest
  on a CPU with few cores.
- ``"fused"``: a Pallas kernel (:mod:`pararnn.kernels.linear_kernel`; diagonal and block):
  the chunked algorithm in registers, Triton on CUDA, interpret mode elsewhere.

``"auto"`` picks one for the backend (see :func:`default_algorithm`).

Half-precision inputs (bfloat16, float16) are accumulated in float32 and the result is cast
back, because a product of hundreds of Jacobians in bfloat16 loses all precision.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

from .control import match_varying
from .seq_parallel import SeqAxis, sharded_linear_recurrence
from .structure import DIAGONAL, Structure, get_structure

__all__ = ["linear_recurrence", "ALGORITHMS", "default_algorithm"]

ALGORITHMS = ("auto", "tree", "chunked", "sequential", "fused")


def default_algorithm(structure: str | Structure = "diagonal", backend: str | None = None,
                      state_shape: tuple[int, ...] | None = None) -> str:
    """The algorithm ``"auto"`` resolves to for ``structure`` on ``backend`` (default: JAX's
    default backend).

    CPU, from ``benchmarks/scan.py`` (benchmarks/RESULTS.md): ``"chunked"`` for diagonal
    Jacobians (least memory traffic: up to 1.3× faster than the tree on long batched
    sequences), ``"tree"`` for block and dense ones (fewer, larger combines). A plain
    ``"sequential"`` scan is faster than both on a 2-core CPU, which is why
    ``solve(method="auto")`` picks the sequential solve there altogether.
    CUDA GPUs: ``"fused"`` (the Pallas kernel of :mod:`pararnn.kernels`) for diagonal and
    block structures whose channel count D (the last axis of ``state_shape``) is a multiple
    of 8 and whose state fits the kernel's registers — predicted
    faster by benchmarks/roofline.py, not yet measured on a GPU. Other accelerators, dense
    structures: ``"tree"``, whose O(log T) depth has no per-step loop.
    """
    from .kernels.solve_glue import prefers_fused  # late import: kernels import this module

    if prefers_fused(get_structure(structure), state_shape, backend):
        return "fused"
    backend = backend or jax.default_backend()
    if backend == "cpu" and get_structure(structure) is DIAGONAL:
        return "chunked"
    return "tree"


def _promote(*dtypes) -> jnp.dtype:
    """Standard JAX promotion, also when the user runs with strict promotion (the inputs are
    all floating, so this never turns into a surprising up-cast)."""
    with jax.numpy_dtype_promotion("standard"):
        out = jnp.dtype(dtypes[0])
        for d in dtypes[1:]:
            out = jnp.promote_types(out, d)
    return out


def linear_recurrence(
    a: jax.Array,
    b: jax.Array,
    h0: jax.Array,
    *,
    structure: str | Structure,
    reverse: bool = False,
    algorithm: str = "auto",
    chunk_size: int | None = None,
    seq_axis: str | None = None,
) -> jax.Array:
    """Solve ``h_t = A_t h_{t-1} + b_t`` for every t, in parallel over time.

    Args:
      a: the Jacobians. ``(T, *S)`` for ``"diagonal"`` (elementwise, usually ``(T, D)``),
        ``(T, N, K, K)`` for ``"block"``, ``(T, D, D)`` for ``"dense"``.
      b: ``(T, *S)``: the inputs, shaped like the states.
      h0: ``S``: the state before the first step (``h_{-1}``). ``(D,)`` for diagonal and
        dense, ``(K, N)`` for block.
      structure: ``"diagonal"``, ``"block"`` or ``"dense"``.
      reverse: run backwards in time: ``h_t = A_t h_{t+1} + b_t`` for t = T−1 … 0 with
        ``h_T ≡ h0`` (the form of the adjoint recurrence).
      algorithm: ``"auto"``, ``"tree"``, ``"chunked"``, ``"sequential"`` or ``"fused"``
        (module docstring; ``"fused"`` not with ``seq_axis``).
      chunk_size: chunk length for ``"chunked"`` (default: about √T, at least 8).
      seq_axis: inside :func:`jax.shard_map`, the mesh axis the time axis is split over:
        ``a`` and ``b`` are this device's shard (devices in axis-index order hold
        consecutive shards) and the result is this device's shard of the solution. ``h0``
        is the state entering the whole sequence (or leaving it, when ``reverse``). See
        :mod:`pararnn.seq_parallel`.

    Returns:
      ``(T, *S)``: all states, in the promoted dtype of the inputs.
    """
    st = get_structure(structure, "structure")
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {algorithm!r}.")
    a, b, h0 = jnp.asarray(a), jnp.asarray(b), jnp.asarray(h0)
    for name, arr in (("a", a), ("b", b), ("h0", h0)):
        if not jnp.issubdtype(arr.dtype, jnp.floating):
            raise TypeError(f"linear_recurrence: {name} must have a floating dtype, got {arr.dtype}.")
    st.check_state_shape(h0.shape, "h0")
    if b.ndim < 1 or b.shape[1:] != h0.shape or b.shape[0] < 1:
        raise ValueError(
            f"linear_recurrence: b must have shape (T, *h0.shape) = (T, {', '.join(map(str, h0.shape))}) "
            f"with T >= 1, got b.shape={b.shape} and h0.shape={h0.shape}."
        )
    expected_a = (b.shape[0],) + st.jacobian_shape(h0.shape)
    if a.shape != expected_a:
        raise ValueError(
            f"linear_recurrence: for structure={st.name!r} and h0.shape={h0.shape}, a must have "
            f"shape {expected_a}, got {a.shape}."
        )
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}.")

    if seq_axis is None:
        if algorithm == "auto":
            algorithm = default_algorithm(st, state_shape=tuple(h0.shape))
        if algorithm == "fused":  # the Pallas kernel (pararnn.kernels; imported late: no cycle)
            from .kernels.linear_kernel import fused_linear_recurrence
            return fused_linear_recurrence(a, b, h0, structure=st, reverse=reverse,
                                           out_dtype=_promote(a.dtype, b.dtype, h0.dtype))
        return _linear_recurrence(a, b, h0, st, reverse, algorithm, chunk_size)
    if algorithm == "fused":
        raise ValueError("linear_recurrence: algorithm='fused' does not support seq_axis; use "
                         "'auto', 'tree', 'chunked' or 'sequential' for the per-device solves.")
    if algorithm == "auto":  # the XLA choice: the fused kernel is not split across devices
        algorithm = default_algorithm(st)
        if algorithm == "fused":
            algorithm = "tree"
    seq = check_seq_axis(seq_axis)
    out_dtype = _promote(a.dtype, b.dtype, h0.dtype)
    cdt = _promote(out_dtype, jnp.float32)

    def local_solve(a, b, h_in, rev):
        return _linear_recurrence(a, b, h_in, st, rev, algorithm, chunk_size)

    hs = sharded_linear_recurrence(st, a.astype(cdt), b.astype(cdt), h0.astype(cdt), seq,
                                   reverse=reverse, local_solve=local_solve)
    return hs.astype(out_dtype)


def check_seq_axis(seq_axis) -> "SeqAxis":
    """A :class:`SeqAxis` for ``seq_axis``; a clear error outside ``shard_map``."""
    if not isinstance(seq_axis, str):
        raise TypeError(f"seq_axis must be a mesh axis name (str) or None, got {seq_axis!r}.")
    try:
        jax.lax.axis_size(seq_axis)
    except NameError:
        raise ValueError(
            f"seq_axis={seq_axis!r} is not a mesh axis bound here: pass seq_axis only inside "
            f"jax.shard_map over a mesh with that axis (or use pararnn.solve_sharded)."
        ) from None
    return SeqAxis(seq_axis)


@functools.partial(jax.jit, static_argnums=(3, 4, 5, 6))
def _linear_recurrence(a, b, h0, st: Structure, reverse: bool, algorithm: str, chunk_size):
    # Jitted so that eager calls compile once per shape instead of dispatching op by op.
    out_dtype = _promote(a.dtype, b.dtype, h0.dtype)
    cdt = _promote(out_dtype, jnp.float32)
    a, b, h0 = a.astype(cdt), b.astype(cdt), h0.astype(cdt)
    if reverse:
        a, b = jnp.flip(a, 0), jnp.flip(b, 0)
    if algorithm == "sequential":
        hs = _sequential(st, a, b, h0)
    elif algorithm == "tree":
        hs = _tree(st, a, b, h0)
    else:
        hs = _chunked(st, a, b, h0, chunk_size)
    if reverse:
        hs = jnp.flip(hs, 0)
    return hs.astype(out_dtype)


def _sequential(st: Structure, a, b, h0):
    def body(h, ab):
        a_t, b_t = ab
        h = st.apply(a_t, h) + b_t
        return h, h

    _, hs = lax.scan(body, match_varying(h0, a, b), (a, b))
    return hs


def _combine(st: Structure):
    def combine(earlier, later):
        a1, b1 = earlier
        a2, b2 = later
        return st.compose(a2, a1), st.apply(a2, b1) + b2

    return combine


def _tree(st: Structure, a, b, h0):
    # Fold the initial state into the first input; the scan then starts from zero.
    b = b.at[0].add(st.apply(a[0], h0))
    _, hs = lax.associative_scan(_combine(st), (a, b))
    return hs


def _default_chunk(t: int) -> int:
    return max(8, 1 << max(0, round(math.log2(max(t, 1)) / 2)))


def _chunked(st: Structure, a, b, h0, chunk_size):
    t = b.shape[0]
    length = min(chunk_size or _default_chunk(t), t)
    n_chunks = -(-t // length)
    pad = n_chunks * length - t
    state_shape = h0.shape
    if pad:
        # Identity Jacobians and zero inputs after the end change nothing before it.
        a = jnp.concatenate([a, st.identity(state_shape, a.dtype, (pad,))], 0)
        b = jnp.concatenate([b, jnp.zeros((pad,) + state_shape, b.dtype)], 0)
    # (n_chunks * L, ...) -> (L, n_chunks, ...): position-in-chunk leads, so lax.scan walks
    # every chunk in lock-step.
    a_lc = jnp.swapaxes(a.reshape((n_chunks, length) + a.shape[1:]), 0, 1)
    b_lc = jnp.swapaxes(b.reshape((n_chunks, length) + b.shape[1:]), 0, 1)

    def local_step(carry, ab):
        prod, h = carry
        a_l, b_l = ab
        h = st.apply(a_l, h) + b_l
        prod = st.compose(a_l, prod)
        return (prod, h), (prod, h)

    init = match_varying(
        (st.identity(state_shape, a.dtype, (n_chunks,)), jnp.zeros((n_chunks,) + state_shape, b.dtype)),
        a,
        b,
    )
    _, (prods, h_local) = lax.scan(local_step, init, (a_lc, b_lc))
    # Chunk-end states: H_c = P_c H_{c-1} + h_local_c(end), with H_{-1} = h0.
    ends = _tree(st, prods[-1], h_local[-1], h0)
    incoming = jnp.concatenate([h0[None], ends[:-1]], 0)  # state entering each chunk
    hs = h_local + st.apply(prods, incoming[None])
    hs = jnp.swapaxes(hs, 0, 1).reshape((n_chunks * length,) + state_shape)
    return hs[:t]
