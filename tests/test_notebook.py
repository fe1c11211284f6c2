"""notebooks/tutorial.ipynb runs top to bottom, offline, in a fresh kernel of this interpreter.

The notebook's own asserts are the checks (induction head found, recorded circuits equal model.QK/OV,
composition and rank claims); this test also checks what it displays: figures inline as PNG, circuitsvis
views with no network resources, and no error output.
"""

import json
import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
ipykernel_kernelspec = pytest.importorskip("ipykernel.kernelspec")

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "tutorial.ipynb"
KERNEL = "sslens-test-venv"


@pytest.fixture
def venv_kernel(tmp_path, monkeypatch):
    """A kernelspec whose argv is this interpreter (sys.executable), found first on JUPYTER_PATH."""
    spec_dir = tmp_path / "jupyter" / "kernels" / KERNEL
    ipykernel_kernelspec.write_kernel_spec(spec_dir)
    spec = json.loads((spec_dir / "kernel.json").read_text())
    assert spec["argv"][0] == sys.executable
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend, as in Jupyter
    return KERNEL


def test_stored_notebook_has_no_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


@pytest.mark.slow
def test_tutorial_notebook_runs(tmp_path, venv_kernel):
    from sslens.analyses.report import external_resources

    nb = nbformat.read(NOTEBOOK, as_version=4)
    work = tmp_path / "work"
    work.mkdir()
    t0 = time.perf_counter()
    client = nbclient.NotebookClient(nb, kernel_name=venv_kernel, timeout=300, resources={"metadata": {"path": str(work)}})
    client.execute()
    elapsed = time.perf_counter() - t0
    print(f"tutorial notebook: {elapsed:.1f} s")

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    # figures are shown inline (PNG), one per plotting cell
    plot_cells = [c for c in nb.cells if c.cell_type == "code" and ("plt.subplots" in c.source or ".plot(" in c.source)]
    for c in plot_cells:
        pngs = [o for o in c.outputs if "image/png" in o.get("data", {})]
        assert len(pngs) == 1, c.source[:80]
    # circuitsvis views are inline HTML that needs no network
    views = [o["data"]["text/html"] for o in outputs if "circuits-vis" in o.get("data", {}).get("text/html", "")]
    assert len(views) >= 3
    assert all(external_resources(v) == [] for v in views)
    # the kernel was this interpreter (the venv), and the recording went to the working directory
    assert (work / "runs" / "tutorial" / "recordings").is_dir()
    assert (work / "runs" / "tutorial" / "scalars.csv").is_file()
    assert elapsed < 300
