"""Continual learning with hypernetworks (von Oswald et al. 2020; Chandra et al. 2023).

After a task j is learned, keep only its conditioning embedding ``e_j`` and the
hypernetwork's output ``θ_j = hnet.flat(e_j)`` — no data. While a later task is learned,

    R = (1/T′) Σ_{j<t} ‖θ_j − hnet.flat(e_j)‖²

(added to the task loss with a weight β) keeps the generated parameters of earlier tasks
where they were, so the target still solves them.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class OutputRegularizer:
    """Stored ``embeddings (capacity, cond)`` and ``outputs (capacity, P)``, of which the
    first ``count`` rows are earlier tasks. A pytree: pass it through ``jit`` as an argument;
    with a fixed ``capacity`` (see :meth:`empty`) adding a task changes no shape, so a
    jitted train step compiles once. :meth:`add` returns a new instance."""

    embeddings: jax.Array
    outputs: jax.Array
    count: jax.Array  # int32 scalar

    @classmethod
    def empty(cls, cond_features: int, num_params: int, dtype=jnp.float32,
              capacity: int = 0) -> "OutputRegularizer":
        """No stored task; room for ``capacity`` before the arrays grow."""
        return cls(jnp.zeros((capacity, cond_features), dtype), jnp.zeros((capacity, num_params), dtype),
                   jnp.zeros((), jnp.int32))

    @property
    def num_tasks(self) -> int:
        """The number of stored tasks (concrete; not under ``jit``)."""
        return int(self.count)

    def add(self, hnet, embedding: jax.Array) -> "OutputRegularizer":
        """Store ``embedding (cond,)`` and the current ``hnet.flat(embedding)`` (eagerly)."""
        embedding = jnp.asarray(embedding, self.embeddings.dtype)
        if embedding.shape != self.embeddings.shape[1:]:
            raise ValueError(f"OutputRegularizer.add: embedding must have shape "
                             f"{self.embeddings.shape[1:]}, got {embedding.shape}.")
        out = jax.lax.stop_gradient(hnet.flat(embedding)).astype(self.outputs.dtype)
        if out.shape != self.outputs.shape[1:]:
            raise ValueError(f"OutputRegularizer.add: the hypernetwork emits {out.shape}, "
                             f"the stored outputs are {self.outputs.shape[1:]}.")
        n = self.num_tasks
        emb, outs = self.embeddings, self.outputs
        if n == emb.shape[0]:  # full: grow
            emb = jnp.concatenate([emb, jnp.zeros((1,) + emb.shape[1:], emb.dtype)])
            outs = jnp.concatenate([outs, jnp.zeros((1,) + outs.shape[1:], outs.dtype)])
        return OutputRegularizer(emb.at[n].set(embedding), outs.at[n].set(out),
                                 jnp.asarray(n + 1, jnp.int32))

    def __call__(self, hnet) -> jax.Array:
        """``(1/n) Σ_{j<n} ‖θ_j − hnet.flat(e_j)‖²``, a scalar (0 with no stored task)."""
        if self.embeddings.shape[0] == 0:
            return jnp.zeros((), self.outputs.dtype)
        now = hnet.flat(self.embeddings).astype(self.outputs.dtype)
        per_task = jnp.sum((now - self.outputs) ** 2, axis=-1)
        used = jnp.arange(per_task.shape[0], dtype=self.count.dtype) < self.count
        total = jnp.sum(jnp.where(used, per_task, jnp.zeros_like(per_task)))
        return total / jnp.maximum(self.count, 1).astype(total.dtype)


jax.tree_util.register_dataclass(OutputRegularizer, data_fields=["embeddings", "outputs", "count"],
                                 meta_fields=[])

__all__ = ["OutputRegularizer"]
