"""An Android phone (or any adbd) through the `adb` client binary.

We call `adb [-P SERVER_PORT] -s SERIAL shell|push|pull …` with argv lists, so the user's adb server, its
keys and its connected devices (USB, `adb connect HOST:PORT`, emulators) keep working. A profile::

    name: phone
    kind: adb
    serial: R58M12345AB            # required: from `adb devices` (a Wi-Fi device is "HOST:PORT")
    workdir: /data/local/tmp/edgekd  # the default; /data/local/tmp is writable by the shell user
    python: null                   # stock Android; a Termux python (with numpy) makes info() use the runner
    adb: adb                       # optional: the adb binary (e.g. ~/Android/Sdk/platform-tools/adb)
    server_port: 5037              # optional: `adb -P` (else $ANDROID_ADB_SERVER_PORT or 5037)

How a command runs: argv is joined with `shlex.join` (each element arrives as one literal word in the
device's sh), then wrapped so the device shell reports the exit status itself::

    shell v2 (adb ≥ 1.0.35 and a device advertising `shell_v2`, Android 7+):
        adb shell -n -T "trap 'kill -KILL $p' HUP; ARGV & p=$!; wait $p; r=$?; echo __EDGEKD_RC=$r >&2; exit $r"
    shell v1 (older adbd: no exit codes, stderr merged into stdout):
        adb shell -n "ARGV; echo __EDGEKD_RC=$?"

The marker is there in v2 too because the adb client (checked with 1.0.41 / 29.0.6) exits 0 with the output
cut short when the connection drops mid-command: without the marker a lost phone would look like a clean run.
A missing marker therefore means the command never finished: DeviceUnreachable.
When the stream closes, adbd sends SIGHUP to the shell alone (AOSP shell_service.cpp); the trap kills the
command with it, so a timeout or a dropped link leaves nothing of ours running on the phone. (v1 shells run in
a PTY, whose hangup reaches the command itself.) A link that goes silent without closing (Wi-Fi gone) is seen
by neither; run(tether=True) leaves out `-n` and gives the command the heartbeat pipe from this host as stdin
(via fd 3: `{ ARGV <&3 3<&- & } 3<&0`), on which a `--tether` runner notices the silence (base.TETHER_S).
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import subprocess
from pathlib import Path, PurePosixPath
from typing import Any, Callable

from edgekd.devices.base import (
    DeviceError,
    DeviceOutOfSpace,
    DeviceProfile,
    DeviceTimeout,
    DeviceUnreachable,
    RunResult,
    free_space_fix,
    info_via_runner,
    not_an_option,
    run_client,
)

logger = logging.getLogger(__name__)

ADB_WORKDIR = "/data/local/tmp/edgekd"
_GENERIC_WORKDIR = DeviceProfile.__dataclass_fields__["workdir"].default  # "/tmp/edgekd-work": no /tmp on Android
ADB_TIMEOUT_S = 60.0  # for our own short commands (features, getprop, sha256sum, …)
# A copy's time limit: 2 minutes plus its size at 256 KiB/s, slower than any working USB or Wi-Fi adb link, so
# only a hung adb (a server or a link that stopped answering) reaches it; pulls (predictions) are of unknown size.
COPY_MIN_S = 120.0
COPY_SLOWEST_BYTES_PER_S = 256 * 1024
PULL_TIMEOUT_S = 900.0
RC_MARKER = "__EDGEKD_RC="
_RC_AT_END = re.compile(re.escape(RC_MARKER) + r"(\d+)\r?\n?\Z")
_HEX64 = re.compile(r"\b[0-9a-f]{64}\b")
GOVERNOR_PATH = "/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"
ANDROID_PROPS = {
    "model": "ro.product.model",
    "manufacturer": "ro.product.manufacturer",
    "device": "ro.product.device",
    "abi": "ro.product.cpu.abi",
    "release": "ro.build.version.release",
    "sdk": "ro.build.version.sdk",
    "soc": "ro.soc.model",  # Android 12+
    "hardware": "ro.hardware",
}
_GETPROP_LINE = re.compile(r"^\[([^\]]+)\]: \[(.*)\]\s*$")

# android.os.Temperature / PowerManager thermal status names (dumpsys thermalservice prints the numbers).
THERMAL_STATUS = {0: "none", 1: "light", 2: "moderate", 3: "severe", 4: "critical", 5: "emergency", 6: "shutdown"}
TEMPERATURE_TYPES = {-1: "unknown", 0: "cpu", 1: "gpu", 2: "battery", 3: "skin", 4: "usb_port",
                     5: "power_amplifier", 6: "bcl_voltage", 7: "bcl_current", 8: "bcl_percentage", 9: "npu",
                     10: "tpu", 11: "display", 12: "modem", 13: "soc", 14: "wifi", 15: "camera",
                     16: "flashlight", 17: "speaker", 18: "ambient", 19: "pogo"}
_TEMPERATURE = re.compile(r"Temperature\{([^}]*)\}")

# What the adb client prints (stdout for push/pull, stderr for the rest) when it cannot talk to the device.
_NOT_FOUND = re.compile(r"device '.*' not found|no devices/emulators found|device not found")
_OFFLINE = re.compile(r"device offline|device still connecting|error: closed|protocol fault|"
                      r"failed to get feature set|connection reset|Connection refused|"
                      r"cannot connect to daemon|failed to start daemon|could not read ok from ADB Server")
_UNAUTHORIZED = re.compile(r"device unauthorized|device still authorizing")
_NO_SPACE = ("No space left on device", "Disk quota exceeded")
_DENIED = ("Read-only file system", "Permission denied")


class AdbDevice:
    """A device reached through the adb client; the adb server (and its connections) outlive this object."""

    def __init__(self, profile: DeviceProfile) -> None:
        self.profile = profile
        opts = dict(profile.options)
        self.serial = _serial(opts.get("serial"), profile.name)
        self.adb = _adb_path(opts.get("adb"), profile.name)
        self.server_port = _server_port(opts.get("server_port"), profile.name)
        self._workdir = not_an_option(profile.workdir if profile.workdir and profile.workdir != _GENERIC_WORKDIR
                                      else ADB_WORKDIR)
        self._shell_v2: bool | None = None

    # ------------------------------------------------------------------ protocol
    @property
    def name(self) -> str:
        return self.profile.name

    @property
    def workdir(self) -> str:
        return self._workdir

    def info(self) -> dict[str, Any]:
        """The runner's --info when the profile has a Python, else a description from getprop; plus Android facts."""
        android = self.android_props()
        if self.profile.python:
            info = info_via_runner(self)
        else:
            info = {
                "schema": "edgekd.adb-info/1",
                "python": None,
                "numpy": None,
                "runtimes": {},
                "system": {
                    "machine": android.get("abi"),
                    "system": "Android",
                    "release": android.get("release"),
                    "cpu_model": android.get("soc") or android.get("hardware"),
                    "cpu_count_logical": None,
                    "cpu_features": [],
                    "governor": self.governor(),
                    "affinity": None,
                },
                "emulated": self.profile.emulated,
            }
            info["system"].update(self._cpu_from_shell())
        info["android"] = android
        info["serial"] = self.serial
        info["thermal"] = self.thermal()
        return info

    def _cpu_from_shell(self) -> dict[str, Any]:
        """CPU model (the SoC with its core mix), logical CPUs and features as /proc/cpuinfo tells them, the way a
        bench result on this phone names its CPU (native_system); empty when the shell did not answer."""
        from edgekd.bench.native_system import native_system

        described = native_system(self) or {}
        return {key: described[key] for key in ("cpu_model", "cpu_count_logical", "cpu_features") if described.get(key)}

    def push(self, local: Path, remote: str) -> None:
        local = Path(local)
        if not local.is_file():
            raise DeviceError(f"cannot push {local} to {self.name}", why="no such local file",
                              fix="check the path (it must be a regular file)")
        _check_remote(remote, self.name)
        # Absolute: adb would read a relative path that starts with '-' (a folder "-exp") as one of its options.
        size = local.stat().st_size
        proc = self._copy(["push", str(local.resolve()), remote], COPY_MIN_S + size / COPY_SLOWEST_BYTES_PER_S,
                          f"{local.name} ({size / 1e6:.1f} MB)")
        if proc.returncode == 0:
            return
        output = proc.stdout + proc.stderr
        self._raise_transport_error(output, f"cannot push {local.name} to {self.name}")
        if not output.strip():  # the adb server died, or the link dropped, mid-copy: adb exits 1 and says nothing
            raise self._lost(proc, f"pushing {local.name}")
        if any(s in output for s in _NO_SPACE):
            raise DeviceOutOfSpace(
                f"no space left on {self.name} for {local.name} ({local.stat().st_size / 1e6:.1f} MB)",
                why=_adb_message(output, proc.returncode),
                fix=free_space_fix(self.name, "see what is left with `"
                                   + self.by_hand("shell", "df", "-h", str(PurePosixPath(remote).parent)) + "`; "))
        fix = ("push under /data/local/tmp (the shell user cannot write elsewhere on a stock phone)"
               if any(s in output for s in _DENIED) else "check the remote path and that the device is unlocked")
        raise DeviceError(f"cannot push {local.name} to {self.name}:{remote}",
                          why=_adb_message(output, proc.returncode), fix=fix)

    def pull(self, remote: str, local: Path) -> None:
        local = Path(local).resolve()  # absolute, as in push()
        _check_remote(remote, self.name)
        local.parent.mkdir(parents=True, exist_ok=True)
        partial = local.with_name(f".{local.name}.adb-part")  # never leave half a file under the real name
        try:
            proc = self._copy(["pull", remote, str(partial)], PULL_TIMEOUT_S, remote)
            if proc.returncode == 0 and partial.is_file():
                os.replace(partial, local)
                return
        finally:
            partial.unlink(missing_ok=True)
        output = proc.stdout + proc.stderr
        self._raise_transport_error(output, f"cannot pull {remote} from {self.name}")
        if not output.strip():  # as in push()
            raise self._lost(proc, f"pulling {PurePosixPath(remote).name}")
        missing = "does not exist" in output or "No such file" in output
        raise DeviceError(f"cannot pull {self.name}:{remote} to {local}", why=_adb_message(output, proc.returncode),
                          fix="check the remote path (the command that writes it may have failed)" if missing
                          else "check the paths and permissions on both sides")

    def _copy(self, args: list[str], timeout: float, what: str) -> subprocess.CompletedProcess:
        """adb push/pull within `timeout`: a hung adb server or a link that stopped answering is a clear error,
        not a bench that waits forever."""
        try:
            return self._adb(args, timeout=timeout, what=f"adb {args[0]}")
        except DeviceTimeout:
            raise DeviceTimeout(f"adb {args[0]} of {what} did not finish within {timeout:.0f} s on {self.name}",
                                why="the adb server or the link to the device stopped answering (the copy was "
                                    "given far longer than a working USB or Wi-Fi link needs)",
                                fix=f"check the device with `{self.by_hand('get-state')}`, and restart the adb "
                                    f"server (`{self.by_hand('kill-server', serial=False)}`) if that hangs too"
                                ) from None

    def run(self, argv: list[str], *, timeout: float | None = None, tether: bool = False,
            on_line: Callable[[str], None] | None = None) -> RunResult:
        """Run argv on the device; each element arrives as one literal argument; the exit status is the command's.

        `tether` (shell v2 only, see can_tether): the command's stdin is the heartbeat pipe from this host
        (base.TETHER_S), forwarded by adb until the client ends, for a `--tether` runner to watch.
        `on_line` gets the lines of its stderr as adb passes them on (the exit status marker among them); on a
        v1 shell, which merges stderr into stdout, the lines of that (the caller tells them apart by content)."""
        if not argv or not all(isinstance(a, str) for a in argv):
            raise DeviceError(f"cannot run {argv!r} on {self.name}", why="argv must be a non-empty list of strings",
                              fix="pass the command as a list, e.g. ['getprop', 'ro.product.model']")
        command = shlex.join(argv)
        tether = tether and self.shell_v2()
        if self.shell_v2():
            # adbd hangs up only this shell when the stream closes (the adb client stopped on a timeout, or the
            # link dropped): the trap passes that on, so the command does not live on, e.g. as a hung runner.
            # A command started with `&` gets /dev/null as stdin; a tethered one gets the shell's back via fd 3.
            start = f"{{ {command} <&3 3<&- & }} 3<&0;" if tether else f"{command} &"
            script = (f"trap 'kill -KILL $__edgekd_pid 2>/dev/null' HUP; {start} __edgekd_pid=$!; "
                      f"wait $__edgekd_pid; __edgekd_rc=$?; echo {RC_MARKER}$__edgekd_rc >&2; exit $__edgekd_rc")
            args = ["shell", "-T", script] if tether else ["shell", "-n", "-T", script]
        else:
            script = f"{command}; echo {RC_MARKER}$?"
            args = ["shell", "-n", script]
        if script.startswith("-"):
            script = " " + script  # adb would take a leading '-' for one of its own options
            args[-1] = script
        proc = self._adb(args, timeout=timeout, what=argv[0], tether=tether, on_line=on_line,
                         merged=not self._shell_v2)
        stdout, stderr = proc.stdout, proc.stderr
        marked = stderr if self._shell_v2 else stdout
        match = _RC_AT_END.search(marked)
        if match is None:
            self._raise_transport_error(stdout + stderr, f"cannot run '{argv[0]}' on {self.name}")
            raise self._lost(proc, f"'{argv[0]}' was running", "without the exit status")
        code = int(match.group(1))
        if self._shell_v2:
            stderr = stderr[: match.start()]
        else:
            stdout = stdout[: match.start()]
        return RunResult(code, stdout, stderr)

    def can_tether(self) -> bool:
        """Shell v2 forwards stdin and its end; a v1 shell runs in a PTY, whose hangup reaches the command."""
        return self.shell_v2()

    def sha256(self, remote: str) -> str | None:
        """sha256 of a file on the device via toybox's sha256sum; None when the file (or the tool) is missing."""
        _check_remote(remote, self.name)
        result = self.run(["sha256sum", remote], timeout=ADB_TIMEOUT_S * 2)
        match = _HEX64.match(result.stdout.strip())
        if result.returncode != 0 or match is None:
            if result.returncode == 127:
                logger.debug("%s has no sha256sum; files will be pushed every time", self.name)
            return None
        return match.group(0)

    def close(self) -> None:
        """Nothing to release: the adb server keeps the device connected for the next user."""

    def __enter__(self) -> AdbDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ Android facts
    def shell_v2(self) -> bool:
        """Whether the device speaks adb's shell protocol v2 (exit codes, separate stderr); asked once."""
        if self._shell_v2 is None:
            proc = self._adb(["features"], timeout=ADB_TIMEOUT_S, what="adb features")
            if proc.returncode != 0:
                output = proc.stdout + proc.stderr
                self._raise_transport_error(output, f"cannot reach {self.name}")
                raise DeviceError(f"`adb features` failed for {self.name}",
                                  why=_adb_message(output, proc.returncode),
                                  fix="use adb from Android SDK platform-tools ≥ 24 (`adb version`)")
            self._shell_v2 = "shell_v2" in proc.stdout.split()
        return self._shell_v2

    def android_props(self) -> dict[str, str | None]:
        """Model, ABI, Android release, … from one `getprop` (all properties); None for the ones unset."""
        result = self.run(["getprop"], timeout=ADB_TIMEOUT_S)
        props: dict[str, str] = {}
        for line in result.stdout.splitlines():
            match = _GETPROP_LINE.match(line)
            if match:
                props[match.group(1)] = match.group(2)
        return {key: (props.get(prop) or None) for key, prop in ANDROID_PROPS.items()}

    def getprop(self, key: str) -> str | None:
        result = self.run(["getprop", key], timeout=ADB_TIMEOUT_S)
        value = result.stdout.strip()
        return value if result.returncode == 0 and value else None

    def governor(self) -> str | None:
        """cpu0's cpufreq governor (readable by the shell user on most phones), or None."""
        result = self.run(["cat", GOVERNOR_PATH], timeout=ADB_TIMEOUT_S)
        value = result.stdout.strip()
        return value if result.returncode == 0 and value else None

    def thermal(self) -> dict[str, Any] | None:
        """The thermal status from `dumpsys thermalservice` (Android 10+), or None where it is unavailable."""
        result = self.run(["dumpsys", "thermalservice"], timeout=ADB_TIMEOUT_S)
        if result.returncode != 0:
            return None
        return parse_thermal(result.stdout)

    # ------------------------------------------------------------------ the adb client
    def adb_argv(self, args: list[str]) -> list[str]:
        return [*self._server_argv(), "-s", self.serial, *args]

    def _server_argv(self) -> list[str]:
        """The adb binary and server port of the profile: what every command, and every one a fix names, uses."""
        return [self.adb, *(["-P", str(self.server_port)] if self.server_port is not None else [])]

    def by_hand(self, *args: str, serial: bool = True) -> str:
        """An adb command line for a fix to show (the profile's adb, server port and serial)."""
        return shlex.join(self.adb_argv(list(args)) if serial else [*self._server_argv(), *args])

    def _adb(self, args: list[str], *, timeout: float | None, what: str, tether: bool = False,
             on_line: Callable[[str], None] | None = None, merged: bool = False) -> subprocess.CompletedProcess:
        # -n (in the shell commands) also tells the device that stdin is closed.
        return run_client(self.adb_argv(args), device=self.name, what=what, timeout=timeout, tether=tether,
                          on_line=on_line, merged=merged,
                          after_timeout="the adb client was stopped, and with it the command on the device",
                          install="install adb (Debian/Ubuntu: `apt-get install adb`; else Android SDK platform-tools) "
                                  "or set `adb:` in the device profile to its path")

    def _raise_transport_error(self, output: str, what: str) -> None:
        """Raise DeviceUnreachable when the adb client says the device is missing, offline or unauthorized."""
        why = _adb_message(output, None)
        if _UNAUTHORIZED.search(output):
            raise DeviceUnreachable(f"{what}: {self.serial} has not authorized this computer", why=why,
                                    fix="unlock the phone and accept the 'Allow USB debugging?' prompt, then check "
                                        f"`{self.by_hand('devices', serial=False)}` lists {self.serial} as 'device'")
        if _NOT_FOUND.search(output):
            raise DeviceUnreachable(f"{what}: adb does not see {self.serial}", why=why,
                                    fix=f"check `{self.by_hand('devices', serial=False)}`; for a Wi-Fi device run "
                                        f"`{self.by_hand('connect', self.serial, serial=False)}`; "
                                        "for USB check the cable and that USB debugging is on")
        if _OFFLINE.search(output):
            raise DeviceUnreachable(f"{what}: {self.serial} is offline or the connection broke", why=why,
                                    fix=f"check `{self.by_hand('devices', serial=False)}`; reconnect "
                                        f"(`{self.by_hand('connect', self.serial, serial=False)}` for Wi-Fi, replug "
                                        "USB), or restart the server with "
                                        f"`{self.by_hand('kill-server', serial=False)}`")

    def _lost(self, proc: subprocess.CompletedProcess, during: str,
              missing: str = "and no message") -> DeviceUnreachable:
        """The link or the adb server went away while a command or a copy ran (adb said nothing of its own)."""
        return DeviceUnreachable(
            f"lost the connection to {self.name} ({self.serial}) while {during}",
            why=self._state_why(proc, missing),
            fix=f"check the cable or Wi-Fi and `{self.by_hand('get-state')}`; reconnect with "
                f"`{self.by_hand('connect', self.serial, serial=False)}` for a Wi-Fi device, keep the phone awake, "
                "then run again")

    def _state_why(self, proc: subprocess.CompletedProcess, missing: str) -> str:
        """Why a command ended without its exit marker, or a copy without a message: the server's view of the
        device, and what we got."""
        try:
            state = self._adb(["get-state"], timeout=ADB_TIMEOUT_S, what="adb get-state")
            now = (state.stdout.strip() or _adb_message(state.stdout + state.stderr, state.returncode))
        except DeviceError as exc:
            now = exc.what
        got = f"adb exited {proc.returncode} after {len(proc.stdout)} bytes of output {missing}"
        return f"{got}; `adb get-state` now says: {now}"


