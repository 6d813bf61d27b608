"""Sequence-parallel training (``mesh.seq``): a run whose sequences are split over 4 devices
along time matches the 1-device run; the config rules and the dry run know the seq axis."""

import jax
import pytest

from pararnn.train.cli import dry_run
from pararnn.train.config import ConfigError, load_config
from pararnn.train.trainer import train
from train_helpers import SMALL, losses


@pytest.fixture(autouse=True, scope="module")
def standard_promotion():
    # optax's AdamW mixes Python floats and int32 step counts (see test_train.py)
    with jax.numpy_dtype_promotion("standard"):
        yield


def small_config(*extra):
    # mode=parallel: every ParaGRU layer runs its Newton solve across the seq devices (the
    # default "auto" picks the sequential solve on CPU, a pipeline across them)
    return load_config("tiny", SMALL + ["train.steps=4", "mesh.devices=1", "model.mode=parallel"]
                       + list(extra))


def test_seq_parallel_training_matches_one_device(tmp_path):
    one, split = str(tmp_path / "one"), str(tmp_path / "split")
    train(small_config(), one)
    # 4 devices, each holding 8 of every sequence's 32 positions (the conv kernel is 4: its
    # 3-step halo crosses every shard boundary)
    train(small_config("mesh.devices=4", "mesh.seq=4"), split)
    a, b = losses(one), losses(split)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    # float32: measured ≤ 2e-7 relative (summation order across devices); a conv without its
    # halo exchange is off by 1.3e-4 at step 1 (tried), 60× the tolerance
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=2e-6), (step, a, b)


def test_mesh_seq_rules_name_the_key():
    with pytest.raises(ConfigError, match=r"mesh\.seq.*3.*data\.seq_len"):
        small_config("mesh.seq=3")
    with pytest.raises(ConfigError, match=r"mesh\.seq.*model\.mixer='attention'"):
        small_config("mesh.seq=2", "model.mixer=attention", "model.head_dim=8")
    with pytest.raises(ConfigError, match=r"mesh\.seq.*conv_kernel"):
        small_config("mesh.seq=16")  # 2-step shards, a 3-step conv halo


def test_long_context_dry_run_shows_the_seq_mesh(capsys):
    cfg = load_config("gru125m_long")
    summary = dry_run(cfg, available=8)
    out = capsys.readouterr().out
    assert "mesh assumed: data 1 × fsdp 1 × seq 8 = 8 devices (mesh.data=-1, mesh.fsdp=1, mesh.seq=8" in out
    assert (summary["seq"], summary["devices"], cfg.data.seq_len) == (8, 8, 65536)
    # the activations of a device's 8192-position shards are 1/8 of holding whole sequences
    whole = dry_run(load_config("gru125m_long", ["mesh.seq=1", "mesh.data=1"]), available=1)
    assert summary["breakdown"]["activations"] == pytest.approx(whole["breakdown"]["activations"] / 8, rel=1e-6)
    assert summary["breakdown"]["params"] == whole["breakdown"]["params"]
