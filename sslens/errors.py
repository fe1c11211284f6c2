"""One error type for bad input: a single line naming the field and what is allowed."""

from __future__ import annotations

from typing import Any


class SslensError(ValueError):
    """Bad user input. ``str(err)`` is one line: ``<field>: <problem>; allowed: <values>``."""

    def __init__(self, field: str, problem: str, allowed: Any = None):
        self.field, self.problem, self.allowed = field, problem, allowed
        msg = f"{field}: {problem}"
        if allowed is not None:
            msg += f"; allowed: {allowed}"
        super().__init__(msg)


def require(cond: bool, field: str, problem: str, allowed: Any = None) -> None:
    """Raise :class:`SslensError` unless ``cond``."""
    if not cond:
        raise SslensError(field, problem, allowed)


def choice(value: Any, field: str, allowed: list | tuple) -> Any:
    """Return ``value`` if it is one of ``allowed``, else raise naming ``field``."""
    require(value in allowed, field, f"got {value!r}", ", ".join(map(str, allowed)))
    return value


class TrainingDiverged(RuntimeError):
    """The loss became non-finite; ``str(err)`` is one line naming the step (the CLI exits 3)."""

    def __init__(self, message: str, step: int | None = None):
        self.step = step
        super().__init__(message)


EXIT_USAGE = 2  # bad input, refused before or without training
EXIT_DIVERGED = 3  # training diverged (non-finite loss)
