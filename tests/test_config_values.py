"""Value rules at config time: every numeric training-config field with a meaningful range has
one, divisibility constraints are checked, and each message names the key, the value and the
rule. The generic builder and rules live in ``pararnn.config`` (below every package); the
experiment configs no longer import the trainer. The training configs ship in the package."""

import dataclasses
import os
import re
import subprocess
import sys
import typing

import pytest

from pararnn.config import ConfigError, at_least, between, build_config, check_values, divides
from pararnn.train.config import Config, apply_overrides, available_configs, load_config
from pararnn.train.rules import VALUE_RULES
from train_helpers import ROOT, run_cli

# Numeric fields without a range: any integer seed is fine.
NO_RANGE = {"train.seed"}


def _numeric_keys(cls, prefix=""):
    keys = []
    for f in dataclasses.fields(cls):
        tp = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(tp):
            keys += _numeric_keys(tp, f"{prefix}{f.name}.")
        elif {int, float} & set(typing.get_args(tp) or (tp,)):
            keys.append(prefix + f.name)
    return keys


def test_every_numeric_field_has_a_value_rule():
    missing = [k for k in _numeric_keys(Config) if k not in VALUE_RULES and k not in NO_RANGE]
    assert not missing, (f"numeric config fields without a value rule: {missing}; add a row to "
                         f"pararnn/train/rules.py VALUE_RULES (or to NO_RANGE here if any value is valid)")
    assert set(VALUE_RULES) <= set(_numeric_keys(Config)), "a rule for a key that is not a numeric field"


@pytest.mark.parametrize("override,message", [
    ("data.batch_size=0", "data.batch_size=0: must be >= 1."),
    ("model.d_model=-4", "model.d_model=-4: must be >= 1."),
    ("data.seq_len=0", "data.seq_len=0: must be >= 1."),
    ("model.num_heads=3", "model.num_heads=3: must divide model.d_model=64 (the cell's input projection is "
                          "block-diagonal over heads)."),
    ("train.steps=-5", "train.steps=-5: must be >= 1 (the number of optimizer steps; --steps N sets it)."),
    ("optim.b2=1", "optim.b2=1: must be in [0, 1)."),
    ("optim.lr=0", "optim.lr=0: must be > 0."),
    ("optim.grad_accum=3", "optim.grad_accum=3: must divide data.batch_size=16 (micro-batches split the batch "
                           "evenly)."),
    ("data.eval_fraction=1.5", "data.eval_fraction=1.5: must be in [0, 1)."),
    ("mesh.data=0", "mesh.data=0: must be >= 1 or -1 (-1: all devices not used by mesh.fsdp)."),
    ("optim.clip_norm=-1", "optim.clip_norm=-1: must be > 0."),
])
def test_out_of_range_values_name_key_value_and_rule(override, message):
    with pytest.raises(ConfigError) as e:
        load_config("tiny", [override])
    assert str(e.value) == message


def test_rules_that_depend_on_other_keys():
    # heads only constrain the cells with a head-blocked input projection
    assert load_config("tiny", ["model.cell=gru", "model.num_heads=3"]).model.num_heads == 3
    with pytest.raises(ConfigError, match=r"^model.num_heads=3: must divide model.d_model=64"):
        load_config("tiny", ["model.cell=mingru", "model.num_heads=3"])
    # MQAR: 1 <= pairs <= min(64 keys, task_length // 2 - 1) = 31 for length 64
    assert load_config("mqar", ["data.mqar_pairs=31"]).data.mqar_pairs == 31
    with pytest.raises(ConfigError, match=re.escape("data.mqar_pairs=32: must be <= min(64, data.task_length // "
                                                    "2 - 1) = 31")):
        load_config("mqar", ["data.mqar_pairs=32"])
    # several problems are reported together, one line each
    with pytest.raises(ConfigError) as e:
        load_config("tiny", ["data.seq_len=0", "optim.warmup_steps=-1"])
    assert str(e.value).splitlines() == ["invalid config values:", "  data.seq_len=0: must be >= 1.",
                                         "  optim.warmup_steps=-1: must be >= 0."]
    # null (unset) optional values pass
    assert load_config("tiny", ["model.mlp_hidden=null", "optim.clip_norm=null"]).optim.clip_norm is None
    # the check also runs on overrides applied later (this is how --steps is applied)
    with pytest.raises(ConfigError, match=r"^train.steps=0: must be >= 1"):
        apply_overrides(load_config("tiny"), ["train.steps=0"])


