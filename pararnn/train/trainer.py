"""The training loop: sharded jitted steps, metrics one step late, checkpoints, resume,
interrupts (see :mod:`.resume`, :mod:`.workdir`, :mod:`.interrupts`)."""

from __future__ import annotations

import math
import os
import time
from typing import Any

import numpy as np
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import PartitionSpec as P

from ..models import LanguageModel, MixerConfigError
from . import data as data_lib
from .checkpoint import Checkpointer, abstract_with_shardings
from .config import Config, ConfigError, config_to_dict, validate_config
from .errors import TrainingError
from .interrupts import Interrupts
from .memory import count_params, memory_preflight
from .mesh import (SEQ_AXIS, batch_sharding, local_rows, make_mesh, mesh_devices, replicated,
                   state_shardings, to_global)
from .metrics import MetricsWriter, Progress, announce, peak_flops_per_device, train_flops_per_token
from .optim import lm_loss, make_optimizer, schedule
from .resume import find_resume_point, nothing_to_do_message, report_changes
from .workdir import check_workdir_path, last_metrics, move_previous_run, write_config

__all__ = ["train", "TrainingError", "build_model", "abstract_params", "memory_preflight", "check_batch",
           "make_steps"]


def build_model(cfg: Config, vocab_size: int, rngs: nnx.Rngs, sow_info: bool = False,
                seq_axis: str | None = None) -> LanguageModel:
    """The language model of ``cfg``; ``seq_axis`` makes it sequence-parallel (training with
    ``mesh.seq > 1``; decoding and evaluation outside the trainer use the plain model)."""
    m = cfg.model
    try:
        return LanguageModel(vocab_size=vocab_size, d_model=m.d_model, n_layers=m.n_layers, mlp_hidden=m.mlp_hidden,
                             mixer=m.mixer, cell=m.cell, num_heads=m.num_heads, conv_kernel=m.conv_kernel,
                             max_recurrent_norm=m.max_recurrent_norm, mode=m.mode, solver_method=m.solver_method,
                             head_dim=m.head_dim, rope_base=m.rope_base, ssm_state=m.ssm_state,
                             ssm_expand=m.ssm_expand, ssm_chunk=m.ssm_chunk, ssm_algorithm=m.ssm_algorithm,
                             dtype=jnp.dtype(m.dtype), param_dtype=jnp.dtype(m.param_dtype), remat=m.remat,
                             init_std=m.init_std, sow_info=sow_info, seq_axis=seq_axis, rngs=rngs)
    except MixerConfigError as e:  # a mixer option the mixer cannot use: a config error, named
        raise ConfigError(str(e)) from None


def abstract_params(cfg: Config, vocab_size: int, seq_axis: str | None = None):
    """(graphdef, parameter ShapeDtypeStructs) without allocating anything."""
    model = nnx.eval_shape(lambda: build_model(cfg, vocab_size, nnx.Rngs(0), sow_info=True,
                                               seq_axis=seq_axis))
    graphdef, params = nnx.split(model, nnx.Param)
    return graphdef, params


