"""Run every ``benchmarks/bench_*.py`` module's ``main()`` in turn (``make bench``): bench_analyze
(analyze-checkpoints over 1000 state dicts, --help times), bench_analyze_threads (analyze_recording at its own
thread count against torch's default), bench_recorder (recorder bytes per step and overhead), bench_sweep,
bench_train. ``python -m benchmarks bench_recorder`` runs one. Dated results: docs/benchmarks.md."""

import importlib
import pkgutil
import platform
import sys
import warnings
from pathlib import Path

import torch

warnings.filterwarnings("ignore", category=DeprecationWarning)


def main(argv: list[str]) -> int:
    only = set(argv)
    from sslens.procs import cpu_name

    print(f"machine: {platform.machine()} {cpu_name() or ''} ({torch.backends.cpu.get_cpu_capability()})"
          f" | cores: {torch.get_num_threads()} torch threads"
          f" | torch {torch.__version__} | python {platform.python_version()}")
    here = Path(__file__).parent
    for info in sorted(pkgutil.iter_modules([str(here)]), key=lambda m: m.name):
        if info.name.startswith("bench_") and (not only or info.name in only):
            print(f"\n== {info.name} ==", flush=True)
            importlib.import_module(f"benchmarks.{info.name}").main()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
