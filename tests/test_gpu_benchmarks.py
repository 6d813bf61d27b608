"""Smoke tests of the GPU benchmark scripts on the CPU: they run, write their JSON and
markdown, and what they record is consistent (errors against the sequential scan small,
predicted times labelled as predictions)."""

import json
import os
import sys

import jax
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))

import gpu_suite  # noqa: E402
import roofline  # noqa: E402


def _load(out):
    with open(out + ".json") as f:
        payload = json.load(f)
    with open(out + ".md") as f:
        text = f.read()
    return payload, text


def test_gpu_suite_machinery_on_the_scan_path(tmp_path):
    """The cheap part of --quick (no kernel compile): rows, timings, JSON and markdown."""
    out = str(tmp_path / "suite")
    assert gpu_suite.main(["--quick", "--paths", "scan", "--cells", "paragru", "--passes",
                           "forward", "--no-train", "--out", out]) == 0
    payload, text = _load(out)
    rows = payload["rows"]
    assert [(r["pass"], r["path"]) for r in rows] == [("forward", "scan")]
    assert all(r["ms"] > 0 and r["max_err"] == 0 for r in rows)
    assert "| paragru | float32 | 16 | forward | scan |" in text


@pytest.mark.slow
def test_gpu_suite_quick_runs_every_path_and_the_train_step(tmp_path):
    out = str(tmp_path / "suite")
    # optax's AdamW mixes Python floats and int32 step counts, which the suite's strict
    # promotion (conftest.py) rejects; the script itself runs with JAX's default promotion
    with jax.numpy_dtype_promotion("standard"):
        assert gpu_suite.main(["--quick", "--out", out]) == 0
    payload, _ = _load(out)
    rows = payload["rows"]
    assert len(rows) == 2 * 2 * 3 and not any("note" in r for r in rows)
    for r in rows:
        # float32 solves of contractive cells agree with the scan to ~tol (1e-5)
        assert r["max_err"] <= 1e-4, r
        if r["path"] != "scan":
            assert 1 <= r["iterations"] <= 8
    assert [t["mode"] for t in payload["train"]] == ["parallel", "sequential"]
    assert all(t["tokens_per_sec"] > 0 for t in payload["train"])


@pytest.mark.slow
def test_roofline_quick_writes_a_labelled_model(tmp_path):
    out = str(tmp_path / "roof")
    assert roofline.main(["--quick", "--lengths", "16", "--out", out]) == 0
    payload, text = _load(out)
    assert payload["predicted"] is True and "PREDICTED, not measured" in text
    rows = payload["rows"]
    assert {r["path"] for r in rows} == set(roofline.PATHS)
    for r in rows:
        assert r["gbytes"] >= r["floor_gb"] * 0.99  # nothing beats the floor
        assert r["h200_ms"] <= r["a100_ms"]
    # the fused path moves the fewest bytes of the parallel paths
    for cell in ("paragru", "paralstm"):
        for pass_ in ("forward", "forward+backward"):
            by_path = {r["path"]: r["gbytes"] for r in rows if r["cell"] == cell and r["pass"] == pass_}
            assert by_path["fused"] < min(by_path["newton-tree"], by_path["newton-chunked"])
