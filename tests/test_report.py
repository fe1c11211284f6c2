"""Report pages: circuitsvis bundle inlined once, figures fit the 1100 px column, long legends outside,
and library modules leave the matplotlib backend alone."""

import json
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


# ------------------------------------------------------------------------- the series report at 1280 px
import re  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from sslens.analyses.report import TITLE_PT, VIEWPORT_PX, displayed_pt, evenly_spaced  # noqa: E402

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A 2-layer model with an MLP trained 12 steps, recorded at evenly spaced steps."""
    from sslens import compat
    from sslens.hooks import CircuitRecorder

    out = {}
    for name, schedule in (("even", list(range(0, 13, 3))),):
        torch.manual_seed(0)
        model = compat.build_from_config(dict(n_layers=2, n_heads=4, d_model=16, d_head=4, d_vocab=20, n_ctx=8, d_mlp=32,
                                              act_fn="relu"))
        opt = torch.optim.AdamW(model.parameters(), lr=3e-2)
        d = tmp_path_factory.mktemp(name)
        rec = CircuitRecorder(model, store=d, schedule=schedule)
        rec.attach(opt)
        for _ in range(12):
            x = torch.randint(0, 20, (4, 4))
            loss = model(torch.cat([x, x], 1), return_type="loss")
            opt.zero_grad()
            loss.backward()
            opt.step()
        rec.detach()
        out[name] = d
    return out


@pytest.fixture(scope="module")
def results(recorded):
    from sslens.analyses.series import analyze_recording

    return {k: analyze_recording(d, progress=False) for k, d in recorded.items()}


def test_step_axis_is_linear_for_evenly_spaced_steps(results):
    from sslens import log_schedule
    from sslens.analyses.series_report import plot

    assert evenly_spaced(list(range(0, 2001, 100))) and evenly_spaced([1, 3, 5, 7]) and evenly_spaced([0, 100, 200, 299])
    assert not evenly_spaced(log_schedule(2000)) and not evenly_spaced([0, 1, 2, 4, 8, 12])
    for what in ("rank", "scores", "rel_change", "composition"):
        axes = [ax for ax in plot(results["even"], what).axes if ax.get_visible()]
        assert axes and {ax.get_xscale() for ax in axes} == {"linear"}, what
    from sslens.analyses.report import step_axis

    for steps, scale in (([0, 1, 2, 4, 8, 12], "symlog"), ([1, 2, 4, 8, 12], "log"), ([0, 5, 10], "linear")):
        ax = Figure().subplots()
        step_axis(ax, steps)
        assert ax.get_xscale() == scale, steps


def test_figure_titles_are_at_least_10_pt_on_screen(results):
    """Every panel title and figure title, at the size the report embeds the figure (``displayed_pt``)."""
    from sslens.analyses.series_report import FIGURE_DPI, WHAT, plot

    for what in WHAT:
        fig = plot(results["even"], what)
        titles = [fig._suptitle] + [ax.title for ax in fig.axes if ax.get_visible() and ax.get_title()]
        pts = [displayed_pt(t.get_fontsize(), fig, FIGURE_DPI) for t in titles if t is not None]
        assert pts and min(pts) >= 10 - 1e-9, (what, min(pts))
    assert TITLE_PT >= 10


def test_relative_change_labels_the_top_k_and_greys_the_rest(results):
    from matplotlib.colors import to_rgb

    from sslens.analyses.series_report import REL_CHANGE_TOP, plot

    res = results["even"]
    assert len(res.rel_change) > REL_CHANGE_TOP
    ax = plot(res, "rel_change").axes[0]
    want = sorted(res.rel_change, key=lambda k: float(res.rel_change[k][-1]), reverse=True)[:REL_CHANGE_TOP]
    labelled = [ln for ln in ax.get_lines() if not ln.get_label().startswith("_")]
    assert [ln.get_label() for ln in labelled] == want
    assert [t.get_text() for t in ax.get_legend().get_texts()] == want
    grey = [ln for ln in ax.get_lines() if ln.get_label().startswith("_")]
    assert len(grey) == len(res.rel_change) - REL_CHANGE_TOP
    assert all(to_rgb(ln.get_color()) == (0.75, 0.75, 0.75) for ln in grey)
    assert all(len(set(to_rgb(ln.get_color()))) > 1 for ln in labelled)  # coloured, not grey
    for ln in labelled:  # each labelled line is its parameter's series
        assert torch.allclose(torch.as_tensor(ln.get_ydata()), res.rel_change[ln.get_label()].to(torch.float64), atol=0)


def _wide_report(results, out: Path) -> Path:
    from sslens.analyses.series_report import write_report

    _, page = write_report([results["even"]], out, workers=1)
    return page


def test_series_report_fits_1280_px_static(results, tmp_path):
    """Every table scrolls inside its own box (the page never does), column names can wrap, every image fits."""
    page = _wide_report(results, tmp_path / "rep").read_text()
    css = re.search(r"<style>(.*?)</style>", page, re.S).group(1)
    assert re.search(r"\.tbl\{[^}]*max-width:100%[^}]*overflow-x:auto", css) and "img{max-width:100%" in css
    assert "overflow-wrap:anywhere" in css and ".cv{max-width:100%;overflow-x:auto}" in css
    tables = page.count("<table")
    assert tables >= 1 and page.count('<div class="tbl"><table') == tables
    assert "QK.<wbr>effective_<wbr>rank" in page and "<td>L1H3</td>" in page  # wrappable names; the head in column 1
    assert max(_png_width(page)) <= 1080 < VIEWPORT_PX


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="headless Chromium not installed")
def test_series_report_has_no_horizontal_overflow_at_1280_px_in_chromium(results, tmp_path):
    """Rendered at a 1280 px wide window: the page's scroll width is the window's; a 40-column table scrolls in its box."""
    page = _wide_report(results, tmp_path / "rep").read_text()
    wide = Report("wide").table([{f"a_rather_long_metric_name_{j}": 1.23456789 * j for j in range(40)}]).render()
    probe = ("<script>addEventListener('load', () => setTimeout(() => document.body.setAttribute('data-overflow', "
             "JSON.stringify([document.documentElement.scrollWidth, document.documentElement.clientWidth, "
             "Math.max(...[...document.querySelectorAll('.tbl')].map(t => t.getBoundingClientRect().right))])), 500));"
             "</script></body>")
    for name, html in (("series", page), ("wide", wide)):
        f = tmp_path / f"{name}.html"
        f.write_text(html.replace("</body>", probe))
        out = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                              "--disable-background-networking", "--no-first-run", f"--user-data-dir={tmp_path / 'p'}",
                              "--window-size=1280,900", "--virtual-time-budget=8000", "--dump-dom", f"file://{f}"],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        scroll, client, table_right = json.loads(html_unescape(re.search(r'data-overflow="([^"]+)"', out.stdout).group(1)))
        assert client <= 1280 and scroll <= client and table_right <= client, (name, scroll, client, table_right)


def html_unescape(s: str) -> str:
    import html

    return html.unescape(s)
