"""An OpenSSH server on 127.0.0.1, run as the current user from generated keys and config in one folder.

Two users, one implementation: the emulated ARM64 board (`make arm-board`) is served by one that outlives the
command (start_daemon / stop_daemon, edgekd.devices.emulated), and the tests run one in the foreground
(tests/sshd.py). Nothing outside the folder is touched except /run/sshd, which Debian's sshd needs as root.
Logins: public key only, for the user running it (root in CI: root logs in with the generated key only).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable

from edgekd.devices.base import DeviceError
from edgekd.rundir import atomic_write

INSTALL_HINT = "sshd (OpenSSH server) is not installed: apt-get install openssh-server"
PRIVSEP_DIR = Path("/run/sshd")  # Debian's privilege separation directory; sshd refuses to start without it


def find_sshd() -> str | None:
    """sshd's absolute path (it must be started by absolute path to re-exec itself), or None."""
    for candidate in (shutil.which("sshd"), "/usr/sbin/sshd", "/usr/local/sbin/sshd"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keygen(path: Path, comment: str) -> Path:
    """An unencrypted ed25519 key pair at path / path.pub (mode 0600, as ssh and sshd insist)."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
                   check=True, capture_output=True, stdin=subprocess.DEVNULL)
    return path


def answers_ssh(port: int, timeout: float = 1.0) -> bool:
    """Does something on 127.0.0.1:port greet with an SSH banner?"""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            return s.recv(64).startswith(b"SSH-")
    except OSError:
        return False


def alive(pid: int) -> bool:
    """A process that exists and is not a zombie (a container's init may never reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2:].split()[0] != "Z"


def current_user() -> str:
    import pwd

    return pwd.getpwuid(os.geteuid()).pw_name


class LoopbackServer:
    """Keys, authorized_keys, sshd_config and known_hosts of an sshd on 127.0.0.1:port, all in `root`.

    Existing keys are kept (a board's clients keep trusting it across restarts). `client_key` and
    `known_hosts` default to files in `root`; a device profile may name other places for them.
    """

    def __init__(self, root: Path, *, port: int = 0, client_key: Path | None = None,
                 known_hosts: Path | None = None, sshd: str | None = None) -> None:
        self.root = Path(root)
        self.sshd = sshd or find_sshd()
        if self.sshd is None:
            raise DeviceError("cannot serve SSH on 127.0.0.1", why=INSTALL_HINT,
                              fix="apt-get install openssh-server openssh-client")
        if shutil.which("ssh-keygen") is None:
            raise DeviceError("cannot generate SSH keys", why="ssh-keygen is not installed",
                              fix="apt-get install openssh-client")
        self.root.mkdir(parents=True, exist_ok=True)
        self.host_key = self._key(self.root / "ssh_host_ed25519_key", "edgekd-loopback-host")
        self.client_key = self._key(Path(client_key or self.root / "id_ed25519"), "edgekd-loopback-client")
        self.authorized_keys = self.root / "authorized_keys"
        atomic_write(self.authorized_keys, Path(f"{self.client_key}.pub").read_text())
        self.known_hosts = Path(known_hosts or self.root / "known_hosts")
        self.config = self.root / "sshd_config"
        self.log = self.root / "sshd.log"
        self.pid_file = self.root / "sshd.pid"
        self.user = current_user()
        self.port = port

    @staticmethod
    def _key(path: Path, comment: str) -> Path:
        if not (path.is_file() and Path(f"{path}.pub").is_file()):
            path.parent.mkdir(parents=True, exist_ok=True)
            for stale in (path, Path(f"{path}.pub")):  # half a pair: ssh-keygen would ask before overwriting
                stale.unlink(missing_ok=True)
            keygen(path, comment)
        return path

    # ------------------------------------------------------------------ what a client needs
    def known_hosts_line(self, public_key: Path | None = None) -> str:
        """A known_hosts line for this server (non-standard port: `[127.0.0.1]:PORT keytype base64`)."""
        keytype, blob = Path(f"{public_key or self.host_key}.pub").read_text().split()[:2]
        return f"[127.0.0.1]:{self.port} {keytype} {blob}\n"

    def write_known_hosts(self) -> None:
        self.known_hosts.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.known_hosts, self.known_hosts_line())

    def profile_options(self) -> dict[str, object]:
        """SSHDevice profile options that reach this server and nothing else (no agent, no ~/.ssh/config)."""
        return {
            "host": "127.0.0.1",
            "port": self.port,
            "user": self.user,
            "identity_file": str(self.client_key),
            "known_hosts": str(self.known_hosts),
            "config_file": "/dev/null",
            "ssh_options": {"IdentitiesOnly": "yes", "IdentityAgent": "none"},
        }

    # ------------------------------------------------------------------ configuration
    def write_config(self) -> None:
        """sshd_config for the current port, checked with `sshd -t`."""
        if os.geteuid() == 0 and not PRIVSEP_DIR.is_dir():
            PRIVSEP_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
        atomic_write(self.config, "\n".join([
            "ListenAddress 127.0.0.1",
            f"Port {self.port}",
            f"HostKey {self.host_key}",
            f"PidFile {self.pid_file}",
            f"AuthorizedKeysFile {self.authorized_keys}",
            "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "StrictModes no",  # the folder's modes would otherwise be checked like ~/.ssh
            "PrintMotd no",
            "PrintLastLog no",
            "X11Forwarding no",
            "AllowTcpForwarding no",
            "MaxSessions 20",
            "Subsystem sftp internal-sftp",  # scp's SFTP mode; no path to an sftp-server binary needed
            "LogLevel VERBOSE",
            "",
        ]))
        check = subprocess.run([self.sshd, "-t", "-f", str(self.config)], capture_output=True, text=True,
                               stdin=subprocess.DEVNULL)
        if check.returncode != 0:
            raise DeviceError("sshd rejected the generated config", why=check.stderr.strip(),
                              fix=f"check {self.config}")

    def wait_ready(self, timeout: float, running: Callable[[], bool]) -> bool:
        """True once the port answers with an SSH banner; False when `running()` turns False or time is up."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not running():
                return False
            if answers_ssh(self.port):
                return True
            time.sleep(0.05)
        return False

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    # ------------------------------------------------------------------ as a daemon (outlives this process)
    def daemon_pid(self) -> int | None:
        """The pid of our daemon when it runs: the PidFile's process, if it is alive and runs our config."""
        try:
            pid = int(self.pid_file.read_text().split()[0])
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()  # sshd rewrites it: "sshd: … -f CONFIG … [listener]"
        except (OSError, ValueError, IndexError):
            return None
        return pid if alive(pid) and os.fsencode(f" -f {self.config} ") in cmdline.replace(b"\0", b" ") else None

    def start_daemon(self, timeout: float = 15.0) -> int:
        """Start sshd in the background on self.port (fixed: clients have it in their profile); its pid."""
        if not self.port:
            raise DeviceError("a daemon sshd needs a fixed port", fix="set `port:` in the device profile")
        if answers_ssh(self.port):
            raise DeviceError(f"port {self.port} on 127.0.0.1 is already served by another SSH server",
                              fix="stop it, or choose another `port:` in the device profile")
        self.write_config()
        self.pid_file.unlink(missing_ok=True)
        with open(self.log, "ab") as log:  # sshd forks into the background; the parent exits at once
            subprocess.run([self.sshd, "-f", str(self.config), "-E", str(self.log)], stdin=subprocess.DEVNULL,
                           stdout=log, stderr=log, check=False)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid = self.daemon_pid()
            if pid is not None and answers_ssh(self.port):
                self.write_known_hosts()
                return pid
            time.sleep(0.05)
        raise DeviceError(f"sshd did not start on 127.0.0.1:{self.port}", why=self.log_tail(600).strip() or None,
                          fix=f"see {self.log}; if the port is taken, choose another `port:` in the device profile")

    def stop_daemon(self, timeout: float = 10.0) -> int | None:
        """Stop our daemon (only the process our PidFile names and our config runs); its pid, or None."""
        pid = self.daemon_pid()
        if pid is None:
            return None
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.pid_file.unlink(missing_ok=True)
        return pid
