"""Resuming safely: a workdir holding a run trained with a different config is refused with
exit code 2 (naming the keys and the two ways out); allowed changes are reported; the
learning-rate schedule keeps the length the run started with; a finished run says there is
nothing to do; ``train.resume=false`` moves the old run aside; damaged checkpoints are set
aside (never deleted) and the run resumes from the newest one that reads back, continuing the
same loss curve bitwise; generation falls back the same way."""

import glob
import json
import os
import shutil

import numpy as np
import pytest
import jax

from pararnn.train.config import load_config
from pararnn.train.errors import TrainingError
from pararnn.train.trainer import train
from train_helpers import SMALL, overrides, run_cli

BASE = SMALL + ["train.checkpoint_every=4", "mesh.devices=1"]


@pytest.fixture(autouse=True, scope="module")
def standard_promotion():
    # optax's AdamW mixes Python floats and int32 step counts (see test_train.py)
    with jax.numpy_dtype_promotion("standard"):
        yield


def small_config(*extra, steps=12):
    return load_config("tiny", BASE + [f"train.steps={steps}"] + list(extra))


def records(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return {r["step"]: r for r in map(json.loads, f)}


def losses(workdir):
    return {s: r["loss"] for s, r in records(workdir).items()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 12-step run with checkpoints at 4, 8, 12: (workdir, its metric records)."""
    workdir = str(tmp_path_factory.mktemp("finished"))
    train(small_config(), workdir)
    return workdir, records(workdir)


@pytest.fixture
def copy_of(finished, tmp_path):
    target = str(tmp_path / "run")
    shutil.copytree(finished[0], target)
    return target


def cli(workdir, *extra, steps=12):
    return run_cli(["--config", "tiny", "--workdir", workdir, "--steps", str(steps)]
                   + overrides(*(BASE[len(SMALL):] + list(extra))), check=False)


def test_a_changed_model_is_refused_with_the_keys_and_the_ways_out(copy_of):
    before = sorted(os.listdir(os.path.join(copy_of, "checkpoints")))
    proc = cli(copy_of, "model.d_model=48", "optim.lr=1e-3")
    assert proc.returncode == 2, proc.stderr[-3000:]
    err = proc.stderr
    assert "Traceback" not in err
    assert f"workdir {copy_of!r} holds a run (checkpoint step 12) trained with a different model.d_model, optim.lr" in err
    assert "  model.d_model: 32 in the stored run, 48 now" in err and "  optim.lr: 0.003 in the stored run, 0.001 now" in err
    assert "--workdir DIR" in err and "--set train.resume=false" in err and "previous" in err
    assert f"--config {os.path.join(copy_of, 'config.yaml')}" in err
    assert sorted(os.listdir(os.path.join(copy_of, "checkpoints"))) == before  # nothing touched


def test_rerunning_a_finished_run_says_there_is_nothing_to_do(finished, copy_of):
    proc = cli(copy_of)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert f"nothing to do: {copy_of!r} already holds step 12 and train.steps=12" in proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["nothing_to_do"] is True and summary["final_step"] == 12
    assert summary["loss"] == finished[1][12]["loss"]  # the run's last logged loss, not null


@pytest.mark.slow  # three short runs; CI runs the slow stage too
def test_changed_steps_keep_the_schedule_and_allowed_changes_are_reported(finished, tmp_path, capfd):
    """Stop at 6 of 12, resume to 8, then to 16: steps 7–12 equal the uninterrupted 12-step
    run bitwise (the schedule still spans 12 steps), and past 12 the learning rate stays at
    its final value lr·min_lr_ratio."""
    ref = finished[1]
    workdir = str(tmp_path)
    train(small_config("train.stop_after=6"), workdir)
    capfd.readouterr()
    summary = train(small_config("train.log_every=2", steps=8), workdir)
    err = capfd.readouterr().err
    assert summary["start_step"] == 6
    assert "resuming with changed settings" in err and "train.log_every: 1 in the stored run, 2 now" in err
    assert "warning: train.steps is 8 now, 12 when this run started" in err
    assert "the learning-rate schedule keeps its 12 steps" in err
    got = records(workdir)
    assert [got[s]["loss"] for s in (7, 8)] == [ref[s]["loss"] for s in (7, 8)]  # bitwise
    assert got[8]["lr"] == ref[8]["lr"]

    train(small_config(steps=16), workdir)
    got = records(workdir)
    assert [got[s]["loss"] for s in range(9, 13)] == [ref[s]["loss"] for s in range(9, 13)]
    cfg = small_config()
    final_lr = cfg.optim.lr * cfg.optim.min_lr_ratio  # 3e-4; logged in float32 (rel. error < 6e-8)
    np.testing.assert_allclose([got[s]["lr"] for s in range(12, 17)], final_lr, rtol=1e-7)


@pytest.mark.slow  # CI runs the slow stage too
def test_resume_false_moves_the_old_run_aside_and_starts_afresh(finished, copy_of, capfd):
    summary = train(small_config("train.resume=false", "train.stop_after=2"), copy_of)
    assert summary["start_step"] == 0
    (previous,) = glob.glob(os.path.join(copy_of, "previous", "*"))
    assert f"moved the previous run's checkpoints and metrics to {previous}" in capfd.readouterr().err
    assert sorted(os.listdir(os.path.join(previous, "checkpoints"))) == ["12", "4", "8"]
    assert records(previous) == finished[1]
    assert losses(copy_of) == {s: finished[1][s]["loss"] for s in (1, 2)}  # same seed: the same first steps
    stored = load_config(os.path.join(copy_of, "config.yaml"))  # the stored config resumes, not restarts
    assert stored.train.resume is True and stored.train.stop_after == 2 and stored.model.d_model == 32


# ---- damaged checkpoints ---------------------------------------------------------------------

def _largest_data_file(step_dir):
    return max(glob.glob(os.path.join(step_dir, "state", "ocdbt.process_0", "d", "*")), key=os.path.getsize)


def _truncate(path, keep=0.5):
    with open(path, "r+b") as f:
        f.truncate(int(os.path.getsize(path) * keep))


DAMAGE = {
    "array data cut short": lambda d: _truncate(_largest_data_file(d)),
    "array data overwritten": lambda d: open(_largest_data_file(d), "r+b").write(b"\0" * 64),
    "state/_METADATA deleted": lambda d: os.remove(os.path.join(d, "state", "_METADATA")),
    "meta/metadata cut short": lambda d: _truncate(os.path.join(d, "meta", "metadata")),
    "array index cut short": lambda d: _truncate(glob.glob(os.path.join(d, "state", "d", "*"))[0]),
}


@pytest.mark.parametrize("damage", ["state/_METADATA deleted",
                                    pytest.param("array data overwritten", marks=pytest.mark.slow)])
def test_a_damaged_latest_checkpoint_is_set_aside_and_the_curve_continues(damage, finished, copy_of, capfd):
    DAMAGE[damage](os.path.join(copy_of, "checkpoints", "12"))
    summary = train(small_config(), copy_of)
    err = capfd.readouterr().err
    assert summary["start_step"] == 8
    moved = os.path.join(copy_of, "corrupt_checkpoints", "12")
    assert f"warning: checkpoint step 12 cannot be read back (" in err and f"moved it to {moved}" in err
    assert "Resuming from step 8" in err
    if damage == "state/_METADATA deleted":
        assert "state/_METADATA is missing" in err  # not a misleading "pytree structure" error
    assert os.path.isdir(os.path.join(moved, "state"))  # kept for inspection
    assert losses(copy_of) == {s: r["loss"] for s, r in finished[1].items()}  # bitwise


@pytest.mark.slow  # a subprocess run; CI runs the slow stage too
@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_cli_resumes_past_any_damaged_checkpoint_without_traceback(damage, finished, copy_of):
    DAMAGE[damage](os.path.join(copy_of, "checkpoints", "12"))
    proc = cli(copy_of)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "warning: checkpoint step 12 cannot be read back" in proc.stderr, \
        proc.stderr[-3000:]
    assert losses(copy_of) == {s: r["loss"] for s, r in finished[1].items()}


def test_when_no_checkpoint_reads_back_nothing_is_moved(copy_of):
    for step in (4, 8, 12):
        DAMAGE["meta/metadata cut short"](os.path.join(copy_of, "checkpoints", str(step)))
    with pytest.raises(TrainingError, match=r"no checkpoint in .* can be read back \(step 12: .*; step 8: .*; "
                                            r"step 4: .*\). They were left in place. Start afresh with "
                                            r"--set train.resume=false"):
        train(small_config(), copy_of)
    assert sorted(os.listdir(os.path.join(copy_of, "checkpoints"))) == ["12", "4", "8"]
    assert not os.path.exists(os.path.join(copy_of, "corrupt_checkpoints"))


def test_generate_falls_back_to_the_newest_readable_checkpoint(copy_of, capsys):
    from pararnn.train.generate_cli import main as generate_main

    DAMAGE["array data cut short"](os.path.join(copy_of, "checkpoints", "12"))
    assert generate_main(["--workdir", copy_of, "--max-new-tokens", "2", "--temperature", "0"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out.strip().splitlines()[-1])["step"] == 8
    assert "warning: checkpoint step 12" in out.err and "using step 8, the newest that reads back" in out.err
    assert os.path.isdir(os.path.join(copy_of, "checkpoints", "12"))  # a reader moves nothing
    assert generate_main(["--workdir", copy_of, "--step", "12"]) == 2
    assert "no checkpoint in" in capsys.readouterr().err
