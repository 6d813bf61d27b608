"""``python train.py --config NAME|PATH [--workdir DIR] [--steps N] [--set key=value ...] [--dry-run]``

Exit codes: 0 finished (or nothing left to do), 2 a user mistake (bad config key, type or
value, missing data files, a workdir holding a different run, a config that cannot fit this
machine) with a one-paragraph message — never a bare traceback —, 130 interrupted by SIGINT
(Ctrl-C) and 143 preempted by SIGTERM, both after saving a checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from .config import ConfigError, available_configs, load_config
from .interrupts import EXIT_CODES

EXIT_USER_ERROR = 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="train.py", description="Train a pararnn language model.")
    p.add_argument("--config", default="tiny",
                   help=f"config name ({', '.join(available_configs())}) or a YAML path (default: tiny)")
    p.add_argument("--workdir", default=None, help="checkpoints and metrics.jsonl (default: runs/CONFIG)")
    p.add_argument("--steps", type=int, default=None, help="sets train.steps (the step to train to)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set optim.lr=1e-3 (repeatable)")
    p.add_argument("--spawn-from", default=None, metavar="DIR",
                   help="start from the checkpoint of another run (its workdir; train.spawn_step picks the "
                        "step, default the latest); combine with --set data.order_seed=N for a spawned pair")
    p.add_argument("--dry-run", action="store_true",
                   help="build the model abstractly, print parameter and memory estimates, exit")
    return p


def dry_run(cfg, available: int | None = None) -> dict:
    """Parameter count, per-module breakdown and bytes per device, without allocating.

    The estimate is for the mesh :func:`~pararnn.train.memory.plan_mesh` assumes from
    ``cfg.mesh`` and the ``available`` devices (default: this machine's) — the same mesh and
    number the memory preflight of a real run uses."""
    from .memory import GiB, count_params, estimate_bytes_per_device, param_breakdown, mesh_settings, plan_mesh
    from .mesh import mesh_devices
    from .trainer import abstract_params

    _, abstract = abstract_params(cfg, cfg.model.vocab_size)
    n_params = count_params(abstract)
    available = len(mesh_devices(cfg.mesh)) if available is None else available
    plan = plan_mesh(cfg.mesh, available)
    est = estimate_bytes_per_device(cfg, n_params, plan.devices, plan.fsdp, plan.seq)
    groups = param_breakdown(abstract)
    mixer = cfg.model.cell if cfg.model.mixer == "recurrent" else cfg.model.mixer
    print(f"config {cfg.name}: {mixer} × {cfg.model.n_layers} layers, d_model {cfg.model.d_model}, "
          f"vocab {cfg.model.vocab_size}")
    print(f"parameters: {n_params:,} ({n_params / 1e9:.3f} B)")
    blocks = [v for k, v in groups.items() if k.startswith("blocks.")]
    for name, count in groups.items():
        if not name.startswith("blocks."):
            print(f"  {name:<12} {count:>16,}")
    if blocks:
        print(f"  {'blocks':<12} {sum(blocks):>16,}  ({len(blocks)} × {blocks[0]:,})")
    print(f"mesh assumed: {plan.describe()} ({mesh_settings(cfg.mesh)}; "
          f"{available} device{'s' if available != 1 else ''} available here)")
    print(f"per device: params {est['params'] / GiB:.2f} GiB, grads {est['grads'] / GiB:.2f} GiB, AdamW "
          f"{est['optimizer'] / GiB:.2f} GiB, activations {est['activations'] / GiB:.2f} GiB, "
          f"total {est['total'] / GiB:.2f} GiB")
    summary = {"config": cfg.name, "params": n_params, "bytes_per_device": int(est["total"]),
               "breakdown": {k: int(v) for k, v in est.items()}, "devices": plan.devices, "data": plan.data,
               "fsdp": plan.fsdp, "seq": plan.seq, "mesh": plan.describe(), "available_devices": available}
    print(json.dumps(summary))
    return summary


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    workdir = None
    try:
        overrides = list(args.overrides)
        if args.steps is not None:  # one check for --steps and train.steps
            overrides.append(f"train.steps={args.steps}")
        cfg = load_config(args.config, overrides)
        if args.spawn_from is not None:
            cfg.train.spawn_from = args.spawn_from
        if args.dry_run:
            dry_run(cfg)
            return 0
        workdir = args.workdir or os.path.join("runs", cfg.name)
        from .workdir import check_workdir_path
        check_workdir_path(workdir)
        # Multi-process runs start JAX's distributed runtime before anything touches devices.
        from .mesh import maybe_initialize_distributed
        maybe_initialize_distributed()
        from .trainer import train
        summary = train(cfg, workdir)
    except KeyboardInterrupt:
        where = f"; the checkpoints in {os.path.join(workdir, 'checkpoints')} are kept" if workdir else ""
        print(f"interrupted: stopped without saving a new checkpoint{where}.", file=sys.stderr)
        return EXIT_CODES["SIGINT"]
    except Exception as e:  # user-facing errors get one message; anything else is a bug: traceback
        if _is_user_error(e):
            print(f"error: {e}", file=sys.stderr)
            return EXIT_USER_ERROR
        raise
    last = summary.get("last") or {}
    print(json.dumps({"final_step": summary["final_step"], "loss": last.get("loss"),
                      "eval_loss": last.get("eval_loss"), "eval_accuracy": last.get("eval_accuracy"),
                      "params": summary["params"], "workdir": summary["workdir"],
                      "preempted": summary.get("preempted", False), "interrupted": summary.get("interrupted"),
                      "nothing_to_do": summary.get("nothing_to_do", False)}))
    return EXIT_CODES[summary["interrupted"]] if summary.get("interrupted") else 0


def _is_user_error(e: Exception) -> bool:
    from .data import DataError
    from .errors import TrainingError
    return isinstance(e, (ConfigError, FileNotFoundError, ImportError, DataError, TrainingError))


if __name__ == "__main__":
    sys.exit(main())
