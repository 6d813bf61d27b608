"""``--dry-run`` and the real run's memory preflight assume the same mesh and report the same
bytes per device (gru7b: 8-way FSDP), and both name the mesh."""

import json
import re

import pytest

from pararnn.train.cli import dry_run
from pararnn.train.config import load_config
from pararnn.train.errors import TrainingError
from pararnn.train.memory import GiB, memory_preflight, plan_mesh


@pytest.fixture(scope="module")
def gru7b():
    return load_config("gru7b")


def test_dry_run_and_preflight_agree_and_name_the_mesh(gru7b, capsys):
    summary = dry_run(gru7b, available=1)
    text = capsys.readouterr().out
    assert json.loads(text.strip().splitlines()[-1]) == summary
    assert summary["mesh"] == "data 1 × fsdp 8 = 8 devices" and (summary["data"], summary["fsdp"]) == (1, 8)
    assert "mesh assumed: data 1 × fsdp 8 = 8 devices (mesh.data=-1, mesh.fsdp=8; 1 device available here)" in text
    n, need = summary["params"], summary["bytes_per_device"]
    # independent of the estimator: float32 params + grads + two AdamW moments, split 8 ways
    assert summary["breakdown"]["params"] + summary["breakdown"]["grads"] + summary["breakdown"]["optimizer"] \
        == pytest.approx(16 * n / 8)
    gib = f"{need / GiB:.1f} GiB per device"

    # one device here (as on this CPU machine): the config's 8-device mesh is named, with the same figure
    with pytest.raises(TrainingError) as e:
        memory_preflight(gru7b, n, available=1, device_memory=(24 * GiB, "fake device"))
    msg = str(e.value)
    assert msg.startswith("not enough devices: config 'gru7b' (6.72 B parameters) is set up for a mesh of "
                          "data 1 × fsdp 8 = 8 devices (mesh.data=-1, mesh.fsdp=8), where it needs about " + gib)
    assert "the --dry-run estimate" in msg and "but 1 device is available" in msg
    alone = float(re.search(r"with mesh.fsdp=1 on the 1 device here it would need about ([\d.]+) GiB", msg).group(1))
    assert alone > 8 * (16 * n / 8) / GiB * 0.99  # the whole model on one device

    # eight devices that are too small: "not enough memory", same mesh, same figure
    with pytest.raises(TrainingError) as e:
        memory_preflight(gru7b, n, available=8, device_memory=(4 * GiB, "fake device"))
    msg = str(e.value)
    assert msg.startswith(f"not enough memory: config 'gru7b' (6.72 B parameters) needs about {gib}")
    assert "on a mesh of data 1 × fsdp 8 = 8 devices (mesh.data=-1, mesh.fsdp=8)" in msg
    assert "a device here has 4.0 GiB (fake device)" in msg

    # and eight large enough devices pass with the dry run's estimate
    assert memory_preflight(gru7b, n, available=8, device_memory=(80 * GiB, "fake"))["total"] == pytest.approx(need)


def test_the_mesh_plan_follows_the_config_and_the_devices():
    cfg = load_config("tiny")
    assert plan_mesh(cfg.mesh, 8).describe() == "data 8 × fsdp 1 = 8 devices"
    cfg = load_config("tiny", ["mesh.fsdp=2", "mesh.data=3"])
    assert plan_mesh(cfg.mesh, 8).describe() == "data 3 × fsdp 2 = 6 devices"
    assert plan_mesh(load_config("tiny", ["mesh.fsdp=4"]).mesh, 16).describe() == "data 4 × fsdp 4 = 16 devices"
