"""The device protocol: what the bench harness needs from a phone, a board or this host.

A device runs argv lists (never shell strings built from user input), copies files to and from its work
directory, and describes itself. Implementations: local (this host), ssh (system OpenSSH client), adb.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

from edgekd.errors import EdgeKDError


class DeviceError(EdgeKDError):
    """A device is unreachable, refused us, ran out of space or lacks what the benchmark needs."""


class DeviceUnreachable(DeviceError):
    """The device cannot be reached (connection refused, host down, device disconnected)."""


class HostKeyMismatch(DeviceError):
    """SSH refused the device because its host key is unknown or changed."""


class DeviceTimeout(DeviceError):
    """A command on the device did not finish within its time limit."""


class DeviceOutOfSpace(DeviceError):
    """A copy to the device failed for lack of space."""


class RuntimeMissing(DeviceError):
    """The device lacks Python, numpy or the runtime the artifact needs."""


@dataclass
class RunResult:
    returncode: int
    stdout: str
    stderr: str


@dataclass
class DeviceProfile:
    """A device profile as loaded from devices/*.yaml (see edgekd.devices.profiles)."""

    name: str
    kind: str  # "local" | "ssh" | "adb"
    python: str | list[str] | None = "python3"  # argv prefix of the device's Python (a list for emulators)
    # Not /tmp/edgekd: a folder named like the package in /tmp shadows an editable install of edgekd
    # (as a namespace package) for any script run from /tmp.
    workdir: str = "/tmp/edgekd-work"
    threads: int = 1
    cpus: list[int] | None = None  # pin with taskset where available
    emulated: bool = False
    options: dict[str, Any] = field(default_factory=dict)  # kind-specific fields (host, port, serial, …)


class Device(Protocol):
    profile: DeviceProfile

    @property
    def name(self) -> str: ...

    @property
    def workdir(self) -> str: ...

    def info(self) -> dict[str, Any]:
        """CPU model, cores, architecture, governor, Python and runtime versions (the runner's --info)."""
        ...

    def push(self, local: Path, remote: str) -> None: ...

    def pull(self, remote: str, local: Path) -> None: ...

    def run(self, argv: list[str], *, timeout: float | None = None, tether: bool = False,
            on_line: Callable[[str], None] | None = None) -> RunResult:
        """argv on the device; `tether` gives it a stdin that is its link to this host (see TETHER_S);
        `on_line` gets each line of its stderr while it runs (see wait_process), as well as in the result."""
        ...

    def can_tether(self) -> bool:
        """Whether run(tether=True) can keep a pipe from this host open as the command's stdin."""
        ...

    def sha256(self, remote: str) -> str | None:
        """sha256 of a file on the device, or None when it does not exist (to skip pushing it again)."""
        ...

    def close(self) -> None: ...


class ProfiledDevice:
    """Name and work directory straight from the profile (what local and SSH devices share)."""

    profile: DeviceProfile

    @property
    def name(self) -> str:
        return self.profile.name

    @property
    def workdir(self) -> str:
        return not_an_option(self.profile.workdir)


def not_an_option(path: str) -> str:
    """A relative device path as ./PATH: the device's Python, mkdir, du or rm never read it as an option, even
    from a profile made in Python (load_profile refuses a leading '-'; nothing checks a DeviceProfile)."""
    return path if not path or path.startswith(("/", "./")) else f"./{path}"


RUNNER_SOURCE = Path(__file__).resolve().parent.parent / "bench" / "runner.py"
# run(tether=True): the command's stdin is a pipe from this host, which writes a byte to it every HEARTBEAT_S
# and closes it when it stops waiting. The runner started with `--tether TETHER_S` ends itself when the pipe
# closes or stays silent that long: the host was stopped, or the link dropped without a word (sshd and adbd may
# never notice a network that went away). TETHER_S is above the time ssh itself takes to give up on a silent
# link (ServerAliveInterval 15 s x ServerAliveCountMax 4), so a slow link is not taken for a dead one first.
HEARTBEAT_S = 5.0
TETHER_S = 120.0
# wait_process(on_line=…): how often the output of a running command is read for new lines. A command's output
# is otherwise read only once it ends, and a runner that waits minutes for the device must say so meanwhile.
WATCH_S = 0.5
WORKDIR_OWNER_WHY = ("whoever else may write there could replace the runner or the model between the copy and the "
                     "run, and so run code as you")
WORKDIR_OWNER_FIX = ("point `workdir:` in the device profile at a new folder (edgekd makes it for you alone), or remove "
                     "the stale folder; edgekd does not change the permissions of a folder it did not make")


# Folders that hold other people's files: a profile's `workdir:` set to one of them is refused, both by a bench
# (which writes its runner, artifacts/, inputs/ and specs/ straight into the work directory) and by `edgekd devices
# --clean` (which removes only edgekd's names from it, but in such a folder those names are no longer edgekd's alone).
SHARED_FOLDERS = frozenset({
    "/", "/tmp", "/var/tmp", "/private/tmp", "/var", "/home", "/root", "/Users", "/usr", "/etc", "/opt", "/mnt",
    "/media", "/srv", "/data", "/data/local", "/data/local/tmp", "/sdcard", "/storage", "/storage/emulated/0",
    "/storage/self/primary"})
NOT_OWN_WORKDIR = "it is not a folder of edgekd's own (empty, the root, a parent or a folder others share)"
OWN_WORKDIR_FIX = ("point `workdir:` in the device profile at a folder of edgekd's alone, e.g. /tmp/edgekd-work "
                   "(boards) or /data/local/tmp/edgekd (Android)")


def own_workdir(device: Device, refusal: str, consequence: str) -> str:
    """The device's work directory (as benches push to it), unless it is no folder of edgekd's own: empty, the
    root, a parent (`..`), or a folder others share (/tmp, /data/local/tmp, home). One rule for whatever writes
    there or cleans it, so that a bench never fills a folder `edgekd devices --clean` will not clean. Refused as
    DeviceError "{refusal} the work directory …", why: NOT_OWN_WORKDIR + `consequence`."""
    import os
    import tempfile
    from pathlib import PurePosixPath

    workdir = device.workdir
    # POSIX keeps a leading "//" apart ("//tmp" is not "/tmp" to PurePosixPath); on Linux and Android it is "/"
    path = PurePosixPath("/" + workdir.lstrip("/") if workdir and workdir.startswith("/") else workdir or ".")
    shared = set(SHARED_FOLDERS)
    if device.profile.kind == "local":  # this machine's own shared folders, as they are spelt here
        shared |= {str(PurePosixPath(p)) for p in (tempfile.gettempdir(), os.path.expanduser("~"))}
    if not workdir or not path.name or ".." in path.parts or str(path) in shared:
        raise DeviceError(f"{refusal} the work directory {workdir!r} of device '{device.name}'",
                          why=f"{NOT_OWN_WORKDIR}, {consequence}", fix=OWN_WORKDIR_FIX)
    return str(path)


def bench_workdir(device: Device) -> str:
    """own_workdir for what pushes files there (a bench, the runner of `devices --info`), before any copy."""
    return own_workdir(device, "will not use",
                       "and a bench writes its runner, artifacts/, inputs/ and specs/ straight into it, among the "
                       "files of others, where `edgekd devices --clean` could not remove them")


def free_space_fix(device: str, first: str = "") -> str:
    """DeviceOutOfSpace's fix: every bench leaves its files in the work directory (edgekd/bench/clean.py)."""
    return (f"{first}free space on the device: `edgekd devices --clean {device}` removes the files earlier benches "
            "left in its work directory; or point `workdir:` in its profile at a larger file system")


def python_argv(profile: DeviceProfile) -> list[str]:
    """The device's Python as an argv prefix (a profile may name an emulator plus an interpreter)."""
    if not profile.python:
        raise RuntimeMissing(f"device '{profile.name}' has no Python configured",
                             fix="set `python:` in its profile, or use the runtime's native benchmark binary")
    return [profile.python] if isinstance(profile.python, str) else list(profile.python)


def runner_sha256() -> str:
    """The runner's sha256, read once per process: it names the runner and tells whether a device has it."""
    return _sha256_once(RUNNER_SOURCE)


@functools.cache
def _sha256_once(path: Path) -> str:
    from edgekd.rundir import sha256_file

    return sha256_file(path)


def runner_name() -> str:
    """The runner's file name on a device, after its content (as artifacts, inputs and specs are named): two
    edgekd versions that share a device's work directory (two environments, CI beside a user) each run their
    own runner, where one name let each overwrite the other's between its push and its run."""
    return f"edgekd_runner-{runner_sha256()[:16]}.py"


def info_via_runner(device: Device) -> dict[str, Any]:
    """Push the runner (if needed) and ask it to describe the device: the same code a benchmark runs."""
    import json

    bench_workdir(device)
    remote = f"{device.workdir}/{runner_name()}"
    if device.sha256(remote) != runner_sha256():
        device.push(RUNNER_SOURCE, remote)
    result = device.run([*python_argv(device.profile), remote, "--info"], timeout=120)
    try:
        info = json.loads(result.stdout)
    except json.JSONDecodeError:
        raise RuntimeMissing(
            f"the device's Python could not run edgekd's runner on '{device.name}'",
            why=(result.stderr.strip().splitlines() or [f"exit code {result.returncode}"])[-1],
            fix="install Python 3.9+ with numpy on the device (e.g. `pip install numpy onnxruntime` or "
                "`pip install numpy ai-edge-litert`), or set `python:` in the device profile"
                + ("; or `python: null` to use the benchmark tools under `native:`"
                   if device.profile.options.get("native") else ""),
        ) from None
    info["arch"] = (info.get("system") or {}).get("machine")  # the device's Python says, not this host's uname
    info["emulated"] = device.profile.emulated
    return info


def temperature(device: Device) -> dict[str, Any] | None:
    """The device's temperature now: hottest thermal zone in °C (Linux), or Android's thermal status.

    None when the device exposes neither (then nothing is waited for, and the result says so).
    """
    thermal = getattr(device, "thermal", None)
    if callable(thermal):  # adb: `dumpsys thermalservice` status (0 = none … 6 = shutdown)
        status = thermal()
        if status:
            return status
    # A fixed command line (no user input in it): the glob needs a shell.
    result = device.run(["sh", "-c", "cat /sys/class/thermal/thermal_zone*/temp 2>/dev/null"], timeout=30)
    values = [int(v) for v in result.stdout.split() if v.strip().lstrip("-").isdigit()]
    if not values:
        return None
    return {"max_celsius": max(values) / 1000.0, "zones": len(values)}


