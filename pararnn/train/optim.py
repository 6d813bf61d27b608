"""Optimizer (AdamW, warmup + cosine, gradient clipping) and the loss (cross-entropy + z-loss)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from .config import OptimConfig


def schedule(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
    """Learning rate of update ``count`` (0-based): linear warmup reaching ``lr`` at update
    ``warmup_steps`` (the first update already uses ``lr / warmup_steps``, not 0), then
    cosine decay to ``lr·min_lr_ratio`` at the last update."""
    warmup = min(cfg.warmup_steps, max(total_steps - 1, 0))
    base = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=cfg.lr, warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1), end_value=cfg.lr * cfg.min_lr_ratio)
    return lambda count: base(count + 1)


def decay_mask(params):
    """Weight decay on matrices only (not on norms, biases or the cells' recurrence vectors)."""
    return jax.tree_util.tree_map(lambda p: jnp.ndim(p) >= 2, params)


def make_optimizer(cfg: OptimConfig, total_steps: int) -> optax.GradientTransformation:
    parts = [optax.clip_by_global_norm(cfg.clip_norm)] if cfg.clip_norm else []
    parts.append(optax.adamw(schedule(cfg, total_steps), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                             weight_decay=cfg.weight_decay, mask=decay_mask))
    return optax.chain(*parts)


def lm_loss(logits_BxTxV: jax.Array, targets_BxT: jax.Array, mask_BxT: jax.Array, z_loss: float):
    """Masked mean cross-entropy plus ``z_loss · mean(logsumexp²)`` (keeps logits from drifting).

    Returns ``(total, metrics)`` with the cross-entropy, z-loss term, token accuracy and count.
    """
    logits = logits_BxTxV.astype(jnp.float32)
    lse = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets_BxT[..., None], axis=-1)[..., 0]
    mask = mask_BxT.astype(jnp.float32)
    count = jnp.maximum(mask.sum(), 1.0)
    ce = ((lse - target_logit) * mask).sum() / count
    zl = z_loss * ((lse ** 2) * mask).sum() / count
    correct = (jnp.argmax(logits, -1).astype(targets_BxT.dtype) == targets_BxT).astype(jnp.float32)
    acc = (correct * mask).sum() / count
    return ce + zl, {"loss": ce, "z_loss": zl, "accuracy": acc, "tokens": mask.sum()}
