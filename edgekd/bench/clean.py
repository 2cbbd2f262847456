"""`edgekd devices --clean NAME`: remove the files benches cached in a device's work directory.

A bench pushes every file under a name after its content (harness `_Session.push`: the runner, artifacts,
inputs, specs; the predict pass's outputs; native tools under bin/), so that the next bench skips the copy; and
nothing removes them, so a phone fills up with every artifact ever benched. Here only files named the way edgekd
names them are removed, inside the profile's work directory (never the folder itself, never what else is in it),
and only while the device's bench lock is held, so that no bench of this user loses a file it is using.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgekd.bench import shell_lock
from edgekd.bench.device_lock import device_lock
from edgekd.bench.native import remote_binary_path
from edgekd.devices.base import Device, DeviceError, not_an_option, own_workdir
from edgekd.errors import FolderInUseError

HEX16 = "[0-9a-f]" * 16
# What benches write under the work directory, as shell globs relative to it: the runner (named after its
# content since ca099ba, plain before), artifacts/, inputs/, specs/ (harness._Session.push), outputs/ of predict
# passes (the runner's .npy, and its temp file there when it was killed mid-write: runner `_save_npy`; a native
# tool's per-sample files: native_predict).
CACHED = ("edgekd_runner.py", f"edgekd_runner-{HEX16}.py", f"artifacts/{HEX16}.*", f"inputs/{HEX16}.*",
          f"specs/{HEX16}.json", f"outputs/{HEX16}.*", "outputs/.tmp-*.npy")
SUBFOLDERS = ("artifacts", "inputs", "specs", "outputs", "bin")  # removed when emptied (rmdir: only if empty)

# One fixed script (no user input in it), run holding the device's own bench lock, the runner's (shell_lock: with
# the device's flock tool, not waiting: held by a runner or native tool measuring there, whichever machine or user
# started it, it exits shell_lock.BUSY_EXIT; a device without the tool is not locked here). $1 is the work
# directory, the other arguments are bin/ files. Each file edgekd named is measured (du -k, also in busybox and
# Android's toybox), removed, and reported as one line: its KiB ('?' when du cannot tell), or '!' when it could
# not be removed.
_SCRIPT = shell_lock.locked_script(
    'w=$1; shift; [ -d "$w" ] || exit 3; '
    'for f in ' + " ".join(f'"$w"/{glob}' for glob in CACHED) + ' "$@"; do '
    '[ -f "$f" ] || continue; '
    'k=$(du -k "$f" 2>/dev/null); k=${k%%[!0-9]*}; '
    'if rm -f "$f" && [ ! -e "$f" ]; then echo "${k:-?}"; else echo "!"; fi; '
    'done; '
    'for d in ' + " ".join(SUBFOLDERS) + '; do rmdir "$w/$d" 2>/dev/null; done; exit 0')


@dataclass
class Cleaned:
    """What `clean` removed from a device's work directory."""

    device: str
    workdir: str
    files: int = 0
    kib: int = 0  # of the files whose size the device could tell
    unsized: int = 0  # files removed whose size it could not tell
    failed: int = 0  # files edgekd named that could not be removed
    failure: str | None = None  # the device's last word about them

    def summary(self) -> str:
        if not self.files and not self.failed:
            return f"{self.device}: nothing of edgekd's to remove in {self.workdir}"
        size = f"{self.kib / 1024:.1f} MiB" + (f" (and {self.unsized} of unknown size)" if self.unsized else "")
        text = f"{self.device}: removed {self.files} cached file(s), {size}, from {self.workdir}"
        if self.failed:
            text += f"; {self.failed} could not be removed" + (f" ({self.failure})" if self.failure else "")
        return text


def clean(name_or_path: str) -> Cleaned:
    """Remove edgekd's cached files from the work directory of device `name_or_path` (a profile name or path),
    holding its bench lock: a bench of it running now stops this one (FolderInUseError, exit 2)."""
    from edgekd.devices.profiles import open_device

    device = open_device(name_or_path)
    try:
        with device_lock(device.name, None, note="cleaning its work directory"):
            return clean_workdir(device)
    except FolderInUseError as exc:  # only the lock raises it: say why cleaning must wait
        exc.why = ("a bench there may be using the files of its work directory, and removing them would fail it "
                   "(the lock is released when that process ends, also if it is killed)")
        exc.fix = f"wait for that bench to end, then run `edgekd devices --clean {name_or_path}` again"
        raise
    finally:
        device.close()


def clean_workdir(device: Device) -> Cleaned:
    """The removal itself, on an open device whose bench lock the caller holds."""
    workdir = checked_workdir(device)
    bins = [remote_binary_path(device, Path(str(local))) for local in
            ((device.profile.options.get("native") or {}).values())
            if Path(str(local)).name not in ("", ".", "..")]
    done = Cleaned(device.name, workdir)
    if device.profile.kind == "local":
        _remove_local_temp_files(Path(workdir), done)
    result = device.run(["sh", "-c", _SCRIPT, "sh", shell_lock.wait_arg(0), not_an_option(workdir), *bins],
                        timeout=600)
    lock = shell_lock.report(result.stderr)
    stderr = lock.output
    if lock.busy:  # a runner or native tool measures there now (a bench from anywhere)
        raise DeviceError(f"device '{device.name}' is measuring for another bench ({lock.holder or 'pid unknown'} "
                          "holds the device's own bench lock)",
                          why="that bench may be started from another machine or by another user, and its "
                              "runner or benchmark tool uses the files of the work directory; removing them would "
                              "fail it",
                          fix=f"wait for that bench to end, then run `edgekd devices --clean {device.name}` again")
    if result.returncode == 3:  # no work directory: nothing was ever pushed
        return done
    if result.returncode != 0:
        raise DeviceError(f"cannot clean {workdir} on {device.name}",
                          why=(stderr.strip().splitlines() or [f"exit code {result.returncode}"])[-1],
                          fix="check that the device's shell is POSIX sh and the work directory is yours")
    for line in result.stdout.split():
        if line == "!":
            done.failed += 1
        elif line.isdigit():
            done.files, done.kib = done.files + 1, done.kib + int(line)
        else:
            done.files, done.unsized = done.files + 1, done.unsized + 1
    if done.failed:
        done.failure = (stderr.strip().splitlines() or [None])[-1]
    return done


def checked_workdir(device: Device) -> str:
    """The device's work directory, unless it is no folder of edgekd's own (base.own_workdir: the rule a bench
    follows too), since files in it with edgekd's names may then not be edgekd's."""
    return own_workdir(device, "will not clean", "so files in it with edgekd's names may not be edgekd's")


def _remove_local_temp_files(workdir: Path, done: Cleaned) -> None:
    """This host's copies are atomic (rundir.atomic_path): a bench killed mid-copy left a temp file, removed
    here when its writer is gone (another process's copy in progress keeps its file)."""
    from edgekd.rundir import TEMP_SUFFIX, remove_orphan_temp_files

    if not workdir.is_dir():
        return
    sizes = {p: p.lstat().st_size for p in workdir.rglob(f".*{TEMP_SUFFIX}") if p.is_file()}
    for path in remove_orphan_temp_files(workdir):
        done.files += 1
        done.kib += -(-sizes.get(path, 0) // 1024)
