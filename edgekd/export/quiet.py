"""Keep converters' chatter (prints, warnings) out of the user's terminal, but not out of errors."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from typing import Iterator


@contextlib.contextmanager
def captured_output(*logger_names: str) -> Iterator[io.StringIO]:
    """Capture stdout/stderr, warnings and the named loggers' records into one buffer.

    The buffer is yielded so a caller can quote it in an error message when the conversion fails.
    The named loggers ("" = root) get a temporary handler. Afterwards every logger that existed before the
    block gets its level, handlers and propagation back, so the root logger is left exactly as it was (and
    third-party `logging.warning` calls cannot configure it), and so are other libraries' loggers, which the
    converters reconfigure for the whole process: litert-torch silences torch's (it drops their stderr
    handlers, so `torch._logging.set_logs` output vanished after a TFLite export), onnxslim gives its own an
    ERROR level and a stderr handler.
    """
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    saved = _logger_states()
    for name in logger_names:
        lg = logging.getLogger(name)
        # Loggers such as torch.onnx carry their own stderr handler (bound to the real stream, so a
        # stderr redirect does not reach it): swap every handler for ours for the duration.
        lg.handlers = [handler]
        lg.propagate = False
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
            warnings.simplefilter("ignore")
            yield buffer
    finally:
        _restore_logger_states(saved)


_LoggerState = tuple[int, list[logging.Handler], bool, bool]


def _logger_states() -> dict[logging.Logger, _LoggerState]:
    """(level, handlers, propagate, disabled) of the root logger and every logger created so far."""
    loggers = [logging.root, *(lg for lg in list(logging.root.manager.loggerDict.values())
                               if isinstance(lg, logging.Logger))]
    return {lg: (lg.level, list(lg.handlers), lg.propagate, lg.disabled) for lg in loggers}


def _restore_logger_states(states: dict[logging.Logger, _LoggerState]) -> None:
    for lg, (level, handlers, propagate, disabled) in states.items():
        if lg.level != level:
            lg.setLevel(level)  # clears logging's level cache (which every setLevel empties: only on a change)
        if lg.handlers != handlers:
            lg.handlers = handlers
        lg.propagate = propagate
        lg.disabled = disabled
