"""``sslens analyze DIR``: metrics.json and an offline report.html for an sslens run or any recording directory.

An sslens run (``config.json`` with a ``model`` object) is dispatched on its model kind through
``sslens.registry.ANALYZERS``; each analyzer is ``analyze(run_dir, out_dir=None) -> dict`` and writes
``metrics.json`` and ``report.html``. A diverged or incomplete run is marked in both (``run_status`` in
metrics.json, a banner in the report). When the run also holds recordings, the generic series analyses
(``sslens.analyses.series``) go to ``series.json`` / ``series.html``. Any other directory a CircuitRecorder
wrote (no sslens config needed) gets the generic analyses as ``metrics.json`` / ``report.html``.
"""

from __future__ import annotations

import argparse
import html
import json
from pathlib import Path

from sslens.errors import SslensError, require

EXAMPLE = """\
example:
  sslens train scan-snap --steps 100 --out runs/ss1 && sslens analyze runs/ss1
  sslens analyze my_recording_dir --layers 0 1 --heads 0 --steps 0 100   # any CircuitRecorder(model, store=DIR)
  sslens analyze runs/cr/binary --out reports/binary   # write elsewhere, the run stays untouched"""
REQUIRED_TRAIN = ("steps", "batch", "optimizer", "lr", "seed")


def checked_config(run_dir: str | Path) -> dict:
    """config.json of a run, with the keys the analyzers read present and of the right type (one-line errors)."""
    from sslens.memory import check_memory
    from sslens.store import RunStore

    p = Path(run_dir)
    require(p.is_dir(), "run_dir", f"{p} is not a directory", "an sslens run directory")
    cfg = RunStore(p).read_config()
    allowed = "a config.json written by sslens train"
    for key in ("model", "train", "task"):
        require(isinstance(cfg.get(key), dict), f"config.{key}", f"missing or not an object in {p / 'config.json'}", allowed)
    for key in REQUIRED_TRAIN:
        require(key in cfg["train"], f"config.train.{key}", f"missing in {p / 'config.json'}", allowed)
    check_memory(cfg["model"], 1, field="config.model")
    spec = cfg["task"].get("spec")
    if cfg["model"].get("kind") == "scan_snap" and isinstance(spec, dict):
        require(spec.get("M") == cfg["model"].get("M"), "config.task.spec.M", f"{spec.get('M')!r} differs from "
                f"config.model.M {cfg['model'].get('M')!r}", "the model's M")
    steps = cfg["train"]["steps"]
    require(isinstance(steps, int) and not isinstance(steps, bool) and steps >= 1, "config.train.steps",
            f"got {steps!r}", "an int >= 1")
    return cfg


def analyzer_for(run_dir: str | Path):
    """The ``analyze`` function for the run's model kind."""
    from sslens.registry import ANALYZERS, resolve

    kind = checked_config(run_dir)["model"].get("kind")
    return resolve(ANALYZERS, kind, "model.kind")


def register(sub) -> None:
    """Add ``analyze``."""
    from sslens.commands.analyze_checkpoints import add_view_args

    p = sub.add_parser("analyze", help="metrics.json + report.html for a run or any recording directory",
                       epilog=EXAMPLE,
                       description="Check a run against its theory: metrics.json (numbers, pass/fail checks) and "
                                   "an offline report.html (figures, circuitsvis views); any directory a "
                                   "CircuitRecorder wrote gets the generic per-layer/head series analyses.")
    p.add_argument("run_dir", help="an sslens run directory, or any directory a CircuitRecorder wrote")
    p.add_argument("--out", default=None, help="where to write (default: the run directory)")
    add_view_args(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def is_sslens_run(run_dir: Path) -> bool:
    """True unless ``run_dir`` is a plain recording directory.

    A plain recording directory has no config.json, or a config.json that is a JSON object without a ``model``
    object (e.g. a HookedTransformerConfig saved beside the recordings) while recordings are present. Unreadable
    configs count as sslens runs (their one-line error follows).
    """
    p = run_dir / "config.json"
    if not p.is_file():
        return False
    try:
        cfg = json.loads(p.read_text())
    except (ValueError, OSError, RecursionError):
        return True
    has_rec = (run_dir / "recordings").is_dir() and any((run_dir / "recordings").glob("step_*.safetensors"))
    return not (isinstance(cfg, dict) and "model" not in cfg and has_rec)


def _check_views(run_dir: Path, a: argparse.Namespace) -> None:
    """``--layers/--heads/--steps`` against the run's recordings, before the model's analysis writes anything."""
    if a.layers is None and a.heads is None and a.steps is None:
        return
    from sslens.analyses.series import Views, _layers, _n_heads
    from sslens.hooks.recorder import Recording

    rec = Recording(run_dir)
    steps = rec.steps
    st = rec.at(steps[0]) if steps else {}
    layers = _layers(st)
    heads = st["meta.heads"].tolist() if "meta.heads" in st else list(range(_n_heads(st, layers))) if layers else []
    Views(a.layers, a.heads, a.steps).check(layers, heads, steps)


def _generic(run_dir: Path, out: Path, a: argparse.Namespace, json_name: str, html_name: str) -> tuple[Path, Path]:
    from sslens.analyses.series import Views, analyze_recording
    from sslens.analyses.series_report import write_report

    try:
        res = analyze_recording(run_dir, views=Views(a.layers, a.heads, a.steps), progress=not a.quiet)
        return write_report([res], out, f"Series analysis of {run_dir.name}", a.layers, a.heads,
                            json_name=json_name, html_name=html_name)
    except (SslensError, OSError, MemoryError):
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, ZeroDivisionError, RuntimeError) as e:
        raise SslensError("run_dir", f"{run_dir} holds a recording that could not be analyzed "
                          f"({type(e).__name__}: {' '.join(str(e).split())[:160]})",
                          "a directory a CircuitRecorder wrote") from None


