"""The emulated ARM64 board on this machine (`make arm-board`): a Debian arm64 userspace run by qemu-aarch64,
reached over SSH on 127.0.0.1 like a real board (devices/arm64-emulated.yaml).

- EmulatedBoard: an SSHDevice whose profile names the board's folder (`board_dir:`). Before connecting it
  checks here what an SSH error would hide (root filesystem built, emulator installed, sshd serving), so each
  gets its own message and fix. It is always `emulated`: its latency is qemu's, not a board's.
- apt_mirror(): the Debian mirror of this machine's apt sources, which setup.sh builds the board from.
- serve() / stop(): the board's sshd (keys and known_hosts where its profile says).

    python -m edgekd.devices.emulated mirror
    python -m edgekd.devices.emulated serve|stop|status PROFILE.yaml
"""

from __future__ import annotations

import dataclasses
import functools
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekd.devices.base import DeviceError, DeviceProfile, DeviceUnreachable, RuntimeMissing
from edgekd.devices.ssh import SSHDevice, _port
from edgekd.errors import EdgeKDError

if TYPE_CHECKING:
    from edgekd.devices.loopback import LoopbackServer

SETTINGS_FILE = "board.env"  # KEY=value lines shared with setup.sh and the `python` launcher
APT_SOURCES = Path("/etc/apt")


# ---------------------------------------------------------------------- the board's folder
def read_settings(path: Path) -> dict[str, str]:
    """KEY=value lines (optionally quoted, # comments) of board.env: the subset of sh both sides read alike."""
    settings: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        words = shlex.split(value, comments=True)
        settings[key.strip()] = " ".join(words)
    return settings


@dataclass(frozen=True)
class Board:
    """devices/arm64/: the launcher, its settings, the root filesystem and the sshd state (ssh/)."""

    folder: Path

    @property
    def rootfs(self) -> Path:
        return self.folder / "rootfs"

    @property
    def ssh_dir(self) -> Path:
        return self.folder / "ssh"

    @property
    def settings(self) -> dict[str, str]:
        path = self.folder / SETTINGS_FILE
        if not path.is_file():
            raise DeviceError(f"{self.folder} is not an emulated board's folder", why=f"it has no {SETTINGS_FILE}",
                              fix="point `board_dir:` at the repository's devices/arm64 folder")
        return read_settings(path)

    @property
    def ready_file(self) -> Path:
        return self.rootfs / self.settings["BOARD_READY"]

    def check(self, name: str) -> None:
        """The root filesystem is complete and the emulator is installed, or a DeviceError says what to run."""
        settings = self.settings
        if not self.ready_file.is_file():
            state = (f"is half-built ({self.rootfs} has no {settings['BOARD_READY']}, written last)"
                     if self.rootfs.is_dir() else f"is not built ({self.rootfs} does not exist)")
            raise RuntimeMissing(f"the emulated board '{name}' {state}",
                                 fix="run `make arm-board` (an interrupted build resumes where it stopped; "
                                     "`devices/arm64/setup.sh --rebuild` starts over)")
        emulator = settings["BOARD_EMULATOR"]
        if shutil.which(emulator) is None:
            raise RuntimeMissing(f"the emulator {emulator} of the board '{name}' is not installed",
                                 fix="apt-get install qemu-user-static (`make arm-board` installs it when run as root)")

    def emulator_info(self) -> dict[str, Any]:
        """What runs the board: the emulator, its version and the CPU model it emulates."""
        settings = self.settings
        program = shutil.which(settings["BOARD_EMULATOR"])
        version = None
        if program:
            out = subprocess.run([program, "--version"], capture_output=True, text=True, check=False,
                                 stdin=subprocess.DEVNULL).stdout
            match = re.search(r"version (\S+)", out)
            version = match.group(1) if match else None
        return {"program": settings["BOARD_EMULATOR"], "version": version, "cpu": settings["BOARD_CPU"],
                "model": settings["BOARD_MODEL"]}


def board_of(profile: DeviceProfile) -> Board:
    return Board(Path(str(profile.options["board_dir"])).expanduser())


# ---------------------------------------------------------------------- the device
class EmulatedBoard(SSHDevice):
    """An SSH board that is this machine running qemu-aarch64: checked here first, and always `emulated`."""

    def __init__(self, profile: DeviceProfile) -> None:
        from edgekd.devices.loopback import answers_ssh

        profile = dataclasses.replace(profile, emulated=True)  # by definition, whatever the profile says
        self.board = board_of(profile)
        self.board.check(profile.name)
        port = _port(profile.options.get("port"), profile.name)
        if profile.options.get("host") in ("127.0.0.1", "localhost") and port and not answers_ssh(port, timeout=3):
            # before SSHDevice checks the key files: a board never served has none yet
            raise DeviceUnreachable(f"the emulated board '{profile.name}' is not being served",
                                    why=f"nothing answers SSH on 127.0.0.1:{port}",
                                    fix="run `make arm-board`: it starts the board's sshd (a reboot stops it)")
        super().__init__(profile)

    @functools.cached_property
    def emulator(self) -> dict[str, Any]:
        """What runs the board (program, version, CPU model): results record it beside `emulated: true`."""
        return self.board.emulator_info()

    def info(self) -> dict[str, Any]:
        return {**super().info(), "emulator": self.emulator}


