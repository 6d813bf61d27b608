"""Spawning: start a run from another run's checkpoint (Frankle et al. 2020; Zhou et al. 2023).

Two runs spawned from the same checkpoint with different ``data.order_seed`` see the same
data in different orders from that step on; for linear-mode-connectivity studies
(:mod:`pararnn.analysis`). ``train.spawn_from`` names the parent's workdir (or its
``checkpoints`` directory), ``train.spawn_step`` its checkpoint (default: the latest).
"""

from __future__ import annotations

import os
from typing import Any

from .checkpoint import Checkpointer, UnreadableCheckpoint, abstract_with_shardings
from .config import Config, ConfigError, config_to_dict


def _parent_workdir(path: str) -> str:
    path = os.path.abspath(path)
    if os.path.isdir(os.path.join(path, "checkpoints")):
        return path
    if os.path.basename(path.rstrip(os.sep)) == "checkpoints" and os.path.isdir(path):
        return os.path.dirname(path.rstrip(os.sep))
    raise ConfigError(f"train.spawn_from={path!r} has no checkpoints/ directory (expected the workdir of a "
                      f"training run, or its checkpoints directory).")


def restore_spawn_state(cfg: Config, abstract_state: Any, shardings: Any) -> tuple[Any, int, dict]:
    """``(state, step, parent_meta)`` from ``cfg.train.spawn_from`` at ``cfg.train.spawn_step``.

    The parent's model config must equal this run's (the parameters must fit); the whole
    train state — parameters, optimizer moments, step — is taken over, so the learning-rate
    schedule continues where the parent was.
    """
    workdir = _parent_workdir(cfg.train.spawn_from)
    ckpt = Checkpointer(workdir, keep=1_000_000, async_save=False, read_only=True)
    try:
        steps = sorted(ckpt.manager.all_steps())
        if not steps:
            raise ConfigError(f"train.spawn_from={cfg.train.spawn_from!r} holds no complete checkpoint.")
        step = steps[-1] if cfg.train.spawn_step is None else cfg.train.spawn_step
        if step not in steps:
            raise ConfigError(f"train.spawn_step={step}: no checkpoint at that step in {workdir!r}; "
                              f"available: {steps}.")
        if step >= cfg.train.steps:
            raise ConfigError(f"train.spawn_step={step} must be below train.steps={cfg.train.steps}.")
        try:
            meta = ckpt.read_meta(step)
        except UnreadableCheckpoint as e:
            raise ConfigError(f"cannot spawn from {workdir!r} step {step}: {e.reason}; pick another "
                              f"train.spawn_step (available: {steps}).") from None
        parent_model = meta.get("config", {}).get("model")
        ours = config_to_dict(cfg)["model"]
        if parent_model != ours:
            diff = sorted(k for k in set(ours) | set(parent_model or {})
                          if (parent_model or {}).get(k) != ours.get(k))
            raise ConfigError(f"train.spawn_from={cfg.train.spawn_from!r} was trained with a different model "
                              f"config (differs in {', '.join('model.' + k for k in diff)}); spawn with the "
                              f"parent's model settings.")
        try:
            state, meta = ckpt.restore(step, abstract_with_shardings(abstract_state, shardings))
        except UnreadableCheckpoint as e:
            raise ConfigError(f"cannot spawn from {workdir!r} step {step}: its train state does not read back "
                              f"into this config's ({e.reason}; optimizer settings differ, or the checkpoint is "
                              f"damaged).") from None
    finally:
        ckpt.close()
    return state, step, meta
