"""This host as a device: files are copied into a work directory, argv lists run as subprocesses."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Callable

from edgekd.devices.base import (WORKDIR_OWNER_FIX, WORKDIR_OWNER_WHY, DeviceError, DeviceOutOfSpace,
                                 DeviceProfile, DeviceTimeout, ProfiledDevice, RunResult, free_space_fix,
                                 info_via_runner, output_text, wait_process)
from edgekd.rundir import atomic_path, private_dir, sha256_file


class LocalDevice(ProfiledDevice):
    def __init__(self, profile: DeviceProfile) -> None:
        profile = dataclasses.replace(profile, workdir=os.path.expanduser(profile.workdir))  # `~/x`, as a shell
        self.profile = profile
        # Made here, not at the first copy: an unusable workdir is the profile's fault, so say which field. Private:
        # the runner is started from it, so whoever may write there may run code as us.
        try:
            private_dir(profile.workdir, lambda problem: DeviceError(
                f"the work directory {profile.workdir} of device '{profile.name}' {problem}",
                why=WORKDIR_OWNER_WHY, fix=WORKDIR_OWNER_FIX))
        except OSError as exc:
            raise DeviceError(f"cannot create the work directory {profile.workdir} of device '{profile.name}'",
                              why=f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else ""),
                              fix="point `workdir:` in the device profile at a writable folder") from None

    def info(self) -> dict[str, Any]:
        return info_via_runner(self)

    def push(self, local: Path, remote: str) -> None:
        _copy(Path(local), Path(remote), self.name)

    def pull(self, remote: str, local: Path) -> None:
        _copy(Path(remote), Path(local), self.name)

    def run(self, argv: list[str], *, timeout: float | None = None, tether: bool = False,
            on_line: Callable[[str], None] | None = None) -> RunResult:
        """argv as a child process; with `tether` its stdin is the heartbeat pipe (base.TETHER_S), which closes
        when this process ends, however it ends; `on_line` gets its stderr's lines as they come."""
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            try:
                code = wait_process(argv, stdout=out, stderr=err, timeout=timeout, tether=tether, on_line=on_line)
            except subprocess.TimeoutExpired:  # wait_process has killed it
                raise DeviceTimeout(f"'{argv[0]}' did not finish within {timeout:g} s on {self.name}",
                                    why="it was stopped", fix="check the command") from None
            except FileNotFoundError:
                raise DeviceError(f"'{argv[0]}' is not installed on {self.name}",
                                  fix="install it or fix the profile") from None
            return RunResult(code, output_text(out), output_text(err))

    def can_tether(self) -> bool:
        return True

    def sha256(self, remote: str) -> str | None:
        return sha256_file(remote) if Path(remote).is_file() else None

    def close(self) -> None:
        pass


def _copy(src: Path, dst: Path, device: str) -> None:
    if src.resolve() == dst.resolve():
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:  # atomically: runs of this user share the work directory, and one may be reading the file
        with atomic_path(dst) as tmp:
            shutil.copyfile(src, tmp)
    except OSError as exc:
        if exc.errno == 28:  # ENOSPC
            raise DeviceOutOfSpace(f"no space left to copy {src.name} to {dst.parent}",
                                   fix=free_space_fix(device)) from None
        raise DeviceError(f"cannot copy {src} to {dst}", why=exc.strerror, fix="check both paths") from None
