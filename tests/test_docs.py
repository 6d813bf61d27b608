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


@pytest.mark.slow
@pytest.mark.parametrize("page", DOC_PAGES)
def test_docs_page_examples_run(page):
    """Every python example on a docs/ page runs as written (fresh interpreter, JAX defaults)."""
    text = open(os.path.join(ROOT, "docs", page)).read()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, f"docs/{page} has no python example"
    for code in blocks:
        _run(code)


def test_readme_links_every_docs_page():
    readme = open(os.path.join(ROOT, "README.md")).read()
    assert DOC_PAGES and all(f"docs/{p}" in readme for p in DOC_PAGES)
