"""The README's Python examples run as written: every ```python block, in order, in one fresh interpreter."""

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_readme_has_python_example():
    blocks = python_blocks(README.read_text())
    assert blocks, "README.md has no ```python block"
    assert "CircuitRecorder" in "".join(blocks) and "to_pandas" in "".join(blocks)


def test_readme_python_runs(tmp_path):
    script = "\n\n".join(python_blocks(README.read_text()))
    # what the example leaves behind, checked in the same process
    script += """

import math as _math
assert R.steps == sslens.log_schedule(50), R.steps
assert tuple(QK.shape) == (len(R.steps), 4, 64, 64)
_final = model.QK.AB[0].detach()
assert (QK[-1] - _final).abs().max().item() < 1e-5
assert set(df.columns) == {"step", "layer", "head", "metric", "value"} and {"loss", "entropy", "induction"} <= set(df.metric)
assert all(_math.isfinite(v) for v in df[df.metric == "QK.sv1"].value)
# the README's `sslens analyze runs/mine` (in-process: same argv)
from sslens.cli import main as _cli
assert _cli(["analyze", "runs/mine", "--quiet"]) == 0
import json as _json
_m = _json.load(open("runs/mine/metrics.json"))
assert {"events", "heads", "composition_edges", "checks"} <= set(_m), sorted(_m)  # what the README says it holds
"""
    (tmp_path / "readme_example.py").write_text(script)
    env = {**os.environ, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    r = subprocess.run([sys.executable, "readme_example.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "runs" / "mine" / "recordings").is_dir()
    assert (tmp_path / "runs" / "mine" / "metrics.json").is_file() and (tmp_path / "runs" / "mine" / "report.html").is_file()


def test_readme_is_a_newcomers_page():
    """<= 120 lines: what it is, installing into your own venv (both TransformerLens lines), your own model first,
    then the reproductions; the make targets stay; dated figures live in docs/benchmarks.md; every link resolves."""
    text = README.read_text()
    assert len(text.splitlines()) <= 120
    heads = re.findall(r"^## (.+)$", text, flags=re.M)
    assert heads[:3] == ["Install into your own venv", "Your own model", "Reproductions"], heads
    assert "pip install /path/to/sslens " in text and 'pip install /path/to/sslens "transformer-lens==4.3.0"' in text
    for target in ("make test", "make bench", "make demo"):
        assert target in text
    assert "json.dump(model.cfg.to_dict(), f, default=str)" in text and "sslens analyze-checkpoints" in text
    assert not re.search(r"\b20\d\d-\d\d-\d\d\b", text), "dated figures belong in docs/benchmarks.md"
    bench = (README.parent / "docs" / "benchmarks.md").read_text()
    assert len(re.findall(r"\b20\d\d-\d\d-\d\d\b", bench)) >= 10 and "## Speed (`make bench`)" in bench
    for page in [README, *sorted((README.parent / "docs").glob("*.md"))]:
        for link in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            assert link.startswith("http") or (page.parent / link).exists(), (page.name, link)
