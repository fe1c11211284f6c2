"""In a real Jupyter kernel (nbclient): sslens's figures display mid-cell and once, analyses print no progress lines,
and importing sslens prints no warning (tqdm.auto's "IProgress not found" without ipywidgets).

Counted on the outputs the kernel sent for each cell, as Jupyter would show them.
"""

import subprocess
import sys

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

from test_notebook import venv_kernel  # noqa: E402,F401 - the kernelspec fixture of this interpreter

SETUP = """
import torch
import sslens
from sslens import compat
from sslens.hooks import CircuitRecorder
from sslens.analyses.series import analyze_recording
"""
RECORD = """
torch.manual_seed(0)
model = compat.build_from_config(dict(n_layers=2, n_heads=2, d_model=16, d_head=8, d_vocab=20, n_ctx=8, attn_only=True))
opt = torch.optim.SGD(model.parameters(), lr=0.1)
rec = CircuitRecorder(model, store="rec", schedule=list(range(0, 9, 2)))
rec.attach(opt)
for _ in range(8):
    loss = model(torch.randint(0, 20, (4, 8)), return_type="loss")
    opt.zero_grad(); loss.backward(); opt.step()
rec.detach()
res = analyze_recording("rec")
"""
CELLS = {
    "setup": SETUP,
    "record": RECORD,
    "mid": 'fig = res.plot("rank")\nx = 1',                        # not the last expression: shown
    "last": 'res.plot("attention")',                               # the last expression: shown once
    "two": 'res.plot("rank")\nres.plot("scores")\nNone',          # two calls mid-cell: two images
    "held": 'fig2 = res.plot("rank", show=False)',                 # asked not to show now
    "later": "fig2",                                               # shown when it is the last expression
    "again": "display(fig)",                                       # a figure from an earlier cell shows again
}


def _png(outputs) -> int:
    return sum("image/png" in o.get("data", {}) for o in outputs)


@pytest.mark.slow
def test_figures_show_mid_cell_once_and_analyses_are_quiet(tmp_path, venv_kernel):  # noqa: F811
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(src) for src in CELLS.values()])
    nbclient.NotebookClient(nb, kernel_name=venv_kernel, timeout=240, resources={"metadata": {"path": str(tmp_path)}}).execute()
    out = {name: cell.outputs for name, cell in zip(CELLS, nb.cells)}
    assert not [o for c in out.values() for o in c if o.output_type == "error"]
    # no warning on import, no progress lines from the recorder's analysis (only the recorder's one size line)
    assert [o for o in out["setup"] if o.output_type == "stream"] == []
    stderr = [o.text for o in out["record"] if o.output_type == "stream" and o.name == "stderr"]
    assert not any("analyze" in t or "%|" in t for t in stderr), stderr
    assert {name: _png(o) for name, o in out.items() if name not in ("setup", "record")} == {
        "mid": 1, "last": 1, "two": 2, "held": 0, "later": 1, "again": 1}


def test_import_sslens_warns_nothing():
    """``python -W error``: importing sslens and its analysis modules raises no warning."""
    code = "import sslens, sslens.progress, sslens.analyses.figures, sslens.analyses.series; print(sslens.progress.in_notebook())"
    r = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "False" and r.stderr == "", r.stderr[-2000:]
