"""Figures that show in Jupyter as TransformerLens's and circuitsvis's objects do: mid-cell too, and once.

A plot method (``SeriesResult.plot``) returns a :class:`NotebookFigure` (a plain ``matplotlib.figure.Figure``: no
pyplot state, no backend switching) and, inside a Jupyter kernel, :func:`show` displays it at once, so
``res.plot("rank")`` shows even when it is not the cell's last expression. When it *is* the last expression,
IPython's display hook calls :meth:`NotebookFigure._ipython_display_`, which does nothing for a figure already shown
in this cell: one image per call either way. Report code calls the plain plotting functions and shows nothing.
"""

from __future__ import annotations

from matplotlib.figure import Figure

from sslens.progress import in_notebook


class NotebookFigure(Figure):
    """A ``matplotlib.figure.Figure`` displayed at most once per notebook cell (see the module docstring)."""

    _shown_in: int | None = None  # the IPython execution count of the cell that displayed it

    def _ipython_display_(self) -> None:
        """Display as PNG unless this cell already did (IPython calls this for ``display(fig)`` and the display hook)."""
        import io

        from IPython import get_ipython
        from IPython.display import Image, display

        ip = get_ipython()
        cell = getattr(ip, "execution_count", None)
        if cell is not None and self._shown_in == cell:
            return
        self._shown_in = cell
        buf = io.BytesIO()
        self.savefig(buf, format="png", bbox_inches="tight")
        display(Image(data=buf.getvalue(), format="png"))


def show(fig: Figure, now: bool | None = None) -> Figure:
    """Display ``fig`` now when ``now`` (default: inside a Jupyter kernel); returns it as a :class:`NotebookFigure`."""
    if not isinstance(fig, NotebookFigure):
        fig.__class__ = NotebookFigure  # a subclass adding one method and one attribute: same object, same state
    if in_notebook() if now is None else now:
        fig._ipython_display_()
    return fig
