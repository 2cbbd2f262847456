"""User-facing errors: every one says what went wrong, why, and how to fix it.

The CLI prints an EdgeKDError as one short block and exits with its `exit_code`
(2 = the user can fix it); anything else is an internal error (exit 1).
"""

from __future__ import annotations

import re
from typing import Any

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# Escape sequences (CSI, OSC) and other control characters, which a device's stderr may carry.
_TERMINAL_CONTROL = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|[\x00-\x08\x0b-\x1f\x7f]")


def printable(text: str) -> str:
    """`text` without terminal control sequences: quoted device output must not retitle or clear a terminal."""
    return _TERMINAL_CONTROL.sub("", text)


class EdgeKDError(Exception):
    """Base of all errors a user can act on."""

    exit_code = 2

    def __init__(self, what: str, why: str | None = None, fix: str | None = None) -> None:
        super().__init__(what)
        self.what = what
        self.why = why
        self.fix = fix

    def __str__(self) -> str:
        parts = [self.what]
        if self.why:
            parts.append(f"why: {self.why}")
        if self.fix:
            parts.append(f"fix: {self.fix}")
        return "\n".join(parts)

    def to_dict(self) -> dict[str, str | None]:
        return {"kind": type(self).__name__, "what": self.what, "why": self.why, "fix": self.fix}


class RecipeError(EdgeKDError):
    """A recipe file is missing, unreadable or has an invalid field."""


class RegistryError(EdgeKDError):
    """A name (data set, model family, loss, device) is not registered."""


class DataError(EdgeKDError):
    """A data set cannot be loaded or split as asked."""


class CheckpointError(EdgeKDError):
    """A checkpoint is missing, unsafe, or does not fit the model."""


class TrainingError(EdgeKDError):
    """A training diverged: its loss became NaN or infinite."""


class ExportError(EdgeKDError):
    """A model cannot be exported or quantized."""


class ArtifactError(EdgeKDError):
    """An exported artifact is missing, corrupt, or failed its checks."""


class BenchError(EdgeKDError):
    """A benchmark could not run or its result is unusable."""


class OutputDirError(EdgeKDError):
    """The run directory cannot be created or written."""


class FolderInUseError(OutputDirError):
    """Another edgekd process holds the folder's lock (a run folder, a bench's results for one device)."""


class FeatureError(EdgeKDError):
    """A feature path (module name) does not exist, or teacher and student features cannot be matched."""


class TeacherOutputError(EdgeKDError):
    """Teacher outputs for black-box or cached distillation are missing, malformed or do not fit the data."""


class LineageError(EdgeKDError):
    """A distillation would train from a teacher whose generation the user has not allowed."""


class CompressionError(EdgeKDError):
    """A model cannot be pruned or quantized as the recipe asks."""


class MissingExtraError(EdgeKDError):
    """An optional dependency group is not installed."""

    def __init__(self, extra: str, module: str, purpose: str) -> None:
        super().__init__(
            f"{purpose} needs the optional extra [{extra}] (module '{module}' is not installed)",
            why=f"edgekd keeps heavy optional dependencies out of the base install",
            fix=f"pip install 'edgekd[{extra}]'",
        )


