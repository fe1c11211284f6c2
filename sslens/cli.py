"""The ``sslens`` command line: parsing imports no torch; each verb imports what it needs when it runs."""

from __future__ import annotations

import argparse
import sys
import warnings

from sslens.errors import SslensError
from sslens.registry import VERBS, load

DESCRIPTION = """\
Train attention models, record their circuits, and check them against two theories of how attention
learns: Scan&Snap (Tian et al. 2023) and condensation -> rank collapse (Chen & Luo 2025).
Every run is a directory (config.json, checkpoints, recordings, metrics.jsonl, report.html)."""

EPILOG = """\
examples:
  sslens train scan-snap --out runs/ss1                 train the Y/Z model on Syn-Small
  sslens analyze runs/ss1                               metrics.json + report.html for that run
  sslens reproduce scan-snap --out runs/ss              the paper's Figs. 3-5 and the Thm 3 checks
  sslens sweep scan-snap-fig6 --out runs/fig6           the Fig. 6 grid with the exact count engine
  sslens analyze-checkpoints runs/ss1 --out runs/ck     rank/attention metrics over checkpoints

Run 'sslens VERB --help' for a verb's flags and an example."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown after each flag's help; descriptions and examples keep their line breaks."""


class OneLineParser(argparse.ArgumentParser):
    """argparse, but errors are a single line: ``sslens <verb>: error: argument --x: ...``."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        """Print one line and exit 2."""
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}\n")


def build_parser() -> argparse.ArgumentParser:
    """The full parser (every verb); imports only the light ``sslens.commands`` modules."""
    parser = OneLineParser(prog="sslens", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="verb", required=True, parser_class=OneLineParser, metavar="VERB")
    for modname in VERBS.values():
        load(modname).register(sub)
    return parser


def _version() -> str:
    from sslens import __version__

    return __version__


def drop_implicit_cwd() -> None:
    """Remove the current directory that ``python -m sslens.cli`` (or ``python -c``) put first on ``sys.path``.

    A SPEC's ``fn = "module:attr"`` is imported and run; a module lying in whatever directory the command is run
    from must not be picked up by accident. A directory named in ``$PYTHONPATH`` (the explicit way) stays.
    """
    import os

    cwd = os.getcwd()
    explicit = {os.path.abspath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p}
    sys.path[:] = [p for p in sys.path
                   if not ((p in ("", ".") or os.path.abspath(p) == cwd) and os.path.abspath(p or ".") not in explicit)]


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (2 for bad input, printed as one line)."""
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    parser = build_parser()
    args = parser.parse_args(argv)
    if argv is None:  # this process is the command (not a caller's Python session): large tensors from the heap
        from sslens.procs import keep_heap

        keep_heap()
        drop_implicit_cwd()
    # one line and an exit code, never a traceback: 2 bad input / OS refusal, 3 divergence (sslens.errors)
    from sslens.errors import EXIT_DIVERGED, EXIT_USAGE, TrainingDiverged

    def fail(msg: str, code: int) -> int:
        print(f"sslens {args.verb}: error: {' '.join(str(msg).split())}", file=sys.stderr)
        return code

    try:
        return int(args.func(args) or 0)
    except SslensError as e:
        return fail(e, EXIT_USAGE)
    except TrainingDiverged as e:
        return fail(e, EXIT_DIVERGED)
    except MemoryError:
        return fail("memory: out of memory; allowed: a smaller --batch, --num-last or --seq-len", EXIT_USAGE)
    except OSError as e:
        where = e.filename if e.filename is not None else ""
        return fail(f"{where}: {e.strerror or type(e).__name__}; allowed: a writable path with free space"
                    if where else f"{e.strerror or e}; allowed: a writable path with free space", EXIT_USAGE)
    except KeyboardInterrupt:
        return fail("interrupted", 130)


if __name__ == "__main__":
    sys.exit(main())
