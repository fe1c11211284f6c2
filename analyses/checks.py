"""Machine-readable theory checks of a reproduction: ``OUT/checks.json``.

File layout: ``{"schema": 1, "provenance": {...}, "checks": [row, ...]}`` with each row

    {"id": "cr.stage2.alignment", "check": "...", "measured": 0.97, "predicted": ">= 0.95" | 1.0,
     "tolerance": "...", "pass": true | false | "reported" | "outside", "regime": "...", "run": "binary-tanh" | [...],
     "step": 180 | [...], "interval": [lo, hi] (optional, over seeds), "n_seeds": 3 (optional)}

``id`` is stable across versions (tests and the lead's recomputation key on it); ``run`` is the run
directory relative to OUT (a list where a check aggregates runs), ``step`` the checkpoint the number
was measured at. A row that is reported, not judged, has ``"pass": "reported"``; a row whose run breaks the
theorem's premise (named in ``regime``) has ``"pass": "outside"``. Non-finite numbers
are written as the strings "nan"/"inf" (JSON has none). The HTML reports render from these rows
(``table_rows``).
"""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

from sslens.errors import SslensError

FIELDS = ("id", "check", "measured", "predicted", "tolerance", "pass", "regime", "run", "step")
SCHEMA = 1


def _clean(x):
    if isinstance(x, float) and not math.isfinite(x):
        return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if hasattr(x, "item") and getattr(x, "ndim", 1) == 0:
        return _clean(x.item())
    if hasattr(x, "tolist"):
        return _clean(x.tolist())
    return x


def validate(row: dict) -> dict:
    """One row in the schema (module docstring); bad rows raise a one-line SslensError."""
    missing = [k for k in FIELDS if k not in row]
    if missing:
        raise SslensError("checks", f"row {row.get('id', '?')!r} lacks {', '.join(missing)}", ", ".join(FIELDS))
    if row["pass"] not in (True, False, "reported", "outside"):
        raise SslensError("checks", f"row {row['id']!r}: pass = {row['pass']!r}", "true, false, 'reported' or 'outside'")
    if not isinstance(row["id"], str) or not row["id"]:
        raise SslensError("checks", f"id {row['id']!r}", "a non-empty dotted string such as cr.stage2.alignment")
    return _clean(dict(row))


def provenance(seeds: list[int] | None = None, **extra) -> dict:
    """Sslens / TransformerLens / torch versions, the git commit of the sslens checkout if any, seeds."""
    from importlib.metadata import PackageNotFoundError, version

    def ver(pkg):
        try:
            return version(pkg)
        except PackageNotFoundError:
            return None

    commit = None
    try:
        here = Path(__file__).resolve().parent
        r = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        commit = r.stdout.strip() or None if r.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        pass
    return _clean({"sslens": ver("sslens"), "transformer_lens": ver("transformer_lens") or ver("transformer-lens"),
                   "torch": ver("torch"), "git_commit": commit, "seeds": list(seeds or []), **extra})


def write_checks(out_dir, rows: list[dict], provenance: dict) -> Path:
    """Validate ``rows`` and write ``out_dir/checks.json`` atomically (ids must be unique)."""
    from sslens.store import atomic_write_json

    rows = [validate(r) for r in rows]
    ids = [r["id"] for r in rows]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise SslensError("checks", f"duplicate ids {dup}", "one row per id")
    path = Path(out_dir) / "checks.json"
    atomic_write_json(path, {"schema": SCHEMA, "provenance": _clean(dict(provenance)), "checks": rows})
    return path


def read_checks(path) -> dict:
    """The ``checks.json`` of a reproduction (a directory or the file); a missing file raises one line."""
    import json

    p = Path(path)
    p = p / "checks.json" if p.is_dir() else p
    if not p.is_file():
        raise SslensError("checks", f"no {p}", "a reproduction output directory holding checks.json")
    return json.loads(p.read_text())


def by_id(checks: dict) -> dict[str, dict]:
    """The rows of a ``read_checks`` result keyed by their stable id."""
    return {r["id"]: r for r in checks["checks"]}


def _fmt(x) -> str:
    if isinstance(x, float):
        return f"{x:.4g}"
    if isinstance(x, list):
        return "[" + ", ".join(_fmt(v) for v in x) + "]"
    return "" if x is None else str(x)


def table_rows(rows: list[dict]) -> list[dict]:
    """Rows for ``Report.table``: PASS / FAIL / reported / outside, the interval over seeds, run@step."""
    out = []
    for r in rows:
        meas = _fmt(r["measured"])
        if r.get("interval") is not None:
            meas += f" (seeds: {_fmt(r['interval'])}, n = {r.get('n_seeds', '?')})"
        out.append({"id": r["id"], "check": r["check"], "measured": meas, "predicted": _fmt(r["predicted"]),
                    "tolerance": _fmt(r["tolerance"]),
                    "result": {True: "PASS", False: "FAIL", "outside": "outside"}.get(r["pass"], "reported"),
                    "regime": r["regime"], "run @ step": f"{_fmt(r['run'])} @ {_fmt(r['step'])}"})
    return out