def parse_thermal(text: str) -> dict[str, Any] | None:
    """`dumpsys thermalservice` → {"status", "status_name", "temperatures": [{name, type, value, status}]}.

    The temperatures come from "Current temperatures from HAL" when present, else from the cached ones.
    None when the text has no "Thermal Status:" line (no thermal service: Android < 10, or an error).
    """
    status_match = re.search(r"^\s*Thermal Status:\s*(-?\d+)", text, re.MULTILINE)
    if status_match is None:
        return None
    status = int(status_match.group(1))
    sections: dict[str, list[dict[str, Any]]] = {}
    section = ""
    for line in text.splitlines():
        if line and not line[0].isspace() and line.rstrip().endswith(":"):
            section = line.strip().rstrip(":")
            continue
        for body in _TEMPERATURE.findall(line):
            fields = dict(part.strip().partition("=")[::2] for part in body.split(","))
            try:
                kind = int(fields["mType"])
                entry = {"name": fields.get("mName"), "type": TEMPERATURE_TYPES.get(kind, str(kind)),
                         "value": float(fields["mValue"]), "status": int(fields.get("mStatus", 0))}
            except (KeyError, ValueError):
                continue
            sections.setdefault(section, []).append(entry)
    temperatures = sections.get("Current temperatures from HAL") or sections.get("Cached temperatures") or []
    return {"status": status, "status_name": THERMAL_STATUS.get(status, "unknown"), "temperatures": temperatures}


