"""``sslens sweep NAME --out DIR``: a named grid of runs (resumable; completed runs are skipped)."""

from __future__ import annotations

import argparse

from sslens.argtypes import positive_int

EXAMPLE = """\
example:
  sslens sweep scan-snap-fig6 --out runs/fig6 --workers 2
  sslens sweep scan-snap-fig6 --out runs/fig6-quick --seeds 2 --num-last 1 3 --steps 50"""


def register(sub) -> None:
    """Add ``sweep`` and its named grids."""
    p = sub.add_parser("sweep", help="run a grid of runs with the exact count engine", epilog=EXAMPLE,
                       description="Run a named grid of runs; finished runs are skipped, killed ones resume.")
    names = p.add_subparsers(dest="sweep", required=True, metavar="SWEEP", parser_class=type(p))
    f6 = names.add_parser("scan-snap-fig6", epilog=EXAMPLE,
                          help="Scan&Snap Fig. 6: 4 x 4 x 4 x 10 seeds on Syn-Medium (+ Figs. 11-12)",
                          description="Scan&Snap Fig. 6: eta_Z x eta_Y/eta_Z x Syn-Medium size x seeds with the "
                                      "exact count engine, then fig6.csv/png and recall.csv/png.")
    f6.add_argument("--out", required=True, help="output directory (runs/, fig6.csv, fig6.png, recall.csv, recall.png)")
    f6.add_argument("--workers", type=positive_int, default=2, help="local processes")
    f6.add_argument("--steps", type=positive_int, default=100, help="optimizer steps per run")
    f6.add_argument("--seeds", type=positive_int, default=10, help="seeds 1..N per grid point")
    f6.add_argument("--num-last", type=positive_int, nargs="+", default=[1, 3, 5, 10],
                    help="Syn-Medium sizes (number of query tokens)")
    f6.add_argument("--quiet", action="store_true", help="no progress bar")
    f6.set_defaults(func=run_fig6_cli)


def run_fig6_cli(a: argparse.Namespace) -> int:
    """Run the Fig. 6 grid."""
    from sslens.sweeps.fig6 import run_fig6

    path = run_fig6(a.out, progress=not a.quiet, workers=a.workers, steps=a.steps,
                    seeds=tuple(range(1, a.seeds + 1)), num_last=tuple(a.num_last))
    print(f"wrote {path} and fig6.png, recall.csv, recall.png next to it")
    return 0