def cool_down(device: Device) -> dict[str, Any]:
    """Wait (bounded) until the device is below its profile's threshold; returns what was seen.

    Profile: `thermal: {max_celsius: 60, wait_seconds: 120, poll_seconds: 5}` (boards) or
    `thermal: {max_status: 1, ...}` (Android thermal status). No `thermal:` → just record the reading.
    """
    import time

    limits = device.profile.options.get("thermal") or {}
    started = time.monotonic()
    reading = temperature(device)
    first = reading
    while reading is not None and limits and time.monotonic() - started < float(limits.get("wait_seconds", 120)):
        hot = (("max_celsius" in limits and reading.get("max_celsius", 0) > float(limits["max_celsius"]))
               or ("max_status" in limits and reading.get("status", 0) > int(limits["max_status"])))
        if not hot:
            break
        time.sleep(float(limits.get("poll_seconds", 5)))
        reading = temperature(device)
    return {"before_wait": first, "at_start": reading, "waited_seconds": round(time.monotonic() - started, 1),
            "limits": limits or None}


def run_client(argv: list[str], *, device: str, what: str, timeout: float | None, after_timeout: str,
               install: str, stop_remote: Callable[[str], str | None] | None = None, tether: bool = False,
               on_line: Callable[[str], None] | None = None, merged: bool = False,
               ) -> "subprocess.CompletedProcess[str]":
    """Run a host-side client program for a device (ssh, scp, adb): an argv list, never a shell string,
    stdin closed so it can never read the caller's terminal (or, with `tether`, the heartbeat pipe of
    `wait_process`), and failures as DeviceError. `on_line` and `merged`: see wait_process.

    Stopping the client (on a timeout, Ctrl-C or SIGTERM) does not stop the command on the device:
    `stop_remote` gets the client's stderr so far, stops the command there and returns what happened (said
    in the timeout's error; else `after_timeout`). The output goes through files, not pipes, so that what
    the client printed before it was stopped can still be read."""
    import logging
    import shlex
    import subprocess
    import tempfile

    logging.getLogger(__name__).debug("%s: %s", device, shlex.join(argv))
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            returncode = wait_process(argv, stdout=out, stderr=err, timeout=timeout, tether=tether, on_line=on_line,
                                      merged=merged)
        except subprocess.TimeoutExpired:
            raise DeviceTimeout(f"'{what}' did not finish within {timeout:g} s on {device}",
                                why=(stop_remote(output_text(err)) if stop_remote else None) or after_timeout,
                                fix="check the command on the device") from None
        except FileNotFoundError:
            raise DeviceError(f"the client '{argv[0]}' is not installed on this machine", fix=install) from None
        except PermissionError:
            raise DeviceError(f"the client '{argv[0]}' cannot be executed", fix=install) from None
        except BaseException:  # Ctrl-C or SIGTERM: the client has been stopped; stop the command too
            if stop_remote is not None:
                try:
                    stop_remote(output_text(err))
                except Exception as exc:  # the interruption is what the user must see
                    logging.getLogger(__name__).debug("stopping the command on %s: %s", device, exc)
            raise
        return subprocess.CompletedProcess(argv, returncode, output_text(out), output_text(err))


