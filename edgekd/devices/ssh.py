"""A board (or any POSIX machine) over SSH, through the system OpenSSH client.

We call the `ssh` and `scp` binaries with argv lists and only add `-o` options, so the user's
`~/.ssh/config` (host aliases, ProxyJump, keys), their agent and known_hosts keep working. A profile::

    name: pi
    kind: ssh
    host: raspberrypi.local         # required: a host name, an address or a ~/.ssh/config alias
    user: pi                        # optional (else ~/.ssh/config or the local user name)
    port: 22                        # optional
    identity_file: ~/.ssh/id_ed25519    # optional: an extra key (the agent's keys are still offered)
    known_hosts: ~/.ssh/known_hosts     # optional: passed as -o UserKnownHostsFile=…
    connect_timeout: 10             # seconds, optional
    ssh_options: {ProxyJump: bastion}   # optional: extra `-o Key=Value` pairs (a mapping or ["Key=Value", …])
    config_file: ~/.ssh/other_config    # optional: `ssh -F` (tests use /dev/null to ignore ~/.ssh/config)

Security:
- Host-key checking stays on: we pass `StrictHostKeyChecking=yes`, so an unknown or changed host key is
  refused (HostKeyMismatch, whose fix names ssh-keyscan and the known_hosts file) rather than trusted on
  first use. A profile may explicitly set another value in `ssh_options` (e.g. `StrictHostKeyChecking:
  accept-new` for a throw-away board); that choice is then the user's, visible in their profile.
- `BatchMode=yes`: ssh never prompts (a password prompt would hang a benchmark); keys and agent work.
- Remote commands are argv lists joined with `shlex.join`, so every argument reaches the device as one
  literal word whatever it contains (spaces, quotes, `;`, `$(…)`); the device's login shell must be POSIX
  sh compatible (sh, bash, dash, ash, zsh), as on every Linux board.
- One connection per device object: OpenSSH multiplexing (ControlMaster=auto, ControlPersist=60) with the
  control socket in a private (0700) temp folder, so no other user or process shares it, and a second
  device (e.g. one with a different known_hosts) never rides on our already-verified connection.
  close() asks the master to exit (`ssh -O exit`) and removes the folder.
- A command that outlives its timeout, or is interrupted (Ctrl-C, SIGTERM), is killed on the device (run()'s
  remote shell prints the command's PID and waits for it): sshd would leave it running, as it sends no SIGHUP
  to a session without a terminal.
- A link that drops while the command runs (the host stopped, the network gone) is not noticed by the command
  (measured: no SIGHUP, the starting shell stays its parent, stdin is /dev/null); run(tether=True) gives the
  command the heartbeat pipe from this host as stdin, on which a `--tether` runner sees EOF (the connection
  closed) or silence (a network gone without a word) and ends itself (base.TETHER_S).
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import weakref
from pathlib import Path, PurePosixPath
from typing import Any, Callable

from edgekd.devices.base import (
    WORKDIR_OWNER_FIX,
    WORKDIR_OWNER_WHY,
    DeviceError,
    DeviceOutOfSpace,
    DeviceProfile,
    DeviceUnreachable,
    HostKeyMismatch,
    ProfiledDevice,
    RunResult,
    bench_workdir,
    free_space_fix,
    info_via_runner,
    run_client,
)

logger = logging.getLogger(__name__)

SSH_ERROR = 255  # ssh's own exit status for "could not connect / authenticate" (a remote command rarely uses it)
CONTROL_PERSIST_S = 60
DEFAULT_CONNECT_TIMEOUT_S = 10
_SUN_PATH_MAX = 100  # a unix socket path must fit in 108 bytes; %C expands to 40 hex digits

# Options we manage: a profile sets them through their own fields, or not at all.
_MANAGED = {"controlmaster": None, "controlpath": None, "controlpersist": None,
            "port": "port", "user": "user", "identityfile": "identity_file",
            "userknownhostsfile": "known_hosts", "connecttimeout": "connect_timeout"}
# Defaults a profile may override in ssh_options (ours come after theirs; ssh keeps the first value it sees).
_DEFAULTS = {"StrictHostKeyChecking": "yes", "BatchMode": "yes",
             "ServerAliveInterval": "15", "ServerAliveCountMax": "4"}
_OPTION_KEY = re.compile(r"[A-Za-z][A-Za-z0-9]*\Z")

_HOST_KEY = ("Host key verification failed", "REMOTE HOST IDENTIFICATION HAS CHANGED",
             "host key is known for", "Host key for", "No matching host key")
_UNREACHABLE = ("Connection refused", "Connection timed out", "timed out", "No route to host",
                "Network is unreachable", "Could not resolve hostname", "Name or service not known",
                "Temporary failure in name resolution", "Connection reset", "Connection closed by",
                "closed by remote host", "kex_exchange_identification", "Broken pipe",
                "Connection to .* closed", "mux_client")
_AUTH = ("Permission denied", "Too many authentication failures", "no mutual signature")
_CONFIG = ("Bad configuration option", "command-line line", "nsupported option", "Bad port",
           "Can't open user config file", "garbage at end of line", "Missing argument")
_NO_SPACE = ("No space left on device", "Disk quota exceeded")
# A key ssh did not use, and why; with "bad permissions" it said "Permissions 0644 for 'KEY' are too open" first.
_LOAD_KEY = re.compile(r'^Load key "(.*)": (.+)$', re.MULTILINE)
_TOO_OPEN = re.compile(r"^Permissions (0[0-7]+) for .* are too open", re.MULTILINE)

# The work directory: create it private (the runner starts from it), refuse it when another user owns it (exit 3)
# and take group/other write access away when we own it.
# The work directory: made private (700), or an existing one checked and left as it is: another user's is exit 3,
# one others may write to (group or other `w` in ls's mode) exit 5; chmod would change a shared folder (/tmp).
_WORKDIR_SCRIPT = ('if [ -d "$1" ]; then [ -O "$1" ] || exit 3; '
                   'case $(ls -ld -- "$1") in ?????w*|????????w*) exit 5;; esac; '
                   'else mkdir -p -m 700 -- "$1" || exit 1; fi')
# sha256 of a file on the device: exit 3 = no such file, 4 = no tool. Reading stdin avoids option parsing
# of the path by any of the tools (busybox, coreutils, perl shasum, openssl).
_SHA256_SCRIPT = (
    '[ -f "$1" ] || exit 3; '
    'if command -v sha256sum >/dev/null 2>&1; then sha256sum < "$1"; '
    'elif command -v shasum >/dev/null 2>&1; then shasum -a 256 < "$1"; '
    'elif command -v openssl >/dev/null 2>&1; then openssl dgst -sha256 < "$1"; '
    'else exit 4; fi'
)
_HEX64 = re.compile(r"\b[0-9a-f]{64}\b")
PID_MARKER = "__EDGEKD_PID="  # run()'s remote shell prints it, with the PID of the command it started, to stderr
_PID_LINE = re.compile(PID_MARKER + r"(\d+)\n")  # not always at a line start: the command's stderr is the same pipe


class SSHDevice(ProfiledDevice):
    """A device reached with the system OpenSSH client; one multiplexed connection per object."""

    def __init__(self, profile: DeviceProfile) -> None:
        self.profile = profile
        opts = dict(profile.options)
        self.host = _word(opts.get("host"), "host", profile.name, required=True)
        self.user = _word(opts.get("user"), "user", profile.name)
        self.port = _port(opts.get("port"), profile.name)
        self.identity_file = _key_file(opts.get("identity_file"), profile.name)
        self.known_hosts = _path_option(opts.get("known_hosts"), "known_hosts", profile.name)
        self.config_file = _path_option(opts.get("config_file"), "config_file", profile.name, must_exist=True)
        self.connect_timeout = _timeout(opts.get("connect_timeout"), profile.name)
        self.ssh_options = _ssh_options(opts.get("ssh_options"), profile.name)
        self.host_key_checking = _host_key_checking(self.ssh_options)
        if self.host_key_checking != "strict":
            logger.warning("device '%s' connects with host-key checking relaxed by its profile (%s): a man in "
                           "the middle would go unnoticed", profile.name, self.host_key_checking)
        self._control_dir: str | None = None
        self._finalizer: weakref.finalize | None = None
        self._made_dirs: set[str] = set()
        self._scp_sftp_flag = _scp_sftp_flag()

    # ------------------------------------------------------------------ protocol
    @property
    def control_path(self) -> str:
        """The ControlMaster socket (ssh expands %C to a hash of host, port and user)."""
        return f"{self._control()}/%C"

    def info(self) -> dict[str, Any]:
        return {**info_via_runner(self), "ssh_host_key_checking": self.host_key_checking}

    def run(self, argv: list[str], *, timeout: float | None = None, tether: bool = False,
            on_line: Callable[[str], None] | None = None) -> RunResult:
        """Run argv on the device; each element arrives as one literal argument. With `tether`, its stdin is
        the heartbeat pipe from this host (base.TETHER_S), which sshd closes when the connection drops.
        `on_line` gets the lines of its stderr as ssh passes them on (ssh's own and the PID line among them)."""
        if not argv or not all(isinstance(a, str) for a in argv):
            raise DeviceError(f"cannot run {argv!r} on {self.name}", why="argv must be a non-empty list of strings",
                              fix="pass the command as a list, e.g. ['python3', 'runner.py', '--info']")
        # The shell starts the command, says its PID (what a timeout needs to kill) and waits for it: a command
        # killed by a signal then ends with the shell's 128+N, where ssh would say 255 for a signal of its own.
        # A command started with `&` gets /dev/null as stdin from a non-interactive sh; a tethered one gets the
        # session's stdin back through fd 3.
        start = f"{{ {shlex.join(argv)} <&3 3<&- & }} 3<&0;" if tether else f"{shlex.join(argv)} &"
        command = (f"{start} __edgekd_pid=$!; echo {PID_MARKER}$__edgekd_pid >&2; "
                   "wait $__edgekd_pid; __edgekd_rc=$?; exit $__edgekd_rc")
        proc = self._ssh(command, timeout=timeout, what=argv[0], stop_remote=self._stop_remote, tether=tether,
                         on_line=on_line)
        return RunResult(proc.returncode, proc.stdout, _PID_LINE.sub("", proc.stderr, count=1))

    def can_tether(self) -> bool:
        return True

    def push(self, local: Path, remote: str) -> None:
        local = Path(local)
        if not local.is_file():
            raise DeviceError(f"cannot push {local} to {self.name}", why="no such local file",
                              fix="check the path (it must be a regular file)")
        self._mkdir(str(PurePosixPath(remote).parent))
        proc = self._scp([str(local.resolve()), self._remote_spec(remote)])
        if proc.returncode == 0:
            return
        self._raise_copy_error(proc, f"cannot copy {local.name} to {self.name}:{remote}", remote, local.stat().st_size)

    def pull(self, remote: str, local: Path) -> None:
        local = Path(local)
        local.parent.mkdir(parents=True, exist_ok=True)
        proc = self._scp([self._remote_spec(remote), str(local.resolve())])
        if proc.returncode == 0:
            return
        self._raise_copy_error(proc, f"cannot copy {self.name}:{remote} to {local}", None, 0)

    def sha256(self, remote: str) -> str | None:
        proc = self._ssh(shlex.join(["sh", "-c", _SHA256_SCRIPT, "sh", remote]), timeout=120, what="sha256sum")
        if proc.returncode == 3:
            return None
        if proc.returncode == 4:
            raise DeviceError(f"{self.name} has no sha256 tool", why="none of sha256sum, shasum, openssl was found",
                              fix="install coreutils (or busybox) on the device")
        match = _HEX64.search(proc.stdout)
        if proc.returncode != 0 or match is None:
            raise DeviceError(f"cannot hash {remote} on {self.name}", why=_last_line(proc.stderr, proc.returncode),
                              fix="check that the file is readable by the SSH user")
        return match.group(0)

    def close(self) -> None:
        """Ask the multiplexing master to exit and remove the private control folder (idempotent)."""
        folder, self._control_dir = self._control_dir, None
        if folder is None:
            return
        if self._finalizer is not None:
            self._finalizer.detach()
        self._made_dirs.clear()
        if not os.listdir(folder):  # never connected: no master to stop
            shutil.rmtree(folder, ignore_errors=True)
            return
        argv = ["ssh", *self._base_options(folder), "-O", "exit", "--", self.host]
        try:
            subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=15, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            logger.debug("ssh -O exit for %s: %s", self.name, exc)
        shutil.rmtree(folder, ignore_errors=True)

    def __enter__(self) -> "SSHDevice":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ argv building
    def _control(self) -> str:
        if self._control_dir is None:
            folder = tempfile.mkdtemp(prefix="edgekd-ssh-")  # mode 0700
            if len(folder) + 41 > _SUN_PATH_MAX:  # a long $TMPDIR would not fit a socket path
                shutil.rmtree(folder, ignore_errors=True)
                folder = tempfile.mkdtemp(prefix="edgekd-ssh-", dir="/tmp")
            self._control_dir = folder
            # Forgotten close(): still remove the folder (the master itself exits after ControlPersist).
            self._finalizer = weakref.finalize(self, shutil.rmtree, folder, True)
        return self._control_dir

    def _base_options(self, control_dir: str | None = None) -> list[str]:
        """Options shared by ssh and scp: the user's ssh_options first (ssh keeps the first value), then ours."""
        args: list[str] = []
        if self.config_file:
            args += ["-F", self.config_file]
        for key, value in self.ssh_options:
            args += ["-o", f"{key}={value}"]
        given = {key.lower() for key, _ in self.ssh_options}
        for key, value in _DEFAULTS.items():
            if key.lower() not in given:
                args += ["-o", f"{key}={value}"]
        args += ["-o", "ControlMaster=auto", "-o", f"ControlPath={_option_value(control_dir or self._control())}/%C",
                 "-o", f"ControlPersist={CONTROL_PERSIST_S}", "-o", f"ConnectTimeout={self.connect_timeout:g}"]
        if self.port is not None:
            args += ["-o", f"Port={self.port}"]
        if self.user:
            args += ["-o", f"User={self.user}"]
        if self.identity_file:
            args += ["-o", f"IdentityFile={_option_value(self.identity_file)}"]
        if self.known_hosts:
            args += ["-o", f"UserKnownHostsFile={_option_value(self.known_hosts)}"]
        return args

    def _remote_spec(self, remote: str) -> str:
        if not remote:
            raise DeviceError(f"empty remote path on {self.name}", fix="name a file on the device")
        host = f"[{self.host}]" if ":" in self.host else self.host
        # SFTP mode takes the path literally; the legacy scp protocol hands it to the remote shell.
        return f"{host}:{remote if self._scp_sftp_flag is not None else shlex.quote(remote)}"

    # ------------------------------------------------------------------ running the client
    def _ssh(self, command: str, *, timeout: float | None, what: str,
             stop_remote: Callable[[str], str | None] | None = None, tether: bool = False,
             on_line: Callable[[str], None] | None = None) -> subprocess.CompletedProcess:
        argv = ["ssh", *self._base_options(), "--", self.host, command]
        proc = self._client(argv, timeout=timeout, what=what, stop_remote=stop_remote, tether=tether,
                            on_line=on_line)
        if proc.returncode == SSH_ERROR:
            self._raise_ssh_error(proc.stderr)
            self._raise_if_connection_lost(what)
        return proc

    def _scp(self, paths: list[str]) -> subprocess.CompletedProcess:
        flags = ["-q", "-B"] + ([self._scp_sftp_flag] if self._scp_sftp_flag else [])
        return self._client(["scp", *flags, *self._base_options(), "--", *paths], timeout=None, what="scp")

    def _client(self, argv: list[str], *, timeout: float | None, what: str,
                stop_remote: Callable[[str], str | None] | None = None, tether: bool = False,
                on_line: Callable[[str], None] | None = None) -> subprocess.CompletedProcess:
        # BatchMode also forbids prompts; stdin is closed by run_client (or the heartbeat pipe, with tether).
        return run_client(argv, device=self.name, what=what, timeout=timeout,
                          after_timeout="the ssh client was stopped; the command may still be running on the device",
                          install="install the OpenSSH client (e.g. apt-get install openssh-client)",
                          stop_remote=stop_remote, tether=tether, on_line=on_line)

    def _stop_remote(self, partial_stderr: str) -> str | None:
        """After a timeout or Ctrl-C, kill the command on the device: sshd leaves it running when the session
        closes (no terminal, so no SIGHUP), and a hung runner would load the board for every later benchmark."""
        match = _PID_LINE.search(partial_stderr)
        if match is None:  # it never started (still connecting)
            return None
        pid = match.group(1)
        try:
            killed = self._ssh(shlex.join(["kill", "-KILL", pid]), timeout=30, what="kill").returncode == 0
        except DeviceError as exc:
            return f"the ssh client was stopped, and stopping the command (pid {pid}) failed: {exc.what}"
        return (f"it was stopped on the device (pid {pid} killed)" if killed else
                f"the ssh client was stopped; the command (pid {pid}) had already ended on the device")

    def _mkdir(self, folder: str) -> None:
        """mkdir -p once per folder and connection (the work directory on first use, then its subfolders)."""
        if not self._made_dirs:  # a caller of the Python API gets the rule a bench applies before its first copy
            bench_workdir(self)
        if folder in self._made_dirs or folder in ("", ".", "/"):
            return
        workdir = self.workdir.rstrip("/") or "/"
        if folder != workdir and PurePosixPath(workdir) in PurePosixPath(folder).parents:
            self._mkdir(workdir)  # first, so that its ownership is checked before anything goes under it
        script = _WORKDIR_SCRIPT if folder == workdir else 'mkdir -p -- "$1"'
        proc = self._ssh(shlex.join(["sh", "-c", script, "sh", folder]), timeout=60, what="mkdir")
        if proc.returncode in (3, 5) and folder == workdir:
            problem = "belongs to another user" if proc.returncode == 3 else "can be written by other users"
            raise DeviceError(f"the work directory {folder} on {self.name} {problem}",
                              why=WORKDIR_OWNER_WHY, fix=WORKDIR_OWNER_FIX)
        if proc.returncode != 0:
            stderr = proc.stderr
            if any(s in stderr for s in _NO_SPACE):
                raise DeviceOutOfSpace(f"no space left on {self.name} to create {folder}", why=_last_line(stderr, 1),
                                       fix=free_space_fix(self.name))
            raise DeviceError(f"cannot create {folder} on {self.name}", why=_last_line(stderr, proc.returncode),
                              fix="point `workdir:` at a folder the SSH user may write")
        self._made_dirs.add(folder)
        self._made_dirs.update(str(p) for p in PurePosixPath(folder).parents)

    # ------------------------------------------------------------------ errors
    def _target(self) -> str:
        user = f"{self.user}@" if self.user else ""
        port = f" port {self.port}" if self.port else ""
        return f"{user}{self.host}{port}"

    def _by_hand(self) -> str:
        """The ssh command line a user can try to reach the device themselves."""
        return f"ssh {'-p ' + str(self.port) + ' ' if self.port else ''}{self._target().split(' port')[0]}"

    def _raise_ssh_error(self, stderr: str) -> None:
        """Turn ssh's own failure (exit 255) into a DeviceError subclass; a remote 255 without ssh text passes."""
        why = _ssh_message(stderr)
        if _matches(stderr, _HOST_KEY):
            known = self.known_hosts or "~/.ssh/known_hosts"
            # The commands are for the user's shell: every word quoted (a known_hosts path with a space was
            # three arguments to ssh-keygen), but the default's ~ left for the shell to expand.
            file = shlex.quote(self.known_hosts) if self.known_hosts else known
            port = f"-p {self.port} " if self.port else ""
            entry = f"[{self.host}]:{self.port}" if self.port and self.port != 22 else self.host
            keyscan = f"`ssh-keyscan {port}{shlex.quote(self.host)} >> {file}`"
            if "IDENTIFICATION HAS CHANGED" in stderr or "Host key for" in stderr:
                raise HostKeyMismatch(
                    f"SSH refused {self.name} ({self._target()}): its host key differs from the one in {known}",
                    why=why,
                    fix="if the device was reinstalled, compare the key fingerprint on its console, then run "
                        f"`ssh-keygen -R {shlex.quote(entry)} -f {file}` and {keyscan}; a change you did not expect "
                        "may be an attack: do not accept it",
                )
            raise HostKeyMismatch(
                f"SSH refused {self.name} ({self._target()}): its host key is unknown (not in {known})",
                why=why,
                fix=f"add it with {keyscan} after checking its fingerprint (`ssh-keygen -lf` on the device's "
                    "/etc/ssh/ssh_host_ed25519_key.pub); host-key checking stays on unless the profile sets "
                    "`ssh_options: {StrictHostKeyChecking: accept-new}`",
            )
        if _matches(stderr, _AUTH):
            self._raise_key_not_loaded(stderr)
            raise DeviceError(
                f"SSH login to {self.name} ({self._target()}) was refused",
                why=why,
                fix="install your public key on the device (`ssh-copy-id`), set `identity_file:` in the profile "
                    "or load the key into your agent (`ssh-add`); check `user:`",
            )
        if _matches(stderr, _UNREACHABLE):
            raise DeviceUnreachable(
                f"cannot reach {self.name} ({self._target()})",
                why=why,
                fix=f"check that the device is on, on the network and runs sshd; try `{self._by_hand()}` by hand; "
                    "raise `connect_timeout:` for a slow link",
            )
        if _matches(stderr, _CONFIG):
            raise DeviceError(f"the ssh client rejected the options for {self.name}", why=why,
                              fix="fix `ssh_options:` (or the ssh config file) of the profile")

    def _raise_key_not_loaded(self, stderr: str) -> None:
        """A login refused after ssh ignored a key (`Load key "KEY": bad permissions`) is about that key, not
        about the device: "install your public key" would send the user to a device that has it already."""
        match = _LOAD_KEY.search(stderr)
        if match is None:
            return
        key, reason = match.group(1), match.group(2).strip()
        login = f"SSH login to {self.name} ({self._target()}) was refused"
        if reason == "bad permissions" and not os.path.isdir(key):  # a folder (from ~/.ssh/config): below
            mode = _TOO_OPEN.search(stderr)
            raise DeviceError(
                f"{login}: ssh ignored the key {key}, which other users can read",
                why=(f"its permissions are {mode.group(1)}: " if mode else "")
                + "ssh uses no private key that others may read (a key others have read is no secret)",
                fix=f"`chmod 600 {shlex.quote(key)}`")
        raise DeviceError(f"{login}: ssh could not load the key {key}", why=f"ssh said: {match.group(0).strip()}",
                          fix="point `identity_file:` in the profile (or IdentityFile in the ssh config) at a private "
                              "key file, e.g. ~/.ssh/id_ed25519")

    def _raise_if_connection_lost(self, what: str) -> None:
        """After an exit 255 that ssh did not explain: was it the connection? Through the multiplexing master,
        a connection that drops mid-command ends the command with 255 and no message at all (the master, which
        saw the drop, has exited and taken its socket along); a remote command's own 255 leaves the master up."""
        argv = ["ssh", *self._base_options(), "-O", "check", "--", self.host]
        try:
            alive = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=15,
                                   check=False).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            alive = False
        if not alive:
            raise self._lost(what)

    def _lost(self, what: str) -> DeviceUnreachable:
        self._made_dirs.clear()  # a reconnection may meet a rebooted device (a /tmp work directory is gone)
        return DeviceUnreachable(
            f"lost the connection to {self.name} ({self._target()}) while '{what}' was running",
            why="ssh ended with exit status 255 and its connection to the device is gone: the device rebooted, "
                "left the network, or its sshd stopped",
            fix=f"check that the device is up and reachable (`{self._by_hand()}` by hand), then run again",
        )

    def _raise_copy_error(self, proc: subprocess.CompletedProcess, what: str, remote: str | None, size: int) -> None:
        stderr = proc.stderr
        if proc.returncode == SSH_ERROR or _matches(stderr, _HOST_KEY) or "lost connection" in stderr:
            self._raise_ssh_error(stderr)
            # `scp -q` keeps ssh's reason to itself (exit 255, or 1 with only "lost connection"): ask ssh (raises it)
            if proc.returncode == SSH_ERROR or "lost connection" in stderr:
                self._ssh("true", timeout=60, what="scp")
                raise self._lost("scp")  # it connects again: the connection dropped during the copy
        if remote is not None and (_matches(stderr, _NO_SPACE) or self._lacks_space(remote, size)):
            # SFTP reports ENOSPC only as "Failure", hence the df check. The partial file is useless: remove it
            # (only then: after e.g. "permission denied" the file on the device is untouched and stays).
            self._ssh(shlex.join(["sh", "-c", '[ ! -f "$1" ] || rm -f -- "$1"', "sh", remote]), timeout=60, what="rm")
            raise DeviceOutOfSpace(f"no space left on {self.name} for {PurePosixPath(remote).name} "
                                   f"({size / 1e6:.1f} MB)", why=_ssh_message(stderr) or None,
                                   fix=free_space_fix(self.name))
        elif _matches(stderr, _NO_SPACE):
            raise DeviceError(what, why=_ssh_message(stderr), fix="free space on this machine")
        missing = "No such file" in stderr or "not found" in stderr
        raise DeviceError(what, why=_ssh_message(stderr) or f"scp exit code {proc.returncode}",
                          fix="check the remote path" if missing else "check the paths and permissions on both sides")

    def _lacks_space(self, remote: str, size: int) -> bool:
        """After a failed push: is the free space (plus what the partial copy holds) less than the file?"""
        script = 'if [ -f "$1" ]; then wc -c < "$1"; else echo 0; fi; df -Pk -- "$2"'
        proc = self._ssh(shlex.join(["sh", "-c", script, "sh", remote, str(PurePosixPath(remote).parent)]),
                         timeout=60, what="df")
        try:
            lines = proc.stdout.strip().splitlines()
            partial, free_kb = int(lines[0]), int(lines[-1].split()[3])
        except (IndexError, ValueError):  # no df (or an odd one): we cannot tell
            return False
        return free_kb * 1024 + partial < size


