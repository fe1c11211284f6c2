"""``sslens analyze DIR``: metrics.json and an offline report.html for any directory a CircuitRecorder wrote.

An sslens run (``config.json`` with a model kind that has an analyzer) gets its theory analyzer (each module
has ``analyze(run_dir, out_dir=None) -> dict`` and writes ``metrics.json`` and ``report.html``) plus the
generic series analyses in ``series.json`` / ``series.html``; any other recording directory (no sslens config
needed) gets the generic analyses as ``metrics.json`` / ``report.html``.
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


def _has_analyzer(run_dir: Path) -> bool:
    import json

    p = run_dir / "config.json"
    try:
        cfg = json.loads(p.read_text()) if p.is_file() else {}
    except json.JSONDecodeError:
        return False
    return isinstance(cfg, dict) and isinstance(cfg.get("model"), dict) and cfg["model"].get("kind") in ANALYZERS


def register(sub) -> None:
    p = sub.add_parser("analyze", help="metrics.json + report.html for a run or any recording directory")
    p.add_argument("run_dir", help="an sslens run directory, or any directory a CircuitRecorder wrote")
    p.add_argument("--out", default=None, help="where to write (default: the run directory)")
    from sslens.commands.analyze_checkpoints import add_view_args

    add_view_args(p)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run)


def run(a: argparse.Namespace) -> int:
    from sslens.analyses.series import Views, analyze_recording
    from sslens.analyses.series_report import write_report

    run_dir = Path(a.run_dir)
    out = Path(a.out or a.run_dir)
    if not run_dir.is_dir():
        raise SslensError("run_dir", f"no such directory {run_dir}", "an sslens run or a directory a CircuitRecorder wrote")
    views = Views(a.layers, a.heads, a.steps)
    if _has_analyzer(run_dir):
        metrics = analyzer_for(run_dir).analyze(run_dir, out_dir=Path(a.out) if a.out else None)
        print(f"wrote {out / 'metrics.json'} and {out / 'report.html'}")
        if RunStore(run_dir).recording_steps():
            res = analyze_recording(run_dir, views=views, progress=not a.quiet)
            j, h = write_report([res], out, f"Series analysis of {run_dir.name}", a.layers, a.heads,
                                json_name="series.json", html_name="series.html")
            print(f"wrote {j} and {h}")
        return 0 if metrics is not None else 1
    res = analyze_recording(run_dir, views=views, progress=not a.quiet)
    j, h = write_report([res], out, f"Series analysis of {run_dir.name}", a.layers, a.heads)
    print(f"wrote {j} and {h}")
    return 0
