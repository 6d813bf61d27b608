"""pLSTM models: a vision classifier (patches → pLSTM2D blocks alternating P/D → pooled head)
and a graph classifier (node embedding → pLSTMGraph blocks → per-graph mean → head)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .graph import Graph
from .layers import Dense, pLSTM2D, pLSTMGraph

__all__ = ["PLSTMVisionClassifier", "PLSTMGraphClassifier", "reverse_graph"]


def _layer_norm(x, scale):
    eps = jnp.asarray(1e-5, x.dtype)
    x = x - jnp.mean(x, axis=-1, keepdims=True)
    return x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps) * scale[...].astype(x.dtype)


class _Block(nnx.Module):
    """x + mixer(LN(x)); x + MLP(LN(x)) with a GELU MLP of width 2·d."""

    def __init__(self, d: int, mixer: nnx.Module, *, rngs: nnx.Rngs, param_dtype):
        self.ln1 = nnx.Param(jnp.ones((d,), param_dtype))
        self.ln2 = nnx.Param(jnp.ones((d,), param_dtype))
        self.mixer = mixer
        self.up = Dense(d, 2 * d, rngs=rngs, param_dtype=param_dtype)
        self.down = Dense(2 * d, d, rngs=rngs, param_dtype=param_dtype, scale=0.5)

    def __call__(self, x, *args):
        x = x + self.mixer(_layer_norm(x, self.ln1), *args)
        return x + self.down(jax.nn.gelu(self.up(_layer_norm(x, self.ln2))))


class PLSTMVisionClassifier(nnx.Module):
    """images (batch, H, W, channels) → logits (batch, num_classes). H and W must be multiples
    of ``patch``; no position embedding, so the model runs at any image size (extrapolation).
    Blocks alternate P-mode (even) and D-mode (odd) pLSTM2D mixers, each over 4 orientations."""

    def __init__(self, *, channels: int, num_classes: int, patch: int = 2, d_model: int = 32,
                 depth: int = 2, num_heads: int = 2, orientations: int = 4, rngs: nnx.Rngs,
                 param_dtype=jnp.float32):
        self.patch, self.channels = patch, channels
        self.embed = Dense(patch * patch * channels, d_model, rngs=rngs, param_dtype=param_dtype)
        self.blocks = nnx.List([
            _Block(d_model, pLSTM2D(d_model, num_heads=num_heads, mode="P" if i % 2 == 0 else "D",
                                    orientations=orientations, rngs=rngs, param_dtype=param_dtype),
                   rngs=rngs, param_dtype=param_dtype) for i in range(depth)])
        self.ln = nnx.Param(jnp.ones((d_model,), param_dtype))
        self.head = Dense(d_model, num_classes, rngs=rngs, param_dtype=param_dtype)

    def __call__(self, images: jax.Array) -> jax.Array:
        B, Hh, Ww, C = images.shape
        p = self.patch
        if C != self.channels or Hh % p or Ww % p:
            raise ValueError(f"PLSTMVisionClassifier: images must be (batch, H, W, {self.channels}) "
                             f"with H, W multiples of patch={p}, got {images.shape}.")
        x = images.reshape(B, Hh // p, p, Ww // p, p, C).transpose(0, 1, 3, 2, 4, 5)
        x = self.embed(x.reshape(B, Hh // p, Ww // p, p * p * C))
        for blk in self.blocks:
            x = blk(x)
        return self.head(jnp.mean(_layer_norm(x, self.ln), axis=(1, 2)))


def reverse_graph(graph: Graph) -> Graph:
    """The same DAG with every edge reversed (edge order kept)."""
    return Graph.from_edges(graph.num_nodes, graph.edges[:, ::-1].copy())


class PLSTMGraphClassifier(nnx.Module):
    """Graph classification on a batch packed as one disjoint union.

    ``__call__(x, graph, graph_index, num_graphs)``: x (num_nodes, in_features) node features,
    ``graph`` the union DAG, ``graph_index`` (num_nodes,) int graph id of each node →
    logits (num_graphs, num_classes). Blocks alternate the graph's direction (forward, reversed)
    and the mode (P, P, D, D, …), so information flows both ways along each edge."""

    def __init__(self, *, in_features: int, num_classes: int, d_model: int = 32, depth: int = 2,
                 num_heads: int = 2, rngs: nnx.Rngs, param_dtype=jnp.float32):
        self.embed = Dense(in_features, d_model, rngs=rngs, param_dtype=param_dtype)
        self.blocks = nnx.List([
            _Block(d_model, pLSTMGraph(d_model, num_heads=num_heads,
                                       mode="P" if (i // 2) % 2 == 0 else "D",
                                       rngs=rngs, param_dtype=param_dtype),
                   rngs=rngs, param_dtype=param_dtype) for i in range(depth)])
        self.ln = nnx.Param(jnp.ones((d_model,), param_dtype))
        self.head = Dense(d_model, num_classes, rngs=rngs, param_dtype=param_dtype)

    def __call__(self, x: jax.Array, graph: Graph, graph_index, num_graphs: int) -> jax.Array:
        rev = reverse_graph(graph)
        h = self.embed(x)
        for i, blk in enumerate(self.blocks):
            h = blk(h, graph if i % 2 == 0 else rev)
        h = _layer_norm(h, self.ln)
        gi = jnp.asarray(np.asarray(graph_index) if not isinstance(graph_index, jax.Array) else graph_index)
        total = jax.ops.segment_sum(h, gi, num_segments=num_graphs)
        count = jax.ops.segment_sum(jnp.ones(h.shape[:1], h.dtype), gi, num_segments=num_graphs)
        return self.head(total / jnp.maximum(count, jnp.ones((), h.dtype))[:, None])