def wait_process(argv: list[str], *, stdout: Any, stderr: Any, timeout: float | None, tether: bool,
                 on_line: Callable[[str], None] | None = None, merged: bool = False) -> int:
    """subprocess.run for argv (killed on a timeout or an interruption, which is re-raised); its exit status.

    stdin is /dev/null, or with `tether` a pipe this host writes a byte to every HEARTBEAT_S until the process
    ends: the link a `--tether` runner watches (through ssh or adb it reaches the command on the device).
    `on_line` is called, in this thread, with each line the process writes to `stderr` (to `stdout` when
    `merged`: adb shell v1 merges the command's stderr into it) within WATCH_S of its writing it, and at the
    latest when the process ends (not at all without os.pread: see _NewLines); the files keep the whole output
    all the same."""
    import subprocess

    proc = subprocess.Popen(argv, stdout=stdout, stderr=stderr,
                            stdin=subprocess.PIPE if tether else subprocess.DEVNULL)
    stop = _heartbeat(proc.stdin) if tether and proc.stdin is not None else None
    lines = _NewLines(stdout if merged else stderr, on_line) if on_line is not None else None
    try:
        if lines is None:
            return proc.wait(timeout=timeout)
        code = _wait_reading(proc, timeout, lines)
        lines.read(final=True)
        return code
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        if stop is not None:
            stop()


