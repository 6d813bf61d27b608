"""Continual learning of synthetic sequence tasks with static hypernetworks.

    python benchmarks/hyper_continual.py             # ~2–4 minutes on a loaded 2-core CPU
    python benchmarks/hyper_continual.py --steps 100 --seeds 1

Target: a ParaGRU(4 → 16) reading a sequence of T = 12 Gaussian inputs, then a linear
readout of its last state (226 parameters). Task k: is the sum over time of x_t · v_k
positive? (v_k a random unit vector per task, so tasks conflict in the readout.) Each task
gets a fixed conditioning embedding e_k ~ U[0, 1]^4. Tasks are learned one after the other;
the data of earlier tasks is gone. For each hypernetwork — plain MLP, MIP, RNN (chunked,
its chunk recurrence solved in parallel) — with and without the output regulariser
(β = --beta), the accuracy on every task after the last one, plus the training-loss curve on
the first task (MIP vs plain convergence speed: steps to reach --target-acc). Writes
benchmarks/results/hyper/continual.{json,md,png}.
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
import optax
from flax import nnx

import pararnn.nn as pnn
from pararnn.hyper import MIPHyperNetwork, MLPHyperNetwork, OutputRegularizer, RNNHyperNetwork
from common import environment, markdown_table, write_json

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "hyper")
IN, HIDDEN, T, COND = 4, 16, 12, 4


class Classifier(nnx.Module):
    """ParaGRU → last state → Linear(2). The target whose parameters are generated."""

    def __init__(self, rngs: nnx.Rngs):
        # T = 12: the sequential scan is the faster solve on CPU; the hypernetwork is under study
        self.rnn = pnn.ParaGRU(IN, HIDDEN, mode="sequential", rngs=rngs)
        self.out = nnx.Linear(HIDDEN, 2, rngs=rngs)

    def __call__(self, x):
        return self.out(self.rnn(x)[:, -1])


def make_hnet(kind: str, seed: int, cond: int = COND):
    target, rngs = Classifier(nnx.Rngs(seed)), nnx.Rngs(seed + 100)
    if kind == "MLP":
        return MLPHyperNetwork(target, cond, hidden=(64, 64), rngs=rngs)
    if kind == "MIP":
        return MIPHyperNetwork(target, cond, hidden=(64, 64), rngs=rngs)
    if kind == "RNN":  # 226 params in 8 chunks of 32: a small head, the recurrence in parallel
        return RNNHyperNetwork(target, cond, chunk_size=32, hidden_features=64, rngs=rngs)
    raise ValueError(kind)


def task_batch(key, direction, batch):
    """x (batch, T, IN) standard normal; y = [Σ_t x_t · direction > 0]."""
    x = jax.random.normal(key, (batch, T, IN))
    y = (jnp.sum(x @ direction, axis=1) > 0).astype(jnp.int32)
    return x, y


task_batch = jax.jit(task_batch, static_argnums=2)


def task_loss(hnet, emb, x, y):
    logits = hnet.apply(emb, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), logits


# Module-level and with β as an argument: one compilation per hypernetwork type (the
# regulariser has a fixed capacity, so adding a task changes no shape).
@nnx.jit
def train_step(hnet, opt, reg, emb, x, y, beta):
    def loss(hnet):
        l, logits = task_loss(hnet, emb, x, y)
        return l + beta * reg(hnet), (l, jnp.mean(jnp.argmax(logits, -1) == y))
    (_, (l, acc)), grads = nnx.value_and_grad(loss, has_aux=True)(hnet)
    with jax.numpy_dtype_promotion("standard"):
        opt.update(hnet, grads)
    return l, acc


@nnx.jit
def accuracy(hnet, emb, x, y):
    return jnp.mean(jnp.argmax(hnet.apply(emb, x), -1) == y)


@nnx.jit
def joint_step(hnet, opt, gammas, xs, ys):
    """One step on all tasks at once: task k conditioned on the scalar γ_k = k/(K−1)."""
    def loss(hnet):
        losses, accs = [], []
        for k in range(xs.shape[0]):
            l, logits = task_loss(hnet, gammas[k], xs[k], ys[k])
            losses.append(l)
            accs.append(jnp.mean(jnp.argmax(logits, -1) == ys[k]))
        return jnp.mean(jnp.stack(losses)), jnp.mean(jnp.stack(accs))
    (l, acc), grads = nnx.value_and_grad(loss, has_aux=True)(hnet)
    with jax.numpy_dtype_promotion("standard"):
        opt.update(hnet, grads)
    return l, acc


def run_joint(kind: str, args, seed: int) -> dict:
    """MIP vs plain convergence (Ortiz et al.'s setting): one hypernetwork learns all tasks
    jointly, conditioned on a scalar γ ∈ [0, 1] (task k: γ = k/(K−1))."""
    key = jax.random.key(seed)
    k_dir, key = jax.random.split(key)
    dirs = jax.random.normal(k_dir, (args.tasks, IN))
    dirs = dirs / jnp.linalg.norm(dirs, axis=-1, keepdims=True)
    gammas = jnp.linspace(0.0, 1.0, args.tasks)[:, None]
    hnet = make_hnet(kind, seed, cond=1)
    with jax.numpy_dtype_promotion("standard"):
        opt = nnx.Optimizer(hnet, optax.adam(args.lr), wrt=nnx.Param)
    per_task = max(args.batch // args.tasks, 8)
    losses, accs = [], []
    for s in range(args.joint_steps):
        key, *ks = jax.random.split(key, args.tasks + 1)
        batches = [task_batch(k, d, per_task) for k, d in zip(ks, dirs)]
        xs, ys = jnp.stack([b[0] for b in batches]), jnp.stack([b[1] for b in batches])
        l, a = joint_step(hnet, opt, gammas, xs, ys)
        losses.append(l)
        accs.append(a)
    acc = np.convolve(np.asarray(accs), np.ones(10) / 10, mode="valid")
    hit = np.nonzero(acc >= args.target_acc)[0]
    return {"hnet": kind, "seed": seed, "loss": [float(v) for v in losses], "acc": [float(v) for v in accs],
            "steps_to_target": int(hit[0] + 10) if hit.size else None,
            "final_acc": float(np.mean(np.asarray(accs)[-20:]))}


def run(kind: str, beta: float, args, seed: int) -> dict:
    key = jax.random.key(seed)
    k_dir, k_emb, k_test, key = jax.random.split(key, 4)
    dirs = jax.random.normal(k_dir, (args.tasks, IN))
    dirs = dirs / jnp.linalg.norm(dirs, axis=-1, keepdims=True)
    embs = jax.random.uniform(k_emb, (args.tasks, COND))
    tests = [task_batch(k, d, 1024) for k, d in zip(jax.random.split(k_test, args.tasks), dirs)]

    hnet = make_hnet(kind, seed)
    reg = OutputRegularizer.empty(COND, hnet.num_params, capacity=args.tasks)
    with jax.numpy_dtype_promotion("standard"):  # optax internals
        opt = nnx.Optimizer(hnet, optax.adam(args.lr), wrt=nnx.Param)

    curves, acc_after_own, matrix = [], [], []
    for t in range(args.tasks):
        losses, accs = [], []
        for s in range(args.steps):
            key, k = jax.random.split(key)
            x, y = task_batch(k, dirs[t], args.batch)
            l, a = train_step(hnet, opt, reg, embs[t], x, y, jnp.float32(beta))
            losses.append(l)
            accs.append(a)
        curves.append({"loss": [float(v) for v in losses], "acc": [float(v) for v in accs]})
        acc_after_own.append(float(accuracy(hnet, embs[t], *tests[t])))
        reg = reg.add(hnet, embs[t])
        matrix.append([float(accuracy(hnet, embs[j], *tests[j])) for j in range(t + 1)])
    final = matrix[-1]
    first = np.asarray(curves[0]["acc"])
    smooth = np.convolve(first, np.ones(10) / 10, mode="valid")
    hit = np.nonzero(smooth >= args.target_acc)[0]
    return {"hnet": kind, "beta": beta, "seed": seed, "params_target": hnet.num_params,
            "params_hnet": int(sum(v.size for v in jax.tree.leaves(nnx.state(hnet, nnx.Param)))),
            "final_acc": final, "acc_after_own": acc_after_own, "matrix": matrix,
            "earlier_mean": float(np.mean(final[:-1])), "all_mean": float(np.mean(final)),
            "steps_to_target": int(hit[0] + 10) if hit.size else None, "curves": curves}


def _smooth(v, n=10):
    return np.convolve(v, np.ones(n) / n, mode="valid") if len(v) > n else v


def plot(rows, joint, args, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 4))
    kinds = ["MLP", "MIP", "RNN"]
    width = 0.38
    for i, beta in enumerate([0.0, args.beta]):
        vals = [np.mean([r["earlier_mean"] for r in rows if r["hnet"] == k and r["beta"] == beta]) for k in kinds]
        ax0.bar(np.arange(3) + (i - 0.5) * width, vals, width, label=f"β = {beta:g}")
    ax0.set_xticks(range(3), [f"{k} hypernet" for k in kinds])
    ax0.set_ylabel(f"mean accuracy on tasks 1–{args.tasks - 1} after task {args.tasks}")
    ax0.axhline(0.5, color="gray", lw=0.8, ls="--")
    ax0.set_ylim(0.0, 1.0)
    ax0.legend()
    for k, c in zip(kinds, ["C0", "C1", "C2"]):
        curves = [r["curves"][0]["loss"] for r in rows if r["hnet"] == k and r["beta"] == 0.0]
        ax1.plot(_smooth(np.mean(curves, 0)), color=c, ls=":", lw=1, label=f"{k}, task 1 alone (γ = e_1)")
        curves = [r["loss"] for r in joint if r["hnet"] == k]
        ax1.plot(_smooth(np.mean(curves, 0)), color=c, label=f"{k}, all tasks jointly (scalar γ)")
    ax1.set_xlabel("training step")
    ax1.set_ylabel("training loss (mean over seeds, 10-step average)")
    ax1.set_yscale("log")
    ax1.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", type=int, default=4)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--beta", type=float, default=0.05)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--target-acc", type=float, default=0.9)
    p.add_argument("--joint-steps", type=int, default=300)
    p.add_argument("--out", default=OUT)
    p.add_argument("--replot", action="store_true", help="only redraw the plot from continual.json")
    args = p.parse_args(argv)
    if args.replot:
        import json
        saved = json.load(open(os.path.join(args.out, "continual.json")))
        plot(saved["runs"], saved["joint_runs"], argparse.Namespace(**saved["args"]),
             os.path.join(args.out, "continual.png"))
        return
    rows, start = [], time.time()
    for seed in range(args.seeds):
        for kind in ("MLP", "MIP", "RNN"):
            for beta in (0.0, args.beta):
                r = run(kind, beta, args, seed)
                rows.append(r)
                print(f"{kind} β={beta:g} seed={seed}: final acc {np.round(r['final_acc'], 3).tolist()} "
                      f"(own after training {np.round(r['acc_after_own'], 3).tolist()}), "
                      f"steps to {args.target_acc:.0%} on task 1: {r['steps_to_target']} "
                      f"[{time.time() - start:.0f} s]", flush=True)
    joint = []
    for seed in range(args.seeds):
        for kind in ("MLP", "MIP", "RNN"):
            r = run_joint(kind, args, seed)
            joint.append(r)
            print(f"joint {kind} seed={seed}: steps to {args.target_acc:.0%} {r['steps_to_target']}, "
                  f"final acc {r['final_acc']:.3f} [{time.time() - start:.0f} s]", flush=True)
    joint_summary = [{"hnet": k, "steps": ", ".join("—" if r["steps_to_target"] is None else str(r["steps_to_target"])
                                                    for r in joint if r["hnet"] == k),
                      "final": float(np.mean([r["final_acc"] for r in joint if r["hnet"] == k]))}
                     for k in ("MLP", "MIP", "RNN")]
    summary = []
    for kind in ("MLP", "MIP", "RNN"):
        for beta in (0.0, args.beta):
            rs = [r for r in rows if r["hnet"] == kind and r["beta"] == beta]
            steps = [r["steps_to_target"] for r in rs]
            summary.append({
                "hnet": kind, "beta": beta, "params": rs[0]["params_hnet"],
                "earlier": float(np.mean([r["earlier_mean"] for r in rs])),
                "last": float(np.mean([r["final_acc"][-1] for r in rs])),
                "own": float(np.mean([np.mean(r["acc_after_own"]) for r in rs])),
                "steps": ", ".join("—" if s is None else str(s) for s in steps)})
    env = environment()
    write_json(os.path.join(args.out, "continual.json"),
               {"environment": env, "args": vars(args), "summary": summary, "runs": rows,
                "joint_summary": joint_summary, "joint_runs": joint,
                "seconds": time.time() - start})
    table = markdown_table(summary, [
        ("hnet", "hypernetwork"), ("beta", "β (regulariser)"), ("params", "hnet params"),
        ("earlier", f"acc. tasks 1–{args.tasks - 1} after task {args.tasks}"),
        ("last", f"acc. task {args.tasks}"), ("own", "acc. right after each task"),
        ("steps", f"steps to {args.target_acc:.0%} on task 1 (per seed)")])
    table2 = markdown_table(joint_summary, [
        ("hnet", "hypernetwork"), ("steps", f"steps to {args.target_acc:.0%} (per seed)"),
        ("final", "accuracy, last 20 steps")])
    with open(os.path.join(args.out, "continual.md"), "w") as f:
        f.write(f"Continual synthetic sequence tasks ({args.tasks} tasks × {args.steps} steps, batch "
                f"{args.batch}, {args.seeds} seeds, mean over seeds); {env['date']}, JAX {env['jax']}, "
                f"{env['backend']} ({env['cpu_count']} cores), {time.time() - start:.0f} s.\n\n{table}\n\n"
                f"All {args.tasks} tasks jointly, conditioned on a scalar γ = k/(K−1) ∈ [0, 1] "
                f"({args.joint_steps} steps):\n\n{table2}\n")
    print(table)
    print(table2)
    try:
        plot(rows, joint, args, os.path.join(args.out, "continual.png"))
    except ImportError as e:
        print(f"no plot: {e}")


if __name__ == "__main__":
    main()
