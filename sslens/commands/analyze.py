"""``sslens analyze RUN_DIR``: metrics.json and an offline report.html for an sslens run.

Dispatches on the run's model kind (``config.json``); each analyzer module has
``analyze(run_dir, out_dir=None) -> dict`` and writes ``metrics.json`` and ``report.html``.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

from sslens.errors import SslensError
from sslens.store import RunStore

ANALYZERS = {
    "scan_snap": "sslens.analyses.scan_snap_report",
    "rank_collapse": "sslens.analyses.rank_collapse_report",
}


def analyzer_for(run_dir: str | Path):
    cfg = RunStore(run_dir).read_config()
    kind = cfg.get("model", {}).get("kind")
    modname = ANALYZERS.get(kind)
    if modname is None:
        raise SslensError("model.kind", f"no analyzer for {kind!r}", ", ".join(ANALYZERS))
    return importlib.import_module(modname)


def register(sub) -> None:
    p = sub.add_parser("analyze", help="metrics.json + report.html for a run directory")
    p.add_argument("run_dir", help="an sslens run directory")
    p.add_argument("--out", default=None, help="where to write (default: the run directory)")
    p.set_defaults(func=run)


def run(a: argparse.Namespace) -> int:
    metrics = analyzer_for(a.run_dir).analyze(Path(a.run_dir), out_dir=Path(a.out) if a.out else None)
    out = Path(a.out or a.run_dir)
    print(f"wrote {out / 'metrics.json'} and {out / 'report.html'}")
    return 0 if metrics is not None else 1
