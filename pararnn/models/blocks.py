"""Building blocks of the language model: linear layers, causal depthwise conv, SwiGLU and
the residual block around a sequence mixer (:mod:`pararnn.models.mixers`).

Shapes: ``x_BxTxD`` is (batch, time, d_model). Every mixer takes and returns an explicit
cache, so decoding one token at a time equals the full-sequence forward.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from ..seq_parallel import SeqAxis


def linear(d_in: int, d_out: int, *, std: float, dtype, param_dtype, rngs) -> nnx.Linear:
    """A bias-free ``nnx.Linear`` with normal(std) weights."""
    return nnx.Linear(d_in, d_out, use_bias=False, dtype=dtype, param_dtype=param_dtype,
                      kernel_init=nnx.initializers.normal(std), rngs=rngs)


class CausalConv(nnx.Module):
    """Depthwise causal convolution over time: ``y_t = Σ_j w_j ⊙ x_{t−j} + b``, j < kernel."""

    def __init__(self, features: int, kernel: int, *, dtype=None, param_dtype=jnp.float32,
                 seq_axis: str | None = None, rngs: nnx.Rngs):
        self.kernel_size, self.seq_axis = kernel, seq_axis
        bound = 1.0 / kernel ** 0.5
        self.weight = nnx.Param(jax.random.uniform(rngs.params(), (kernel, features), param_dtype, -bound, bound))
        self.bias = nnx.Param(jnp.zeros((features,), param_dtype))
        self.dtype = dtype

    def __call__(self, x_BxTxD: jax.Array, history_BxKxD: jax.Array | None = None):
        """Returns ``(y_BxTxD, history)``: ``history`` holds the last kernel−1 inputs, to continue
        from (zeros before the sequence start when ``history_BxKxD`` is None).

        With ``seq_axis`` (sequence parallelism, inside ``shard_map``) ``x`` is this device's
        shard of the sequence: the kernel−1 inputs before it come from the previous device (a
        halo exchange), ``history`` only on the first device."""
        k = self.kernel_size
        w, b = self.weight[...].astype(x_BxTxD.dtype), self.bias[...].astype(x_BxTxD.dtype)
        if history_BxKxD is None:
            history_BxKxD = jnp.zeros(x_BxTxD.shape[:1] + (k - 1,) + x_BxTxD.shape[2:], x_BxTxD.dtype)
        if self.seq_axis is not None and k > 1:
            if x_BxTxD.shape[1] < k - 1:
                raise ValueError(f"CausalConv: a sequence shard of {x_BxTxD.shape[1]} steps is shorter "
                                 f"than the kernel's history of {k - 1}; use fewer devices on "
                                 f"{self.seq_axis!r} or longer sequences.")
            history_BxKxD = SeqAxis(self.seq_axis).from_previous(
                x_BxTxD[:, -(k - 1):], history_BxKxD.astype(x_BxTxD.dtype))
        padded = jnp.concatenate([history_BxKxD.astype(x_BxTxD.dtype), x_BxTxD], axis=1)
        t = x_BxTxD.shape[1]
        # w[0] multiplies the current input, w[j] the input j steps back
        y = sum(w[j] * padded[:, k - 1 - j:k - 1 - j + t] for j in range(k)) + b
        return y, padded[:, -(k - 1):] if k > 1 else padded[:, :0]


class SwiGLU(nnx.Module):
    """``W_out (silu(W_gate x) ⊙ W_up x)``."""

    def __init__(self, d_model: int, hidden: int, *, std: float, dtype=None, param_dtype=jnp.float32,
                 rngs: nnx.Rngs):
        self.gate_up = linear(d_model, 2 * hidden, std=std, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.down = linear(hidden, d_model, std=std, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x):
        gate, up = jnp.split(self.gate_up(x), 2, axis=-1)
        return self.down(jax.nn.silu(gate) * up)


class Block(nnx.Module):
    """Pre-norm residual block: x + mixer(norm(x)); x + mlp(norm(x)).

    ``mixer`` names the sequence mixer (:data:`pararnn.models.mixers.MIXERS`);
    ``mixer_kw`` are its options (see :func:`pararnn.models.mixers.make_mixer`).
    """

    def __init__(self, d_model: int, mlp_hidden: int, *, std: float, dtype=None, param_dtype=jnp.float32,
                 rngs: nnx.Rngs, mixer: str = "recurrent", **mixer_kw):
        from .mixers import make_mixer  # the mixers import this module's layers
        kw = dict(dtype=dtype, param_dtype=param_dtype)
        self.mixer_norm = nnx.RMSNorm(d_model, rngs=rngs, **kw)
        self.mixer = make_mixer(mixer, d_model, std=std, rngs=rngs, **kw, **mixer_kw)
        self.mlp_norm = nnx.RMSNorm(d_model, rngs=rngs, **kw)
        self.mlp = SwiGLU(d_model, mlp_hidden, std=std, rngs=rngs, **kw)

    def __call__(self, x, cache=None, mode: str | None = None):
        y, cache = self.mixer(self.mixer_norm(x), cache, mode)
        x = x + y
        return x + self.mlp(self.mlp_norm(x)), cache
