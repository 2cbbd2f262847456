"""Ctrl-C and SIGTERM that no library can swallow.

Python raises KeyboardInterrupt wherever the main thread happens to be. A bare `except:` in a library (around
an optional import, say) then swallows it, and the run goes on as if the user had not asked it to stop: seen
here, a Ctrl-C during start-up left a run training for minutes. The CLI's handler therefore also records the
signal, and every progress step and stage boundary raises it again (`raise_if_received`).
"""

from __future__ import annotations

import contextlib
import os
import signal

TYPE_CHECKING = False  # not typing's: the `edgekd` command imports this module before its Ctrl-C handler is set
if TYPE_CHECKING:
    from typing import Any, Iterator, NoReturn

STOPPED = "stopped before it finished; run the same command again"
"""What a Ctrl-C or SIGTERM that came while nothing was saved yet says was left: nothing, so rerun."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (a CI job cancelled, `kill`), raised like Ctrl-C so that temp files are cleaned up on the way out."""


_received: list[int] = []


def _stop(signum: int) -> KeyboardInterrupt:
    return Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


FORCE_AFTER = 3
"""Signals after which a stopping command ends at once, its cleanup unfinished (what it wrote is whole: every
file is written atomically)."""


def _on_signal(signum: int, frame: Any) -> None:
    _received.append(signum)
    if len(_received) == 1:
        raise _stop(signum)
    if len(_received) >= FORCE_AFTER:  # asked again and again: the user wants it gone now
        os.write(2, (stop_message(signum == signal.SIGTERM, "stopped at once, before its cleanup ended") +
                     "\n").encode())
        os._exit(exit_code(signum))
    # A second signal while the first one's stop unwinds is not raised again: it would cut that cleanup short,
    # and raised inside a library's callback (jax's gc callback, seen here) Python prints it with a traceback.
    # If a library swallowed the first, `raise_if_received` raises it at the next progress step.


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


def exit_code(signum: int) -> int:
    """The exit code of a command stopped by this signal: 130 Ctrl-C, 143 SIGTERM (128 + the signal's number)."""
    return 143 if signum == signal.SIGTERM else 130


def stop_message(terminated: bool, kept: str = STOPPED) -> str:
    """The one line a stopped command prints: how it was stopped, and what it kept / what a rerun does."""
    return f"{'terminated' if terminated else 'interrupted'}: {kept}"


def _exit_now(signum: int, frame: Any) -> NoReturn:
    # os.write: the signal may come while Python is inside a write to sys.stderr, which is not reentrant
    os.write(2, (stop_message(signum == signal.SIGTERM) + "\n").encode())
    raise SystemExit(exit_code(signum))


def exit_outside_commands() -> None:
    """For the `edgekd` process only (its first line): a Ctrl-C or SIGTERM outside a command's own handler
    (`installed`) ends the process with the command's message and exit code, at once.

    Outside a command nothing is written yet, so nothing needs cleaning up; but Python's own handler raises
    KeyboardInterrupt, which there is nobody to catch while the CLI's modules (typer, rich) import: a traceback,
    then the process killed by SIGINT again (exit -2). And typer turns it into a silent exit 130 while it parses
    the arguments. SystemExit passes through both. The handlers stay for the life of the process: at its end
    nothing restores them, so this is not for a process that goes on after the command (that uses `installed`).
    """
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _exit_now)


def ignore_after_the_command() -> None:
    """For the `edgekd` process only, once its command has ended: ignore Ctrl-C for the rest of the process.

    Only the interpreter's shutdown is left, and it has two bad ends for a Ctrl-C: in an exit function our
    handler's SystemExit is printed with a traceback ("Exception ignored in atexit callback"), and once Python
    has put the default action back (late in its shutdown) the signal kills the process (exit -2) after the work
    was done and reported. Ignored, the command's own exit code stands. SIGTERM is left as it is: a CI job must
    still be able to end a process whose shutdown hangs (waiting for a library's thread, say).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def raise_if_received() -> None:
    """Raise the stop again if a signal came and the run is still going (its first raise was swallowed)."""
    if _received:
        raise _stop(_received[0])
