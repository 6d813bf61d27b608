"""The structural primitives of the lane interpreter (:mod:`pararnn.kernels.lanes`).

Each acts on the leading axes of a lane value only — computed on NumPy index arrays, so it
emits no kernel code — and refuses to touch the channel (last) axis of a channel value: that
would make channel i depend on other channels.
"""

from __future__ import annotations

import math

import numpy as np
from jax import lax

from .lane_values import LaneValue, apply_elementwise, concrete, is_concrete, to_dtype

__all__ = ["StructuralOps", "REDUCERS"]

REDUCERS = {"reduce_sum": lax.add, "reduce_max": lax.max, "reduce_min": lax.min,
            "reduce_prod": lax.mul, "reduce_and": lax.bitwise_and,
            "reduce_or": lax.bitwise_or}


class StructuralOps:
    """Mixin of ``op_<primitive>(eqn, ins, out_avals)`` methods; the evaluator provides
    ``d`` (the channel count), ``fail``, ``full_shape``, ``as_channel``, ``index`` and
    ``gather``."""

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
            elems.append(to_dtype(acc, np.dtype(out_dtype)))
        return LaneValue(out_lead, tuple(elems), v.channel, np.dtype(out_dtype))

    def __getattr__(self, name):
        if name.startswith("op_reduce_") and name[3:] in REDUCERS:
            fn = REDUCERS[name[3:]]
            return lambda eqn, ins, outs: self._reduce(eqn, ins, outs, fn)
        raise AttributeError(name)
