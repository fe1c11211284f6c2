"""``sslens sweep NAME --out DIR``: a named grid of runs (resumable; completed runs are skipped)."""

from __future__ import annotations

import argparse

from sslens.commands.args import positive_int


def register(sub) -> None:
    p = sub.add_parser("sweep", help="run a grid of runs with the exact count engine")
    names = p.add_subparsers(dest="sweep", required=True, metavar="SWEEP", parser_class=type(p))
    f6 = names.add_parser("scan-snap-fig6", help="Scan&Snap Fig. 6: 4 x 4 x 4 x 10 seeds on Syn-Medium (+ Figs. 11-12)")
    f6.add_argument("--out", required=True, help="output directory (runs/, fig6.csv, fig6.png, recall.csv, recall.png)")
    f6.add_argument("--workers", type=positive_int, default=2, help="local processes")
    f6.add_argument("--steps", type=positive_int, default=100)
    f6.add_argument("--seeds", type=positive_int, default=10, help="seeds 1..N")
    f6.add_argument("--num-last", type=positive_int, nargs="+", default=[1, 3, 5, 10], help="Syn-Medium sizes")
    f6.add_argument("--quiet", action="store_true")
    f6.set_defaults(func=run_fig6_cli)


def run_fig6_cli(a: argparse.Namespace) -> int:
    from sslens.sweeps.fig6 import run_fig6

    path = run_fig6(a.out, progress=not a.quiet, workers=a.workers, steps=a.steps,
                    seeds=tuple(range(1, a.seeds + 1)), num_last=tuple(a.num_last))
    print(f"wrote {path} and fig6.png, recall.csv, recall.png next to it")
    return 0
