"""Smoke tests of the baseline-comparison scripts (issue 18): they run end to end on a few
steps, write their JSON and markdown, and what they record is consistent with the models
they trained (matched parameter counts, finite losses, accuracies in range)."""

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))

import compare_mixers  # noqa: E402
import synthetic_curriculum  # noqa: E402


@pytest.mark.slow
def test_compare_mixers_runs_and_matches_parameters(tmp_path):
    out = str(tmp_path / "cmp")
    corpus = tmp_path / "corpus.txt"  # a local text corpus (data.source=files), not the built-in one
    corpus.write_text("the quick brown fox jumps over the lazy dog. " * 400)
    assert compare_mixers.main(["--models", "paragru", "attention", "--steps", "3", "--text", str(corpus),
                                "--no-builtin", "--workdir", str(tmp_path / "runs"), "--out", out]) == 0
    with open(out + ".json") as f:
        rows = json.load(f)["rows"]
    assert {r["model"] for r in rows} == {"paragru", "attention"}
    for r in rows:
        assert len(r["loss"]) == 3 and all(0 < v < 10 for v in r["loss"]), r["loss"]
        # the script matches attention's width to paragru's parameter count (within 10%)
        assert r["corpus"] == "corpus.txt" and 0.9 <= r["param_ratio"] <= 1.1, r
    assert os.path.exists(out + ".md")


@pytest.mark.slow
def test_synthetic_curriculum_runs_and_scores(tmp_path):
    out = str(tmp_path / "khop")
    assert synthetic_curriculum.main(["--task", "khop", "--models", "mingru", "--curriculum", "8:3", "16:3",
                                      "--eval-lengths", "16", "--eval-batches", "1", "--seeds", "0",
                                      "--set", "model.d_model=16", "--out", out]) == 0
    with open(out + ".json") as f:
        payload = json.load(f)
    (row,) = payload["rows"]
    assert [s["length"] for s in row["stages"]] == [8, 16]
    assert 0.0 <= row["eval"]["16"]["accuracy"] <= 1.0
