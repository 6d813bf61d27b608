"""Spawning (pararnn.train.spawn): two runs from one checkpoint with different data orders."""

import pytest
import jax

from pararnn.train.config import ConfigError, load_config
from pararnn.train.trainer import train
from pararnn.train.cli import main
from train_helpers import SMALL, losses, overrides


@pytest.fixture(autouse=True, scope="module")
def standard_promotion():
    # optax's AdamW mixes Python floats and int32 step counts (see tests/test_train.py)
    with jax.numpy_dtype_promotion("standard"):
        yield


def cfg(*extra, steps=8):
    return load_config("tiny", SMALL + [f"train.steps={steps}", "mesh.devices=1", "train.checkpoint_every=4"]
                       + list(extra))


@pytest.mark.slow
def test_spawned_runs_continue_the_parent_and_differ_only_by_data_order(tmp_path):
    parent = str(tmp_path / "parent")
    train(cfg(), parent)
    ref = losses(parent)
    # same order seed as the parent (data.seed = 0): the child continues the parent's curve
    # bitwise — the whole train state (parameters, AdamW moments, step) was taken over
    same = str(tmp_path / "same")
    summary = train(cfg(f"train.spawn_from={parent}", "train.spawn_step=4", "data.order_seed=0"), same)
    assert summary["start_step"] == 4 and summary["spawned"]
    assert losses(same) == {s: ref[s] for s in range(5, 9)}
    # another order seed: the same state at step 4, different batches afterwards
    a = str(tmp_path / "a")
    train(cfg(f"train.spawn_from={parent}/checkpoints", "train.spawn_step=4", "data.order_seed=1"), a)
    la = losses(a)
    assert sorted(la) == [5, 6, 7, 8] and all(la[s] != ref[s] for s in la)
    # resuming a spawned run uses its own checkpoints (step 8 is the last: nothing left)
    assert train(cfg(f"train.spawn_from={parent}", "data.order_seed=1"), a)["start_step"] == 8


def test_spawn_errors(tmp_path, capsys):
    with pytest.raises(ConfigError, match="has no checkpoints/ directory"):
        train(cfg(f"train.spawn_from={tmp_path / 'nowhere'}"), str(tmp_path / "child"))
    # the CLI flag: a user error, exit code 2 with the message
    code = main(["--config", "tiny", "--workdir", str(tmp_path / "cli"), "--spawn-from", str(tmp_path / "nowhere")]
                + overrides("mesh.devices=1", "train.steps=2"))
    assert code == 2 and "has no checkpoints/ directory" in capsys.readouterr().err
