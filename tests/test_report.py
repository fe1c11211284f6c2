"""Report pages: circuitsvis bundle inlined once, figures fit the 1100 px column, long legends outside,
and library modules leave the matplotlib backend alone."""

import struct
import subprocess
import sys

import torch
from matplotlib.figure import Figure

from sslens.analyses.report import MAX_WIDTH_PX, Report, attention_steps_view, external_resources, legend


def _png_width(data_uri_page: str) -> list[int]:
    import base64
    import re

    out = []
    for b64 in re.findall(r'src="data:image/png;base64,([^"]+)"', data_uri_page):
        png = base64.b64decode(b64)
        out.append(struct.unpack(">I", png[16:20])[0])  # IHDR width
    return out


def test_circuitsvis_bundle_once_per_page():
    rep = Report("views")
    views = [attention_steps_view(torch.rand(2, 5, 5), list("abcde"), [0, 10]) for _ in range(3)]
    for v in views:
        rep.circuitsvis(v, "caption")
    page = rep.render()
    bundle_size = len(views[0].local_src)
    assert page.count("var CircuitsVis") == 1 and page.count("CircuitsVis.render(") == 3
    assert len(page) < bundle_size + 20_000  # was 3 bundles
    assert external_resources(page) == []


def test_figures_fit_the_column_and_long_legends_go_outside():
    fig = Figure(figsize=(14, 3.2), layout="constrained")  # a 3-panel figure as wide as before (~1540 px at 110 dpi)
    axes = fig.subplots(1, 3)
    for i in range(10):
        axes[0].plot([0, 1], [i, i + 1], label=f"line {i}")
    leg = legend(axes[0], fontsize=7)
    fig.canvas.draw()
    assert leg.get_window_extent().x0 > axes[0].get_window_extent().x1  # outside, right of the axes
    small = Figure(figsize=(4, 3)).subplots()
    for i in range(3):
        small.plot([0, 1], [0, i], label=str(i))
    leg2 = legend(small)
    small.figure.canvas.draw()
    assert leg2.get_window_extent().x1 <= small.get_window_extent().x1 + 1  # few entries stay inside
    rep = Report("figs").figure(fig, "wide").figure(small.figure, "small")
    widths = _png_width(rep.render())
    assert len(widths) == 2 and max(widths) <= MAX_WIDTH_PX and widths[1] > 300


def test_library_modules_leave_the_backend_alone():
    code = ("import matplotlib; import sslens.analyses.scan_snap_report, sslens.analyses.rank, "
            "sslens.analyses.checkpoints, sslens.reproduce.scan_snap, sslens.reproduce.wikitext; "
            "print(matplotlib.get_backend())")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={"MPLBACKEND": "svg",
                       "PATH": "/usr/bin:/bin", "HOME": "/tmp"})
    assert r.returncode == 0 and r.stdout.strip() == "svg", r.stderr[-2000:]
