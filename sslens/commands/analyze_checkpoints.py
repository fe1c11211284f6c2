"""``sslens analyze-checkpoints PATH... --out DIR``: rank, attention and condensation metrics over checkpoints."""

from __future__ import annotations

import argparse
from pathlib import Path

EXAMPLE = """\
examples:
  sslens analyze-checkpoints runs/cr/anchor --out reports/anchor
  sslens analyze-checkpoints ckpts/ --config ckpts/config.json --out reports/mine     # model_<step>.pt files
  sslens analyze-checkpoints pretrained:pythia-14m --checkpoint-indices 0 50 100 --out reports/pythia"""


def register(sub) -> None:
    """Add ``analyze-checkpoints``."""
    p = sub.add_parser("analyze-checkpoints", help="analyze ordered checkpoint series of any HookedTransformer",
                       epilog=EXAMPLE,
                       description="Per-layer rank, attention entropy and condensation over ordered checkpoints of "
                                   "any HookedTransformer; one metrics.json and report.html for all series.")
    p.add_argument("paths", nargs="+", help="sslens run dirs, dirs of model_<step>.pt, or pretrained:NAME")
    p.add_argument("--out", required=True, help="output directory (metrics.json, report.html)")
    p.add_argument("--config", default=None, help="HookedTransformerConfig JSON for directories of .pt state dicts")
    p.add_argument("--checkpoint-indices", type=int, nargs="+", default=None,
                   help="which checkpoints of pretrained:NAME (default: all)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(a: argparse.Namespace) -> int:
    """Analyze every series and write one report."""
    from sslens.analyses.checkpoints import analyze_series, report
    from sslens.checkpoints import open_series
    from sslens.store import RunStore
    from sslens.tasks import build_task

    results = []
    for path in a.paths:
        s = open_series(path, config=a.config, checkpoint_indices=a.checkpoint_indices)
        store = RunStore(path)
        if (Path(path) / "config.json").exists() and store.exists() and "task" in store.read_config():
            s.task = build_task(store.read_config()["task"])
        results.append(analyze_series(s, progress=not a.quiet))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    report(results, out)
    print(f"wrote {out / 'metrics.json'} and {out / 'report.html'}")
    return 0