# ---------------------------------------------------------------------- option validation
def _bad(profile: str, field: str, value: Any, rule: str) -> DeviceError:
    return DeviceError(f"device '{profile}': `{field}` {rule}, got {value!r}", fix=f"fix `{field}:` in its profile")


def _word(value: Any, field: str, profile: str, *, required: bool = False) -> str | None:
    """A host or user name: one word that ssh cannot mistake for an option."""
    if value is None or value == "":
        if required:
            raise DeviceError(f"device '{profile}' has no `{field}`",
                              fix=f"set `{field}:` in its profile (a host name, an address or a ~/.ssh/config alias)")
        return None
    if not isinstance(value, str) or value.startswith("-") or any(c.isspace() or ord(c) < 32 for c in value):
        raise _bad(profile, field, value, "must be one word not starting with '-'")
    return value


def _port(value: Any, profile: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        port = int(value)
        if isinstance(value, bool) or port != float(value):
            raise ValueError
    except (TypeError, ValueError):
        raise _bad(profile, "port", value, "must be an integer") from None
    if not 1 <= port <= 65535:
        raise _bad(profile, "port", value, "must be between 1 and 65535")
    return port


def _timeout(value: Any, profile: str) -> float:
    if value is None:
        return DEFAULT_CONNECT_TIMEOUT_S
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise _bad(profile, "connect_timeout", value, "must be a number of seconds > 0")
    return max(1, round(value))  # ssh takes whole seconds


def _path_option(value: Any, field: str, profile: str, *, must_exist: bool = False) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, (str, os.PathLike)):
        raise _bad(profile, field, value, "must be a path")
    path = os.path.expanduser(os.fspath(value))
    if any(c in path for c in "\n\r\0"):
        raise _bad(profile, field, value, "must be a path on one line")
    if must_exist and not os.path.exists(path):
        raise DeviceError(f"device '{profile}': `{field}` {path} does not exist", fix=f"fix `{field}:` in its profile")
    return path


