"""Static hypernetworks: a conditioning vector γ → all parameters of a target NNX module.

- :class:`MLPHyperNetwork` — the plain hypernetwork ``θ = h(γ)``, ``h`` a ReLU MLP.
- :class:`MIPHyperNetwork` — magnitude-invariant parametrisation (Ortiz et al. 2023): encode
  ``γ`` as ``[cos(πγ/2), sin(πγ/2)]`` (:func:`mip_encoding`, constant norm √k for k
  conditioning features) and predict ``θ = θ₀ + h(encoding)`` with an independent learnable
  ``θ₀`` initialised to the target's own init. The output scale no longer depends on ‖γ‖.
- :class:`RNNHyperNetwork` — dependency-preserving (Chandra et al. 2023): a pararnn recurrent
  layer reads ``[γ, chunk embedding c]`` for c = 0 … C−1 and a shared linear head emits
  ``chunk_size`` parameters per chunk, in the target's definition order (layer after layer, as assigned in __init__), so
  later layers' weights depend on earlier ones through the recurrent state while the head
  stays small. The chunk recurrence is solved with :func:`pararnn.solve` (parallel mode).

All three: ``hnet.flat(γ)`` → ``(…, P)``; ``hnet(γ)`` → the parameter ``nnx.State`` of the
target (one γ of shape ``(cond_features,)``); ``hnet.apply(γ, *args)`` runs the target with
it. γ may carry leading batch axes for ``flat``.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from ..nn import ParaGRU, RecurrentLayer
from .target import TargetSpec

ENCODINGS = ("identity", "mip")


def mip_encoding(gamma: jax.Array) -> jax.Array:
    """``γ (..., k)`` → ``[cos(πγ/2), sin(πγ/2)] (..., 2k)``; its norm is √k for every γ.
    For γ ∈ [0, 1] each pair moves over a quarter circle, from (1, 0) to (0, 1)."""
    angle = (jnp.pi / 2) * gamma
    return jnp.concatenate([jnp.cos(angle), jnp.sin(angle)], axis=-1)


class _StaticHyperNetwork(nnx.Module):
    """Common parts: target layout, conditioning checks, encoding, optional θ₀."""

    def _setup(self, target: nnx.Module, cond_features: int, encoding: str, theta0: bool,
               param_dtype: Any):
        name = type(self).__name__
        if isinstance(cond_features, bool) or not isinstance(cond_features, int) or cond_features < 1:
            raise ValueError(f"{name}: cond_features must be a positive int, got {cond_features!r}.")
        if encoding not in ENCODINGS:
            raise ValueError(f"{name}: encoding must be one of {ENCODINGS}, got {encoding!r}.")
        self.target = TargetSpec(target)  # static: layout only
        self.cond_features, self.encoding = cond_features, encoding
        self.num_params = self.target.num_params
        self.compute_dtype = jnp.dtype(param_dtype)  # γ is cast to it: parameters set the precision
        self.theta0 = nnx.Param(self.target.initial(param_dtype)) if theta0 else None

    @property
    def encoded_features(self) -> int:
        return self.cond_features * (2 if self.encoding == "mip" else 1)

    def encode(self, gamma: jax.Array) -> jax.Array:
        """Check ``γ (..., cond_features)`` and encode it."""
        gamma = jnp.asarray(gamma)
        if gamma.ndim < 1 or gamma.shape[-1] != self.cond_features:
            raise ValueError(
                f"{type(self).__name__}: gamma must have shape (..., cond_features="
                f"{self.cond_features}), got {gamma.shape}.")
        gamma = gamma.astype(self.compute_dtype)
        return mip_encoding(gamma) if self.encoding == "mip" else gamma

    def delta(self, gamma: jax.Array) -> jax.Array:
        """``h(encode(γ))``: the generated part, ``(..., P)``."""
        raise NotImplementedError

    def flat(self, gamma: jax.Array) -> jax.Array:
        """All target parameters as one vector: ``γ (..., cond)`` → ``(..., P)``."""
        out = self.delta(gamma)
        if self.theta0 is not None:
            out = out + self.theta0[...].astype(out.dtype)
        return out

    def __call__(self, gamma: jax.Array) -> nnx.State:
        """``γ (cond_features,)`` → the target's parameter ``nnx.State`` (exact structure,
        shapes and dtypes of the template's ``nnx.state(target, nnx.Param)``)."""
        gamma = jnp.asarray(gamma)
        if gamma.ndim != 1:
            raise ValueError(f"{type(self).__name__}: gamma must have shape (cond_features="
                             f"{self.cond_features},) here (use .flat for batches), got {gamma.shape}.")
        return self.target.unflatten(self.flat(gamma))

    def apply(self, gamma: jax.Array, *args: Any, **kwargs: Any) -> Any:
        """Run the target with the parameters generated for ``γ (cond_features,)``."""
        return self.target.apply(self(gamma), *args, **kwargs)


def _head(in_features: int, out: int, scale: float, bias: bool, param_dtype: Any, rngs: nnx.Rngs) -> nnx.Linear:
    init = nnx.initializers.variance_scaling(scale ** 2, "fan_in", "normal")
    return nnx.Linear(in_features, out, use_bias=bias, kernel_init=init, param_dtype=param_dtype, rngs=rngs)


class _MLP(nnx.Module):
    """ReLU trunk ``in → hidden… `` then a linear head to ``out`` scaled by ``head_scale``
    (with an output bias unless ``head_bias=False``)."""

    def __init__(self, in_features: int, hidden: Sequence[int], out: int, head_scale: float,
                 param_dtype: Any, rngs: nnx.Rngs, head_bias: bool = True):
        sizes = (in_features,) + tuple(hidden)
        self.layers = nnx.List([nnx.Linear(a, b, param_dtype=param_dtype, rngs=rngs)
                                for a, b in zip(sizes[:-1], sizes[1:])])
        self.head = _head(sizes[-1], out, head_scale, head_bias, param_dtype, rngs)

    def __call__(self, x):
        for layer in self.layers:
            x = jax.nn.relu(layer(x))
        return self.head(x)


