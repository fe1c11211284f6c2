"""docs/theory.md is what the code cites: every "theory.md X.Y" / "theory.md §X.Y" / "theory.md Part N"
citation in the package resolves to a heading, and every `module:function` the page names exists."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
THEORY = ROOT / "docs" / "theory.md"
PACKAGE_DIRS = ("sslens", "hooks", "analyses")

# "theory.md 1.3", "docs/theory.md §1.3", "theory.md 2.2-2.3", "theory.md §§2.2–2.3", "theory.md Part 3"
SECTION = r"(\d+\.\d+)(?:\s*[-–]\s*(\d+\.\d+))?"
CITE = re.compile(rf"theory\.md,?\s*(?:§+\s*)?(?:{SECTION}|Part\s+(\d+))")
HEADING = re.compile(r"^(#{2,4})\s+(?:(\d+\.\d+)\s|Part\s+(\d+)\b)", re.M)
CODE_REF = re.compile(r"`(sslens(?:\.\w+)+):(\w+)`")


def headings(text: str) -> tuple[list[str], list[str]]:
    """(section numbers "1.3", part numbers "3") of the page's headings, in order."""
    secs, parts = [], []
    for m in HEADING.finditer(text):
        (secs if m.group(2) else parts).append(m.group(2) or m.group(3))
    return secs, parts


def citations(text: str) -> list[tuple[str, ...]]:
    """Every citation in ``text``: ("sec", "2.2") / ("sec", "2.3") for a range's ends, ("part", "3")."""
    out = []
    for m in CITE.finditer(text):
        if m.group(3):
            out.append(("part", m.group(3)))
        else:
            out += [("sec", s) for s in m.groups()[:2] if s]
    return out


def _code_files() -> list[Path]:
    return sorted(p for d in PACKAGE_DIRS for p in (ROOT / d).rglob("*.py"))


def test_citation_pattern_reads_every_form():
    """The pattern itself: each citation style in use maps to the sections it names (an independent list)."""
    text = ('(theory.md 1.1) theory.md 2.2-2.3 docs/theory.md §1.3 theory.md §§2.2–2.4 theory.md Part 3 '
            '"theory.md 1.4: x" theory.md is silent')
    assert citations(text) == [("sec", "1.1"), ("sec", "2.2"), ("sec", "2.3"), ("sec", "1.3"), ("sec", "2.2"),
                               ("sec", "2.4"), ("part", "3"), ("sec", "1.4")]


def test_theory_headings_are_unique_and_ordered():
    secs, parts = headings(THEORY.read_text())
    assert parts == ["1", "2", "3"]
    assert len(secs) == len(set(secs)), f"duplicate section numbers: {secs}"
    key = [tuple(int(x) for x in s.split(".")) for s in secs]
    assert key == sorted(key), f"sections out of order: {secs}"
    # the numbering the ~35 docstrings were written against (the project's source digest) is kept
    assert {"1.1", "1.2", "1.3", "1.4", "2.1", "2.2", "2.3", "2.4"} <= set(secs)


@pytest.mark.parametrize("path", _code_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_code_citations_resolve(path: Path):
    secs, parts = headings(THEORY.read_text())
    missing = []
    for kind, num in citations(path.read_text(encoding="utf-8")):
        if (kind == "sec" and num not in secs) or (kind == "part" and num not in parts):
            missing.append(num if kind == "sec" else f"Part {num}")
    assert not missing, f"{path.relative_to(ROOT)} cites docs/theory.md sections that do not exist: {missing}"


def test_some_code_cites_theory():
    """Guard against a pattern that silently matches nothing."""
    n = sum(len(citations(p.read_text(encoding="utf-8"))) for p in _code_files())
    assert n >= 20, n


def test_code_references_exist():
    """Every `sslens.module:function` the page names is importable (no doc rot when code is renamed)."""
    refs = sorted(set(CODE_REF.findall(THEORY.read_text())))
    assert len(refs) >= 40, len(refs)
    bad = []
    for mod, name in refs:
        try:
            if not hasattr(importlib.import_module(mod), name):
                bad.append(f"{mod}:{name}")
        except ImportError as e:
            bad.append(f"{mod}:{name} ({e})")
    assert not bad, f"docs/theory.md names code that does not exist: {bad}"
