"""``sslens reproduce TARGET --out DIR``: a paper's figures and theory checks, one command.

The flags live here (parsing stays free of torch); the experiments are functions in
``sslens.reproduce.<target>`` that take typed arguments and return results.
"""

from __future__ import annotations

import argparse

from sslens.argtypes import positive_float, positive_int, step_count

FIGS = ("3", "4", "5", "thm3", "premise", "6", "demo", "all")


def _scan_snap_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--fig", choices=FIGS, default="demo",
                   help="which part: 3, 4, 5, thm3, premise (Thm 4 in its premise: exact T -> inf descent, one common "
                   "token, K = 10, M = 1000), 6 (the Fig. 6 sweep), demo (= 3, 4, 5, thm3, premise) or all")
    p.add_argument("--steps", type=step_count, default=100, help="iterations of the Fig. 4/5 runs")
    p.add_argument("--thm3-steps", type=step_count, default=1000,
                   help="iterations of the plain-SGD Thm 3 run (rates scaled to keep eta*steps of eta_Z=0.1, 2000 steps)")


def _scan_snap_run(a: argparse.Namespace) -> int:
    from sslens.reproduce.scan_snap import ScanSnapSettings, reproduce

    reproduce(ScanSnapSettings(out=a.out, fig=a.fig, steps=a.steps, thm3_steps=a.thm3_steps, quiet=a.quiet))
    return 0


def _rank_collapse_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=step_count, default=1100, help="steps of each stage-2 (binary-task) run")
    p.add_argument("--init-attn", type=positive_float, default=1e-5, help="init std of W_Q, W_K (theory regime)")
    p.add_argument("--init-outer", type=positive_float, default=0.03, help="init std of W_V, W1, W2")
    p.add_argument("--seeds", type=positive_int, default=1, help="seeds of the stage-2 runs (intervals over seeds)")
    p.add_argument("--anchor-steps", type=step_count, default=200, help="steps of each anchor run (paper's model)")
    p.add_argument("--variant-steps", type=step_count, default=300,
                   help="steps of each anchor run of the 2-layer variant that can represent the map")
    p.add_argument("--d-model", type=positive_int, default=128, help="anchor-task width (paper: 640)")
    p.add_argument("--anchor-seeds", type=positive_int, default=2, help="seeds of the anchor runs (error bars)")
    p.add_argument("--scale", choices=("small", "paper"), default="small",
                   help="paper: anchor runs at d_model 640, d_ff 1280, batch 1000 (on the CPU: hours)")
    p.add_argument("--skip-anchor", action="store_true", help="leave out the anchor-task runs")


def _rank_collapse_run(a: argparse.Namespace) -> int:
    from sslens.reproduce.rank_collapse import run

    return run(a)


def _wikitext_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default=None,
                   help="folder with valid.txt and test.txt (WikiText-2, word level); default: $SSLENS_WIKITEXT_DIR, "
                        "else the shipped slices in tests/data")
    p.add_argument("--steps", type=step_count, default=150, help="steps of the Fig. 10 / Fig. 7 runs")
    p.add_argument("--etas", type=float, nargs="+", default=[1.0, 2.0, 3.0, 4.0, 5.0],
                   help="SGD learning rates of Fig. 10 (the paper's protocol: 1..5)")
    p.add_argument("--seeds", type=positive_int, default=5, help="seeds per learning rate (the paper's protocol: 5)")
    p.add_argument("--cr-steps", type=step_count, default=300, help="steps of the [CR] Fig. 3 small-init run")


def _wikitext_run(a: argparse.Namespace) -> int:
    from sslens.reproduce.wikitext import WikitextSettings, reproduce

    reproduce(WikitextSettings(out=a.out, data_dir=a.data_dir, steps=a.steps, etas=tuple(a.etas), seeds=a.seeds,
                               cr_steps=a.cr_steps, quiet=a.quiet))
    return 0


#: target -> (help, description, example, add flags, run)
TARGETS = {
    "scan-snap": (
        "Scan&Snap: Figs. 3, 4, 5, the Thm 3 invariant in two regimes (and the Fig. 6 sweep)",
        "Scan&Snap (Tian et al. 2023): trains each run into OUT/<name>/ (its own report.html and metrics.json) and "
        "writes OUT/report.html with every figure. Finished runs are reused; killed runs resume.",
        "sslens reproduce scan-snap --out runs/ss            # ~Figs. 3-5 + Thm 3\n"
        "  sslens reproduce scan-snap --fig 4 --steps 50 --out runs/ss4",
        _scan_snap_flags, _scan_snap_run,
    ),
    "rank-collapse": (
        "condensation -> rank collapse: stage checks, escape-time slope, anchor task",
        "Condensation -> rank collapse (Chen & Luo 2025) scaled to a CPU: the binary task with exponential loss "
        "(stage-1/2 checks), the escape time against the init scale, and the anchor-function task.",
        "sslens reproduce rank-collapse --out runs/cr\n  sslens reproduce rank-collapse --steps 200 --anchor-steps 300 "
        "--out runs/cr-quick",
        _rank_collapse_flags, _rank_collapse_run,
    ),
    "wikitext": (
        "real data (WikiText-2): Scan&Snap Figs. 10 and 7, [CR] Fig. 3",
        "Real data (WikiText-2) scaled to a CPU: attention entropy against the learning rate (Fig. 10), attention "
        "maps over iterations (Fig. 7), and the small-init model's rank and condensation ([CR] Fig. 3).",
        "sslens reproduce wikitext --out runs/wt\n  sslens reproduce wikitext --data-dir data/wikitext-2 --etas 1 5 "
        "--seeds 3 --out runs/wt2",
        _wikitext_flags, _wikitext_run,
    ),
}


def register(sub) -> None:
    """Add ``reproduce`` and one sub-verb per target."""
    p = sub.add_parser("reproduce", help="reproduce a paper's experiments and figures",
                       description="Reproduce a paper's experiments and figures into one directory with a report.html.",
                       epilog="example:\n  sslens reproduce scan-snap --out runs/ss")
    targets = p.add_subparsers(dest="target", required=True, metavar="TARGET", parser_class=type(p))
    for name, (help_, description, example, add_flags, run) in TARGETS.items():
        t = targets.add_parser(name, help=help_, description=description, epilog=f"example:\n  {example}")
        t.add_argument("--out", required=True, help="output directory")
        add_flags(t)
        t.add_argument("--quiet", action="store_true", help="no progress bars")
        t.set_defaults(func=run)
