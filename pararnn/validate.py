"""Trace-time checks of :func:`pararnn.solve`'s arguments, with errors that name the argument,
the shape or value seen, and what was expected."""

from __future__ import annotations

import numbers
from typing import Any, Callable

import jax
import jax.numpy as jnp

from .jacobians import infer_structure
from .structure import STRUCTURE_NAMES, Structure, get_structure

METHODS = ("newton", "quasi", "sequential", "auto")
FALLBACKS = ("sequential", "raise", "none")


def _fmt(x) -> str:
    return f"{jnp.dtype(x.dtype).name}{list(x.shape)}"


def check_choice(value: Any, choices: tuple[str, ...], argname: str) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{argname} must be one of {choices}, got {value!r}.")
    return value


SUPPORTED_DTYPES = tuple(jnp.dtype(d) for d in (jnp.float64, jnp.float32, jnp.float16, jnp.bfloat16))


def check_h0(h0: Any) -> jax.Array:
    h0 = jnp.asarray(h0)
    if h0.dtype not in SUPPORTED_DTYPES:
        raise TypeError(
            f"h0 must have a floating dtype ({', '.join(d.name for d in SUPPORTED_DTYPES)}), got {h0.dtype}."
        )
    return h0


def _eval_shape(fn: Callable, argname: str, h0: jax.Array, x0_spec: Any, params: Any):
    """``jax.eval_shape(fn, h0, xs[0], params)``; a failure names ``argname`` and the shapes."""
    try:
        return jax.eval_shape(fn, jax.ShapeDtypeStruct(h0.shape, h0.dtype), x0_spec, params)
    except Exception as e:  # the user's function rejects these shapes: say which ones
        x_desc = jax.tree_util.tree_map(_fmt, x0_spec)
        raise ValueError(
            f"calling {argname}(h0, xs[0], params) with h0 {_fmt(h0)} and xs[0] {x_desc} failed "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). Check that h0 "
            f"has the state shape and dtype {argname} expects and that xs has a leading time axis."
        ) from e


def check_xs(xs: Any) -> int:
    """Return T, the common leading axis of every leaf of ``xs``."""
    leaves = jax.tree_util.tree_leaves_with_path(xs)
    if not leaves:
        raise ValueError(
            "xs must be a pytree with at least one array whose leading axis is time (T, ...); "
            "got a pytree without leaves. For a recurrence without inputs pass jnp.zeros((T, 0))."
        )
    shapes = {}
    for path, leaf in leaves:
        name = "xs" + jax.tree_util.keystr(path)
        shapes[name] = tuple(jnp.shape(leaf))
        if not shapes[name]:
            raise ValueError(f"{name} must have a leading time axis (T, ...), got a scalar.")
    lengths = {name: shape[0] for name, shape in shapes.items()}
    if len(set(lengths.values())) != 1:
        desc = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
        raise ValueError(f"every leaf of xs must have the same leading (time) axis T; got {desc}.")
    t = next(iter(lengths.values()))
    if t < 1:
        raise ValueError(f"xs has T = {t} time steps; solve needs T >= 1.")
    return t


def slice_spec(xs: Any) -> Any:
    """Abstract values of one time slice of ``xs``."""
    return jax.tree_util.tree_map(
        lambda l: jax.ShapeDtypeStruct(jnp.shape(l)[1:], jnp.result_type(l)), xs
    )


def check_step(step: Callable, h0: jax.Array, x0_spec: Any, params: Any) -> None:
    if not callable(step):
        raise TypeError(f"step must be callable step(h, x, params) -> h_next, got {type(step).__name__}.")
    out = _eval_shape(step, "step", h0, x0_spec, params)
    if not isinstance(out, jax.ShapeDtypeStruct):
        raise TypeError(
            f"step must return one array shaped like h ({_fmt(h0)}), got a pytree "
            f"{jax.tree_util.tree_structure(out)}."
        )
    if out.shape != h0.shape or out.dtype != h0.dtype:
        raise ValueError(
            f"step must return an array of the state's shape and dtype: step(h0, xs[0], params) "
            f"returned {_fmt(out)} but h0 is {_fmt(h0)}."
        )


