"""The wheel is complete: built from the package sources alone, installed into a fresh virtual
environment outside the checkout, ``pararnn-train --config tiny`` trains (the configs ship
inside the package)."""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import pytest

from train_helpers import ROOT


def _run(args, **kw):
    proc = subprocess.run(args, capture_output=True, text=True, timeout=900, **kw)
    assert proc.returncode == 0, (args, proc.stdout[-2000:], proc.stderr[-3000:])
    return proc


@pytest.mark.slow  # builds a wheel and a virtual environment, trains 5 steps (~1 min); CI runs it
def test_wheel_installs_outside_the_checkout_and_trains_tiny(tmp_path):
    # 1. build from a copy holding only what the wheel is made of
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(os.path.join(ROOT, name), src / name)
    shutil.copytree(os.path.join(ROOT, "pararnn"), src / "pararnn",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    dist = tmp_path / "dist"
    # --no-build-isolation: build offline with this environment's setuptools (the test extra)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w", str(dist),
          str(src)])
    (wheel,) = dist.glob("pararnn-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for config in ("tiny", "parity", "mqar", "gru125m", "gru1b", "gru7b", "lstm7b"):
        assert f"pararnn/configs/{config}.yaml" in names

    # 2. a fresh venv outside the checkout; its dependencies come from this environment through a
    #    .pth file (no download), which adds the directories only: this environment's editable
    #    pararnn (a .pth/finder inside them) is not activated there
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    site = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    with open(os.path.join(site, "outer_dependencies.pth"), "w") as f:
        f.write("\n".join(sorted(deps)) + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "--quiet",
          str(wheel)])

    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_", "PYTHON"))}
    work = tmp_path / "elsewhere"
    work.mkdir()
    where = _run([str(python), "-c", "import pararnn; print(pararnn.__file__)"], cwd=work, env=env).stdout.strip()
    assert where.startswith(site) and not where.startswith(ROOT), where

    # 3. the installed command trains the packaged tiny config
    proc = subprocess.run([str(venv / "bin" / "pararnn-train"), "--config", "tiny", "--steps", "5",
                           "--workdir", str(work / "run"), "--set", "train.progress=false"],
                          capture_output=True, text=True, cwd=work, env=env, timeout=900)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["final_step"] == 5 and summary["loss"] > 0
    with open(work / "run" / "metrics.jsonl") as f:
        assert [json.loads(line)["step"] for line in f][-1] == 5
