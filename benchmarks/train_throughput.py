"""Training throughput: tokens/s and step time of the full jitted train step (forward,
backward, AdamW update) with the recurrence solved in parallel (Newton) vs sequentially.

    python benchmarks/train_throughput.py                          # tiny and a ~100M model
    python benchmarks/train_throughput.py --configs tiny --steps 5
    python benchmarks/train_throughput.py --configs gru125m --set data.seq_len=2048 --set data.batch_size=32

Each config is benchmarked as configured except for the overrides below (a ~100M model at
full batch does not fit a laptop step budget): the default run uses ``gru125m`` with
``--m100-seq-len`` and ``--m100-batch`` (small on CPU). Synthetic batches of random tokens;
data loading is not timed. MFU uses 6·N FLOPs per token (the recurrence's Newton overhead is
not counted as useful work) and the device's peak where known.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np
import jax
import jax.numpy as jnp

from common import environment, markdown_table, write_json
from pararnn.train.config import apply_overrides, load_config
from pararnn.train.memory import count_params
from pararnn.train.mesh import make_mesh, state_shardings, to_global
from pararnn.train.metrics import peak_flops_per_device, train_flops_per_token
from pararnn.train.optim import make_optimizer, schedule
from pararnn.train.trainer import abstract_params, build_model, make_steps

COLUMNS = [("config", "config"), ("params_m", "params (M)"), ("cell", "cell"), ("batch", "batch"),
           ("seq_len", "seq len"), ("mode", "mode"), ("step_ms", "step (ms)"), ("tokens_per_sec", "tokens/s"),
           ("speedup", "parallel / sequential"), ("newton_iterations", "Newton iters"), ("mfu", "MFU"),
           ("compile_s", "compile (s)")]


def bench_one(cfg, steps: int, warmup: int) -> dict:
    from flax import nnx
    graphdef, abstract = abstract_params(cfg, cfg.model.vocab_size)
    mesh = make_mesh(cfg.mesh)
    optimizer, sched = make_optimizer(cfg.optim, 1000), schedule(cfg.optim, 1000)
    abstract_state = {"params": abstract, "opt_state": jax.eval_shape(optimizer.init, abstract),
                      "step": jax.ShapeDtypeStruct((), jnp.int32)}
    shardings = state_shardings(mesh, abstract_state)

    def init():
        params = nnx.split(build_model(cfg, cfg.model.vocab_size, nnx.Rngs(0), sow_info=True), nnx.Param)[1]
        return {"params": params, "opt_state": optimizer.init(params), "step": jnp.zeros((), jnp.int32)}

    state = jax.jit(init, out_shardings=shardings)()
    train_step, _ = make_steps(cfg, graphdef, optimizer, sched, mesh, shardings)
    b, t = cfg.data.batch_size, cfg.data.seq_len
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, cfg.model.vocab_size, size=(b, t + 1), dtype=np.int32)
    batch = to_global({"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
                       "mask": np.ones((b, t), np.float32)}, mesh, b)
    start = time.perf_counter()
    state, metrics = train_step(state, batch)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - start
    for _ in range(warmup):
        state, metrics = train_step(state, batch)
    jax.block_until_ready(metrics)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        state, metrics = train_step(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    step_s = float(np.median(times))
    n_params = count_params(abstract)
    tps = b * t / step_s
    peak = peak_flops_per_device()
    return {"config": cfg.name, "params_m": n_params / 1e6, "cell": cfg.model.cell, "batch": b, "seq_len": t,
            "mode": cfg.model.mode, "step_ms": step_s * 1e3, "tokens_per_sec": tps,
            "newton_iterations": int(jax.device_get(metrics["newton_iterations"])),
            "loss": float(jax.device_get(metrics["loss"])), "compile_s": compile_s,
            "mfu": tps * train_flops_per_token(n_params) / (peak * mesh.size) if peak else None}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", default=["tiny", "gru125m"])
    p.add_argument("--set", dest="overrides", action="append", default=[], help="override for every config")
    p.add_argument("--m100-seq-len", type=int, default=256, help="gru125m sequence length (default 256)")
    p.add_argument("--m100-batch", type=int, default=4, help="gru125m global batch (default 4)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per run (median)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--out", default="benchmarks/results/train_throughput_" + jax.default_backend())
    args = p.parse_args(argv)
    rows = []
    for name in args.configs:
        base = ["data.source=synthetic", "optim.grad_accum=1", "mesh.data=-1", "mesh.fsdp=1"]
        if name == "gru125m" and not any(o.startswith("data.seq_len") for o in args.overrides):
            base += [f"data.seq_len={args.m100_seq_len}", f"data.batch_size={args.m100_batch}"]
        pair = []
        for mode in ("parallel", "sequential"):
            cfg = load_config(name, base + args.overrides + [f"model.mode={mode}"])
            row = bench_one(cfg, args.steps, args.warmup)
            pair.append(row)
            print(f"{name:<10} {mode:<10} {row['step_ms']:10.1f} ms/step {row['tokens_per_sec']:12.0f} tokens/s "
                  f"(Newton iters {row['newton_iterations']}, compile {row['compile_s']:.1f} s)", flush=True)
        pair[0]["speedup"] = pair[1]["step_ms"] / pair[0]["step_ms"]
        rows += pair
    env = environment()
    table = markdown_table(rows, COLUMNS)
    header = (f"# Train-step throughput — {env['date']}, JAX {env['jax']}, {env['backend']} ({env['device']}), "
              f"{env['device_count']} device(s), {env['cpu_count']} CPU cores")
    print("\n" + header + "\n\n" + table)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out + ".md", "w") as f:
        f.write(header + "\n\n" + table + "\n")
    write_json(args.out + ".json", {"environment": env, "argv": sys.argv, "rows": rows})
    print(f"wrote {args.out}.md and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
