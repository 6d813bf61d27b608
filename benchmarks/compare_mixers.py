"""Language-model baselines in one trainer: recurrent cells vs Mamba2 vs attention, matched parameters.

    python benchmarks/compare_mixers.py                              # built-in stories, 6 models
    python benchmarks/compare_mixers.py --text /path/corpus.txt      # also a local text corpus
    python benchmarks/compare_mixers.py --models paragru attention --steps 100 --seeds 0 1

Every run is ``train.py --config BASE`` (default ``tiny``) with only the mixer changed
(``paragru``, ``paralstm``, ``gru`` (dense), ``mingru`` (linear), ``mamba2``, ``attention``)
and ``model.d_model`` chosen per model so that its parameter count is the closest to the
base model's (reported, with the ratio). Same data, order, optimiser, schedule and steps.
Each run is a child process (its own peak RSS); per run it records the training loss at
every step, the wall-clock of every step (from the trainer's ``tokens_per_sec``; the first
step, which compiles, is reported apart and left out of the wall-clock axis), the held-out
loss at the end, the median tokens/s, the process's peak RSS and XLA's compiled size of one
forward + backward (arguments + outputs + temporaries). Corpora: the built-in stories and
every ``--text`` file (``data.source=files``). Writes ``--out``.json/.md and, with
matplotlib installed (``pip install -e ".[plot]"``), ``--out``.png: loss vs step and vs
wall-clock per corpus.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import environment, markdown_table, write_json

MODELS = {  # name -> model overrides
    "paragru": ["model.mixer=recurrent", "model.cell=paragru"],
    "paralstm": ["model.mixer=recurrent", "model.cell=paralstm"],
    "gru": ["model.mixer=recurrent", "model.cell=gru"],
    "mingru": ["model.mixer=recurrent", "model.cell=mingru"],
    # heads of 16 channels and a state of 16: the sizes of the tiny configs (mamba2_tiny, transformer_tiny)
    "mamba2": ["model.mixer=mamba2", "model.head_dim=16", "model.ssm_state=16", "model.ssm_chunk=32"],
    "attention": ["model.mixer=attention", "model.head_dim=16"],
}


def _n_params(cfg) -> int:
    from pararnn.train.memory import count_params
    from pararnn.train.trainer import abstract_params
    return count_params(abstract_params(cfg, cfg.model.vocab_size)[1])


def matched_overrides(base: str, model: str, extra: list[str], multiple: int) -> tuple[list[str], int, int]:
    """Overrides for ``model`` with the d_model (a multiple of ``multiple``) whose parameter
    count is closest to the base config's; returns (overrides, params, base params)."""
    from pararnn.train.config import ConfigError, load_config
    target = _n_params(load_config(base, extra))
    d0 = load_config(base, extra).model.d_model
    best = None
    for d in range(max(multiple, d0 // 2 // multiple * multiple), 2 * d0 + 1, multiple):
        overrides = MODELS[model] + extra + [f"model.d_model={d}"]
        try:
            n = _n_params(load_config(base, overrides))
        except ConfigError:  # e.g. a head_dim that does not divide this width
            continue
        if best is None or abs(n - target) < abs(best[1] - target):
            best = (overrides, n)
    return best[0], best[1], target


def run_child(spec: dict) -> dict:
    """Train one model in this process (the child): returns its record."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx
    from pararnn.train.config import load_config
    from pararnn.train.optim import lm_loss
    from pararnn.train.trainer import build_model, train

    cfg = load_config(spec["base"], spec["overrides"])
    steps = cfg.train.steps
    with jax.numpy_dtype_promotion("standard"):
        summary = train(cfg, spec["workdir"])
        # XLA's compiled size of one forward + backward of this model on one batch
        model = build_model(cfg, cfg.model.vocab_size, nnx.Rngs(0))
        graphdef, params = nnx.split(model, nnx.Param)
        tokens = jnp.zeros((cfg.data.batch_size, cfg.data.seq_len), jnp.int32)

        def loss(p):
            logits = nnx.merge(graphdef, p)(tokens)
            return lm_loss(logits, tokens, jnp.ones_like(tokens), cfg.optim.z_loss)[0]

        m = jax.jit(jax.grad(loss)).lower(params).compile().memory_analysis()
        xla_bytes = None if m is None else m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
    with open(os.path.join(spec["workdir"], "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    by_step = {}
    for r in records:  # the last record of a step wins (eval records repeat the step)
        by_step[r["step"]] = {**by_step.get(r["step"], {}), **r}
    curve = [by_step[s] for s in sorted(by_step)]
    tokens_per_step = cfg.data.batch_size * cfg.data.seq_len
    step_s = [tokens_per_step / r["tokens_per_sec"] for r in curve]
    last = curve[-1]
    return {"steps": steps, "params": summary["params"], "loss": [r["loss"] for r in curve],
            "step_seconds": step_s, "first_step_s": step_s[0],
            "wall_clock_s": float(np.sum(step_s[1:])),
            "tokens_per_sec": statistics.median(r["tokens_per_sec"] for r in curve[1:]),
            "final_loss": float(np.mean([r["loss"] for r in curve[-10:]])),
            "eval_loss": last.get("eval_loss"), "xla_fwd_bwd_bytes": xla_bytes}


def run_in_child(spec: dict, log_path: str) -> dict:
    """``run_child`` in a fresh process; adds its peak RSS (``os.wait4``)."""
    out = spec["workdir"] + ".result.json"
    with open(log_path, "a") as log:
        proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec), out],
                                stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"error: run {spec['name']} failed (exit status {status}); see {log_path}")
    with open(out) as f:
        record = json.load(f)
    record["peak_rss_mib"] = usage.ru_maxrss / 1024  # Linux: KiB
    return record


def plot(rows: list[dict], path: str) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    import numpy as np
    corpora = list(dict.fromkeys(r["corpus"] for r in rows))
    fig, axes = plt.subplots(len(corpora), 2, figsize=(11, 3.6 * len(corpora)), squeeze=False)
    for i, corpus in enumerate(corpora):
        models = list(dict.fromkeys(r["model"] for r in rows if r["corpus"] == corpus))
        for j, model in enumerate(models):
            for k, r in enumerate(x for x in rows if x["corpus"] == corpus and x["model"] == model):
                w = min(10, len(r["loss"]))  # a 10-step running mean (shorter runs: their length)
                loss = np.convolve(r["loss"], np.ones(w) / w, mode="valid")
                steps = np.arange(len(loss)) + w
                wall = np.cumsum([0.0] + r["step_seconds"][1:])[w - 1:w - 1 + len(loss)]
                label = f"{model} ({r['params'] / 1e3:.0f}k)" if k == 0 else None
                axes[i, 0].plot(steps, loss, color=f"C{j}", lw=1, label=label)
                axes[i, 1].plot(wall, loss, color=f"C{j}", lw=1, label=label)
        axes[i, 0].set_xlabel("step")
        axes[i, 1].set_xlabel("wall-clock (s, first step excluded; shared 2-core CPU)")
        for ax in axes[i]:
            ax.set_ylabel(f"train loss ({corpus})")
            ax.set_yscale("log")
        axes[i, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--base", default="tiny", help="config the runs start from (its paragru size is the target)")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--text", nargs="*", default=[], help="local text corpora (data.source=files), one run set each")
    p.add_argument("--no-builtin", action="store_true", help="skip the built-in story corpus")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="config override for every run")
    p.add_argument("--d-multiple", type=int, default=16, help="d_model candidates are multiples of this")
    p.add_argument("--workdir", default=None, help="where runs go (default: a temporary directory)")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                 "compare_mixers"))
    p.add_argument("--child", nargs=2, metavar=("SPEC", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        record = run_child(json.loads(args.child[0]))
        write_json(args.child[1], record)
        return 0
    for path in args.text:
        if not os.path.isfile(path):
            raise SystemExit(f"error: --text {path!r} does not exist.")
    root = args.workdir or tempfile.mkdtemp(prefix="pararnn_compare_")
    os.makedirs(root, exist_ok=True)
    log_path = os.path.join(root, "runs.log")
    corpora = ([] if args.no_builtin else [("stories", [])]) + [
        (os.path.basename(path), ["data.source=files", f"data.paths=[{os.path.abspath(path)}]"]) for path in args.text]
    common = [f"train.steps={args.steps}", "train.log_every=1", f"train.eval_every={args.steps}",
              f"train.checkpoint_every={args.steps}", "train.progress=false", "mesh.devices=1"] + args.overrides
    env = environment()
    command = "python benchmarks/compare_mixers.py " + " ".join(argv if argv is not None else sys.argv[1:])
    rows = []
    for corpus, data_overrides in corpora:
        for model in args.models:
            overrides, n, target = matched_overrides(args.base, model, data_overrides + common, args.d_multiple)
            for seed in args.seeds:
                name = f"{corpus}_{model}_s{seed}"
                spec = {"name": name, "base": args.base, "workdir": os.path.join(root, name),
                        "overrides": overrides + [f"train.seed={seed}"]}
                record = run_in_child(spec, log_path)
                d_model = next(o.split("=")[1] for o in reversed(overrides) if o.startswith("model.d_model="))
                rows.append({"corpus": corpus, "model": model, "seed": seed, "d_model": int(d_model),
                             "param_ratio": n / target, **record})
                print(f"{corpus:>10} {model:<9} seed {seed}: {n:,} params ({n / target:.2f}×), eval loss "
                      f"{record['eval_loss']:.3f}, {record['tokens_per_sec']:,.0f} tok/s, peak RSS "
                      f"{record['peak_rss_mib']:.0f} MiB", flush=True)
                write_json(args.out + ".json", {"environment": env, "command": command, "rows": rows})
    table_rows = []
    for corpus, _ in corpora:
        for model in args.models:
            runs = [r for r in rows if r["corpus"] == corpus and r["model"] == model]
            ev = [r["eval_loss"] for r in runs]
            table_rows.append({
                "corpus": corpus, "model": model, "params": runs[0]["params"], "d_model": runs[0]["d_model"],
                "ratio": runs[0]["param_ratio"],
                "eval_loss": f"{statistics.mean(ev):.3f}" + (f" ± {(max(ev) - min(ev)) / 2:.3f}" if len(ev) > 1 else ""),
                "train_loss": statistics.mean(r["final_loss"] for r in runs),
                "tokens_per_sec": round(statistics.median(r["tokens_per_sec"] for r in runs)),
                "wall": statistics.mean(r["wall_clock_s"] for r in runs),
                "first": statistics.mean(r["first_step_s"] for r in runs),
                "rss": max(r["peak_rss_mib"] for r in runs),
                "xla": None if runs[0]["xla_fwd_bwd_bytes"] is None else runs[0]["xla_fwd_bwd_bytes"] / 2 ** 20})
    header = (f"## Mixers at matched parameters — {env['date']}, JAX {env['jax']}, {env['backend']}, "
              f"{env['cpu_count']} CPU cores (shared with other jobs: times are indicative), seeds {args.seeds}, "
              f"{args.steps} steps from `{args.base}`\n\n`{command}`")
    table = markdown_table(table_rows, [
        ("corpus", "corpus"), ("model", "model"), ("params", "params"), ("d_model", "d_model"),
        ("ratio", "params / base"), ("eval_loss", "held-out loss"), ("train_loss", "train loss (last 10)"),
        ("tokens_per_sec", "tokens/s (median)"), ("wall", "wall-clock (s)"), ("first", "first step (s)"),
        ("rss", "peak RSS (MiB)"), ("xla", "XLA fwd+bwd (MiB)")])
    print("\n" + header + "\n\n" + table)
    write_json(args.out + ".json", {"environment": env, "command": command, "rows": rows, "table": table_rows})
    with open(args.out + ".md", "w") as f:
        f.write(header + "\n\n" + table + "\n")
    if plot(rows, args.out + ".png"):
        print(f"plot: {args.out}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
