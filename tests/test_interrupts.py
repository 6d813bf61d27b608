"""Ctrl-C (SIGINT) saves a checkpoint, says where and exits 130; SIGTERM exits 143 (the
bitwise resume after either is in test_train.py, slow)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from pararnn.train.interrupts import EXIT_CODES, Interrupts
from train_helpers import ROOT, overrides


def test_the_first_signal_is_recorded_and_a_second_ctrl_c_stops_at_once():
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with Interrupts() as interrupts:
        assert interrupts.received is None
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # the handler runs between bytecodes of the main thread
        assert interrupts.received == "SIGINT"
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
        assert interrupts.received == "SIGINT"  # the first one decides the exit code
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    assert EXIT_CODES == {"SIGINT": 130, "SIGTERM": 143}  # 128 + signal number, as shells report them


def _wait_for_step(workdir, step, proc, timeout=300):
    path = os.path.join(workdir, "metrics.jsonl")
    start = time.time()
    while time.time() - start < timeout:
        if os.path.exists(path):
            with open(path) as f:
                steps = [json.loads(line)["step"] for line in f if line.endswith("\n")]
            if steps and max(steps) >= step:
                return
        if proc.poll() is not None:
            raise AssertionError(f"training exited early: {proc.stderr.read()[-3000:]}")
        time.sleep(0.1)
    raise AssertionError(f"step {step} never logged")


def test_ctrl_c_saves_a_checkpoint_says_where_and_exits_130(tmp_path):
    workdir = str(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
    # no checkpoint would be written before step 1000: the one found must come from the interrupt
    args = [sys.executable, os.path.join(ROOT, "train.py"), "--config", "tiny", "--workdir", workdir]
    args += overrides("train.steps=1000", "train.checkpoint_every=1000", "mesh.devices=1")
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    _wait_for_step(workdir, 2, proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    summary = json.loads(out.strip().splitlines()[-1])
    step = summary["final_step"]
    assert summary["interrupted"] == "SIGINT" and step >= 2
    where = os.path.join(workdir, "checkpoints", str(step))
    assert f"interrupted (SIGINT) after step {step}: saved a checkpoint to {where}. Run the same command again" in err
    assert os.listdir(os.path.join(workdir, "checkpoints")) == [str(step)]

    from pararnn.train.restore import load_trained
    assert load_trained(workdir)[2] == step  # the checkpoint reads back