def _key_file(value: Any, profile: str) -> str | None:
    """identity_file: a file. ssh reads a folder as a key it cannot load, and the login was refused as if the
    device lacked the user's public key."""
    path = _path_option(value, "identity_file", profile, must_exist=True)
    if path is not None and not os.path.isfile(path):
        raise DeviceError(f"device '{profile}': `identity_file` {path} is not a file",
                          why="ssh takes `identity_file:` as the private key file itself (a folder holds none "
                              "it would read)",
                          fix="point `identity_file:` at the private key file, e.g. ~/.ssh/id_ed25519")
    return path


def _ssh_options(value: Any, profile: str) -> list[tuple[str, str]]:
    """ssh_options as validated (Key, Value) pairs: a mapping, or a list of "Key=Value" strings."""
    if value is None:
        return []
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, (list, tuple)):
        items = []
        for entry in value:
            if not isinstance(entry, str) or "=" not in entry:
                raise _bad(profile, "ssh_options", entry, 'entries must be "Key=Value" strings')
            key, _, val = entry.partition("=")
            items.append((key.strip(), val.strip()))
    else:
        raise _bad(profile, "ssh_options", value, "must be a mapping of ssh option names to values")
    out = []
    for key, val in items:
        if not isinstance(key, str) or not _OPTION_KEY.match(key):
            raise _bad(profile, "ssh_options", key, "keys must be ssh_config option names (e.g. ProxyJump)")
        if key.lower() in _MANAGED:
            field = _MANAGED[key.lower()]
            rule = f"must not set {key}: use `{field}:`" if field else f"must not set {key}: edgekd manages it"
            raise _bad(profile, "ssh_options", key, rule)
        if isinstance(val, bool):
            val = "yes" if val else "no"
        if not isinstance(val, (str, int, float)) or isinstance(val, str) and (
                val == "" or any(c in val for c in "\n\r\0")):
            raise _bad(profile, "ssh_options", {key: val}, "values must be non-empty, on one line")
        out.append((key, str(val)))
    return out


