"""``LayerStack``: how a model declares its layer structure to the Align rules.

A stack is a sequence of layers (:class:`~pararnn.align.layers.Dense`,
:class:`~pararnn.align.layers.Conv2D`, :class:`~pararnn.align.recurrent.RNNLayer`, or any
object with the same four members: ``init``, ``forward``, ``pre``, ``activation``). Its
parameters are a list with one dict per layer. Layer l maps the previous layer's
activated output ``a_l = φ_{l−1}(z_{l−1})`` (``a_0 = x``) to ``z_l``; the stack's output is
``z_L`` of the last layer (the readout, whose activation is not applied).

Every rule is then "local weight update = VJP of ``pre_l`` w.r.t. θ_l at a presynaptic
record, applied to a delta δ_l at z_l" with rule-specific deltas and records:

| rule | δ_l | record |
|---|---|---|
| backprop | ∂L/∂z_l through the current net | current |
| align_zero | through the frozen net θ₀ (driven by the current error) | frozen |
| align_ada | through the frozen net θ₀ | current |
| fa | through the current net with random feedback weights B_l | current |
| dfa | φ_l'(z_l) ⊙ (e · B_l), e = ∂L/∂output | current |
| readout | e for the readout, none for the rest | current |

Deltas are read off as gradients w.r.t. zero perturbations ``eps_l`` added to every z_l, so
recurrent layers get their temporal credit from whatever differentiates their forward pass
(the parallel adjoint of :func:`pararnn.solve`, or BPTT through ``lax.scan``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp

from .layers import ACTIVATIONS, Conv2D, Dense, check_positive_int
from .recurrent import AlignElmanCell, RNNLayer

_MEMBERS = ("init", "forward", "pre", "activation")


@dataclasses.dataclass(frozen=True)
class LayerStack:
    """A feedforward sequence of layers; ``stack(params, x)`` is its ``apply_fn``.

    Args:
      layers: the layers, first to last (the last is the readout).
    """

    layers: tuple

    def __post_init__(self):
        layers = tuple(self.layers)
        if not layers:
            raise ValueError("LayerStack: layers must be a non-empty sequence, got no layers.")
        for i, layer in enumerate(layers):
            missing = [m for m in _MEMBERS if not hasattr(layer, m)]
            if missing:
                raise TypeError(f"LayerStack: layers[{i}] ({type(layer).__name__}) lacks {missing}; "
                                f"a layer needs {list(_MEMBERS)} (see pararnn.align.layers).")
        object.__setattr__(self, "layers", layers)

    def __len__(self) -> int:
        return len(self.layers)

    def init(self, key: jax.Array, dtype: Any = jnp.float32) -> list:
        """One parameter dict per layer, from independent subkeys of ``key``."""
        keys = jax.random.split(key, len(self.layers))
        return [layer.init(k, dtype) for layer, k in zip(self.layers, keys)]

    def check_params(self, params: Any, name: str = "params") -> None:
        if not isinstance(params, (list, tuple)) or len(params) != len(self.layers):
            got = f"a {type(params).__name__} of length {len(params)}" if isinstance(
                params, (list, tuple)) else type(params).__name__
            raise ValueError(f"{name} must be a list with one entry per layer "
                             f"({len(self.layers)}), got {got}.")

    def forward(self, params: Sequence, x: jax.Array, eps: Sequence | None = None,
                feedback: Sequence | None = None):
        """Run the stack. Returns ``(output, zs, records)``: the readout's z, every layer's
        z and every layer's presynaptic record. ``eps``/``feedback``: per-layer perturbations
        of z and backward-pass feedback weights (see the layers)."""
        self.check_params(params)
        a, zs, records = x, [], []
        for i, layer in enumerate(self.layers):
            if i:
                a = ACTIVATIONS[self.layers[i - 1].activation](zs[-1])
            z, record = layer.forward(params[i], a, None if eps is None else eps[i],
                                      None if feedback is None else feedback[i])
            zs.append(z)
            records.append(record)
        return zs[-1], zs, records

    def apply(self, params: Sequence, x: jax.Array) -> jax.Array:
        """The network's output ``z_L`` for input ``x``."""
        return self.forward(params, x)[0]

    __call__ = apply

    def z_shapes(self, params: Sequence, x: jax.Array) -> list:
        """``jax.ShapeDtypeStruct`` of every layer's z for input ``x`` (no computation)."""
        return jax.eval_shape(lambda p, x_: self.forward(p, x_)[1], params, x)

    def deltas(self, params: Sequence, x: jax.Array, e: jax.Array,
               feedback: Sequence | None = None) -> list:
        """δ_l = ∂⟨e, f(x; params)⟩/∂z_l for every layer: the error ``e`` (shaped like the
        output) sent backwards through the network at ``params`` (with ``feedback`` weights
        in the backward pass, if given)."""
        eps0 = [jnp.zeros(s.shape, s.dtype) for s in self.z_shapes(params, x)]
        out, vjp = jax.vjp(lambda eps: self.forward(params, x, eps, feedback)[0], eps0)
        if out.shape != e.shape:
            raise ValueError(f"error of shape {e.shape} does not match the output {out.shape}.")
        return vjp(e.astype(out.dtype))[0]

    def local_grads(self, params: Sequence, records: Sequence, deltas: Sequence) -> list:
        """Σ_l VJP_{θ_l} pre_l(θ_l, record_l)(δ_l), shaped like ``params``; a ``None``
        delta gives zeros for that layer."""
        records = jax.lax.stop_gradient(records)

        def surrogate(p):
            total = jnp.zeros((), jnp.result_type(*jax.tree_util.tree_leaves(p)))
            for layer, p_l, r_l, d_l in zip(self.layers, p, records, deltas):
                if d_l is not None:
                    z = layer.pre(p_l, r_l)
                    total = total + jnp.sum(d_l.astype(z.dtype) * z).astype(total.dtype)
            return total

        return jax.grad(surrogate)(list(params))


