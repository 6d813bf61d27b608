"""Synthetic tasks with a length curriculum: do nonlinear recurrences separate from linear ones?

    python benchmarks/synthetic_curriculum.py --task parity \\
        --models paragru paragru:max_recurrent_norm=null mingru mamba2 attention \\
        --curriculum 8:300 16:300 32:300 64:600 --eval-lengths 64 256 --seeds 0 1 2
    python benchmarks/synthetic_curriculum.py --task khop --set model.n_layers=2 ...

Every run trains the same language model as ``train.py`` (:func:`pararnn.train.trainer.
build_model`, AdamW with warmup + cosine over all steps, the cross-entropy of
:func:`pararnn.train.optim.lm_loss`) on *fresh* examples every step
(:func:`pararnn.train.synthetic.task_batch`; nothing to memorise), with the sequence length
raised stage by stage (``--curriculum LENGTH:STEPS ...``). Only the mixer differs between the
models: a spec ``NAME[:model_key=value,...]`` with NAME a recurrent cell (paragru, paralstm,
gru, lstm, mingru) or ``mamba2`` / ``attention``, e.g. ``paragru:max_recurrent_norm=null``.

After every stage and at the end, accuracy is measured on ``--eval-batches`` fresh batches per
length from a separate generator: on the scored positions (parity: every position, mqar: the
query positions, khop: where all hops exist) and at the last scored position of each example
(parity: the parity of the whole string — chance 0.5). Lengths beyond the last stage measure
length generalisation. Results (one row per run, and mean ± spread over seeds) go to
``--out``.json/.md; a plot with matplotlib installed (``pip install -e ".[plot]"``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from common import environment, markdown_table, write_json
from pararnn.train.config import apply_overrides, load_config
from pararnn.train.memory import count_params
from pararnn.train.optim import lm_loss, make_optimizer
from pararnn.train.synthetic import task_batch, task_vocab
from pararnn.train.trainer import build_model

CELLS = ("paragru", "paralstm", "gru", "lstm", "mingru")
SOLVED = 0.99  # accuracy on the scored positions that counts a run as having solved the task
MIXERS = ("mamba2", "attention")


def spec_overrides(spec: str) -> list[str]:
    """``NAME[:key=value,...]`` → ``--set``-style overrides of the model section."""
    name, _, extra = spec.partition(":")
    if name in CELLS:
        out = ["model.mixer=recurrent", f"model.cell={name}"]
    elif name in MIXERS:
        out = [f"model.mixer={name}"]
    else:
        raise SystemExit(f"error: model spec {spec!r}: NAME must be one of {CELLS + MIXERS}.")
    return out + [f"model.{kv}" for kv in extra.split(",") if kv]


def parse_curriculum(items: list[str]) -> list[tuple[int, int]]:
    stages = []
    for item in items:
        try:
            length, steps = (int(v) for v in item.split(":"))
        except ValueError:
            raise SystemExit(f"error: --curriculum expects LENGTH:STEPS items, got {item!r}.") from None
        if length < 2 or steps < 1:
            raise SystemExit(f"error: --curriculum item {item!r}: need LENGTH >= 2 and STEPS >= 1.")
        stages.append((length, steps))
    return stages


class Runner:
    """One model (config) trained and evaluated for several seeds with shared compiled steps."""

    def __init__(self, cfg, task: str, task_opts: dict, total_steps: int):
        self.cfg, self.task, self.task_opts = cfg, task, task_opts
        vocab = task_vocab(task, khop_alphabet=task_opts.get("khop_alphabet", 8))
        self.vocab = vocab
        model = nnx.eval_shape(lambda: build_model(cfg, vocab, nnx.Rngs(0)))
        self.graphdef, abstract = nnx.split(model, nnx.Param)
        self.n_params = count_params(abstract)
        self.optimizer = make_optimizer(cfg.optim, total_steps)
        z = cfg.optim.z_loss

        def loss_fn(params, batch):
            logits = nnx.merge(self.graphdef, params)(batch["inputs"])
            return lm_loss(logits, batch["targets"], batch["mask"], z)

        def train_step(params, opt_state, batch):
            (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch)
            updates, opt_state = self.optimizer.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state, metrics

        def eval_step(params, batch):
            logits = nnx.merge(self.graphdef, params)(batch["inputs"])
            correct = (jnp.argmax(logits, -1) == batch["targets"]) & (batch["mask"] > 0)
            # the last scored position of every example
            last = batch["mask"].shape[1] - 1 - jnp.argmax(batch["mask"][:, ::-1] > 0, axis=1)
            last_ok = jnp.take_along_axis(correct, last[:, None], axis=1)[:, 0]
            return correct.sum(), batch["mask"].sum(), last_ok.sum()

        self.train_step = jax.jit(train_step, donate_argnums=(0, 1))
        self.eval_step = jax.jit(eval_step)

    def init(self, seed: int):
        model = build_model(self.cfg, self.vocab, nnx.Rngs(seed))
        params = nnx.state(model, nnx.Param)
        return params, self.optimizer.init(params)

    def batch(self, rng, batch_size: int, length: int):
        return {k: jnp.asarray(v) for k, v in task_batch(self.task, rng, batch_size, length, **self.task_opts).items()}

    def evaluate(self, params, length: int, batches: int, batch_size: int, seed: int) -> dict:
        rng = np.random.default_rng([seed, length, 12345])  # independent of the training stream
        right = total = last = 0
        for _ in range(batches):
            r, t, l = jax.device_get(self.eval_step(params, self.batch(rng, batch_size, length)))
            right, total, last = right + int(r), total + int(t), last + int(l)
        return {"accuracy": right / max(total, 1), "last_accuracy": last / (batches * batch_size)}


def reference_predictors(task: str, task_opts: dict, lengths: list[int], examples: int = 512,
                         window: int = 4) -> dict:
    """Accuracy, on the scored positions, of the best model-free predictor that sees only the
    last ``window`` characters (the causal conv's reach): the most frequent answer per window
    content, fitted on ``examples`` sequences and scored on as many others. k-hop only (parity:
    0.5, mqar: 1/64 by construction); a model above it uses memory beyond the window."""
    if task != "khop":
        return {}
    from collections import Counter, defaultdict
    from pararnn.train.synthetic import khop_answers, khop_chars
    hops, alphabet = task_opts["khop_hops"], task_opts["khop_alphabet"]
    out = {}
    for length in lengths:
        rng = np.random.default_rng([length, 4242])

        def samples():
            chars = khop_chars(rng, length, alphabet)
            padded = np.concatenate([np.full(window - 1, -1), chars])
            for t, answer in enumerate(khop_answers(chars, hops, alphabet)):
                if answer >= 0:
                    yield tuple(padded[t:t + window]), answer

        table = defaultdict(Counter)
        for _ in range(examples):
            for context, answer in samples():
                table[context][answer] += 1
        right = total = 0
        for _ in range(examples):
            for context, answer in samples():
                guess = table[context].most_common(1)[0][0] if table[context] else -1
                right, total = right + (guess == answer), total + 1
        out[str(length)] = {f"last-{window}-characters lookup": right / total}
    return out


def summarize(rows: list[dict], eval_lengths: list[int]) -> list[dict]:
    """mean ± spread (half the max–min range) over seeds, per model and eval length."""
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        runs = [r for r in rows if r["model"] == model]
        for length in eval_lengths:
            acc = [r["eval"][str(length)]["accuracy"] for r in runs]
            last = [r["eval"][str(length)]["last_accuracy"] for r in runs]
            out.append({"model": model, "params": runs[0]["params"], "eval_length": length, "seeds": len(runs),
                        "solved": f"{sum(a >= SOLVED for a in acc)}/{len(acc)}",
                        "accuracy": f"{statistics.mean(acc):.3f} ± {(max(acc) - min(acc)) / 2:.3f}",
                        "last_accuracy": f"{statistics.mean(last):.3f} ± {(max(last) - min(last)) / 2:.3f}",
                        "per_seed": " ".join(f"{a:.3f}" for a in acc),
                        "minutes": statistics.mean(r["seconds"] for r in runs) / 60})
    return out


def plot(rows: list[dict], path: str, title: str, eval_lengths: list[int]) -> bool:
    """Final accuracy per model (one dot per seed), one panel per evaluation length."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, len(eval_lengths), figsize=(0.7 * len(models) * len(eval_lengths) + 2, 4.2),
                             squeeze=False, sharey=True)
    for ax, length in zip(axes[0], eval_lengths):
        for i, model in enumerate(models):
            accs = [r["eval"][str(length)]["accuracy"] for r in rows if r["model"] == model]
            ax.scatter(i + np.linspace(-0.12, 0.12, len(accs)), accs, color=f"C{i}", s=30)
        ax.set_xticks(range(len(models)))
        ax.set_xticklabels([m.replace(":max_recurrent_norm=null", "\n(no clamp)") for m in models],
                           rotation=60, fontsize=7, ha="right")
        ax.set_title(f"evaluated at length {length}", fontsize=9)
        ax.set_ylim(0, 1.05)
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].set_ylabel("held-out accuracy (scored positions)\none dot per seed", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


def write_outputs(out: str, rows: list[dict], env: dict, command: str, stages, eval_lengths, seeds, task,
                  task_opts) -> None:
    """The summary table (markdown + JSON) and the plot of ``rows``."""
    summary = summarize(rows, eval_lengths)
    references = reference_predictors(task, task_opts, eval_lengths)
    header = (f"## {task}: length curriculum {' → '.join(f'{n} ({s} steps)' for n, s in stages)} — "
              f"{env['date']}, JAX {env['jax']}, {env['backend']}, {env['cpu_count']} shared CPU cores, "
              f"seeds {seeds}\n\n`{command}`\n\nmean ± half-range over seeds; 'solved': seeds with accuracy ≥ "
              f"{SOLVED}; 'last' = accuracy at the last scored position of each example.")
    if references:
        header += "\n\nReference predictor (no model) on the scored positions: " + "; ".join(
            f"length {n}: " + ", ".join(f"{k} {v:.3f}" for k, v in refs.items()) for n, refs in references.items())
    table = markdown_table(summary, [("model", "model"), ("params", "params"), ("eval_length", "eval length"),
                                     ("solved", "solved"), ("accuracy", "accuracy"),
                                     ("last_accuracy", "last position"), ("per_seed", "accuracy per seed"),
                                     ("minutes", "minutes / run")])
    print("\n" + header + "\n\n" + table)
    write_json(out + ".json", {"environment": env, "command": command, "rows": rows, "summary": summary,
                               "reference_predictors": references, "task_opts": task_opts})
    with open(out + ".md", "w") as f:
        f.write(header + "\n\n" + table + "\n")
    if plot(rows, out + ".png", f"{task}: final accuracy per model and seed (curriculum "
            f"{' → '.join(str(n) for n, _ in stages)})", eval_lengths):
        print(f"plot: {out}.png")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", required=True, choices=["parity", "mqar", "khop"])
    p.add_argument("--models", nargs="+", default=["paragru", "paragru:max_recurrent_norm=null", "mingru",
                                                   "mamba2", "attention"])
    p.add_argument("--curriculum", nargs="+", default=["8:300", "16:300", "32:300", "64:600"],
                   help="LENGTH:STEPS stages, trained in order")
    p.add_argument("--eval-lengths", type=int, nargs="+", default=None,
                   help="lengths evaluated at the end (default: the last stage's)")
    p.add_argument("--eval-batches", type=int, default=8)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   help="config override for every model, e.g. model.d_model=32")
    p.add_argument("--mqar-pairs", type=int, default=8)
    p.add_argument("--khop-hops", type=int, default=2)
    p.add_argument("--khop-alphabet", type=int, default=8)
    p.add_argument("--out", default=None, help="output prefix (default benchmarks/results/curriculum_TASK)")
    p.add_argument("--from-json", default=None, help="rewrite the tables and plot of an earlier run's JSON")
    args = p.parse_args(argv)
    if args.from_json:
        with open(args.from_json) as f:
            old = json.load(f)
        curriculum = old["command"].split("--curriculum ")[1].split(" --")[0].split()
        task_opts = old.get("task_opts") or {"parity": {}, "mqar": {"mqar_pairs": args.mqar_pairs},
                                             "khop": {"khop_hops": args.khop_hops,
                                                      "khop_alphabet": args.khop_alphabet}}[args.task]
        write_outputs(os.path.splitext(args.from_json)[0], old["rows"], old["environment"], old["command"],
                      parse_curriculum(curriculum), sorted(int(n) for n in old["rows"][0]["eval"]),
                      sorted({r["seed"] for r in old["rows"]}), args.task, task_opts)
        return 0
    stages = parse_curriculum(args.curriculum)
    eval_lengths = args.eval_lengths or [stages[-1][0]]
    total_steps = sum(s for _, s in stages)
    task_opts = {"parity": {}, "mqar": {"mqar_pairs": args.mqar_pairs},
                 "khop": {"khop_hops": args.khop_hops, "khop_alphabet": args.khop_alphabet}}[args.task]
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", f"curriculum_{args.task}")
    env = environment()
    command = "python benchmarks/synthetic_curriculum.py " + " ".join(argv if argv is not None else sys.argv[1:])
    rows = []
    with jax.numpy_dtype_promotion("standard"):
        for spec in args.models:
            cfg = load_config(args.task, spec_overrides(spec) + args.overrides)
            cfg = apply_overrides(cfg, [f"train.steps={total_steps}",
                                        f"model.vocab_size={task_vocab(args.task, khop_alphabet=args.khop_alphabet)}"])
            runner = Runner(cfg, args.task, task_opts, total_steps)
            for seed in args.seeds:
                start = time.time()
                params, opt_state = runner.init(seed)
                rng = np.random.default_rng([seed, 777])
                stage_rows = []
                for length, steps in stages:
                    for _ in range(steps):
                        params, opt_state, metrics = runner.train_step(
                            params, opt_state, runner.batch(rng, cfg.data.batch_size, length))
                    loss = float(metrics["loss"])
                    ev = runner.evaluate(params, length, args.eval_batches, cfg.data.batch_size, seed)
                    stage_rows.append({"length": length, "steps": steps, "train_loss": loss, **ev})
                    print(f"{args.task} {spec} seed {seed}: length {length} acc {ev['accuracy']:.3f} "
                          f"last {ev['last_accuracy']:.3f} loss {loss:.3f} ({time.time() - start:.0f} s)", flush=True)
                finals = {str(n): runner.evaluate(params, n, args.eval_batches, cfg.data.batch_size, seed)
                          for n in eval_lengths}
                rows.append({"task": args.task, "model": spec, "seed": seed, "params": runner.n_params,
                             "stages": stage_rows, "eval": finals, "seconds": time.time() - start})
                print(f"  final {spec} seed {seed}: " + ", ".join(
                    f"L={n} acc {v['accuracy']:.3f} last {v['last_accuracy']:.3f}" for n, v in finals.items()), flush=True)
                write_json(out + ".json", {"environment": env, "command": command, "rows": rows})
    write_outputs(out, rows, env, command, stages, eval_lengths, args.seeds, args.task, task_opts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