def status_note(st: dict) -> str | None:
    """One sentence for a diverged or incomplete run (None for a complete one)."""
    if st["state"] == "diverged":
        return (f"This run DIVERGED: the loss became non-finite at step {st['diverged_at']}; "
                f"final values are those of the last finite step ({st['last_metric_step']}).")
    if st["state"] == "incomplete":
        return (f"This run is INCOMPLETE (no COMPLETE marker): {st['last_metric_step']} of {st['steps']} steps logged, "
                f"last checkpoint at step {st['last_checkpoint']}; it was killed or is still running (sslens train --resume).")
    return None


def mark_status(out: Path, st: dict) -> str | None:
    """Add ``run_status`` to metrics.json and a banner to report.html; return the note (None: complete)."""
    note = status_note(st)
    mpath = out / "metrics.json"
    if mpath.is_file():
        from sslens.store import atomic_write_json, atomic_write_text

        metrics = json.loads(mpath.read_text())
        metrics["run_status"] = {**st, "note": note}
        atomic_write_json(mpath, metrics)
        rpath = out / "report.html"
        if note is not None and rpath.is_file():
            text = rpath.read_text()
            banner = ('<p style="background:#fde2e1;border:1px solid #c00;padding:6px" class="run-status">'
                      f"<b>{html.escape(st['state'].upper())}</b>: {html.escape(note)}</p>\n")
            i = text.find("</h1>")
            i = i + len("</h1>") if i >= 0 else text.find("<body>") + len("<body>")
            atomic_write_text(rpath, text[:i] + banner + text[i:])
    return note


def run(a: argparse.Namespace) -> int:
    """Analyze, mark a diverged or incomplete run, and print the written paths."""
    from sslens.store import RunStore, check_out_path

    run_dir = Path(a.run_dir)
    out = check_out_path(a.out, field="--out") if a.out is not None else run_dir
    require(run_dir.is_dir(), "run_dir", f"{run_dir} is not a directory",
            "an sslens run directory or a directory a CircuitRecorder wrote")
    if not is_sslens_run(run_dir):
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise SslensError("--out", f"cannot create {out} ({e.strerror})", "a writable directory path") from None
        j, h = _generic(run_dir, out, a, "metrics.json", "report.html")
        print(f"wrote {j} and {h}")
        return 0
    analyze = analyzer_for(run_dir)
    store = RunStore(run_dir)
    _check_views(run_dir, a)
    st = store.status()
    require(st["last_checkpoint"] is not None, "run_dir", f"{run_dir} has no checkpoints yet", "a run with checkpoints")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SslensError("--out", f"cannot create {out} ({e.strerror})", "a writable directory path") from None
    try:
        metrics = analyze(run_dir, out_dir=out)
    except (SslensError, OSError, MemoryError):
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, ZeroDivisionError, RuntimeError) as e:
        what = f"{type(e).__name__}: {' '.join(str(e).split())[:160]}"
        raise SslensError("run_dir", f"{run_dir} is not a complete sslens run of kind "
                          f"{store.read_config()['model'].get('kind')} ({what})", "a run written by sslens train") from None
    note = mark_status(out, st)
    print(f"wrote {out / 'metrics.json'} and {out / 'report.html'}" + (f" -- {note}" if note else ""))
    if store.recording_steps():
        j, h = _generic(run_dir, out, a, "series.json", "series.html")
        print(f"wrote {j} and {h}")
    return 0 if metrics is not None else 1
