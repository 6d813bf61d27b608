"""The trainer's documentation says what the code does: the data key for local files, the
Python version, tiny's timing and loss (README and the config agree), the exit codes, and a
spawn example that names a checkpoint the parent run actually writes."""

import os
import re
import tomllib

from pararnn.train.config import load_config
from pararnn.train.interrupts import EXIT_CODES
from train_helpers import ROOT

README = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()


def test_readme_names_the_local_files_key_and_its_example_parses():
    (example,) = re.findall(r'--set "(data\.paths=[^"]+)"', README)
    cfg = load_config("tiny", ["data.source=files", example])
    assert cfg.data.paths == ["a.txt", "b.txt"]


def test_python_version_is_stated_and_matches_the_package():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        requires = tomllib.load(f)["project"]["requires-python"]
    assert requires == ">=3.11" and "Python ≥ 3.11" in README.split("**pararnn**")[0]


def test_tiny_config_comment_agrees_with_readme():
    top = README.split("**pararnn**")[0]
    with open(os.path.join(ROOT, "pararnn", "configs", "tiny.yaml"), encoding="utf-8") as f:
        comment = "".join(line for line in f if line.startswith("#"))
    claim = " ".join(re.search(r"in (under a\s+minute on 2 CPU cores \(about \d+ s of CPU time\))", top)
                     .group(1).split())
    assert claim in " ".join(comment.replace("#", " ").split())
    assert "under 0.3" in top and "under 0.3" in comment


def test_readme_exit_codes_are_the_clis():
    assert f"{EXIT_CODES['SIGINT']} interrupted by Ctrl-C, {EXIT_CODES['SIGTERM']} preempted by SIGTERM" in README


def test_spawn_example_names_a_checkpoint_the_parent_writes():
    text = open(os.path.join(ROOT, "docs", "analysis.md"), encoding="utf-8").read()
    example = re.search(r"python train.py --config (\w+) .*?--set train\.spawn_step=(\d+)", text, flags=re.S)
    cfg, step = load_config(example.group(1)), int(example.group(2))
    assert step % cfg.train.checkpoint_every == 0 and 0 < step < cfg.train.steps
    newest_kept = cfg.train.steps - cfg.train.checkpoint_every * (cfg.train.keep_checkpoints - 1)
    assert step >= newest_kept  # still kept when the parent has finished