def first_line(exc: BaseException, *, limit: int = 300) -> str:
    """A third-party exception as one clean line for a `why:` field (ANSI colour codes stripped); an OS error
    as its reason and path ("Permission denied (x.yaml)", not "[Errno 13] Permission denied: 'x.yaml'"); a
    pydantic ValidationError as its first problem ("device: Field required")."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror} ({exc.filename})" if exc.filename else exc.strerror
    errors = getattr(exc, "errors", None)  # pydantic's ValidationError: its first problem, not "4 validation errors"
    if type(exc).__name__ == "ValidationError" and callable(errors) and errors():
        first = errors()[0]
        return f"{'.'.join(map(str, first['loc'])) or 'the whole file'}: {pydantic_message(first)}"[:limit]
    lines = [ln.strip() for ln in _ANSI.sub("", str(exc)).splitlines() if ln.strip()]
    return lines[0][:limit] if lines else type(exc).__name__


def pydantic_message(error: dict[str, Any]) -> str:
    """One pydantic error's message without the "Value error, " that pydantic puts before a validator's own words."""
    return str(error["msg"]).removeprefix("Value error, ")


def yaml_problem(exc: BaseException) -> str:
    """A PyYAML error as 'at line L, column C: problem' (its first line alone, 'while parsing a flow sequence',
    says neither where nor what)."""
    mark = getattr(exc, "problem_mark", None)
    where = f"at line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    context, start = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    opened = f" ({context} that starts at line {start.line + 1}, column {start.column + 1})" \
        if context and start is not None and mark is not None and start.line != mark.line else ""
    return where + (getattr(exc, "problem", None) or first_line(exc)) + opened


class TextModelError(EdgeKDError):
    """A Hugging Face teacher folder is incomplete, or is not a text encoder."""


class PathError(EdgeKDError):
    """The operating system refuses a path as written: a name in it too long, a symbolic link loop, a file where a
    folder must be."""


class MachineLimitError(EdgeKDError):
    """This machine ran out of disk space or memory: nothing edgekd did wrong, and nothing a retry alone fixes."""


# torch's allocator reports a failed allocation as a RuntimeError, not a MemoryError
_OUT_OF_MEMORY = ("can't allocate memory", "DefaultCPUAllocator: not enough memory")


def machine_limit(exc: BaseException) -> MachineLimitError | None:
    """A full disk (ENOSPC, EDQUOT) or exhausted memory as a user-facing error; None for anything else."""
    import errno

    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        where = f" writing {exc.filename}" if exc.filename else ""
        return MachineLimitError(f"no space left on the disk{where}", why=first_line(exc),
                                 fix="free space there, or write elsewhere (--output-dir, --results-dir), and run "
                                     "again: a run resumes from its last finished stage")
    if isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError) and any(s in str(exc) for s in _OUT_OF_MEMORY)):
        return MachineLimitError("out of memory", why=first_line(exc),
                                 fix="ask for less: smaller model widths or depths in the recipe, a smaller "
                                     "--batch-size, fewer samples; or free memory on this machine")
    return None


def _shortened(path: str, keep: int = 60) -> str:
    """`path` with its middle elided when longer than `keep` characters: its start and end say which it is."""
    return path if len(path) <= keep else f"{path[:keep // 2]}…{path[-keep // 2:]}"


def path_problem(exc: BaseException) -> PathError | None:
    """An OSError about how a path is written (ENAMETOOLONG, ELOOP, ENOTDIR) as a user-facing error naming it;
    None for anything else. Such a path is one the user typed, or a file edgekd makes inside it: every command
    would otherwise report it as an edgekd bug."""
    import errno
    import os

    if not isinstance(exc, OSError) or exc.errno not in (errno.ENAMETOOLONG, errno.ELOOP, errno.ENOTDIR):
        return None
    path = os.fsdecode(exc.filename) if isinstance(exc.filename, (str, bytes, os.PathLike)) else None
    where = f" {_shortened(path)}" if path else ""
    if exc.errno == errno.ENAMETOOLONG:
        names = [part for part in (path or "").split(os.sep) if len(os.fsencode(part)) > 255]
        why = (f"the name {_shortened(names[0], 40)} in it is {len(os.fsencode(names[0]))} bytes long; most file "
               "systems take at most 255 bytes for one name" if names else
               f"it is {len(os.fsencode(path))} bytes long, past what this system takes for a whole path" if path
               else first_line(exc))
        return PathError(f"the path{where} is too long", why=why,
                         fix="give a shorter path (a shorter name, or a folder nearer the root)")
    if exc.errno == errno.ELOOP:
        return PathError(f"cannot follow the path{where}", why="its symbolic links lead in a loop",
                         fix="point the link at a real file or folder, or give the path without it")
    return PathError(f"cannot use the path{where}", why="a part of it that must be a folder is a file",
                     fix="check the path: remove or rename that file, or give another path")