# ---------------------------------------------------------------------- apt sources
def _deb822_stanzas(text: str) -> list[dict[str, str]]:
    stanzas, current, key = [], {}, None
    for line in text.splitlines() + [""]:
        if line.startswith("#"):
            continue
        if not line.strip():
            if current:
                stanzas.append(current)
            current, key = {}, None
        elif line[0] in " \t" and key:  # continuation line
            current[key] += " " + line.strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            key = key.strip().lower()
            current[key] = value.strip()
    return stanzas


def apt_entries(root: Path = APT_SOURCES) -> list[tuple[str, list[str]]]:
    """(URI, suites) of every enabled `deb` source: sources.list and sources.list.d/*.list (one-line format),
    sources.list.d/*.sources (deb822). Other files there (e.g. *.disabled) are ignored, as apt does."""
    entries: list[tuple[str, list[str]]] = []
    one_line = [root / "sources.list", *sorted((root / "sources.list.d").glob("*.list"))]
    for path in one_line:
        if not path.is_file():
            continue
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            line = re.sub(r"\[[^\]]*\]", " ", line.split("#", 1)[0])  # drop comments and [options]
            words = line.split()
            if len(words) >= 3 and words[0] == "deb":
                entries.append((words[1], [words[2]]))
    for path in sorted((root / "sources.list.d").glob("*.sources")):
        for stanza in _deb822_stanzas(path.read_text(encoding="utf-8", errors="replace")):
            if "deb" not in stanza.get("types", "").split() or stanza.get("enabled", "yes").lower() == "no":
                continue
            for uri in stanza.get("uris", "").split():
                entries.append((uri, stanza.get("suites", "").split()))
    return entries


def apt_mirror(root: Path = APT_SOURCES, os_release: Path = Path("/etc/os-release")) -> str:
    """The Debian mirror this machine installs from: the URI of its main suite (not -security/-updates)."""
    release = {}
    if os_release.is_file():
        for line in os_release.read_text(encoding="utf-8").splitlines():
            key, _, value = line.partition("=")
            release[key] = value.strip().strip('"')
    distro, codename = release.get("ID", ""), release.get("VERSION_CODENAME", "")
    if distro != "debian":
        raise DeviceError(f"this machine is not Debian ({distro or 'unknown'}): its apt mirror has no Debian arm64",
                          fix="set MIRROR to a Debian mirror, e.g. `make arm-board MIRROR=http://deb.debian.org/debian`")
    for uri, suites in apt_entries(root):
        if codename in suites and uri.startswith(("http://", "https://")):
            return uri.rstrip("/")
    raise DeviceError(f"no Debian mirror for '{codename}' in this machine's apt sources ({root})",
                      fix="set MIRROR, e.g. `make arm-board MIRROR=http://deb.debian.org/debian`")


# ---------------------------------------------------------------------- the board's sshd
def _server(profile: DeviceProfile) -> "LoopbackServer":
    from edgekd.devices.loopback import LoopbackServer

    options = profile.options
    if not options.get("board_dir") or not options.get("port"):
        raise DeviceError(f"device '{profile.name}' is not an emulated board served on this machine",
                          fix="its profile needs `board_dir:` and `port:` (see devices/arm64-emulated.yaml)")
    client_key, known_hosts = options.get("identity_file"), options.get("known_hosts")
    return LoopbackServer(board_of(profile).ssh_dir, port=int(options["port"]),
                          client_key=Path(str(client_key)).expanduser() if client_key else None,
                          known_hosts=Path(str(known_hosts)).expanduser() if known_hosts else None)


def serve(profile: DeviceProfile) -> str:
    """Start the board's sshd unless it runs; says which."""
    server = _server(profile)
    pid = server.daemon_pid()
    if pid is not None:
        return f"the board's sshd already runs on 127.0.0.1:{server.port} (pid {pid})"
    pid = server.start_daemon()
    return f"the board's sshd runs on 127.0.0.1:{server.port} (pid {pid}; stop it with devices/arm64/setup.sh --stop)"


def stop(profile: DeviceProfile) -> str:
    pid = _server(profile).stop_daemon()
    return "the board's sshd was not running" if pid is None else f"stopped the board's sshd (pid {pid})"


def status(profile: DeviceProfile) -> str:
    server = _server(profile)
    pid = server.daemon_pid()
    return f"not running (port {server.port})" if pid is None else f"running on 127.0.0.1:{server.port} (pid {pid})"


def main(argv: list[str]) -> int:
    """For setup.sh: print the mirror, or serve/stop/report the board's sshd; errors as one message, exit 2."""
    from edgekd.devices.profiles import load_profile

    commands = {"serve": serve, "stop": stop, "status": status}
    try:
        if argv == ["mirror"]:
            print(apt_mirror())
        elif len(argv) == 2 and argv[0] in commands:
            print(commands[argv[0]](load_profile(Path(argv[1]))))
        else:
            print("usage: python -m edgekd.devices.emulated mirror | serve|stop|status PROFILE.yaml", file=sys.stderr)
            return 2
    except EdgeKDError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
