"""One bench per device at a time on this host, whatever results folder each saves to.

A bench times models on a device; a second one on the same device would load it while the first times, and
each would report its models' latency under the other's load. The lock is a file per device name in a
private folder of this user's (the per-user temp area, or $EDGEKD_LOCK_DIR), held with flock as a run folder's
is (`rundir.exclusive_folder`): the OS releases it when the bench ends, however it ends.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path

from edgekd.errors import OutputDirError, first_line
from edgekd.rundir import exclusive_folder, private_dir

LOCK_DIR_ENV = "EDGEKD_LOCK_DIR"
# Kept as they are in a lock file's name; every other character is written %xx (its UTF-8 bytes, lower-case
# hex). Upper case too: on a case-insensitive file system (macOS) the devices "Pi" and "pi" would share a lock.
_KEPT = frozenset("abcdefghijklmnopqrstuvwxyz0123456789._-")
_MAX_NAME = 200  # of the encoded name; a file name may have 255 bytes


def lock_dir() -> Path:
    """The folder of this user's device locks: $EDGEKD_LOCK_DIR, else edgekd-locks-UID in the temp area (where
    the host's work directory is too). Benches that should exclude each other must see the same one."""
    configured = os.environ.get(LOCK_DIR_ENV)
    return Path(configured) if configured else Path(tempfile.gettempdir()) / f"edgekd-locks-{os.getuid()}"


def lock_name(device: str) -> str:
    """The lock file's name for `device`: safe in any file system, and never the same for two names (%xx for
    every character but lower-case letters, digits, '.', '_', '-'; a long name ends in its sha256)."""
    encoded = "".join(c if c in _KEPT else "".join(f"%{b:02x}" for b in c.encode()) for c in device)
    if len(encoded) > _MAX_NAME:
        encoded = f"{encoded[:100]}~{hashlib.sha256(device.encode()).hexdigest()}"  # '~' is never encoded
    return f"bench@{encoded}.lock"


def device_lock(device: str, results_dir: Path | None, *,
                note: str | None = None) -> contextlib.AbstractContextManager[None]:
    """Hold `device` for a bench: a second bench of it stops at once (FolderInUseError, exit 2) naming the
    holder's pid and where it saves (or `note`: what else holds the device), while benches of other devices run
    side by side."""
    folder = lock_dir()
    fix_folder = f"set {LOCK_DIR_ENV} to a folder of your own"
    try:
        private_dir(folder, lambda problem: OutputDirError(
            f"the device lock folder {folder} {problem}",
            why="others could hold or remove the locks that keep two of your benches off one device",
            fix=f"remove that stale folder, or {fix_folder}"))
    except OSError as exc:
        raise OutputDirError(f"cannot create the device lock folder {folder}", why=first_line(exc),
                             fix=fix_folder) from None
    saving = f"saving to {Path(results_dir).absolute()}" if results_dir is not None else "saving no results"
    return exclusive_folder(
        folder, lock_name=lock_name(device), note=note or saving, what=f"device '{device}'",
        why="a bench times models on it: a second bench at the same time would load it, and both would report "
            "latencies measured under the other's load",
        fix="wait for that bench to end, then start this one again; or bench another device (--device, or "
            "`bench.device` in a recipe)")
