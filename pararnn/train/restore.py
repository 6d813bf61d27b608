"""Load a trained model from a training workdir (for generation and analysis)."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
from flax import nnx

from ..models import LanguageModel
from ..nn import RecurrentLayer
from .checkpoint import Checkpointer, abstract_with_shardings
from .config import Config, ConfigError, _build
from .optim import make_optimizer
from .trainer import abstract_params


def load_trained(workdir: str, step: int | None = None) -> tuple[Config, LanguageModel, int]:
    """``(config, model, step)`` from the checkpoint of ``workdir`` at ``step`` (default: the
    latest). The config is the one the run was trained with (stored in the checkpoint); the
    model lives on the first local device."""
    directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"--workdir {workdir!r} has no checkpoints/ directory; train first "
                                f"(python train.py --workdir {workdir}).")
    ckpt = Checkpointer(workdir, keep=1_000_000, async_save=False)
    try:
        steps = ckpt.manager.all_steps()
        if not steps:
            raise FileNotFoundError(f"--workdir {workdir!r} holds no complete checkpoint.")
        if step is None:
            step = max(steps)
        elif step not in steps:
            raise ConfigError(f"--step {step}: no checkpoint at that step in {workdir!r}; "
                              f"available: {sorted(steps)}.")
        meta = ckpt.manager.restore(step, args=_meta_args())["meta"]
        cfg = _build(Config, meta["config"])
        graphdef, abstract = abstract_params(cfg, cfg.model.vocab_size)
        optimizer = make_optimizer(cfg.optim, cfg.train.steps)
        abstract_state = {"params": abstract, "opt_state": jax.eval_shape(optimizer.init, abstract),
                          "step": jax.ShapeDtypeStruct((), jnp.int32)}
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        shardings = jax.tree_util.tree_map(lambda _: device, abstract_state)
        state, _ = ckpt.restore(step, abstract_with_shardings(abstract_state, shardings))
    finally:
        ckpt.close()
    model = nnx.merge(graphdef, state["params"])
    for _, module in nnx.iter_modules(model):  # solver-info sowing is a training metric
        if isinstance(module, RecurrentLayer):
            module.sow_info = False
    return cfg, model, step


def _meta_args():
    import orbax.checkpoint as ocp
    return ocp.args.Composite(meta=ocp.args.JsonRestore())
