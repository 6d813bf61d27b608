"""Evaluate a step's jaxpr on register tiles, one tile per element of its leading axes.

A fused kernel holds, per program, a tile of ``BD`` channels of ``C`` chunks in registers.
The user's step is written for whole arrays — ``h (D,)``, ``u (3, D)`` — and indexes their
*leading* axes (``u[0]``, ``jnp.stack([c, h])``). GPU kernel languages cannot slice register
values, and the leading sizes (3 gates) are not powers of two, so the step cannot simply be
traced on ``(3, C, BD)`` arrays. Instead this module interprets the step's jaxpr with every
value split along its channel (last) axis:

- a *channel* value (its last axis is the channel axis) is a list of tiles, one per element of
  its leading shape; each tile holds that element for the program's channels;
- a *shared* value (no channel axis: a scalar, a per-gate constant, a time-varying scalar)
  is a list of elements over its whole shape, each broadcast over the channels.

Structural primitives (slice, squeeze, reshape, broadcast, concatenate, stack, transpose,
reductions over leading axes…) then act on these Python lists and emit no kernel code at all;
elementwise primitives are applied tile by tile. Elements are either traced arrays (tiles of
any shape broadcastable to ``(C, BD)``) or concrete NumPy scalars, which fold at trace time.

A step whose channel ``i`` depends on other channels (a reduction, slice, reversal or matrix
product along the channel axis) raises :class:`FusedStepError` naming the primitive.
Half-precision arithmetic is evaluated in float32 and rounded after every primitive — what
XLA does for bfloat16 elementwise code, and what GPU math libraries need (no bfloat16 tanh).
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import jax
import jax.numpy as jnp
from jax import lax
from jax.extend import core as jex_core

__all__ = ["LaneValue", "FusedStepError", "evaluate", "concrete", "is_concrete"]


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

# Elementwise primitives (all operands share one shape, or are rank-0).
_ELEMENTWISE = frozenset("""
add sub mul div rem pow max min neg sign floor ceil round is_finite exp exp2 log log1p expm1
tanh logistic sin cos tan asin acos atan sinh cosh asinh acosh atanh atan2 sqrt rsqrt cbrt abs
square integer_pow nextafter erf erfc erf_inv lgamma digamma eq ne lt le gt ge and or not xor
select_n convert_element_type clamp add_any copy copy_p reduce_precision shift_left
shift_right_arithmetic shift_right_logical population_count clz
""".split())
# Elementwise primitives that are exact in any dtype (no float32 detour for half precision).
_NO_UPCAST = frozenset("select_n convert_element_type copy copy_p reduce_precision".split())
_REDUCERS = {"reduce_sum": lax.add, "reduce_max": lax.max, "reduce_min": lax.min,
             "reduce_prod": lax.mul, "reduce_and": lax.bitwise_and,
             "reduce_or": lax.bitwise_or}
_CALLS = {"pjit": "jaxpr", "jit": "jaxpr", "closed_call": "call_jaxpr",
          "custom_jvp_call": "call_jaxpr", "custom_vjp_call": "call_jaxpr",
          "custom_vjp_call_jaxpr": "fun_jaxpr", "remat": "jaxpr", "checkpoint": "jaxpr"}


def is_concrete(e) -> bool:
    return isinstance(e, (np.ndarray, np.generic))


def concrete(value, dtype) -> np.ndarray:
    return np.asarray(value, dtype=dtype)


def _to_dtype(e, dtype):
    if is_concrete(e):
        return concrete(e, dtype)
    return e if e.dtype == dtype else lax.convert_element_type(e, dtype)


def apply_elementwise(fn: Callable, elems: Sequence, in_dtypes: Sequence, out_dtype,
                      upcast: bool = True):
    """``fn(*elems)`` on one element per operand: concrete operands fold at trace time;
    traced ones are broadcast to a common tile shape. Half-precision float operands are
    computed in float32 and the result rounded to ``out_dtype``."""
    elems = [_to_dtype(e, d) for e, d in zip(elems, in_dtypes)]
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
            e = _to_dtype(e, d)
            tiles.append(e if e.shape == shape else jnp.broadcast_to(e, shape))
    out = fn(*tiles)
    return _to_dtype(out, np.dtype(out_dtype))


class _Evaluator:
    def __init__(self, channels: int, where: str):
        self.d = channels
        self.where = where

    # ---- helpers -------------------------------------------------------------------------
    def fail(self, eqn, why: str):
        raise FusedStepError(
            f"{self.where}: cannot fuse primitive '{eqn.primitive.name}': {why}. A fused step "
            f"must be elementwise over the channel (last) axis of size {self.d}: channel i of "
            f"the result may depend only on channel i of h, of every xs leaf and of every "
            f"params leaf. Use algorithm='tree' or 'chunked' for other steps.")

    def full_shape(self, v: LaneValue) -> tuple[int, ...]:
        return v.lead + (self.d,) if v.channel else v.lead

    def as_channel(self, v: LaneValue, eqn) -> LaneValue:
        """A shared value meeting channel values of the same jaxpr shape: only possible when
        its last axis has size 1 (or D = 1), i.e. it is constant over the channels."""
        if v.channel:
            return v
        if v.lead and v.lead[-1] == 1:
            return LaneValue(v.lead[:-1], v.elems, True, v.dtype)
        if not v.lead:
            return v
        self.fail(eqn, f"an operand of shape {v.lead} varies along the channel axis but does "
                       f"not come from h, xs or params (e.g. jnp.arange over the channels)")

    @staticmethod
    def index(lead) -> np.ndarray:
        return np.arange(math.prod(lead), dtype=np.int64).reshape(lead)

    @staticmethod
    def gather(v: LaneValue, idx: np.ndarray, channel: bool | None = None, dtype=None) -> LaneValue:
        elems = tuple(v.elems[i] for i in idx.reshape(-1))
        return LaneValue(tuple(idx.shape), elems, v.channel if channel is None else channel,
                         v.dtype if dtype is None else np.dtype(dtype))

    # ---- evaluation ----------------------------------------------------------------------
    def run(self, jaxpr, consts: Sequence[LaneValue], args: Sequence[LaneValue]) -> list[LaneValue]:
        env: dict = {}

        def read(var):
            if isinstance(var, jex_core.Literal):
                dt = np.dtype(var.aval.dtype)
                return LaneValue((), (concrete(var.val, dt),), False, dt)
            return env[var]

        for var, val in zip(jaxpr.constvars, consts):
            env[var] = val
        for var, val in zip(jaxpr.invars, args):
            env[var] = val
        for eqn in jaxpr.eqns:
            ins = [read(v) for v in eqn.invars]
            outs = self.eqn(eqn, ins)
            for var, val in zip(eqn.outvars, outs):
                if not isinstance(var, jex_core.DropVar):
                    env[var] = val
        return [read(v) for v in jaxpr.outvars]

    def eqn(self, eqn, ins: list[LaneValue]) -> list[LaneValue]:
        name = eqn.primitive.name
        out_avals = [v.aval for v in eqn.outvars]
        if name in _ELEMENTWISE:
            return [self.elementwise(eqn, ins, out_avals[0])]
        if name in _CALLS:
            inner = eqn.params[_CALLS[name]]
            if hasattr(inner, "jaxpr"):  # ClosedJaxpr
                consts = [self.const(c, eqn) for c in inner.consts]
                inner = inner.jaxpr
            else:
                consts = []
            n_consts = eqn.params.get("num_consts", 0) if name == "custom_vjp_call_jaxpr" else 0
            return self.run(inner, consts, ins[n_consts:] if n_consts else ins)
        method = getattr(self, "op_" + name, None)
        if method is None:
            self.fail(eqn, "this primitive is not supported inside fused kernels")
        out = method(eqn, ins, out_avals)
        return out if isinstance(out, list) else [out]

    def const(self, c, eqn) -> LaneValue:
        arr = np.asarray(c)
        if arr.ndim and arr.shape[-1] == self.d and self.d != 1:
            self.fail(eqn, "a nested function closes over an array with a channel axis; "
                           "pass it through params instead")
        return LaneValue(arr.shape, tuple(concrete(x, arr.dtype) for x in arr.reshape(-1)),
                         False, arr.dtype)

    def elementwise(self, eqn, ins, out_aval) -> LaneValue:
        channel = any(v.channel for v in ins)
        if channel:
            ins = [self.as_channel(v, eqn) for v in ins]
        try:  # operands may broadcast size-1 axes (and rank-0 scalars) against each other
            lead = tuple(np.broadcast_shapes(*[v.lead for v in ins]))
        except ValueError:
            self.fail(eqn, f"operands of leading shapes {[v.lead for v in ins]} do not broadcast")
        picks = [np.broadcast_to(self.index(v.lead), lead).reshape(-1) for v in ins]
        prim, params = eqn.primitive, eqn.params
        upcast = eqn.primitive.name not in _NO_UPCAST
        in_dtypes = [v.dtype for v in ins]
        out = []
        for i in range(math.prod(lead)):
            elems = [v.elems[pick[i]] for v, pick in zip(ins, picks)]
            out.append(apply_elementwise(lambda *a: prim.bind(*a, **params), elems, in_dtypes,
                                         out_aval.dtype, upcast))
        return LaneValue(lead, tuple(out), channel, np.dtype(out_aval.dtype))

    # ---- structural primitives -------------------------------------------------------------
    def op_broadcast_in_dim(self, eqn, ins, outs):
        (v,) = ins[:1]
        shape, dims = tuple(eqn.params["shape"]), tuple(eqn.params["broadcast_dimensions"])
        nd = len(shape)
        if v.channel:
            if dims[-1] != nd - 1:
                self.fail(eqn, "it moves the channel axis")
            out_lead, in_dims, src_lead = shape[:-1], dims[:-1], v.lead
            channel = True
        elif nd and shape[-1] == self.d and (nd - 1 not in dims or
                                             (v.lead and v.lead[-1] == 1 and dims[-1] == nd - 1)):
            # a new (or size-1) trailing axis of size D: constant over the channels
            out_lead = shape[:-1]
            if nd - 1 in dims:
                in_dims, src_lead = dims[:-1], v.lead[:-1]
                v = LaneValue(src_lead, v.elems, False, v.dtype)
            else:
                in_dims, src_lead = dims, v.lead
            channel = True
        else:
            out_lead, in_dims, src_lead, channel = shape, dims, v.lead, False
        idx = self.index(src_lead)
        expanded = [1] * len(out_lead)
        for src_axis, out_axis in enumerate(in_dims):
            expanded[out_axis] = src_lead[src_axis]
        idx = np.broadcast_to(idx.reshape(expanded), out_lead)
        return self.gather(v, idx, channel)

    def op_reshape(self, eqn, ins, outs):
        v = ins[0]
        new = tuple(eqn.params["new_sizes"])
        if eqn.params.get("dimensions") is not None:
            self.fail(eqn, "reshape with a dimension permutation")
        if v.channel:
            if not new or new[-1] != self.d:
                self.fail(eqn, f"it reshapes the channel axis (to {new})")
            return self.gather(v, self.index(v.lead).reshape(new[:-1]))
        return self.gather(v, self.index(v.lead).reshape(new))

    def op_squeeze(self, eqn, ins, outs):
        v = ins[0]
        nd = len(self.full_shape(v))
        dims = tuple(d % nd for d in eqn.params["dimensions"])
        if v.channel and nd - 1 in dims:
            self.fail(eqn, "it squeezes the channel axis")
        return self.gather(v, np.squeeze(self.index(v.lead), axis=dims))

    def op_expand_dims(self, eqn, ins, outs):  # not a primitive in current JAX; kept for safety
        self.fail(eqn, "unexpected expand_dims")

    def op_transpose(self, eqn, ins, outs):
        v = ins[0]
        perm = tuple(eqn.params["permutation"])
        if v.channel:
            if perm[-1] != len(perm) - 1:
                self.fail(eqn, "it moves the channel axis")
            perm = perm[:-1]
        return self.gather(v, np.transpose(self.index(v.lead), perm))

    def op_slice(self, eqn, ins, outs):
        v = ins[0]
        start, limit = eqn.params["start_indices"], eqn.params["limit_indices"]
        strides = eqn.params["strides"] or (1,) * len(start)
        sl = tuple(slice(a, b, s) for a, b, s in zip(start, limit, strides))
        if v.channel:
            if (start[-1], limit[-1], strides[-1]) != (0, self.d, 1):
                self.fail(eqn, "it slices the channel axis")
            sl = sl[:-1]
        return self.gather(v, self.index(v.lead)[sl])

    def op_rev(self, eqn, ins, outs):
        v = ins[0]
        dims = tuple(eqn.params["dimensions"])
        if v.channel and len(v.lead) in dims:
            self.fail(eqn, "it reverses the channel axis")
        return self.gather(v, np.flip(self.index(v.lead), dims) if dims else self.index(v.lead))

    def _join(self, eqn, ins):
        """Operands made compatible for concatenate/stack; returns (values, channel)."""
        channel = any(v.channel for v in ins)
        if channel:
            ins = [self.as_channel(v, eqn) if v.lead or not v.channel else v for v in ins]
        return ins, channel

    def _concat_elems(self, ins):
        offsets = np.cumsum([0] + [len(v.elems) for v in ins])
        elems = sum((v.elems for v in ins), ())
        return offsets, elems

    def op_concatenate(self, eqn, ins, outs):
        ins, channel = self._join(eqn, ins)
        axis = eqn.params["dimension"]
        if channel and axis == len(ins[0].lead):
            self.fail(eqn, "it concatenates along the channel axis")
        offsets, elems = self._concat_elems(ins)
        idx = np.concatenate([self.index(v.lead) + o for v, o in zip(ins, offsets)], axis=axis)
        return self.gather(LaneValue((), elems, channel, ins[0].dtype), idx, channel)

    def op_stack(self, eqn, ins, outs):
        ins, channel = self._join(eqn, ins)
        axis = eqn.params["axis"]
        nd_out = len(self.full_shape(ins[0])) + 1
        axis = axis % nd_out
        if channel and axis == nd_out - 1:
            self.fail(eqn, "it stacks along the channel axis")
        offsets, elems = self._concat_elems(ins)
        idx = np.stack([self.index(v.lead) + o for v, o in zip(ins, offsets)], axis=axis)
        return self.gather(LaneValue((), elems, channel, ins[0].dtype), idx, channel)

    def op_unstack(self, eqn, ins, outs):
        v = ins[0]
        axis = eqn.params["axis"] % len(self.full_shape(v))
        if v.channel and axis == len(v.lead):
            self.fail(eqn, "it unstacks along the channel axis")
        idx = self.index(v.lead)
        return [self.gather(v, np.take(idx, i, axis=axis)) for i in range(idx.shape[axis])]

    def op_split(self, eqn, ins, outs):
        v = ins[0]
        axis = eqn.params["axis"] % len(self.full_shape(v))
        if v.channel and axis == len(v.lead):
            self.fail(eqn, "it splits the channel axis")
        idx = self.index(v.lead)
        bounds = np.cumsum(eqn.params["sizes"])[:-1]
        return [self.gather(v, part) for part in np.split(idx, bounds, axis=axis)]

    def op_pad(self, eqn, ins, outs):
        v, pad_value = ins
        config = eqn.params["padding_config"]
        if v.channel:
            if tuple(config[-1]) != (0, 0, 0):
                self.fail(eqn, "it pads the channel axis")
            config = config[:-1]
        if any(lo < 0 or hi < 0 or interior for lo, hi, interior in config):
            self.fail(eqn, "negative or interior padding")
        idx = np.pad(self.index(v.lead), [(lo, hi) for lo, hi, _ in config], constant_values=-1)
        elems = v.elems + (pad_value.elems[0],)
        return self.gather(LaneValue(v.lead, elems, v.channel, v.dtype), idx)

    def op_dynamic_slice(self, eqn, ins, outs):
        v, *starts = ins
        if not all(len(s.elems) == 1 and is_concrete(s.elems[0]) for s in starts):
            self.fail(eqn, "a slice at a traced position")
        full = self.full_shape(v)
        sizes = eqn.params["slice_sizes"]
        # lax.dynamic_slice clamps the start so that the slice fits
        st = [int(np.clip(int(s.elems[0]), 0, n - k)) for s, n, k in zip(starts, full, sizes)]
        if v.channel:
            if (st[-1], sizes[-1]) != (0, self.d):
                self.fail(eqn, "it slices the channel axis")
            st, sizes = st[:-1], sizes[:-1]
        sl = tuple(slice(a, a + k) for a, k in zip(st, sizes))
        return self.gather(v, self.index(v.lead)[sl])

    def op_iota(self, eqn, ins, outs):
        p = eqn.params
        shape, dim = tuple(p["shape"]), p["dimension"]
        values = np.broadcast_to(
            np.arange(shape[dim]).reshape([-1 if i == dim else 1 for i in range(len(shape))]),
            shape).astype(p["dtype"])
        # An iota along what would be the channel axis stays a shared value; it may never
        # meet a channel value (as_channel raises then).
        return LaneValue(shape, tuple(concrete(x, values.dtype) for x in values.reshape(-1)),
                         False, np.dtype(p["dtype"]))

    def _reduce(self, eqn, ins, outs, fn):
        v = ins[0]
        axes = tuple(eqn.params["axes"])
        if v.channel and len(v.lead) in axes:
            self.fail(eqn, "it reduces over the channel axis")
        idx = self.index(v.lead)
        keep = [a for a in range(len(v.lead)) if a not in axes]
        idx = np.transpose(idx, keep + list(axes))
        out_lead = tuple(v.lead[a] for a in keep)
        idx = idx.reshape(math.prod(out_lead), -1)
        out_dtype = outs[0].dtype
        elems = []
        for row in idx:
            acc = v.elems[row[0]]
            for i in row[1:]:
                acc = apply_elementwise(fn, [acc, v.elems[i]], [v.dtype, v.dtype], out_dtype)
            elems.append(_to_dtype(acc, np.dtype(out_dtype)))
        return LaneValue(out_lead, tuple(elems), v.channel, np.dtype(out_dtype))

    def __getattr__(self, name):
        if name.startswith("op_reduce_") and name[3:] in _REDUCERS:
            fn = _REDUCERS[name[3:]]
            return lambda eqn, ins, outs: self._reduce(eqn, ins, outs, fn)
        raise AttributeError(name)


def evaluate(jaxpr, consts: Sequence[LaneValue], args: Sequence[LaneValue], *, channels: int,
             where: str = "fused step") -> list[LaneValue]:
    """Evaluate ``jaxpr`` (a ``jax.extend.core.Jaxpr``) on lane values.

    Args:
      jaxpr: the open jaxpr of the step (or of its linearisation).
      consts: lane values for its constvars.
      args: lane values for its invars.
      channels: D, the size of the channel axis in the jaxpr's shapes.
      where: names the function in error messages.
    """
    return _Evaluator(channels, where).run(jaxpr, consts, args)


def lane_value_from_tiles(tiles: Sequence[Any], lead: tuple[int, ...], dtype, channel=True) -> LaneValue:
    """Wrap ``prod(lead)`` tiles (row-major) as a lane value."""
    tiles = tuple(tiles)
    assert len(tiles) == math.prod(lead), (len(tiles), lead)
    return LaneValue(tuple(lead), tiles, channel, np.dtype(dtype))
