"""Self-contained HTML reports: embedded PNG figures, tables, and circuitsvis views that open offline.

circuitsvis views are written from ``RenderedHTML.local_src`` (its JavaScript bundle inlined); never
from ``_repr_html_``/``str()``, which probe the network and fall back to a CDN. The ~1.3 MB bundle is
inlined once per page (a classic script defining ``CircuitsVis``); each view adds only its render call.
Figures are scaled to fit the 1100 px column (``img{max-width:100%}`` too); :func:`legend` moves a
legend outside the axes past 8 entries.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any, Callable, Sequence

from jaxtyping import Float
from torch import Tensor

from sslens.store import atomic_write_text

MAX_WIDTH_PX = 1080  # the report column is 1100 px wide (CSS max-width) at a 1280 px viewport
VIEWPORT_PX = 1280  # the page fits this width: wider tables scroll inside their own box (.tbl), long words wrap
TITLE_PT, LABEL_PT, LEGEND_PT = 12, 10, 9  # figure font sizes (points at the figure's dpi)
EVEN_SPACING = 2.0  # steps whose largest gap is at most this many times the smallest are plotted on a linear axis
LEGEND_INSIDE_MAX = 8  # more legend entries than this go outside the axes
_CV_CALL = "CircuitsVis.render("

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:24px auto;
padding:0 16px;color:#222;overflow-wrap:anywhere}
h1{font-size:1.6em}h2{font-size:1.25em;margin-top:1.8em;border-bottom:1px solid #ddd}
.tbl{max-width:100%;overflow-x:auto;margin:8px 0}
table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
td{overflow-wrap:normal}th{background:#f4f4f4;vertical-align:bottom}caption{text-align:left}
.tbl td:first-child,.tbl th:first-child{position:sticky;left:0;background:#fff}.tbl th:first-child{background:#f4f4f4}
.pass{color:#0a7a2f;font-weight:600}.fail{color:#b00020;font-weight:600}
figure{margin:12px 0}img{max-width:100%;height:auto}figcaption{font-size:.85em;color:#555}
.note{background:#fff7e0;border-left:4px solid #e0a800;padding:6px 10px}.cv{max-width:100%;overflow-x:auto}
"""