class MLPHyperNetwork(_StaticHyperNetwork):
    """The plain hypernetwork ``θ = h(γ)`` (by default no encoding, no θ₀).

    Args:
      target: a template instance of the target NNX module.
      cond_features: size k of the conditioning vector γ.
      hidden: widths of the ReLU trunk (default (64, 64)).
      encoding: ``"identity"`` or ``"mip"``; theta0: add a learnable θ₀ (target's init). θ₀
        is then the only output constant: the head has no bias (a bias would be a second
        copy of the same constant, with the same gradient, moving twice as fast under SGD).
      head_scale: std of the head's outputs at init relative to a fan-in normal (0.1: the
        generated weights start small, as a layer init would).
      param_dtype: parameter dtype (float32); rngs: ``nnx.Rngs``.
    """

    def __init__(self, target: nnx.Module, cond_features: int, *, hidden: Sequence[int] = (64, 64),
                 encoding: str = "identity", theta0: bool = False, head_scale: float = 0.1,
                 param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
        self._setup(target, cond_features, encoding, theta0, param_dtype)
        self.net = _MLP(self.encoded_features, hidden, self.num_params, head_scale, param_dtype, rngs,
                        head_bias=not theta0)

    def delta(self, gamma):
        return self.net(self.encode(gamma))


class MIPHyperNetwork(MLPHyperNetwork):
    """MIP (Ortiz et al. 2023): ``θ = θ₀ + h([cos(πγ/2), sin(πγ/2)])``, θ₀ learnable and
    independent of ``h`` (initialised to the target's init) and the only output constant:
    ``h``'s head has no bias (in the reference code θ₀ *is* that bias). Arguments as
    :class:`MLPHyperNetwork` (encoding "mip" and theta0 fixed)."""

    def __init__(self, target: nnx.Module, cond_features: int, *, hidden: Sequence[int] = (64, 64),
                 head_scale: float = 0.1, param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
        super().__init__(target, cond_features, hidden=hidden, encoding="mip", theta0=True,
                         head_scale=head_scale, param_dtype=param_dtype, rngs=rngs)


class RNNHyperNetwork(_StaticHyperNetwork):
    """Dependency-preserving RNN hypernetwork (Chandra et al. 2023), module docstring.

    Args:
      target, cond_features: as :class:`MLPHyperNetwork`.
      chunk_size: parameters emitted per recurrent step; C = ⌈P / chunk_size⌉ steps.
      hidden_features: the recurrent layer's width (default 32).
      chunk_embedding_features: size of the learned per-chunk embeddings (default 8).
      layer: a :class:`pararnn.nn.RecurrentLayer` class (default ParaGRU), built as
        ``layer(in, hidden_features, rngs=rngs, **layer_options)``; its mode decides how the
        chunk recurrence is solved (default "parallel": :func:`pararnn.solve`).
      encoding, theta0, head_scale, param_dtype, rngs: as :class:`MLPHyperNetwork` (with θ₀
        the head has no bias: a per-position bias shared by the chunks lies in θ₀'s span).

    Output: chunk c's ``chunk_size`` values are ``head(h_c)``, h_c the recurrent layer's
    output at step c; the flat vector is chunk 0, chunk 1, … truncated to P (plus θ₀).
    """

    def __init__(self, target: nnx.Module, cond_features: int, *, chunk_size: int = 64,
                 hidden_features: int = 32, chunk_embedding_features: int = 8,
                 layer: type[RecurrentLayer] = ParaGRU, layer_options: dict | None = None,
                 encoding: str = "identity", theta0: bool = False, head_scale: float = 0.1,
                 param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
        self._setup(target, cond_features, encoding, theta0, param_dtype)
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"RNNHyperNetwork: chunk_size must be a positive int, got {chunk_size!r}.")
        self.chunk_size = chunk_size
        self.num_chunks = math.ceil(self.num_params / chunk_size)
        self.chunk_embedding = nnx.Param(jax.random.normal(
            rngs.params(), (self.num_chunks, chunk_embedding_features), param_dtype))
        in_features = self.encoded_features + chunk_embedding_features
        options = {"num_heads": 1} if layer is ParaGRU else {}
        options.update(layer_options or {})
        self.rnn = layer(in_features, hidden_features, param_dtype=param_dtype, rngs=rngs, **options)
        self.head = _head(hidden_features, chunk_size, head_scale, not theta0, param_dtype, rngs)

    def delta(self, gamma):
        enc = self.encode(gamma)
        lead = enc.shape[:-1]
        enc = enc.reshape((-1, 1, enc.shape[-1]))  # (batch, 1, k)
        emb = self.chunk_embedding[...].astype(enc.dtype)
        seq = jnp.concatenate([jnp.broadcast_to(enc, (enc.shape[0], self.num_chunks, enc.shape[-1])),
                               jnp.broadcast_to(emb, (enc.shape[0],) + emb.shape)], axis=-1)
        chunks = self.head(self.rnn(seq))  # (batch, C, chunk_size)
        out = chunks.reshape(chunks.shape[0], -1)[:, :self.num_params]
        return out.reshape(lead + (self.num_params,))


__all__ = ["mip_encoding", "MLPHyperNetwork", "MIPHyperNetwork", "RNNHyperNetwork", "ENCODINGS"]
