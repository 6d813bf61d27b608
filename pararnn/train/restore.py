"""Load a trained model from a training workdir (for generation and analysis)."""

from __future__ import annotations

import os
import warnings

import jax
import jax.numpy as jnp
from flax import nnx

from ..models import LanguageModel
from ..nn import RecurrentLayer
from .checkpoint import Checkpointer, UnreadableCheckpoint, abstract_with_shardings
from .config import Config, ConfigError, _build
from .optim import make_optimizer
from .trainer import abstract_params


class CheckpointWarning(UserWarning):
    """A checkpoint could not be read back and an older one was used instead."""


def load_trained(workdir: str, step: int | None = None) -> tuple[Config, LanguageModel, int]:
    """``(config, model, step)`` from the checkpoint of ``workdir`` at ``step`` (default: the
    newest one that reads back — a damaged newer one is skipped with a
    :class:`CheckpointWarning` naming it; nothing in the workdir is moved or deleted). The
    config is the one the run was trained with (stored in the checkpoint); the model lives on
    the first local device. A damaged checkpoint asked for by ``step`` is a ConfigError."""
    directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"--workdir {workdir!r} has no checkpoints/ directory; train first "
                                f"(python train.py --workdir {workdir}).")
    ckpt = Checkpointer(workdir, keep=1_000_000, async_save=False, read_only=True)
    try:
        steps = ckpt.manager.all_steps()
        if not steps:
            raise FileNotFoundError(f"--workdir {workdir!r} holds no complete checkpoint.")
        if step is not None and step not in steps:
            raise ConfigError(f"--step {step}: no checkpoint at that step in {workdir!r}; "
                              f"available: {sorted(steps)}.")
        candidates = [step] if step is not None else sorted(steps, reverse=True)
        bad: list[UnreadableCheckpoint] = []
        for candidate in candidates:
            try:
                cfg, graphdef, state = _restore(ckpt, candidate)
            except UnreadableCheckpoint as e:
                bad.append(e)
                continue
            step = candidate
            break
        else:
            listing = "; ".join(f"step {e.step}: {e.reason}" for e in bad)
            raise ConfigError(f"no checkpoint in {ckpt.directory} can be read back ({listing}).")
    finally:
        ckpt.close()
    for e in bad:
        warnings.warn(f"checkpoint step {e.step} ({e.path}) cannot be read back ({e.reason}); using step "
                      f"{step}, the newest that reads back.", CheckpointWarning, stacklevel=2)
    model = nnx.merge(graphdef, state["params"])
    for _, module in nnx.iter_modules(model):  # solver-info sowing is a training metric
        if isinstance(module, RecurrentLayer):
            module.sow_info = False
    return cfg, model, step


def _restore(ckpt: Checkpointer, step: int):
    """``(config, graphdef, state)`` of checkpoint ``step`` on the first local device."""
    meta = ckpt.read_meta(step)
    try:
        cfg = _build(Config, meta["config"])
    except (KeyError, ConfigError) as e:
        raise UnreadableCheckpoint(step, ckpt.step_path(step), f"its config record is unusable ({e})") from None
    graphdef, abstract = abstract_params(cfg, cfg.model.vocab_size)
    optimizer = make_optimizer(cfg.optim, cfg.train.steps)
    abstract_state = {"params": abstract, "opt_state": jax.eval_shape(optimizer.init, abstract),
                      "step": jax.ShapeDtypeStruct((), jnp.int32)}
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    shardings = jax.tree_util.tree_map(lambda _: device, abstract_state)
    state, _ = ckpt.restore(step, abstract_with_shardings(abstract_state, shardings))
    return cfg, graphdef, state