def _wait_reading(proc: "subprocess.Popen[bytes]", timeout: float | None, lines: "_NewLines") -> int:
    """proc.wait(timeout), reading new lines of its output every WATCH_S meanwhile."""
    import subprocess
    import time

    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            raise subprocess.TimeoutExpired(proc.args, timeout)  # type: ignore[arg-type]
        try:
            return proc.wait(timeout=WATCH_S if left is None else min(WATCH_S, left))
        except subprocess.TimeoutExpired:
            lines.read()


class _NewLines:
    """The lines a running process has written to an output file so far, each passed on once.

    Read with os.pread at an offset of our own: the process shares the file's offset (it inherited the file),
    so reading by moving it would make the process write over its own output. Where os has no pread
    (Windows), nothing is passed on: the caller still gets the whole output when the process ends."""

    def __init__(self, file: Any, on_line: Callable[[str], None]) -> None:
        import locale

        self.fd, self.on_line = file.fileno(), on_line
        self.offset, self.partial = 0, b""
        self.encoding = locale.getpreferredencoding(False)  # as output_text decodes the whole file

    def read(self, final: bool = False) -> None:
        """Pass on the complete lines written since the last read; with `final`, an unfinished last one too."""
        import os

        if not hasattr(os, "pread"):
            return
        while chunk := os.pread(self.fd, 1 << 16, self.offset):
            self.offset += len(chunk)
            self.partial += chunk
        *complete, self.partial = self.partial.split(b"\n")
        if final and self.partial:
            complete.append(self.partial)
            self.partial = b""
        for line in complete:
            self.on_line(line.rstrip(b"\r").decode(self.encoding, errors="replace"))


def _heartbeat(pipe: Any) -> Callable[[], None]:
    """Write a newline into pipe every HEARTBEAT_S from a daemon thread; the returned function stops it and
    closes the pipe (the command's stdin then ends). Writes never block: a full pipe just skips a beat."""
    import os
    import threading

    os.set_blocking(pipe.fileno(), False)
    done = threading.Event()

    def beat() -> None:
        while not done.wait(HEARTBEAT_S):
            try:
                os.write(pipe.fileno(), b"\n")
            except BlockingIOError:
                continue
            except (OSError, ValueError):  # the client has gone (or the pipe was closed)
                return

    thread = threading.Thread(target=beat, name="edgekd-heartbeat", daemon=True)
    thread.start()

    def stop() -> None:
        done.set()
        thread.join()
        try:
            pipe.close()
        except OSError:
            pass

    return stop


def output_text(file: Any) -> str:
    """A client's output file as subprocess's text mode gives it (locale encoding, universal newlines)."""
    import io

    file.seek(0)
    return io.TextIOWrapper(io.BytesIO(file.read()), errors="replace").read()
