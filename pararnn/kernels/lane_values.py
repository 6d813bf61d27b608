"""Lane values: one jaxpr value split along its channel axis, and elementwise application
on their elements (see :mod:`pararnn.kernels.lanes`)."""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import numpy as np
import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["LaneValue", "FusedStepError", "apply_elementwise", "concrete", "is_concrete",
           "to_dtype"]


class FusedStepError(ValueError):
    """The step (or its layout) cannot be evaluated inside a fused kernel."""


class LaneValue(NamedTuple):
    """One jaxpr value, split along its channel axis.

    Attributes:
      lead: the leading shape: the jaxpr shape without its last axis for channel values,
        the whole shape for shared values.
      elems: ``prod(lead)`` elements in row-major order: traced tiles or NumPy 0-d arrays.
      channel: whether the value's last axis is the channel axis.
      dtype: the jaxpr dtype of the value.
    """

    lead: tuple[int, ...]
    elems: tuple
    channel: bool
    dtype: np.dtype


_HALF = (np.dtype(jnp.bfloat16), np.dtype(jnp.float16))


def is_concrete(e) -> bool:
    return isinstance(e, (np.ndarray, np.generic))


def concrete(value, dtype) -> np.ndarray:
    return np.asarray(value, dtype=dtype)


def to_dtype(e, dtype):
    if is_concrete(e):
        return concrete(e, dtype)
    return e if e.dtype == dtype else lax.convert_element_type(e, dtype)


def apply_elementwise(fn: Callable, elems: Sequence, in_dtypes: Sequence, out_dtype,
                      upcast: bool = True):
    """``fn(*elems)`` on one element per operand: concrete operands fold at trace time;
    traced ones are broadcast to a common tile shape. Half-precision float operands are
    computed in float32 and the result rounded to ``out_dtype``."""
    elems = [to_dtype(e, d) for e, d in zip(elems, in_dtypes)]
    if all(is_concrete(e) for e in elems):
        with jax.ensure_compile_time_eval():
            out = fn(*[jnp.asarray(e) for e in elems])
        return concrete(out, out_dtype)
    shape = jnp.broadcast_shapes(*[np.shape(e) for e in elems])
    half = upcast and any(np.dtype(d) in _HALF for d in in_dtypes)
    tiles = []
    for e, d in zip(elems, in_dtypes):
        d = np.dtype(jnp.float32) if half and np.dtype(d) in _HALF else np.dtype(d)
        if is_concrete(e):
            tiles.append(jnp.full(shape, e, d))
        else:
            e = to_dtype(e, d)
            tiles.append(e if e.shape == shape else jnp.broadcast_to(e, shape))
    out = fn(*tiles)
    return to_dtype(out, np.dtype(out_dtype))
