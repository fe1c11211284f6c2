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
    from sslens.errors import SslensError
    from sslens.store import RunStore, check_out_path
    from sslens.tasks import build_task

    out = check_out_path(a.out, field="--out")  # before any model is loaded
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SslensError("--out", f"cannot create {out} ({e.strerror})", "a writable directory path") from None
    results = []
    for path in a.paths:
        s = open_series(path, config=a.config, checkpoint_indices=a.checkpoint_indices)
        if (Path(path) / "config.json").is_file() and (Path(path) / "checkpoints").is_dir():
            cfg = RunStore(path).read_config()
            if "task" in cfg:
                try:
                    s.task = build_task(cfg["task"])
                except (KeyError, TypeError, ValueError, AttributeError) as e:
                    if isinstance(e, SslensError):
                        raise
                    raise SslensError("task", f"{Path(path) / 'config.json'} has a malformed task ({type(e).__name__}: {e})",
                                      "a config.json written by sslens train") from None
        try:
            results.append(analyze_series(s, progress=not a.quiet))
        except (SslensError, OSError, MemoryError):
            raise
        except (KeyError, TypeError, ValueError, IndexError, AttributeError, ZeroDivisionError, RuntimeError) as e:
            raise SslensError("paths", f"{path} could not be analyzed ({type(e).__name__}: {' '.join(str(e).split())[:160]})",
                              "sslens run dirs, dirs of model_<step>.pt, or pretrained:NAME") from None
    report(results, out)
    print(f"wrote {out / 'metrics.json'} and {out / 'report.html'}")
    return 0
