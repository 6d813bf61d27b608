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
from typing import Sequence

import numpy as np
from jax.extend import core as jex_core

from .lane_ops import StructuralOps
from .lane_values import FusedStepError, LaneValue, apply_elementwise, concrete, is_concrete

__all__ = ["LaneValue", "FusedStepError", "evaluate", "concrete", "is_concrete",
           "ELEMENTWISE", "CALLS"]

# Elementwise primitives (all operands share one shape, or are rank-0).
ELEMENTWISE = frozenset("""
add sub mul div rem pow max min neg sign floor ceil round is_finite exp exp2 log log1p expm1
tanh logistic sin cos tan asin acos atan sinh cosh asinh acosh atanh atan2 sqrt rsqrt cbrt abs
square integer_pow nextafter erf erfc erf_inv lgamma digamma eq ne lt le gt ge and or not xor
select_n convert_element_type clamp add_any copy copy_p reduce_precision shift_left
shift_right_arithmetic shift_right_logical population_count clz
""".split())
# Elementwise primitives that are exact in any dtype (no float32 detour for half precision).
NO_UPCAST = frozenset("select_n convert_element_type copy copy_p reduce_precision".split())
CALLS = {"pjit": "jaxpr", "jit": "jaxpr", "closed_call": "call_jaxpr",
         "custom_jvp_call": "call_jaxpr", "custom_vjp_call": "call_jaxpr",
         "custom_vjp_call_jaxpr": "fun_jaxpr", "remat": "jaxpr", "checkpoint": "jaxpr"}


class _Evaluator(StructuralOps):
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
        if name in ELEMENTWISE:
            return [self.elementwise(eqn, ins, out_avals[0])]
        if name in CALLS:
            inner = eqn.params[CALLS[name]]
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
        upcast = eqn.primitive.name not in NO_UPCAST
        in_dtypes = [v.dtype for v in ins]
        out = []
        for i in range(math.prod(lead)):
            elems = [v.elems[pick[i]] for v, pick in zip(ins, picks)]
            out.append(apply_elementwise(lambda *a: prim.bind(*a, **params), elems, in_dtypes,
                                         out_aval.dtype, upcast))
        return LaneValue(lead, tuple(out), channel, np.dtype(out_aval.dtype))


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