def _widths(widths: Sequence[int], where: str) -> list[int]:
    widths = list(widths)
    for w in widths:
        check_positive_int(w, "widths[i]", where)
    return widths


def mlp(in_features: int, widths: Sequence[int], out_features: int, *, activation: str = "relu",
        parameterization: str = "ntk", flatten: bool = True) -> LayerStack:
    """Dense layers ``in → widths… → out`` (linear readout). ``flatten``: accept images
    ``(batch, H, W, C)`` by flattening them (``in_features`` = H·W·C)."""
    sizes = [in_features] + _widths(widths, "mlp") + [out_features]
    layers = [Dense(n, m, activation, parameterization, flatten=flatten and i == 0)
              for i, (n, m) in enumerate(zip(sizes[:-1], sizes[1:]))]
    return LayerStack(tuple(layers))


def conv_net(image_shape: tuple[int, int, int], channels: Sequence[int], out_features: int, *,
             kernel_size: int = 3, activation: str = "relu",
             parameterization: str = "ntk") -> LayerStack:
    """``Conv2D`` layers (stride 1, SAME) over ``(H, W, C)`` images, then a linear readout
    on the flattened last feature map."""
    h, w, c = image_shape
    chans = [c] + _widths(channels, "conv_net")
    layers = [Conv2D(a, b, kernel_size, activation, parameterization)
              for a, b in zip(chans[:-1], chans[1:])]
    layers.append(Dense(h * w * chans[-1], out_features, "identity", parameterization, flatten=True))
    return LayerStack(tuple(layers))


def rnn(in_features: int, hidden_features: int, out_features: int, *, activation: str = "relu",
        recurrence: str = "dense", parameterization: str = "ntk", gain: float = 1.0,
        mode: str = "parallel", method: str = "newton") -> LayerStack:
    """An Elman RNN (:class:`RNNLayer`) and a per-time-step linear readout:
    ``x (batch, T, in)`` → ``(batch, T, out)``."""
    cell = AlignElmanCell(in_features, hidden_features, activation=activation,
                          recurrence=recurrence, parameterization=parameterization, gain=gain)
    return LayerStack((RNNLayer(cell, mode, method),
                       Dense(hidden_features, out_features, "identity", parameterization)))
