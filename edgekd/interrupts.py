"""Ctrl-C and SIGTERM that no library can swallow.

Python raises KeyboardInterrupt wherever the main thread happens to be. A bare `except:` in a library (around
an optional import, say) then swallows it, and the run goes on as if the user had not asked it to stop: seen
here, a Ctrl-C during start-up left a run training for minutes. The CLI's handler therefore also records the
signal, and every progress step and stage boundary raises it again (`raise_if_received`).
"""

from __future__ import annotations

import contextlib
import signal
from typing import Any, Iterator


class Terminated(KeyboardInterrupt):
    """SIGTERM (a CI job cancelled, `kill`), raised like Ctrl-C so that temp files are cleaned up on the way out."""


_received: list[int] = []


def _stop(signum: int) -> KeyboardInterrupt:
    return Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def _on_signal(signum: int, frame: Any) -> None:
    _received.append(signum)
    raise _stop(signum)


@contextlib.contextmanager
def installed() -> Iterator[None]:
    """Route SIGINT and SIGTERM through `_on_signal` for the block (a CLI command; the Python API leaves signals
    alone), then put the previous handlers back and forget the signal, also when the block raises.

    A command run in the caller's process (typer's CliRunner, `main()` from a notebook) must leave neither its
    handlers nor a received Ctrl-C behind: that would stop every later run of the process at its first stage.
    """
    previous = {signum: signal.signal(signum, _on_signal) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            if handler is not None:  # None: set outside Python, which cannot be put back from here
                signal.signal(signum, handler)
        _received.clear()


def raise_if_received() -> None:
    """Raise the stop again if a signal came and the run is still going (its first raise was swallowed)."""
    if _received:
        raise _stop(_received[0])
