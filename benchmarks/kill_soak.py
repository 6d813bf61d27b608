"""Fault-injection soak: ``kill -9`` a training run at random moments, resume, repeat; then
finish the run and compare its loss curve with an uninterrupted one.

    nice -n 10 python benchmarks/kill_soak.py                  # 20 kills during `tiny` (~15 min on 2 cores)
    python benchmarks/kill_soak.py --kills 3 --steps 60        # a quick look

Each round starts ``train.py --config tiny`` on the same workdir and sends SIGKILL either a
random number of logged steps past where it resumed (plus a random sub-step delay, so kills
land inside steps and inside asynchronous checkpoint writes) or, in a quarter of the rounds,
a random number of seconds after the start (inside start-up: imports, data, restore, compile).
After every kill each committed checkpoint is read back in full (parameters, optimizer state,
metadata). Reported: steps lost per kill (logged by that run before the kill, after the checkpoint
the next run resumed from; metrics are logged one step late, so one more step may have run), checkpoints that did not read back (must be 0), checkpoints the trainer set
aside as unreadable (must be 0), and whether the final loss curve equals the uninterrupted
run's bitwise. Writes ``benchmarks/results/kill_soak.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import environment, markdown_table, write_json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLUMNS = [("kill", "kill"), ("trigger", "trigger"), ("resumed_from", "resumed from"),
           ("logged_at_kill", "last logged step"), ("next_resume", "next resume"), ("lost_steps", "lost steps"),
           ("checkpoints", "checkpoints"), ("unreadable", "unreadable"), ("tmp_dirs", "unfinished saves")]


def _overrides(args) -> list[str]:
    items = [f"train.steps={args.steps}", f"train.checkpoint_every={args.checkpoint_every}",
             "train.log_every=1", "train.progress=false", "mesh.devices=1"] + list(args.set)
    out = []
    for item in items:
        out += ["--set", item]
    return out


def _command(args, workdir: str) -> list[str]:
    return [sys.executable, os.path.join(ROOT, "train.py"), "--config", args.config, "--workdir", workdir] + \
        _overrides(args)


def _env() -> dict:
    return {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}


def _logged_since(workdir: str, since: float, otherwise: int) -> int:
    """The last step logged by a run started at ``since`` (the metrics file is rewritten when
    a run resumes); ``otherwise`` if it has not written yet."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path) or os.path.getmtime(path) < since:
        return otherwise
    return max(_logged_steps(workdir), default=otherwise)


def _logged_steps(workdir: str) -> dict[int, float]:
    path = os.path.join(workdir, "metrics.jsonl")
    out = {}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                if line.endswith("\n"):
                    record = json.loads(line)
                    out[record["step"]] = record["loss"]
    return out


def _committed_steps(workdir: str) -> list[int]:
    directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory):
        return []
    return sorted(int(d) for d in os.listdir(directory) if d.isdigit())


def _tmp_dirs(workdir: str) -> int:
    directory = os.path.join(workdir, "checkpoints")
    return sum(1 for d in os.listdir(directory) if "tmp" in d) if os.path.isdir(directory) else 0


def _unreadable(workdir: str) -> list[str]:
    """Read every committed checkpoint back in full; the ones that fail, with why."""
    import warnings

    from pararnn.train.restore import load_trained

    bad = []
    for step in _committed_steps(workdir):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # a fallback to another step is a failure here
                load_trained(workdir, step)
        except Exception as e:  # any failure to read back counts
            bad.append(f"step {step}: {type(e).__name__}: {str(e)[:200]}")
    return bad


