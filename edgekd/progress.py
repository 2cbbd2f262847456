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
