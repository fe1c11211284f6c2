"""``sslens analyze-checkpoints PATH... --out DIR``: the generic series analyses over checkpoint series.

Rank, entropy, detection/eigenvalue scores, composition, relative change and condensation per layer and head
(``sslens.analyses.series``); ``--probe`` token ids (.txt/.npy/.safetensors, or text with ``--tokenizer``);
``--layers/--heads/--steps`` choose the circuitsvis views.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sslens.argtypes import positive_int

EXAMPLE = """\
examples:
  sslens analyze-checkpoints runs/cr/anchor --out reports/anchor
  sslens analyze-checkpoints ckpts/ --config ckpts/config.json --out reports/mine     # model_<step>.pt files
  sslens analyze-checkpoints pretrained:pythia-14m --checkpoints "every 10" --out reports/pythia   # offline, HF cache
  sslens analyze-checkpoints pretrained:pythia-14m --checkpoints "0-10, step143000" --dedupe --out reports/pythia
  sslens analyze-checkpoints ckpts/ --probe probe.txt --layers 1 --heads 0 3 --steps 0 500 --out reports/mine"""


def register(sub) -> None:
    """Add ``analyze-checkpoints``."""
    p = sub.add_parser("analyze-checkpoints", help="analyze ordered checkpoint series of any HookedTransformer",
                       epilog=EXAMPLE,
                       description="Per-layer and per-head rank, attention entropy, induction/eigenvalue scores, "
                                   "composition, relative change and condensation over ordered checkpoints of "
                                   "any HookedTransformer; one metrics.json and report.html for all series.")
    p.add_argument("paths", nargs="+", help="sslens run dirs, dirs of model_<N>.pt / step_<N>.pt, or pretrained:NAME")
    p.add_argument("--out", required=True, help="output directory (metrics.json, report.html)")
    p.add_argument("--config", default=None, help="HookedTransformerConfig JSON for directories of .pt state dicts")
    p.add_argument("--checkpoint-indices", type=int, nargs="+", default=None,
                   help="which checkpoints of pretrained:NAME (TransformerLens's checkpoint_index; default: all cached)")
    p.add_argument("--checkpoints", default=None, metavar="SPEC",
                   help="which checkpoints: comma-separated N (index), A-B (range), 'every K', stepN (at step N), all; "
                        "indices into TransformerLens's checkpoint list for pretrained:NAME, else into the series' steps")
    p.add_argument("--dedupe", action="store_true",
                   help="analyse each distinct state once (checkpoints with identical tensors: metrics.json duplicates)")
    p.add_argument("--backend", choices=("local", "ray"), default="local",
                   help="where the checkpoints are analysed: this process, or Ray tasks (chunks of checkpoints; "
                        "the same numbers as the per-checkpoint path on one thread)")
    p.add_argument("--address", default=None, help="Ray cluster address (default: start a local Ray)")
    p.add_argument("--workers", type=positive_int, default=2, help="Ray: CPUs of a local Ray, chunks in flight / 2")
    p.add_argument("--max-retries", type=positive_int, default=3, help="Ray: retries of a task whose worker died")
    p.add_argument("--probe", default=None, help="probe token ids: .txt (one sequence per line), .npy, .safetensors "
                                                 "(key 'tokens'), or text with --tokenizer")
    p.add_argument("--tokenizer", default=None, help="local Hugging Face tokenizer directory for a text --probe")
    add_view_args(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def add_view_args(p) -> None:
    """``--layers/--heads/--steps``: which attention patterns the circuitsvis views show."""
    p.add_argument("--layers", type=int, nargs="+", default=None, help="layers shown in the attention views")
    p.add_argument("--heads", type=int, nargs="+", default=None, help="heads shown in the attention views")
    p.add_argument("--steps", type=int, nargs="+", default=None, help="steps shown (nearest state; default first/mid/last)")


def run(a: argparse.Namespace) -> int:
    """Analyze every series and write one report."""
    from sslens.analyses.batched import start_weights
    from sslens.analyses.checkpoints import report
    from sslens.analyses.series import Views
    from sslens.checkpoints import load_probe
    from sslens.errors import SslensError
    from sslens.store import check_out_path

    out = check_out_path(a.out, field="--out")  # before any model is loaded
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SslensError("--out", f"cannot create {out} ({e.strerror})", "a writable directory path") from None
    probe = load_probe(a.probe, a.tokenizer) if a.probe else None
    views = Views(a.layers, a.heads, a.steps)
    results = []
    for path in a.paths:
        # the weight metrics start in a forked process now, while this one imports TransformerLens (seconds)
        plain = not (a.checkpoint_indices or a.checkpoints or a.dedupe or path.startswith("pretrained:")
                     or a.backend != "local")
        job = start_weights(path, a.config, probe) if plain else None
        try:
            results.append(_analyze_one(a, path, probe, views, job))
        finally:
            if job is not None:
                job.close()
    report(results, out, layers=a.layers, heads=a.heads)
    print(f"wrote {out / 'metrics.json'} and {out / 'report.html'}")
    return 0


def _analyze_one(a: argparse.Namespace, path: str, probe, views, job):
    """One series' :class:`sslens.analyses.series.SeriesResult`."""
    import warnings

    from sslens.analyses.checkpoints import analyze_series
    from sslens.checkpoints import open_series
    from sslens.errors import SslensError
    from sslens.store import RunStore
    from sslens.tasks import READS_FILES, build_task

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # series notes are printed below
        s = open_series(path, config=a.config, checkpoint_indices=a.checkpoint_indices, checkpoints=a.checkpoints)
    hashes, groups = _integrity(s, a.dedupe)
    for n in s.notes:
        print(f"{s.name}: note: {n}")
    if probe is None and (Path(path) / "config.json").is_file() and (Path(path) / "checkpoints").is_dir():
        cfg = RunStore(path).read_config()
        kind = cfg.get("task", {}).get("kind") if isinstance(cfg.get("task"), dict) else None
        if kind in READS_FILES:  # a run's config.json never makes the analysis read (or cache) a file
            print(f"{s.name}: note: the run's {kind} task is not rebuilt (analysing a run never reads the data files its "
                  "config.json names); the probe is repeated random tokens (--probe FILE to choose one)")
        elif "task" in cfg:
            try:
                s.task = build_task(cfg["task"])
            except (KeyError, TypeError, ValueError, AttributeError) as e:
                if isinstance(e, SslensError):
                    raise
                raise SslensError("task", f"{Path(path) / 'config.json'} has a malformed task ({type(e).__name__}: {e})",
                                  "a config.json written by sslens train") from None
    try:
        if a.backend == "ray":
            res = _ray(a, path, s, probe, views)
        else:
            res = analyze_series(s, probe=probe, progress=not a.quiet, views=views, job=job)
        if hashes:
            res.meta["hashes"] = {str(k): v for k, v in sorted(hashes.items())}
            res.meta["duplicates"] = groups
        return res
    except (SslensError, OSError, MemoryError):
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, ZeroDivisionError, RuntimeError) as e:
        raise SslensError("paths", f"{path} could not be analyzed ({type(e).__name__}: {' '.join(str(e).split())[:160]})",
                          "sslens run dirs, dirs of model_<step>.pt, or pretrained:NAME") from None