# ---------------------------------------------------------------------- option validation
def _serial(value: Any, profile: str) -> str:
    if value is None or value == "":
        raise DeviceError(f"device '{profile}' has no `serial`",
                          fix="set `serial:` in its profile to a serial from `adb devices` (HOST:PORT over Wi-Fi)")
    text = str(value)
    if not isinstance(value, (str, int)) or isinstance(value, bool) or text.startswith("-") or any(
            c.isspace() or ord(c) < 32 for c in text):
        raise DeviceError(f"device '{profile}': `serial` must be one word not starting with '-', got {value!r}",
                          fix="copy the serial from `adb devices`")
    return text


def _adb_path(value: Any, profile: str) -> str:
    if value is None or value == "":
        return "adb"
    if not isinstance(value, (str, os.PathLike)):
        raise DeviceError(f"device '{profile}': `adb` must be a path, got {value!r}", fix="fix `adb:` in its profile")
    return os.path.expanduser(os.fspath(value))


def _server_port(value: Any, profile: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        port = int(value)
        if isinstance(value, bool) or port != float(value) or not 1 <= port <= 65535:
            raise ValueError
    except (TypeError, ValueError):
        raise DeviceError(f"device '{profile}': `server_port` must be a port number, got {value!r}",
                          fix="fix `server_port:` in its profile (adb's default is 5037)") from None
    return port


def _check_remote(remote: str, name: str) -> None:
    if not isinstance(remote, str) or not remote or "\n" in remote or "\0" in remote:
        raise DeviceError(f"invalid remote path {remote!r} on {name}", fix="name a file on the device")
    if remote.startswith("-"):
        raise DeviceError(f"invalid remote path {remote!r} on {name}", why="adb would read it as an option",
                          fix="use an absolute path, e.g. under /data/local/tmp")


def _adb_message(output: str, returncode: int | None) -> str:
    """The adb client's error line (it prints progress lines around it), else its last line or the exit code."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for line in lines:
        if "error" in line.lower() or "failed" in line.lower():
            return line.removeprefix("adb: ")
    if lines:
        return lines[-1]
    return f"exit code {returncode}" if returncode is not None else "no output"