def test_the_generic_rules_on_a_dataclass_of_their_own():
    @dataclasses.dataclass
    class Inner:
        width: int = 8
        heads: int = 2

    @dataclasses.dataclass
    class Outer:
        inner: Inner = dataclasses.field(default_factory=Inner)
        rate: float | None = 0.5

    rules = {"inner.width": [at_least(1)], "inner.heads": [at_least(1), divides("inner.width")],
             "rate": [between(0, 1, lo_open=True)]}
    check_values(build_config(Outer, {"inner": {"width": 12, "heads": 3}, "rate": None}), rules)
    with pytest.raises(ConfigError, match=r"^inner.heads=5: must divide inner.width=12\.$"):
        check_values(build_config(Outer, {"inner": {"width": 12, "heads": 5}}), rules)
    with pytest.raises(ConfigError, match=r"^rate=0: must be in \(0, 1\]\.$"):
        check_values(build_config(Outer, {"rate": 0}), rules)
    with pytest.raises(ConfigError, match=r"unknown config key 'inner.widht'. Did you mean 'inner.width'\?"):
        build_config(Outer, {"inner": {"widht": 3}})


def test_configs_ship_inside_the_package():
    import importlib.resources
    packaged = {p.name[:-5] for p in (importlib.resources.files("pararnn") / "configs").iterdir()
                if p.name.endswith(".yaml")}
    assert {"tiny", "parity", "mqar", "gru125m", "gru1b", "gru7b", "lstm7b"} <= packaged == set(available_configs())
    assert not [f for f in os.listdir(os.path.join(ROOT, "configs")) if f.endswith(".yaml")], \
        "training configs belong in pararnn/configs/"


def test_experiment_configs_do_not_import_the_trainer():
    code = ("import sys, pararnn.plstm.config, pararnn.align.config, pararnn.train.config as t, pararnn.config as c; "
            "assert t.build_config is c.build_config and t.ConfigError is c.ConfigError; "
            "print(sorted(m for m in sys.modules if m.startswith('pararnn.train')))")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
    # import plstm/align first in a fresh interpreter: which trainer modules did they pull in?
    probe = ("import sys, pararnn.plstm.config, pararnn.align.config; "
             "print(sorted(m for m in sys.modules if m.startswith('pararnn.train')))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=ROOT,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]", out.stdout
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]


CLI_CASES = [
    (["--set", "data.batch_size=0"], "error: data.batch_size=0: must be >= 1."),
    (["--set", "model.num_heads=3"], "error: model.num_heads=3: must divide model.d_model=64"),
    (["--steps", "-5"], "error: train.steps=-5: must be >= 1 (the number of optimizer steps; --steps N sets it)."),
    (["--set", "train.steps=-5"], "error: train.steps=-5: must be >= 1 (the number of optimizer steps; --steps N"),
    (["--workdir", "IS_A_FILE"], "is an existing file, not a directory"),
]


def _cli_args(args, tmp_path):
    file = tmp_path / "a_file"
    file.write_text("not a directory")
    args = [str(file) if a == "IS_A_FILE" else a for a in args]
    if "--workdir" not in args:
        args += ["--workdir", str(tmp_path / "run")]
    return ["--config", "tiny"] + args


@pytest.mark.parametrize("args,expected", CLI_CASES)
def test_cli_rejects_bad_values_with_exit_2(args, expected, tmp_path, capsys):
    from pararnn.train.cli import main
    assert main(_cli_args(args, tmp_path)) == 2
    assert expected in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # rejected before anything was written


@pytest.mark.parametrize("case", [2, 4])  # --steps -5; --workdir naming a file
def test_cli_subprocess_rejects_bad_values_without_traceback(case, tmp_path):
    args, expected = CLI_CASES[case]
    proc = run_cli(_cli_args(args, tmp_path), check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and expected in proc.stderr, proc.stderr