def _ray(a: argparse.Namespace, path: str, s, probe, views):
    """The per-checkpoint states on Ray (:mod:`sslens.analyses.fanout`), analysed here in step order."""
    from sslens.analyses.checkpoints import add_model_checks
    from sslens.analyses.fanout import Opener, ray_source
    from sslens.analyses.series import analyze_states
    from sslens.store import RunStore

    task = RunStore(path).read_config()["task"] if getattr(s, "task", None) is not None else None  # the run's probe
    opener = Opener(path, a.config, tuple(a.checkpoint_indices) if a.checkpoint_indices else None, a.checkpoints, task)
    src = ray_source(s, opener, probe, workers=a.workers, address=a.address, max_retries=a.max_retries)
    return add_model_checks(analyze_states(src, views=views, progress=not a.quiet), s)  # as the local path does


def _integrity(s, dedupe: bool) -> tuple[dict[int, str], list[list[int]]]:
    """Content hash per checkpoint (:mod:`sslens.integrity`) and the groups of identical states.

    With ``dedupe`` the series keeps the first step of each group.
    """
    from sslens.integrity import distinct_steps, duplicate_groups, series_hashes

    if s.tensors is None:
        return {}, []
    hashes = series_hashes(s.steps, s.tensors)
    groups = duplicate_groups(hashes)
    s.notes[:0] = [f"steps {', '.join(map(str, g))} hold identical tensors (content hash {hashes[g[0]][:12]})"
                   + ("; analysed once" if dedupe else "") for g in groups]
    if dedupe and groups:
        keep = distinct_steps(hashes)
        s.steps = keep
        if s.files is not None:
            s.files = {k: v for k, v in s.files.items() if k in keep}
    return hashes, groups
