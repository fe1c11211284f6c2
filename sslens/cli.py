"""The ``sslens`` command. Each verb lives in ``sslens/commands/<verb>.py`` with ``register(sub)``.

Bad flags or values print one line naming the flag and the allowed values, and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings

from sslens.errors import SslensError

VERBS = ("train", "analyze", "reproduce", "sweep", "analyze_checkpoints")


class OneLineParser(argparse.ArgumentParser):
    """argparse, but errors are a single line: ``sslens <verb>: error: argument --x: ...``."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="sslens", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="verb", required=True, parser_class=OneLineParser, metavar="VERB")
    for verb in VERBS:
        try:
            mod = importlib.import_module(f"sslens.commands.{verb}")
        except ModuleNotFoundError as e:
            if e.name == f"sslens.commands.{verb}":
                continue  # verb not shipped in this build
            raise
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    parser = build_parser()
    args = parser.parse_args(argv)
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
