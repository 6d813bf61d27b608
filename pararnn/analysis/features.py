"""``features_fn(params, x) -> {layer name: features (N, ...)}`` for pararnn's layers and
language model, and for plain MLPs given as parameter dicts.

Sequence features ``(batch, time, channels)`` are flattened to ``(batch·time, channels)``:
every token is a sample for :func:`pararnn.analysis.llfc`.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from .specs import require_recurrent_mixers


def _tokens(f: jax.Array) -> jax.Array:
    return f.reshape((-1, f.shape[-1]))


def nnx_features_fn(model: nnx.Module, forward: Callable[[Any, Any], Mapping[str, jax.Array]],
                    *, jit: bool = True) -> Callable[[Any, Any], dict[str, jax.Array]]:
    """Turn ``forward(module, x) -> {name: features}`` into ``features_fn(params, x)`` over
    the ``nnx.Param`` state of ``model`` (``nnx.state(model, nnx.Param)``); other state of
    the model is held fixed. Jitted by default (one compile per input shape)."""
    graphdef, _, rest = nnx.split(model, nnx.Param, ...)

    def features_fn(params, x):
        return dict(forward(nnx.merge(graphdef, params, rest), x))

    return jax.jit(features_fn) if jit else features_fn


def recurrent_layer_features(layer: nnx.Module, *, mode: str | None = None, jit: bool = True):
    """``features_fn(params, x)`` of one :mod:`pararnn.nn` layer: ``{"hidden": (B·T, H)}``,
    with ``x (batch, time, in_features)``."""
    return nnx_features_fn(layer, lambda m, x: {"hidden": _tokens(m(x, mode=mode))}, jit=jit)


def language_model_forward(model, tokens_BxT: jax.Array, *, mode: str | None = None) -> dict[str, jax.Array]:
    """The forward pass of :class:`pararnn.models.LanguageModel`, written out block by block
    so the features inside each block can be returned (the model does not sow them); its
    ``"logits"`` equal ``model(tokens)`` (tested).

    Features (each ``(B·T, ·)``): ``embed``; per block i ``blocks/i/cell`` (the recurrent
    cell's output), ``blocks/i/mixer`` (the mixer's output), ``blocks/i/mlp_hidden``
    (silu(gate)·up) and ``blocks/i`` (the residual stream after the block); ``logits``.
    Recurrent mixers only (TypeError otherwise).
    """
    require_recurrent_mixers(model, "language_model_forward")
    feats: dict[str, jax.Array] = {}
    x = model.embed(tokens_BxT)
    feats["embed"] = _tokens(x)
    for i, block in enumerate(model.blocks):
        mixer = block.mixer
        u, z = jnp.split(mixer.in_proj(block.mixer_norm(x)), 2, axis=-1)
        u, _ = mixer.conv(u)
        h = mixer.cell(jax.nn.silu(u), mode=mode)
        y = mixer.out_proj(mixer.norm(h) * jax.nn.silu(z))
        x = x + y
        gate, up = jnp.split(block.mlp.gate_up(block.mlp_norm(x)), 2, axis=-1)
        hidden = jax.nn.silu(gate) * up
        x = x + block.mlp.down(hidden)
        feats.update({f"blocks/{i}/cell": _tokens(h), f"blocks/{i}/mixer": _tokens(y),
                      f"blocks/{i}/mlp_hidden": _tokens(hidden), f"blocks/{i}": _tokens(x)})
    feats["logits"] = _tokens(model.embed.attend(model.final_norm(x)).astype(jnp.float32))
    return feats


def language_model_features(model, *, mode: str | None = None, jit: bool = True):
    """``features_fn(params, tokens_BxT)`` for a :class:`pararnn.models.LanguageModel`; see
    :func:`language_model_forward` for the feature names."""
    return nnx_features_fn(model, lambda m, t: language_model_forward(m, t, mode=mode), jit=jit)


def mlp_forward(params: Mapping[str, Mapping[str, jax.Array]], x: jax.Array, layers: Sequence[str],
                activation: Callable = jax.nn.relu) -> tuple[jax.Array, dict[str, jax.Array], dict[str, jax.Array]]:
    """A plain MLP over parameter dicts ``params[layer] = {"kernel": (in, out), "bias": (out,)}``.

    Returns ``(output, features, preactivations)``: ``features[layer]`` is the activation
    of each hidden layer (the output for the last), ``preactivations[layer]`` its input.
    """
    feats, pre = {}, {}
    for i, name in enumerate(layers):
        g = x @ params[name]["kernel"] + params[name]["bias"]
        pre[name] = g
        x = g if i == len(layers) - 1 else activation(g)
        feats[name] = x
    return x, feats, pre


def mlp_features(layers: Sequence[str], activation: Callable = jax.nn.relu, *, jit: bool = True):
    """``features_fn(params, x)`` of :func:`mlp_forward`: ``{layer: features}``."""
    fn = lambda p, x: mlp_forward(p, x, layers, activation)[1]  # noqa: E731
    return jax.jit(fn) if jit else fn
