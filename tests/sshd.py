"""A real OpenSSH server on 127.0.0.1 for tests: generated keys and config, no system files touched.

    with LoopbackSSHD(tmp_path) as server:
        server.port, server.known_hosts, server.client_key   # what a client needs

It runs ``/usr/sbin/sshd -D -e -f <generated config>`` as the current user (root in CI: root logs in with
the generated key only), on a free port, with its own ed25519 host key, authorized_keys, PidFile and log.
``stop()`` ends the listener *and* the connections it forked (an established SSH connection outlives a
stopped listener otherwise), which is what a host going down looks like to a client.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

INSTALL_HINT = "sshd (OpenSSH server) is not installed: apt-get install openssh-server"
PRIVSEP_DIR = Path("/run/sshd")  # Debian's privilege separation directory; sshd refuses to start without it


def find_sshd() -> str | None:
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


def _children() -> dict[int, list[int]]:
    """ppid -> pids of every process visible in /proc."""
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])  # the command name may contain spaces and ')'
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def descendants(pid: int) -> list[int]:
    tree, out, todo = _children(), [], [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


class LoopbackSSHD:
    """sshd on 127.0.0.1:port with everything it needs in `root` (a private temp folder)."""

    def __init__(self, root: Path, *, sshd: str | None = None) -> None:
        self.root = Path(root)
        self.sshd = sshd or find_sshd()
        if self.sshd is None:
            raise RuntimeError(INSTALL_HINT)
        if shutil.which("ssh-keygen") is None:
            raise RuntimeError("ssh-keygen is not installed: apt-get install openssh-client")
        self.root.mkdir(parents=True, exist_ok=True)
        self.host_key = keygen(self.root / "ssh_host_ed25519_key", "edgekd-test-host")
        self.client_key = keygen(self.root / "id_ed25519", "edgekd-test-client")
        self.authorized_keys = self.root / "authorized_keys"
        self.authorized_keys.write_text(Path(f"{self.client_key}.pub").read_text())
        self.known_hosts = self.root / "known_hosts"
        self.config = self.root / "sshd_config"
        self.log = self.root / "sshd.log"
        self.pid_file = self.root / "sshd.pid"
        self.user = _current_user()
        self.port = 0
        self.proc: subprocess.Popen | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self, timeout: float = 15.0) -> "LoopbackSSHD":
        if os.geteuid() == 0 and not PRIVSEP_DIR.is_dir():
            PRIVSEP_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
        last_error = ""
        for _ in range(3):  # the free port can be taken between free_port() and sshd's bind(): retry
            self.port = free_port()
            self._write_config()
            check = subprocess.run([self.sshd, "-t", "-f", str(self.config)], capture_output=True, text=True)
            if check.returncode != 0:
                raise RuntimeError(f"sshd rejected the generated config: {check.stderr.strip()}")
            with open(self.log, "ab") as log:
                self.proc = subprocess.Popen([self.sshd, "-D", "-e", "-f", str(self.config)],
                                             stdin=subprocess.DEVNULL, stdout=log, stderr=log)
            if self._wait_ready(timeout):
                self.known_hosts.write_text(self.known_hosts_line())
                return self
            last_error = self.log.read_text(errors="replace")[-2000:]
            self._terminate()
        raise RuntimeError(f"sshd did not start on 127.0.0.1; its log:\n{last_error}")

    def stop(self) -> None:
        """End the listener and every connection it forked (like the host going down)."""
        if self.proc is None:
            return
        self._terminate()

    def __enter__(self) -> "LoopbackSSHD":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # ------------------------------------------------------------------ what a client needs
    def known_hosts_line(self, public_key: Path | None = None) -> str:
        """A known_hosts line for this server (non-standard port: `[127.0.0.1]:PORT keytype base64`)."""
        keytype, blob = Path(f"{public_key or self.host_key}.pub").read_text().split()[:2]
        return f"[127.0.0.1]:{self.port} {keytype} {blob}\n"

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

    # ------------------------------------------------------------------ internals
    def _write_config(self) -> None:
        self.config.write_text("\n".join([
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
            "StrictModes no",  # the temp folder's modes would otherwise be checked like ~/.ssh
            "PrintMotd no",
            "PrintLastLog no",
            "X11Forwarding no",
            "AllowTcpForwarding no",
            "MaxSessions 20",
            "Subsystem sftp internal-sftp",  # scp's SFTP mode; no path to an sftp-server binary needed
            "LogLevel VERBOSE",
            "",
        ]))

    def _wait_ready(self, timeout: float) -> bool:
        """True once the port answers with an SSH banner; False when sshd died or never answered."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as s:
                    if s.recv(64).startswith(b"SSH-"):
                        return True
            except OSError:
                pass
            time.sleep(0.05)
        return False

    def _terminate(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        forked = descendants(proc.pid)  # before the listener dies and they are re-parented
        for pid in [proc.pid, *forked]:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        deadline = time.monotonic() + 5
        for pid in forked:  # not our children: wait for them to disappear from /proc
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.02)


def _alive(pid: int) -> bool:
    """A process that exists and is not a zombie (a container's init may never reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2:].split()[0] != "Z"


def _current_user() -> str:
    import pwd

    return pwd.getpwuid(os.geteuid()).pw_name