def _run_to_end(args, workdir: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(_command(args, workdir), capture_output=True, text=True, env=_env(), cwd=ROOT,
                          timeout=3600)
    if proc.returncode != 0:
        raise SystemExit(f"run failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


def soak(args) -> dict:
    rng = random.Random(args.seed)
    base = tempfile.mkdtemp(prefix="kill_soak_")
    reference_dir, workdir = os.path.join(base, "reference"), os.path.join(base, "killed")
    t0 = time.time()
    _run_to_end(args, reference_dir)
    reference = _logged_steps(reference_dir)
    reference_s = time.time() - t0
    print(f"uninterrupted run: {len(reference)} steps in {reference_s:.0f} s", flush=True)

    rows, set_aside_warnings, tracebacks = [], 0, 0
    for kill in range(1, args.kills + 1):
        resumed_from = max(_committed_steps(workdir), default=0)
        by_time = rng.random() < args.startup_fraction
        offset = rng.randint(1, args.max_offset)
        delay = rng.uniform(0.5, args.startup_seconds) if by_time else rng.uniform(0.0, args.jitter)
        log = open(os.path.join(base, f"run{kill}.err"), "w")
        start = time.time()
        proc = subprocess.Popen(_command(args, workdir), stdout=subprocess.DEVNULL, stderr=log, env=_env(), cwd=ROOT)
        if by_time:
            time.sleep(delay)
        else:
            target = min(resumed_from + offset, args.steps)
            while proc.poll() is None and _logged_since(workdir, start, resumed_from) < target:
                time.sleep(0.02)
            time.sleep(delay)
        finished = proc.poll() is not None
        if not finished:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
        log.close()
        with open(log.name) as f:
            err = f.read()
        set_aside_warnings += err.count("cannot be read back")
        tracebacks += err.count("Traceback")
        logged = _logged_since(workdir, start, resumed_from)
        unreadable = _unreadable(workdir)
        rows.append({"kill": kill, "trigger": f"{delay:.1f} s after start" if by_time else
                     f"step {resumed_from}+{offset} (+{delay:.2f} s)", "resumed_from": resumed_from,
                     "logged_at_kill": logged, "checkpoints": ",".join(map(str, _committed_steps(workdir))),
                     "unreadable": len(unreadable), "unreadable_detail": unreadable,
                     "tmp_dirs": _tmp_dirs(workdir), "finished_before_kill": finished,
                     "seconds": round(time.time() - start, 1)})
        print(f"kill {kill}: {rows[-1]['trigger']}: resumed from {resumed_from}, logged {logged}, "
              f"checkpoints {rows[-1]['checkpoints'] or '-'}, unreadable {len(unreadable)}", flush=True)
    for i, row in enumerate(rows):
        nxt = rows[i + 1]["resumed_from"] if i + 1 < len(rows) else max(_committed_steps(workdir), default=0)
        row["next_resume"] = nxt
        row["lost_steps"] = max(row["logged_at_kill"] - nxt, 0)

    final = _run_to_end(args, workdir)
    set_aside_warnings += final.stderr.count("cannot be read back")
    tracebacks += final.stderr.count("Traceback")
    curve = _logged_steps(workdir)
    same = curve == reference
    diffs = [abs(curve.get(s, float("nan")) - reference[s]) for s in reference]
    result = {
        "environment": environment(), "command": " ".join(["python", "benchmarks/kill_soak.py"] + sys.argv[1:]),
        "config": args.config, "overrides": _overrides(args)[1::2], "kills": args.kills, "seed": args.seed,
        "rows": rows,
        "lost_steps_total": sum(r["lost_steps"] for r in rows),
        "lost_steps_max": max((r["lost_steps"] for r in rows), default=0),
        "unreadable_checkpoints": sum(r["unreadable"] for r in rows),
        "set_aside_by_trainer": set_aside_warnings, "tracebacks_in_resumed_runs": tracebacks,
        "final_curve_equals_uninterrupted_bitwise": same,
        "final_curve_steps": len(curve), "max_abs_loss_difference": max(diffs) if diffs else None,
        "uninterrupted_seconds": round(reference_s, 1),
    }
    if not args.keep:
        shutil.rmtree(base, ignore_errors=True)
    else:
        result["workdir"] = base
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="tiny")
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--checkpoint-every", type=int, default=10)
    p.add_argument("--max-offset", type=int, default=15, help="kill up to this many steps past the resume point")
    p.add_argument("--jitter", type=float, default=0.3, help="extra random delay (s) after the trigger step")
    p.add_argument("--startup-fraction", type=float, default=0.25, help="share of kills timed from the start")
    p.add_argument("--startup-seconds", type=float, default=12.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--keep", action="store_true", help="keep the workdirs (printed in the JSON)")
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "kill_soak"))
    args = p.parse_args(argv)
    result = soak(args)
    table = markdown_table(result["rows"], COLUMNS)
    summary = (f"lost steps: {result['lost_steps_total']} in total, at most {result['lost_steps_max']} per kill; "
               f"checkpoints that did not read back: {result['unreadable_checkpoints']}; set aside by the trainer: "
               f"{result['set_aside_by_trainer']}; tracebacks: {result['tracebacks_in_resumed_runs']}; final loss "
               f"curve ({result['final_curve_steps']} steps) equals the uninterrupted run bitwise: "
               f"{result['final_curve_equals_uninterrupted_bitwise']} (max |difference| "
               f"{result['max_abs_loss_difference']})")
    print(table)
    print(summary)
    write_json(args.out + ".json", result)
    with open(args.out + ".md", "w") as f:
        f.write(f"{result['command']}\n\n{table}\n\n{summary}\n")
    ok = (result["unreadable_checkpoints"] == 0 and result["set_aside_by_trainer"] == 0
          and result["final_curve_equals_uninterrupted_bitwise"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
