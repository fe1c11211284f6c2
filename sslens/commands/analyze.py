"""``sslens analyze RUN_DIR``: metrics.json and an offline report.html for an sslens run.

Dispatches on the run's model kind (``config.json``) through ``sslens.registry.ANALYZERS``; each
analyzer is ``analyze(run_dir, out_dir=None) -> dict`` and writes ``metrics.json`` and ``report.html``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

EXAMPLE = """\
example:
  sslens train scan-snap --steps 100 --out runs/ss1 && sslens analyze runs/ss1
  sslens analyze runs/cr/binary --out reports/binary   # write elsewhere, the run stays untouched"""


def analyzer_for(run_dir: str | Path):
    """The ``analyze`` function for the run's model kind."""
    from sslens.registry import ANALYZERS, resolve
    from sslens.store import RunStore

    kind = RunStore(run_dir).read_config().get("model", {}).get("kind")
    return resolve(ANALYZERS, kind, "model.kind")


def register(sub) -> None:
    """Add ``analyze``."""
    p = sub.add_parser("analyze", help="metrics.json + report.html for a run directory", epilog=EXAMPLE,
                       description="Check a run against its theory: metrics.json (numbers, pass/fail checks) and "
                                   "an offline report.html (figures, circuitsvis views).")
    p.add_argument("run_dir", help="an sslens run directory (has config.json)")
    p.add_argument("--out", default=None, help="where to write (default: the run directory)")
    p.set_defaults(func=run)


def run(a: argparse.Namespace) -> int:
    """Analyze and print the written paths."""
    metrics = analyzer_for(a.run_dir)(Path(a.run_dir), out_dir=Path(a.out) if a.out else None)
    out = Path(a.out or a.run_dir)
    print(f"wrote {out / 'metrics.json'} and {out / 'report.html'}")
    return 0 if metrics is not None else 1