class Report:
    """Build an HTML page section by section; ``save(path)`` writes it atomically."""

    def __init__(self, title: str):
        self.title = title
        self.parts: list[str] = []
        self._cv_bundle = False  # circuitsvis JavaScript already on the page
        self._later: list[tuple] = []  # figure_later: (part, make, caption, dpi, cost)
        self._started: list[tuple[list, PngRenderer]] = []  # start_figures: pending figures being rendered


    def h2(self, text: str) -> Report:
        """A section heading."""
        self.parts.append(f"<h2>{html.escape(text)}</h2>")
        return self

    def p(self, text: str, cls: str | None = None) -> Report:
        """A paragraph of (escaped) text."""
        c = f' class="{cls}"' if cls else ""
        self.parts.append(f"<p{c}>{html.escape(text)}</p>")
        return self

    def links(self, items: Sequence[tuple[str, str]], label: str = "") -> Report:
        """A line of relative links, e.g. to per-run reports."""
        a = ", ".join(f'<a href="{html.escape(href)}">{html.escape(text)}</a>' for text, href in items)
        self.parts.append(f"<p>{html.escape(label)}{a}</p>")
        return self

    def note(self, text: str) -> Report:
        """A highlighted note (e.g. a known failure regime)."""
        return self.p(text, cls="note")

    def figure(self, fig, caption: str | None = None, dpi: int = 110) -> Report:
        """Embed a matplotlib Figure as a base64 PNG at most ``MAX_WIDTH_PX`` wide (and release it)."""
        return self._img(base64.b64encode(png_bytes(fig, dpi)).decode(), caption, "figure")

    def figure_later(self, make: Callable[[], Any], caption: str | None = None, dpi: int = 110,
                     cost: float = 1.0) -> Report:
        """A figure made by ``make()`` and embedded as :meth:`figure` does, when the page is rendered.

        The pending figures are rendered together (:meth:`render_figures`), on two cores where the platform forks,
        the costliest first (``cost``: e.g. the number of panels).
        """
        self._later.append((len(self.parts), make, caption, dpi, cost))
        self.parts.append("")
        return self

    def start_figures(self, workers: int = 2) -> Report:
        """Start rendering the pending :meth:`figure_later` figures now (:class:`PngRenderer`).

        :meth:`render_figures` (or :meth:`render`) finishes them; :meth:`stop_figures` abandons them.
        """
        later, self._later = self._later, []
        self._started.append((later, PngRenderer([(m, d) for _, m, _, d, _ in later], workers,
                                                 order=sorted(range(len(later)), key=lambda j: -later[j][4]))))
        return self

    def stop_figures(self) -> None:
        """Stop the helpers of :meth:`start_figures` (e.g. on an error before the page is rendered)."""
        for _, renderer in self._started:
            renderer.close()
        self._started = []

    def render_figures(self, workers: int = 2) -> Report:
        """Render the :meth:`figure_later` figures into their places (on ``workers`` processes)."""
        if self._later:
            self.start_figures(workers)
        started, self._started = self._started, []
        for later, renderer in started:
            for (i, _, caption, _, _), png in zip(later, renderer.result()):
                self.parts[i] = self._img_html(base64.b64encode(png).decode(), caption, "figure")
        return self

    def image(self, png: bytes, caption: str | None = None) -> Report:
        """Embed PNG bytes (e.g. a figure another step wrote to disk) as a base64 image."""
        data = base64.b64encode(png).decode()
        return self._img(data, caption, "image")

    def _img(self, b64: str, caption: str | None, alt: str) -> Report:
        self.parts.append(self._img_html(b64, caption, alt))
        return self

    @staticmethod
    def _img_html(b64: str, caption: str | None, alt: str) -> str:
        cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
        src = f"data:image/png;base64,{b64}"
        return f'<figure><img alt="{html.escape(caption or alt)}" src="{src}">{cap}</figure>'

    def table(self, rows: Sequence[dict[str, Any]], caption: str | None = None) -> Report:
        """A table from dicts; a boolean column named ``pass`` is coloured.

        Column names may break after ``.`` and ``_``; a table still wider than the column scrolls inside its own box
        with its first column kept in view.
        """
        if not rows:
            return self
        cols = list(dict.fromkeys(k for r in rows for k in r))
        head = "".join(f"<th>{_breakable(str(c))}</th>" for c in cols)
        body = []
        for r in rows:
            cells = []
            for c in cols:
                v = r.get(c, "")
                if isinstance(v, bool):
                    cells.append(f'<td class="{"pass" if v else "fail"}">{"pass" if v else "FAIL"}</td>')
                elif isinstance(v, float):
                    cells.append(f"<td>{v:.4g}</td>")
                else:
                    cells.append(f"<td>{html.escape(str(v))}</td>")
            body.append("<tr>" + "".join(cells) + "</tr>")
        cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
        self.parts.append(f'<div class="tbl"><table>{cap}<thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody>'
                          "</table></div>")
        return self

    def circuitsvis(self, rendered, caption: str | None = None) -> Report:
        """A circuitsvis view from its ``local_src``; its JavaScript bundle is inlined once per page."""
        div, bundle, call = split_circuitsvis(rendered.local_src)
        if not self._cv_bundle:
            self.parts.append(f"<script>{bundle}</script>")  # classic script: CircuitsVis becomes a global
            self._cv_bundle = True
        self.parts.append(f'<div class="cv">{div}<script type="module">{call}</script></div>')
        if caption:
            self.parts.append(f"<p><small>{html.escape(caption)}</small></p>")
        return self

    def render(self) -> str:
        """The whole page."""
        if self._later or self._started:
            self.render_figures()
        t = html.escape(self.title)
        return (
            f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{t}</title>'
            f"<style>{_CSS}</style></head><body><h1>{t}</h1>\n" + "\n".join(self.parts) + "\n</body></html>\n"
        )

    def save(self, path: str | Path) -> Path:
        """Write the page atomically."""
        path = Path(path)
        atomic_write_text(path, self.render())
        return path


def split_circuitsvis(local_src: str) -> tuple[str, str, str]:
    """``(div, bundle, render call)`` of a circuitsvis ``local_src`` (div + one module script: bundle then call)."""
    head, sep, call = local_src.rpartition(_CV_CALL)
    div, tag, rest = head.partition("<script")
    if not (sep and tag and call.rstrip().endswith("</script>")):
        raise ValueError("unexpected circuitsvis local_src layout (expected <div/><script>bundle render()</script>)")
    bundle = rest.split(">", 1)[1]
    return div, bundle, sep + call.rstrip()[: -len("</script>")]


def _breakable(name: str) -> str:
    """``name`` escaped, with a line-break opportunity after each ``.`` and ``_`` (long metric names)."""
    import re

    return re.sub(r"([._])", r"\1<wbr>", html.escape(name))


def evenly_spaced(steps: Sequence[int]) -> bool:
    """Whether ``steps`` are (about) evenly spaced: the largest gap at most ``EVEN_SPACING`` times the smallest."""
    gaps = [b - a for a, b in zip(steps, steps[1:])]
    return len(gaps) < 2 or (min(gaps) > 0 and max(gaps) <= EVEN_SPACING * min(gaps))


def step_axis(ax, steps: Sequence[int], fontsize: float = LABEL_PT) -> None:
    """The x axis of a quantity over training steps: linear for evenly spaced steps, else log (symlog from step 0)."""
    from matplotlib.ticker import NullLocator

    if not evenly_spaced(list(steps)):
        ax.set_xscale("symlog", linthresh=1) if steps and min(steps) <= 0 else ax.set_xscale("log")
        ax.xaxis.set_minor_locator(NullLocator())  # minor log ticks cost seconds per figure and say little
    ax.set_xlabel("step", fontsize=fontsize)


def embed_dpi(fig, dpi: float = 110) -> float:
    """The dpi :func:`png_bytes` renders ``fig`` at: ``dpi``, lowered so the PNG is at most ``MAX_WIDTH_PX`` wide."""
    return min(dpi, MAX_WIDTH_PX / max(fig.get_figwidth() + 0.3, 1e-3))  # + margin: legends, bbox_inches


