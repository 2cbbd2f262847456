"""A tiny progress protocol, so library code reports progress without depending on rich.

The CLI passes a rich-backed reporter; the Python API defaults to a silent one.
"""

from __future__ import annotations

from typing import Any, Protocol


class Task(Protocol):
    def advance(self, steps: int = 1, **fields: Any) -> None: ...

    def close(self) -> None: ...


class Reporter(Protocol):
    def task(self, description: str, total: int | None) -> Task: ...

    def note(self, message: str) -> None: ...


class _SilentTask:
    def advance(self, steps: int = 1, **fields: Any) -> None:
        pass

    def close(self) -> None:
        pass


class SilentReporter:
    """Reports nothing (the default for the Python API and tests)."""

    def task(self, description: str, total: int | None) -> Task:
        return _SilentTask()

    def note(self, message: str) -> None:
        pass


def usable_reporter(reporter: Any) -> Reporter:
    """`reporter`, or the silent one for None. Anything without task() and note() is refused here, where the
    API is called: it failed deep inside a run with an AttributeError (reporter="rich")."""
    if reporter is None:
        return SilentReporter()
    if not all(callable(getattr(reporter, method, None)) for method in ("task", "note")):
        from edgekd.errors import EdgeKDError

        raise EdgeKDError(f"reporter must have task() and note() methods, got {type(reporter).__name__} "
                          f"{repr(reporter)[:60]}",
                          why="edgekd reports progress through edgekd.progress.Reporter: task(description, total) "
                              "returns a task with advance() and close(), note(message) says one line",
                          fix="leave reporter out (progress is then silent), or pass an object with those methods")
    return reporter