def check_batch(cfg: Config, n_devices: int) -> None:
    """``n_devices``: the devices the batch is split over (data × fsdp; not seq, which splits
    time)."""
    b, acc = cfg.data.batch_size, cfg.optim.grad_accum
    if acc < 1 or b % acc:
        raise ConfigError(f"optim.grad_accum={acc} must be >= 1 and divide data.batch_size={b}.")
    if (b // acc) % n_devices:
        raise ConfigError(f"data.batch_size / optim.grad_accum = {b // acc} sequences per micro-batch must "
                          f"be divisible by the {n_devices} data × fsdp devices of the mesh.")


def make_steps(cfg: Config, graphdef, optimizer, sched, mesh, shardings):
    """The jitted ``train_step(state, batch) -> (state, metrics)`` (state donated) and
    ``eval_step(params, batch) -> metrics`` over ``mesh``; batches are dicts of
    ``inputs``/``targets``/``mask`` arrays of shape (global batch, seq_len)."""
    acc, z = cfg.optim.grad_accum, cfg.optim.z_loss

    def model_forward(params, inputs):
        """Logits and the largest Newton iteration count of any recurrent layer."""
        model = nnx.merge(graphdef, params)
        logits, inter = nnx.capture(model, nnx.Intermediate)(inputs)
        infos = [v for path, v in jax.tree_util.tree_leaves_with_path(inter) if "iterations" in jax.tree_util.keystr(path)]
        iters = jnp.max(jnp.stack([jnp.max(i) for i in infos])) if infos else jnp.zeros((), jnp.int32)
        return logits, iters

    if cfg.mesh.seq > 1:
        # Sequence parallelism: the model runs inside a shard_map that is manual over "seq"
        # (its recurrences and convolutions exchange boundaries across those devices) and
        # automatic over data × fsdp (sharded as before by XLA).
        def seq_forward(params, inputs):
            logits, iters = model_forward(params, inputs)
            return logits, jax.lax.pmax(iters, SEQ_AXIS)

        forward = jax.shard_map(seq_forward, mesh=mesh, in_specs=(P(), P(None, SEQ_AXIS)),
                                out_specs=(P(None, SEQ_AXIS), P()), axis_names={SEQ_AXIS},
                                check_vma=False)
    else:
        forward = model_forward

    def loss_fn(params, mb):
        logits, iters = forward(params, mb["inputs"])
        loss, metrics = lm_loss(logits, mb["targets"], mb["mask"], z)
        metrics["newton_iterations"] = iters
        return loss, metrics

    def train_step(state, batch):
        micro = jax.tree_util.tree_map(lambda x: x.reshape((acc, x.shape[0] // acc) + x.shape[1:]), batch)
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

        def accumulate(carry, mb):
            (_, metrics), grads = grad_fn(state["params"], mb)
            return jax.tree_util.tree_map(jnp.add, carry, grads), metrics

        zeros = jax.tree_util.tree_map(jnp.zeros_like, state["params"])
        grads, metrics = jax.lax.scan(accumulate, zeros, micro)
        grads = jax.tree_util.tree_map(lambda g: g / acc, grads)
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        out = {k: jnp.mean(v) for k, v in metrics.items() if k != "newton_iterations"}
        out["newton_iterations"] = jnp.max(metrics["newton_iterations"])
        out["grad_norm"] = optax.tree.norm(grads)
        out["lr"] = sched(state["step"])
        return {"params": params, "opt_state": opt_state, "step": state["step"] + 1}, out

    def eval_step(params, batch):
        return loss_fn(params, batch)[1]

    bs, rep = batch_sharding(mesh), replicated(mesh)
    train_jit = jax.jit(train_step, in_shardings=(shardings, bs), out_shardings=(shardings, rep), donate_argnums=0)
    eval_jit = jax.jit(eval_step, in_shardings=(shardings["params"], bs), out_shardings=rep)
    return train_jit, eval_jit


def _initial_state(cfg: Config, optimizer, shardings):
    @jax.jit
    def init_state():
        model = build_model(cfg, cfg.model.vocab_size, nnx.Rngs(cfg.train.seed), sow_info=True)
        params = nnx.split(model, nnx.Param)[1]
        return {"params": params, "opt_state": optimizer.init(params), "step": jnp.zeros((), jnp.int32)}

    return jax.jit(init_state, out_shardings=shardings)()


def train(cfg: Config, workdir: str) -> dict:
    """Train per ``cfg`` in ``workdir``, resuming its run (see :mod:`.resume`). Returns a
    summary: ``final_step`` (the last checkpoint), ``last`` (the last metrics record),
    ``start_step``, ``params``, ``workdir``, ``interrupted`` ("SIGINT"/"SIGTERM" or None),
    ``preempted`` (SIGTERM), ``nothing_to_do``."""
    validate_config(cfg)
    check_workdir_path(workdir)
    graphdef, abstract = abstract_params(cfg, cfg.model.vocab_size,
                                         seq_axis=SEQ_AXIS if cfg.mesh.seq > 1 else None)
    n_params = count_params(abstract)
    # Memory first (before the mesh, data or any allocation): what this machine can hold.
    memory_preflight(cfg, n_params, len(mesh_devices(cfg.mesh)))
    mesh = make_mesh(cfg.mesh)
    n_devices = mesh.size
    check_batch(cfg, n_devices // cfg.mesh.seq)
    os.makedirs(workdir, exist_ok=True)
    if not cfg.train.resume:
        moved = move_previous_run(workdir)
        if moved:
            announce(f"train.resume=false: moved the previous run's checkpoints and metrics to {moved} "
                     f"(kept, not deleted); starting afresh.")

    shapes_optimizer = make_optimizer(cfg.optim, cfg.train.steps)  # state shapes do not depend on steps
    abstract_state = {"params": abstract, "opt_state": jax.eval_shape(shapes_optimizer.init, abstract),
                      "step": jax.ShapeDtypeStruct((), jnp.int32)}
    shardings = state_shardings(mesh, abstract_state)
    # the training batches' order (data.order_seed; by default data.seed, as before)
    order_seed = cfg.data.seed if cfg.data.order_seed is None else cfg.data.order_seed
    ckpt = Checkpointer(workdir, cfg.train.keep_checkpoints)
    try:
        return _train(cfg, workdir, ckpt, graphdef, abstract_state, shardings, mesh, n_params, order_seed)
    finally:
        ckpt.close()


def _train(cfg, workdir, ckpt, graphdef, abstract_state, shardings, mesh, n_params, order_seed) -> dict:
    steps, n_devices, b = cfg.train.steps, mesh.size, cfg.data.batch_size
    point = find_resume_point(ckpt, cfg, workdir, abstract_with_shardings(abstract_state, shardings), announce)
    summary: dict[str, Any] = {"params": n_params, "workdir": workdir, "interrupted": None, "preempted": False,
                               "nothing_to_do": False, "spawned": False}
    if point is not None and point.state is None:
        announce(nothing_to_do_message(workdir, point, cfg))
        summary.update(start_step=point.step, final_step=point.step, last=last_metrics(workdir, point.step),
                       nothing_to_do=True)
        return summary
    if point is not None:
        state, start, schedule_steps = point.state, point.step, point.schedule_steps
        announce(f"resuming from step {start} ({ckpt.step_path(start)})")
        report_changes(point, cfg, announce)
    elif cfg.train.spawn_from:
        from .spawn import restore_spawn_state
        state, start, _ = restore_spawn_state(cfg, abstract_state, shardings)
        schedule_steps, summary["spawned"] = steps, True
    else:
        state, start, schedule_steps = None, 0, steps
    write_config(workdir, cfg)

    optimizer = make_optimizer(cfg.optim, schedule_steps)
    sched = schedule(cfg.optim, schedule_steps)
    if state is None:
        state = _initial_state(cfg, optimizer, shardings)
    if cfg.data.streaming and steps > schedule_steps:
        announce(f"warning: data.streaming: train.steps={steps} reads {steps - schedule_steps} more batches of "
                 f"the stream than the run started with, so the held-out split and the batch order from here "
                 f"on differ from the original run's.")
    data = data_lib.load_data(cfg.data, max_train_sequences=max(steps, schedule_steps) * b)
    if data.vocab_size > cfg.model.vocab_size:
        raise ConfigError(f"model.vocab_size={cfg.model.vocab_size} is smaller than the data's vocabulary "
                          f"({data.vocab_size}); set --set model.vocab_size={data.vocab_size}.")
    train_step, eval_step = make_steps(cfg, graphdef, optimizer, sched, mesh, shardings)

    writer = MetricsWriter(workdir, start if start else None)
    progress = Progress(steps, start, cfg.train.progress, cfg.train.log_every)
    tokens_per_step = b * cfg.data.seq_len
    peak = peak_flops_per_device()
    flops_per_token = train_flops_per_token(n_params)
    rows = local_rows(b)
    if summary["spawned"]:
        progress.message(f"spawned from step {start} of {cfg.train.spawn_from} (data order seed {order_seed})")

    def meta_for(step):
        return {"step": step, "data_position": step * b, "seed": cfg.train.seed, "data_seed": cfg.data.seed,
                "order_seed": order_seed, "schedule_steps": schedule_steps, "config": config_to_dict(cfg)}

    def evaluate(params):
        n_eval = len(data.eval)
        results = []
        for i in range(cfg.data.eval_batches):
            batch = data_lib.get_batch(data.eval, (i * b) % n_eval, b, seed=0, rows=rows)
            results.append(jax.device_get(eval_step(params, to_global(batch, mesh, b))))
        return {f"eval_{k}": float(np.mean([r[k] for r in results])) for k in ("loss", "accuracy")}

    last_good, pending, t_last, last_record = start, None, time.time(), None
    summary["start_step"] = start

    def finish(pending_item) -> dict:
        """Fetch a step's metrics (one step late), check them, log them."""
        nonlocal t_last
        step, metrics = pending_item
        record = {k: float(v) for k, v in jax.device_get(metrics).items()}
        if not math.isfinite(record["loss"]):
            raise TrainingError(
                f"loss became {record['loss']} at step {step}; stopping. The last good checkpoint is step "
                f"{last_good} in {ckpt.directory} (lower optim.lr, or check the data).")
        now = time.time()
        record["step"] = step
        record["tokens_per_sec"] = tokens_per_step / max(now - t_last, 1e-9)
        t_last = now
        if peak:
            record["mfu"] = record["tokens_per_sec"] * flops_per_token / (peak * n_devices)
        return record

    try:
        with Interrupts() as interrupts:
            for s in range(start, steps):
                batch = to_global(data_lib.get_batch(data.train, s * b, b, order_seed, rows), mesh, b)
                state, metrics = train_step(state, batch)
                done = s + 1
                if pending is not None:
                    record = finish(pending)
                    if record["step"] % cfg.train.log_every == 0 or record["step"] == start + 1:
                        writer.write(record)
                    progress.update(record["step"], record)
                    last_record = record
                pending = (done, metrics)
                # a signal during the last step changes nothing: the run is complete
                signalled = interrupts.received is not None and done < steps
                stopping = signalled or done == cfg.train.stop_after
                at_ckpt = done % cfg.train.checkpoint_every == 0 or done == steps or stopping
                at_eval = cfg.train.eval_every and (done % cfg.train.eval_every == 0 or done == steps)
                if at_ckpt or at_eval:
                    record = finish(pending)  # synchronous here: never save a non-finite state
                    pending = None
                    if at_eval:
                        record.update(evaluate(state["params"]))
                    writer.write(record)
                    progress.update(done, record)
                    last_record = record
                    if at_ckpt:
                        ckpt.save(done, state, meta_for(done), wait=stopping)
                        last_good = done
                if stopping:
                    where = ckpt.step_path(done)
                    if interrupts.received == "SIGINT":
                        progress.message(f"interrupted (SIGINT) after step {done}: saved a checkpoint to {where}. "
                                         f"Run the same command again to resume.")
                    elif interrupts.received == "SIGTERM":
                        progress.message(f"preempted (SIGTERM) after step {done}: saved a checkpoint to {where}. "
                                         f"Run the same command again to resume.")
                    else:
                        progress.message(f"train.stop_after={done}: saved a checkpoint to {where}; stopping.")
                    summary["interrupted"] = interrupts.received if signalled else None
                    summary["preempted"] = signalled and interrupts.received == "SIGTERM"
                    break
            if pending is not None:
                last_record = finish(pending)
                writer.write(last_record)
    finally:
        progress.close()
    summary.update({"final_step": last_good, "last": last_record})
    return summary
