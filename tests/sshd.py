"""A real OpenSSH server on 127.0.0.1 for tests: generated keys and config, no system files touched.

    with LoopbackSSHD(tmp_path) as server:
        server.port, server.known_hosts, server.client_key   # what a client needs

Keys and config come from edgekd.devices.loopback (the emulated ARM64 board is served the same way); here it
runs ``/usr/sbin/sshd -D -e -f <generated config>`` in the foreground on a free port. ``stop()`` ends the
listener *and* the connections it forked (an established SSH connection outlives a stopped listener
otherwise), which is what a host going down looks like to a client.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from edgekd.devices.loopback import INSTALL_HINT, LoopbackServer, alive, find_sshd, free_port, keygen

__all__ = ["INSTALL_HINT", "LoopbackSSHD", "descendants", "find_sshd", "free_port", "keygen"]


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


class LoopbackSSHD(LoopbackServer):
    """sshd on 127.0.0.1:port in the foreground, with everything it needs in `root` (a private temp folder)."""

    def __init__(self, root: Path, *, sshd: str | None = None) -> None:
        super().__init__(root, sshd=sshd)
        self.proc: subprocess.Popen | None = None

    def write_config(self) -> None:
        """The loopback config, plus the test session's device lock for the runners it starts (conftest): sshd
        gives a session none of our environment, and the machine's shared /tmp lock would make the SSH tests of
        every worker (and of every other suite on this machine) wait for each other's runners."""
        super().write_config()
        lock = os.environ.get("EDGEKD_DEVICE_LOCK")
        if lock:
            with open(self.config, "a", encoding="utf-8") as config:
                config.write(f'SetEnv "EDGEKD_DEVICE_LOCK={lock}"\n')

    # ------------------------------------------------------------------ lifecycle
    def start(self, timeout: float = 15.0) -> "LoopbackSSHD":
        last_error = ""
        for _ in range(3):  # the free port can be taken between free_port() and sshd's bind(): retry
            self.port = free_port()
            self.write_config()
            with open(self.log, "ab") as log:
                self.proc = subprocess.Popen([self.sshd, "-D", "-e", "-f", str(self.config)],
                                             stdin=subprocess.DEVNULL, stdout=log, stderr=log)
            if self.wait_ready(timeout, lambda: self.running):
                self.write_known_hosts()
                return self
            last_error = self.log_tail()
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
            while alive(pid) and time.monotonic() < deadline:
                time.sleep(0.02)
