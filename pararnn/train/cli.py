"""``python train.py --config NAME|PATH [--workdir DIR] [--steps N] [--set key=value ...] [--dry-run]``

User mistakes (bad config keys or types, missing data files, a config that cannot fit this
machine) end with a one-paragraph message and exit code 2 — never a bare traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from .config import ConfigError, apply_overrides, available_configs, load_config

EXIT_USER_ERROR = 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="train.py", description="Train a pararnn language model.")
    p.add_argument("--config", default="tiny",
                   help=f"config name ({', '.join(available_configs())}) or a YAML path (default: tiny)")
    p.add_argument("--workdir", default=None, help="checkpoints and metrics.jsonl (default: runs/CONFIG)")
    p.add_argument("--steps", type=int, default=None, help="override train.steps")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set optim.lr=1e-3 (repeatable)")
    p.add_argument("--spawn-from", default=None, metavar="DIR",
                   help="start from the checkpoint of another run (its workdir; train.spawn_step picks the "
                        "step, default the latest); combine with --set data.order_seed=N for a spawned pair")
    p.add_argument("--dry-run", action="store_true",
                   help="build the model abstractly, print parameter and memory estimates, exit")
    return p


def dry_run(cfg) -> dict:
    """Parameter count, per-module breakdown and bytes per device, without allocating."""
    import jax

    from .memory import GiB, count_params, estimate_bytes_per_device, param_breakdown
    from .trainer import abstract_params

    _, abstract = abstract_params(cfg, cfg.model.vocab_size)
    n_params = count_params(abstract)
    fsdp = cfg.mesh.fsdp
    n_devices = cfg.mesh.data * fsdp if cfg.mesh.data > 0 else max(jax.device_count(), fsdp)
    est = estimate_bytes_per_device(cfg, n_params, n_devices, fsdp)
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
    print(f"mesh: data {n_devices // fsdp} × fsdp {fsdp} = {n_devices} devices; per device: "
          f"params {est['params'] / GiB:.2f} GiB, grads {est['grads'] / GiB:.2f} GiB, AdamW "
          f"{est['optimizer'] / GiB:.2f} GiB, activations {est['activations'] / GiB:.2f} GiB, "
          f"total {est['total'] / GiB:.2f} GiB")
    summary = {"config": cfg.name, "params": n_params, "bytes_per_device": int(est["total"]),
               "breakdown": {k: int(v) for k, v in est.items()}, "devices": n_devices, "fsdp": fsdp}
    print(json.dumps(summary))
    return summary


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        if args.steps is not None:
            if args.steps < 1:
                raise ConfigError(f"--steps must be >= 1, got {args.steps}.")
            cfg = apply_overrides(cfg, [f"train.steps={args.steps}"])
        if args.spawn_from is not None:
            cfg.train.spawn_from = args.spawn_from
        if args.dry_run:
            dry_run(cfg)
            return 0
        # Multi-process runs start JAX's distributed runtime before anything touches devices.
        from .mesh import maybe_initialize_distributed
        maybe_initialize_distributed()
        from .data import DataError
        from .trainer import TrainingError, train
        workdir = args.workdir or os.path.join("runs", cfg.name)
        summary = train(cfg, workdir)
    except (ConfigError, FileNotFoundError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except Exception as e:  # data and training errors are user-facing too
        from .data import DataError
        from .trainer import TrainingError
        if isinstance(e, (DataError, TrainingError)):
            print(f"error: {e}", file=sys.stderr)
            return EXIT_USER_ERROR
        raise
    last = summary.get("last") or {}
    print(json.dumps({"final_step": summary["final_step"], "loss": last.get("loss"),
                      "eval_loss": last.get("eval_loss"), "eval_accuracy": last.get("eval_accuracy"),
                      "params": summary["params"], "workdir": summary["workdir"],
                      "preempted": summary.get("preempted", False)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