def resolve_jacobian(
    jacobian: Any, h0: jax.Array, x0_spec: Any, params: Any
) -> tuple[Structure, Callable | None]:
    """Return the declared structure and the user's Jacobian callable (if any)."""
    if callable(jacobian):
        out = _eval_shape(jacobian, "jacobian", h0, x0_spec, params)
        if not isinstance(out, jax.ShapeDtypeStruct):
            raise TypeError(f"jacobian callable must return one array, got {jax.tree_util.tree_structure(out)}.")
        structure = infer_structure(out.shape, h0.shape, "jacobian callable")
        if out.dtype != h0.dtype:
            raise ValueError(
                f"jacobian callable must return h0's dtype {h0.dtype}, got {out.dtype}."
            )
        fn = jacobian
    else:
        if not isinstance(jacobian, str) or jacobian not in STRUCTURE_NAMES:
            raise ValueError(
                f"jacobian must be one of {STRUCTURE_NAMES} or a callable jac(h, x, params), got {jacobian!r}."
            )
        structure, fn = get_structure(jacobian, "jacobian"), None
    structure.check_state_shape(h0.shape, "h0")
    return structure, fn


def check_jacobian_diagonal(fn: Any, h0: jax.Array, x0_spec: Any, params: Any) -> None:
    if fn is None:
        return
    if not callable(fn):
        raise TypeError(f"jacobian_diagonal must be a callable jac_diag(h, x, params) or None, got {fn!r}.")
    out = _eval_shape(fn, "jacobian_diagonal", h0, x0_spec, params)
    if not isinstance(out, jax.ShapeDtypeStruct) or out.shape != h0.shape or out.dtype != h0.dtype:
        got = _fmt(out) if isinstance(out, jax.ShapeDtypeStruct) else str(jax.tree_util.tree_structure(out))
        raise ValueError(f"jacobian_diagonal must return an array shaped and typed like h0 ({_fmt(h0)}), got {got}.")


def check_init(init: Any, t: int, h0: jax.Array) -> jax.Array | None:
    if init is None:
        return None
    init = jnp.asarray(init)
    if not jnp.issubdtype(init.dtype, jnp.floating):
        raise TypeError(f"init must be a floating-point initial guess like h0, got dtype {init.dtype}.")
    if init.shape != (t,) + h0.shape:
        raise ValueError(f"init must have shape (T, *h0.shape) = {(t,) + h0.shape}, got {init.shape}.")
    return init.astype(h0.dtype)


def check_max_iters(max_iters: Any) -> int | None:
    if max_iters is None:
        return None
    if isinstance(max_iters, bool) or not isinstance(max_iters, numbers.Integral) or max_iters < 0:
        raise ValueError(f"max_iters must be a non-negative int, got {max_iters!r}.")
    return int(max_iters)


def check_tol(tol: Any) -> float | None:
    if tol is None:
        return None
    try:
        value = float(tol)
    except (TypeError, jax.errors.ConcretizationTypeError):
        raise ValueError(f"tol must be a non-negative Python float, got {tol!r}.") from None
    if not value >= 0.0:
        raise ValueError(f"tol must be a non-negative Python float, got {tol!r}.")
    return value


def check_positive_int(value: Any, argname: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{argname} must be a positive int or None, got {value!r}.")
    return int(value)


def check_damping(damping: Any) -> str | float:
    """``"auto"`` or a fixed ``λ >= 0``."""
    if isinstance(damping, str):
        if damping != "auto":
            raise ValueError(f"damping must be 'auto' or a float λ >= 0, got {damping!r}.")
        return damping
    try:
        value = float(damping)
    except (TypeError, jax.errors.ConcretizationTypeError):
        raise ValueError(f"damping must be 'auto' or a Python float λ >= 0, got {damping!r}.") from None
    if not (value >= 0.0 and value < float("inf")):
        raise ValueError(f"damping must be 'auto' or a finite float λ >= 0, got {damping!r}.")
    return value
