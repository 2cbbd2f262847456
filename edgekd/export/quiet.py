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
    The named loggers ("" = root) get a temporary handler; their state is restored afterwards, so the
    root logger is left exactly as it was (and third-party `logging.warning` calls cannot configure it).
    """
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    saved: list[tuple[logging.Logger, list[logging.Handler], bool]] = []
    for name in logger_names:
        lg = logging.getLogger(name)
        # Loggers such as torch.onnx carry their own stderr handler (bound to the real stream, so a
        # stderr redirect does not reach it): swap every handler for ours for the duration.
        saved.append((lg, list(lg.handlers), lg.propagate))
        lg.handlers = [handler]
        lg.propagate = False
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
            warnings.simplefilter("ignore")
            yield buffer
    finally:
        for lg, handlers, propagate in saved:
            lg.handlers = handlers
            lg.propagate = propagate
