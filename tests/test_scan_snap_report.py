"""sslens analyze on a Scan&Snap run, and the reproduction index: metrics.json + report.html offline."""

import json
import subprocess
from pathlib import Path

import pytest

from sslens.analyses.report import external_resources
from sslens.cli import main
from sslens.data import syn_small
from sslens.models import scan_snap_config
from sslens.tasks import SequenceClassTask
from sslens.train import TrainConfig, train


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("ss") / "run"
    s = syn_small(T=24)
    cfg = TrainConfig(model=scan_snap_config(s.M, n_ctx=24), task=SequenceClassTask(s).to_dict(), steps=15, batch=32,
                      lr={"blocks.0.attn.W_Q": 1.0, "unembed.W_U": 10.0}, momentum=0.9, seed=2)
    train(cfg, out=d, progress=False)
    return d


def test_analyze_writes_metrics_and_offline_report(run_dir, capsys):
    assert main(["analyze", str(run_dir)]) == 0
    m = json.loads((run_dir / "metrics.json").read_text())
    names = [r["check"] for r in m["checks"]]
    assert any(n.startswith("Thm 2") for n in names) and any(n.startswith("Thm 3") for n in names)
    assert any(n.startswith("ordering") for n in names) and any("snap" in n for n in names)
    assert m["regime"]["ratio"] == 10.0 and m["known_failures"]
    page = (run_dir / "report.html").read_text()
    assert external_resources(page) == []
    assert "CircuitsVis.render" in page and page.count("data:image/png;base64") >= 4
    assert "Known failure regime" in page and "unpkg.com" not in page


def test_external_resources_detects_cdn():
    assert external_resources('<script src="https://x.org/a.js"></script>') == ["https://x.org/a.js"]
    assert external_resources('<script type="module">import { render } from "https://unpkg.com/c/esm.js";</script>')


def test_reproduce_fig3_index(tmp_path):
    assert main(["reproduce", "scan-snap", "--fig", "3", "--out", str(tmp_path), "--quiet"]) == 0
    page = (tmp_path / "report.html").read_text()
    assert "Fig. 3" in page and external_resources(page) == []


CHROMIUM = "/usr/bin/chromium"


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="headless Chromium not installed")
def test_report_renders_in_headless_chromium(run_dir, tmp_path):
    main(["analyze", str(run_dir)])
    out = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", "--dump-dom",
         f"file://{run_dir / 'report.html'}"],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    dom = out.stdout
    # circuitsvis rendered: React filled the empty container with the attention view (head selector,
    # one canvas per step panel named "step N"); the PNG figures are in the DOM
    i = dom.index('id="circuits-vis-')
    view = dom[i:i + 200000]
    assert "Head Selector" in view and "<canvas" in view and ">step 0<" in view
    assert dom.count("data:image/png;base64") >= 4


def test_checkpoint_c_n_equals_recorded_c_n(run_dir):
    """c_n from a checkpoint (safetensors -> HookedTransformer -> QK circuit) = c_n from the recording."""
    import torch

    from sslens.analyses.c_n import c_n_at_checkpoint, trajectory
    from sslens.store import RunStore

    traj = trajectory(run_dir)
    last = RunStore(run_dir).checkpoint_steps()[-1]
    assert last in traj.steps
    assert torch.allclose(c_n_at_checkpoint(run_dir, last), traj.c[traj.steps.index(last)], atol=1e-6)


def test_checks_json_rows_equal_the_run_metrics(run_dir):
    from sslens.analyses.checks import by_id, read_checks
    from sslens.analyses.scan_snap_report import analyze
    from sslens.reproduce.scan_snap import ScanSnapResults, ScanSnapSettings, render, write_check_file

    res = ScanSnapResults(ScanSnapSettings(out=run_dir.parent, fig="3"))
    res.runs[run_dir] = m = analyze(run_dir)
    write_check_file(res)
    doc = read_checks(run_dir.parent)
    rows = by_id(doc)
    assert doc["provenance"]["seeds"] == [2] and doc["provenance"]["transformer_lens"]
    assert len(rows) == len(m["checks"]) == len({c["id"] for c in m["checks"]})
    for c in m["checks"]:
        r = rows[f"ss.run.{c['id']}"]
        assert r["measured"] == pytest.approx(c["measured"]) and r["run"] == "run" and r["step"] == m["steps"][-1]
        assert r["pass"] == ("reported" if c["pass"] is None else c["pass"])
    assert "ss.run.thm3.cv_all" in rows and "ss.run.thm4.snap_vs_t0" in rows
    page = render(res).render()
    assert "Theory checks (checks.json)" in page and "ss.run.thm2.distinct_rise" in page


def test_time_order_row_from_the_fig4_runs(run_dir):
    """scan.time_order recomputed here (numpy argmax of each distinct token's share, scipy Spearman with P); the
    top-level ss.scan.time_order is the mean over the Fig. 4 runs, judged >= 0.8."""
    import numpy as np
    from scipy.stats import spearmanr

    from sslens.analyses.c_n import trajectory
    from sslens.analyses.scan_snap_report import analyze
    from sslens.reproduce.scan_snap import ScanSnapResults, ScanSnapSettings, time_order_row

    m = analyze(run_dir)
    tr = trajectory(run_dir)
    c, P = tr.c.numpy(), tr.spec.P().numpy()
    rhos = [spearmanr(P[k, d], np.asarray(tr.steps)[c[:, k, d].argmax(0)]).statistic for k, d in enumerate(tr.spec.distinct)]
    own = next(r for r in m["checks"] if r["id"] == "scan.time_order")
    assert own["measured"] == pytest.approx(float(np.nanmean(rhos))) and own["pass"] is None
    res = ScanSnapResults(ScanSnapSettings(out=run_dir.parent, fig="3"))
    res.runs[run_dir.parent / "fig4-left"] = m
    res.runs[run_dir.parent / "fig4-right"] = {**m, "checks": [{**r, "measured": 0.9} if r["id"] == "scan.time_order" else r
                                                               for r in m["checks"]]}
    row = time_order_row(res)
    assert row["measured"] == pytest.approx((own["measured"] + 0.9) / 2) and row["run"] == ["fig4-left", "fig4-right"]
    assert row["pass"] == (row["measured"] >= 0.8)