def displayed_pt(fontsize: float, fig, dpi: float = 110) -> float:
    """Points on screen (96 px per inch) of ``fontsize`` in ``fig`` embedded by :meth:`Report.figure` at ``dpi``."""
    return fontsize * embed_dpi(fig, dpi) / 96


def legend(ax, **kwargs):
    """``ax.legend``; with more than ``LEGEND_INSIDE_MAX`` entries it goes outside, right of the axes."""
    handles, _ = ax.get_legend_handles_labels()
    if len(handles) > LEGEND_INSIDE_MAX:
        kwargs = {"loc": "upper left", "bbox_to_anchor": (1.01, 1.0), "borderaxespad": 0.0, **kwargs}
    return ax.legend(**kwargs)


def png_bytes(fig, dpi: float = 110) -> bytes:
    """``fig`` as PNG bytes at most ``MAX_WIDTH_PX`` wide (``bbox_inches="tight"``), and release it."""
    buf = io.BytesIO()
    dpi = embed_dpi(fig, dpi)
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    _release(fig)
    return buf.getvalue()


def render_pngs(jobs: Sequence[tuple[Callable[[], Any], float]], workers: int = 2) -> list[bytes]:
    """PNG bytes (:func:`png_bytes`) of ``make()`` for each ``(make, dpi)``, in order (:class:`PngRenderer`)."""
    return PngRenderer(jobs, workers).result()


class PngRenderer:
    """Renders ``(make, dpi)`` figures to PNG bytes, starting a forked helper at once.

    With ``workers=2`` (a platform that forks, two cores) a forked process (``sslens.procs.Forked``) starts taking the
    figures one at a time from a shared counter when this object is made; :meth:`result` takes the rest here
    (so the caller can do other work in between) and renders whatever the child does not hand back. ``order``:
    the order in which figures are taken (default: as given).
    """

    def __init__(self, jobs: Sequence[tuple[Callable[[], Any], float]], workers: int = 2,
                 order: Sequence[int] | None = None):
        from sslens.procs import Forked, helpers_pay

        self.jobs, self.child, self.counter = list(jobs), None, None
        self.order = list(order) if order is not None else list(range(len(self.jobs)))
        if workers >= 2 and len(self.jobs) >= 2 and helpers_pay():
            import multiprocessing

            self.counter = multiprocessing.get_context("fork").Value("i", 0)
            self.child = Forked(self._take)

    def _take(self) -> dict[int, bytes]:
        out = {}
        while True:
            if self.counter is None:  # one process: in order
                i = len(out)
            else:
                with self.counter.get_lock():
                    i = self.counter.value
                    self.counter.value += 1
            if i >= len(self.jobs):
                return out
            j = self.order[i]
            out[j] = png_bytes(self.jobs[j][0](), self.jobs[j][1])

    def close(self) -> None:
        """Stop the forked helper if it still runs."""
        if self.child is not None:
            self.child.close()

    def result(self) -> list[bytes]:
        """Every figure's PNG bytes, in order."""
        import time

        try:
            t = time.monotonic()
            out = self._take()
            if self.child is not None:  # far longer than this process took means stuck: rendered here instead
                out.update(self.child.result(timeout=60 + 4 * (time.monotonic() - t)) or {})
        finally:
            if self.child is not None:
                self.child.close()
        return [out[i] if i in out else png_bytes(self.jobs[i][0](), self.jobs[i][1]) for i in range(len(self.jobs))]


def _release(fig) -> None:
    """Close a pyplot-managed figure; a plain ``matplotlib.figure.Figure`` is simply dropped."""
    if getattr(fig.canvas, "manager", None) is not None:
        import matplotlib.pyplot as plt

        plt.close(fig)


def attention_steps_view(
    patterns: Float[Tensor, "steps q k"], tokens: Sequence[str | int], steps: Sequence[int], max_tokens: int = 64
):
    """One circuitsvis ``attention_heads`` view with one panel per step (steps shown as heads)."""
    import circuitsvis as cv

    n = min(len(tokens), max_tokens)
    att = patterns[:, -n:, -n:].detach().float().cpu()
    return cv.attention.attention_heads(
        attention=att, tokens=[str(t) for t in tokens[-n:]], attention_head_names=[f"step {s}" for s in steps]
    )


def external_resources(page: str) -> list[str]:
    """External scripts, stylesheets or module imports in an HTML page (empty means it opens offline)."""
    import re

    pats = [
        r"<script[^>]*\bsrc\s*=\s*[\"']?(?!data:)([^\"'\s>]+)",
        r"<link[^>]*\bhref\s*=\s*[\"']?(https?:[^\"'\s>]+)",
        r"\bimport\s[^;]*?\bfrom\s*[\"'](https?:[^\"']+)",
        r"\bimport\s*\(\s*[\"'](https?:[^\"']+)",
        r"@import\s+(?:url\()?[\"']?(https?:[^\"')\s]+)",
    ]
    return [m for p in pats for m in re.findall(p, page)]
