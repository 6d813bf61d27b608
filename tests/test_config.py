"""Configs are typed and strict; the CLI reports user mistakes in one message, exit code 2,
without a traceback; the dry run sizes the 7B configs without allocating them."""

import json

import pytest

from pararnn.train.config import ConfigError, apply_overrides, available_configs, load_config
from train_helpers import overrides, run_cli


def test_all_configs_load():
    assert {"tiny", "parity", "mqar", "khop", "gru125m", "gru1b", "gru7b", "lstm7b", "transformer125m",
            "mamba2_125m", "transformer_tiny", "mamba2_tiny"} <= set(available_configs())
    for name in available_configs():
        assert load_config(name).name == name


@pytest.mark.parametrize("override,pattern", [
    ("optim.lrr=1", r"unknown config key 'optim.lrr' in --set 'optim.lrr=1'. Did you mean 'optim.lr'\?"),
    ("optm.lr=1", r"unknown config section 'optm' .* Did you mean 'optim'\?"),
    ("model.n_layers=two", r"model.n_layers: expected an integer, got 'two'"),
    ("model.cell=pargru", r"model.cell: expected one of .* got 'pargru'. Did you mean 'paragru'\?"),
    ("train.progress=maybe", r"train.progress: expected true/false, got 'maybe'"),
    ("optim.lr", r"--set expects key=value"),
])
def test_bad_overrides_name_the_key(override, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config("tiny", [override])


def test_yaml_file_with_an_unknown_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  d_modle: 32\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'model.d_modle'. Did you mean 'model.d_model'\?"):
        load_config(str(path))


def test_overrides_apply_and_parse_values():
    cfg = load_config("tiny", ["optim.lr=1e-3", "model.mlp_hidden=null", "data.paths=[a.txt, b.txt]"])
    assert cfg.optim.lr == 1e-3 and cfg.model.mlp_hidden is None and cfg.data.paths == ["a.txt", "b.txt"]
    assert apply_overrides(cfg, ["train.steps=7"]).train.steps == 7


@pytest.mark.parametrize("args,pattern", [
    (["--config", "tiny", "--set", "optim.lrr=1"], "Did you mean 'optim.lr'"),
    (["--config", "tyni"], "no config named 'tyni'. Did you mean 'tiny'"),
    (["--config", "tiny", "--set", "data.source=files", "--set", "data.paths=[/nonexistent/corpus.txt]"],
     "data.paths: file '/nonexistent/corpus.txt' does not exist"),
    (["--config", "gru7b", "--set", "mesh.fsdp=1", "--set", "data.source=synthetic"],
     r"not enough memory: config 'gru7b' \(6.72 B parameters\) needs about"),
    (["--config", "transformer_tiny", "--set", "model.head_dim=24", "--dry-run"],
     r"model.head_dim=24: must be even and divide model.d_model=64"),
    (["--config", "mamba2_tiny", "--set", "model.ssm_algorithm=fast"],
     r"model.ssm_algorithm: expected one of \['chunked', 'scan'\], got 'fast'"),
])
def test_cli_user_errors_exit_2_without_traceback(args, pattern, tmp_path):
    proc = run_cli(args + ["--workdir", str(tmp_path)], check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    import re
    assert re.search(pattern, proc.stderr), proc.stderr


def test_memory_error_says_what_would_fit(tmp_path):
    proc = run_cli(["--config", "gru7b", "--workdir", str(tmp_path)], check=False)
    assert proc.returncode == 2 and "mesh.fsdp=" in proc.stderr and "GiB" in proc.stderr, proc.stderr


@pytest.mark.parametrize("name", ["gru7b", "lstm7b"])
def test_dry_run_sizes_the_7b_configs(name):
    proc = run_cli(["--config", name, "--dry-run"])
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert 6.5e9 <= summary["params"] <= 7.5e9
    assert summary["bytes_per_device"] > 0 and summary["fsdp"] == 8
    assert "blocks" in proc.stdout and "per device" in proc.stdout