def _host_key_checking(options: list[tuple[str, str]]) -> str:
    """'strict', or the profile's options that let ssh connect without checking the host key against
    known_hosts (said in the log and recorded in the device info of every result)."""
    relaxing = [f"{key}={value}" for key, value in options
                if (key.lower() == "stricthostkeychecking" and value.lower() not in ("yes", "ask"))
                or (key.lower() == "nohostauthenticationforlocalhost" and value.lower() == "yes")
                or key.lower() == "knownhostscommand"]
    return ", ".join(relaxing) or "strict"


# ---------------------------------------------------------------------- helpers
def _option_value(value: str) -> str:
    """A path as the value of `ssh -o Key=Value`: ssh splits that value into words, so a path with a space is
    quoted (a quote or backslash in it escaped, as ssh_config reads them)."""
    if not any(c.isspace() or c in "\"'\\" for c in value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _matches(text: str, patterns: tuple[str, ...]) -> bool:
    return any(re.search(p, text) for p in patterns)


def _ssh_message(stderr: str) -> str:
    """ssh's most telling line (the banner of a changed host key is many lines of asterisks)."""
    lines = [ln.strip() for ln in stderr.replace("\r", "\n").splitlines() if ln.strip() and "@@@" not in ln]
    for line in reversed(lines):
        if any(s in line for s in ("Host key verification failed", "Connection refused", "Permission denied")):
            return line
    return lines[-1] if lines else ""


def _last_line(stderr: str, returncode: int) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    return lines[-1] if lines else f"exit code {returncode}"


_SCP_FLAG_CACHE: list[str | None] = []


def _scp_sftp_flag() -> str | None:
    """'-s' (SFTP protocol: literal remote paths) when the local OpenSSH has it (8.7+, the default from 9.0);
    None for older clients, whose legacy protocol passes the remote path through the remote shell."""
    if not _SCP_FLAG_CACHE:
        try:
            out = subprocess.run(["ssh", "-V"], capture_output=True, text=True, stdin=subprocess.DEVNULL).stderr
        except FileNotFoundError:
            out = ""
        m = re.search(r"OpenSSH_(\d+)\.(\d+)", out)
        _SCP_FLAG_CACHE.append("-s" if m is None or (int(m[1]), int(m[2])) >= (8, 7) else None)
    return _SCP_FLAG_CACHE[0]
