"""``sslens analyze-checkpoints PATH... --out DIR``: the generic series analyses over checkpoint series.

Rank, entropy, detection/eigenvalue scores, composition, relative change and condensation per layer and head
(``sslens.analyses.series``); ``--probe`` token ids (.txt/.npy/.safetensors, or text with ``--tokenizer``);
``--layers/--heads/--steps`` choose the circuitsvis views.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("analyze-checkpoints", help="analyze ordered checkpoint series of any HookedTransformer")
    p.add_argument("paths", nargs="+", help="sslens run dirs, dirs of model_<N>.pt / step_<N>.pt, or pretrained:NAME")
    p.add_argument("--out", required=True, help="output directory (metrics.json, report.html)")
    p.add_argument("--config", default=None, help="HookedTransformerConfig JSON for directories of .pt state dicts")
    p.add_argument("--checkpoint-indices", type=int, nargs="+", default=None, help="for pretrained:NAME")
    p.add_argument("--probe", default=None, help="probe token ids: .txt (one sequence per line), .npy, .safetensors "
                                                 "(key 'tokens'), or text with --tokenizer")
    p.add_argument("--tokenizer", default=None, help="local Hugging Face tokenizer directory for a text --probe")
    add_view_args(p)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run)


def add_view_args(p) -> None:
    p.add_argument("--layers", type=int, nargs="+", default=None, help="layers shown in the attention views")
    p.add_argument("--heads", type=int, nargs="+", default=None, help="heads shown in the attention views")
    p.add_argument("--steps", type=int, nargs="+", default=None, help="steps shown (nearest state; default first/mid/last)")


def run(a: argparse.Namespace) -> int:
    import warnings

    from sslens.analyses.checkpoints import analyze_series, report
    from sslens.analyses.series import Views
    from sslens.checkpoints import load_probe, open_series
    from sslens.store import RunStore
    from sslens.tasks import build_task

    probe = load_probe(a.probe, a.tokenizer) if a.probe else None
    views = Views(a.layers, a.heads, a.steps)
    results = []
    for path in a.paths:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # series notes are printed below
            s = open_series(path, config=a.config, checkpoint_indices=a.checkpoint_indices)
        for n in s.notes:
            print(f"{s.name}: note: {n}")
        if probe is None and (Path(path) / "config.json").exists() and (Path(path) / "checkpoints").is_dir():
            cfg = RunStore(path).read_config()
            if "task" in cfg:
                s.task = build_task(cfg["task"])
        results.append(analyze_series(s, probe=probe, progress=not a.quiet, views=views))
    out = Path(a.out)
    report(results, out, layers=a.layers, heads=a.heads)
    print(f"wrote {out / 'metrics.json'} and {out / 'report.html'}")
    return 0
