"""``sslens sweep grid SPEC --out DIR`` (any grid of runs) and ``sslens sweep scan-snap-fig6 --out DIR``.

Resumable (finished runs are skipped, killed ones resume from their checkpoint); local processes or
Ray (``--backend ray``). Heavy modules are imported inside the run functions only (fast ``--help``).
"""

from __future__ import annotations

import argparse
import sys

from sslens.argtypes import positive_int, step_count

EXAMPLE = """\
example:
  sslens sweep scan-snap-fig6 --out runs/fig6 --workers 2
  sslens sweep scan-snap-fig6 --out runs/fig6-quick --seeds 2 --num-last 1 3 --steps 50
  sslens sweep grid spec.toml --out runs/grid --workers 2"""

BACKENDS = ("local", "ray")


def _backend_args(p) -> None:
    p.add_argument("--backend", choices=BACKENDS, default="local",
                   help="local processes (default) or Ray (pip install 'sslens[ray]')")
    p.add_argument("--address", default=None,
                   help="Ray: address of an existing cluster (ray start --head); default: start a local Ray")
    p.add_argument("--max-retries", type=int, default=3, help="Ray: retries of a task whose worker died")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def register(sub) -> None:
    """Add ``sweep grid`` and the named grids."""
    p = sub.add_parser("sweep", help="run a grid of runs (resumable; local processes or Ray)", epilog=EXAMPLE,
                       description="Run a grid of runs; finished runs are skipped, killed ones resume.")
    names = p.add_subparsers(dest="sweep", required=True, metavar="SWEEP", parser_class=type(p))
    g = names.add_parser("grid", epilog=EXAMPLE,
                         help="a grid from SPEC (.json/.toml: base = a run's config.json, grid = name -> list)")
    g.add_argument("spec", metavar="SPEC", help="JSON or TOML file with base, grid and optionally fn = 'module:attr'")
    g.add_argument("--out", required=True, help="output directory (runs/, results.csv, summary.png)")
    g.add_argument("--workers", type=positive_int, default=1, help="local processes (or Ray CPUs of a local Ray)")
    _backend_args(g)
    g.set_defaults(func=run_grid_cli)
    f6 = names.add_parser("scan-snap-fig6", epilog=EXAMPLE,
                          help="Scan&Snap Fig. 6: 4 x 4 x 4 x 10 seeds on Syn-Medium (+ Figs. 11-12)",
                          description="Scan&Snap Fig. 6: eta_Z x eta_Y/eta_Z x Syn-Medium size x seeds with the "
                                      "exact count engine, then fig6.csv/png and recall.csv/png.")
    f6.add_argument("--out", required=True, help="output directory (runs/, fig6.csv, fig6.png, recall.csv, recall.png)")
    f6.add_argument("--workers", type=positive_int, default=2, help="local processes")
    f6.add_argument("--steps", type=step_count, default=100, help="optimizer steps per run")
    f6.add_argument("--seeds", type=positive_int, default=10, help="seeds 1..N per grid point")
    f6.add_argument("--num-last", type=positive_int, nargs="+", default=[1, 3, 5, 10],
                    help="Syn-Medium sizes (number of query tokens)")
    _backend_args(f6)
    f6.set_defaults(func=run_fig6_cli)


def _out(value: str) -> str:
    from sslens.errors import require

    require(bool(value and value.strip()), "--out", "empty path", "a directory path")
    return value


def run_grid_cli(a: argparse.Namespace) -> int:
    """Run the grid of SPEC and print the status counts."""
    from sslens.errors import require
    from sslens.sweeps.grid import run_grid

    require(a.max_retries >= 0, "--max-retries", f"got {a.max_retries}", "an int >= 0")
    try:
        rows = run_grid(a.spec, _out(a.out), backend=a.backend, workers=a.workers, address=a.address,
                        max_retries=a.max_retries, progress=not a.quiet)
    except KeyboardInterrupt:
        print(f"sslens sweep: interrupted; run the same command again to resume ({a.out})", file=sys.stderr)
        return 130
    counts = {s: sum(r["status"] == s for r in rows) for s in ("complete", "diverged", "failed", "missing")}
    print(f"{len(rows)} runs: " + ", ".join(f"{v} {k}" for k, v in counts.items() if v)
          + f"; wrote {a.out}/results.csv and summary.png")
    return 1 if counts["failed"] or counts["missing"] else 0


def run_fig6_cli(a: argparse.Namespace) -> int:
    """Run the Fig. 6 grid."""
    from sslens.errors import require
    from sslens.sweeps.fig6 import run_fig6

    require(a.max_retries >= 0, "--max-retries", f"got {a.max_retries}", "an int >= 0")
    try:
        path = run_fig6(_out(a.out), progress=not a.quiet, workers=a.workers, backend=a.backend, address=a.address,
                        max_retries=a.max_retries, steps=a.steps, seeds=tuple(range(1, a.seeds + 1)), num_last=tuple(a.num_last))
    except KeyboardInterrupt:
        print(f"sslens sweep: interrupted; run the same command again to resume ({a.out})", file=sys.stderr)
        return 130
    print(f"wrote {path} and fig6.png, recall.csv, recall.png, results.csv, summary.png next to it")
    return 0
