"""README's example and the demo run as documented, in a fresh interpreter with JAX's
default configuration (float32, standard promotion) — what a user gets."""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(code: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_readme_solver_example_prints_what_it_claims():
    readme = open(os.path.join(ROOT, "README.md")).read()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert blocks, "README has no python example"
    out = _run(blocks[0]).splitlines()
    assert out[0] == "(4096, 64) 3 True", out
    assert 1e-6 < float(out[1]) < 3e-5  # README: "~1e-5"
    assert float(out[2]) < 1e-6  # README: "~2e-7"


def test_demo_runs_and_reports_agreement():
    out = _run("import sys; from pararnn.demo import main; "
               "sys.exit(main(['--length', '300', '--hidden', '16', '--batch', '2', '--repeats', '1']))")
    assert "max |parallel − sequential|" in out and "Newton iterations" in out
    assert "converged: True" in out and "fell back: False" in out


def _readme_block(containing: str) -> str:
    readme = open(os.path.join(ROOT, "README.md")).read()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", readme, flags=re.S) if containing in b]
    assert len(blocks) == 1, f"README: expected one python example containing {containing!r}"
    return blocks[0]


@pytest.mark.slow  # 50 s (a fresh interpreter with 8 devices, T = 10 000); test_seq_parallel.py checks the same API
def test_readme_sequence_parallel_example_prints_what_it_claims():
    """Runs with 8 fake CPU devices (set by the example itself)."""
    out = _run(_readme_block("solve_sharded")).splitlines()
    assert out[0] == "(10000, 64) 2 True", out
    assert float(out[1]) < 1e-6  # README: "~1e-7: float32"


def test_readme_layer_example_runs_and_streams():
    code = _readme_block("pnn.ParaGRU(32, 64")
    code += ("\nprint(y.shape, float(jnp.abs(y - y_seq).max()), "
             "float(jnp.abs(jnp.concatenate([y1, y2], 1) - y).max()), y_t.shape)")
    out = _run(code).strip()
    assert out.startswith("(8, 1000, 64) ") and out.endswith("(8, 64)"), out
    errs = [float(v) for v in out[len("(8, 1000, 64) "):-len(" (8, 64)")].split()]
    assert max(errs) < 1e-4  # float32, default tol


DOC_PAGES = sorted(f for f in os.listdir(os.path.join(ROOT, "docs")) if f.endswith(".md"))


def _floats(line: str) -> list[float]:
    return [float(v) for v in re.findall(r"[-+]?\d*\.?\d+(?:[eE][-+]?\d+)?", line)]


def _rounds_to(printed: float, documented: str) -> bool:
    """``printed`` shown with ``documented``'s decimals equals ``documented`` (docs print 0.96
    for 0.9612...)."""
    decimals = len(documented.split(".")[1]) if "." in documented else 0
    return f"{printed:.{decimals}f}" == documented


def _about(printed: float, documented: float) -> bool:
    """``~x`` in a comment: the same order of magnitude (within a factor of 3)."""
    return documented / 3 <= abs(printed) <= 3 * documented


# What each docs page's examples print, line by line, as stated in its ``# ...`` comments.
DOC_EXPECTED = {
    "align.md": [
        lambda l: all(_rounds_to(v, d) for v, d in zip(_floats(l), ("0.96", "0.27"))) and len(_floats(l)) == 2,
        lambda l: _rounds_to(_floats(l)[0], "0.68"),
    ],
    "analysis.md": [
        lambda l: _about(float(l), 4e-7),
        lambda l: l == "True",
        lambda l: len(_floats(l)) == 1,  # the barrier: a number (the comment gives its formula)
        lambda l: l.split() == ["layer", "distance", "baseline", "scale"],  # res.table()'s header
    ],
    "hyper.md": [lambda l: l == "(4, 256, 32) True", lambda l: l == "(4, 2) 322 11"],
    "mixers.md": [  # per mixer: the decoding-vs-parallel gap (float32 rounding) and the shape
        check
        for mixer in ("recurrent", "attention", "mamba2")
        for check in (
            lambda l, m=mixer: l.split()[0] == m and float(l.split()[1]) <= 1e-5,
            lambda l: l == "(2, 12)",
        )
    ],
    "plstm.md": [
        lambda l: l == "[[0, 2], [1, 3]]",
        lambda l: l == "(100, 2, 3) (5, 7, 2, 3) (4, 2, 3)",
        lambda l: l.startswith("edges: the graph has a cycle 0 -> 1 -> 2 -> 0; "),
    ],
    "sparse.md": [lambda l: l == "(2, 100, 64) 0.09375", lambda l: l.startswith("0.79998")],
}


def test_every_docs_page_has_expected_prints():
    assert sorted(DOC_EXPECTED) == DOC_PAGES


@pytest.mark.slow
@pytest.mark.parametrize("page", DOC_PAGES)
def test_docs_page_examples_run(page):
    """Every python example on a docs/ page runs as written (fresh interpreter, JAX defaults)
    and prints what its comments say."""
    text = open(os.path.join(ROOT, "docs", page)).read()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, f"docs/{page} has no python example"
    lines = [line for code in blocks for line in _run(code).splitlines()]
    checks = DOC_EXPECTED[page]
    assert len(lines) >= len(checks), lines
    for i, check in enumerate(checks):
        assert check(lines[i].strip()), (page, i, lines[i])


def test_readme_links_every_docs_page():
    readme = open(os.path.join(ROOT, "README.md")).read()
    assert DOC_PAGES and all(f"docs/{p}" in readme for p in DOC_PAGES)
