"""TEST STAND-IN for an Android phone: a loopback "device" speaking the adb device protocol over TCP.

The real adb client and server (Debian's ``adb`` package) connect to it with
``adb connect 127.0.0.1:PORT`` exactly as they would to a phone with wireless
debugging on, so edgekd's AdbDevice is tested against the real client without
an emulator.  It is NOT a real adbd: it implements just enough of the protocol
(as described in AOSP's adb/protocol.txt, SERVICES.TXT and SYNC.TXT) for
``adb shell``, ``adb push``, ``adb pull``:

* transport messages: a 24-byte little-endian header (command, arg0, arg1,
  payload length, payload checksum, magic = command ^ 0xffffffff) + payload;
* handshake: the host sends CNXN(version, maxdata, "host::features=..."); we
  answer CNXN directly with our banner (no AUTH: a device that never asks for
  a key is allowed, like an emulator or a userdebug build with auth off), or,
  with ``authorized=False``, AUTH(TOKEN) and another TOKEN for every signature
  the host tries, and silence once it offers its public key: a phone whose
  "Allow USB debugging?" prompt nobody accepts (adb lists it "unauthorized");
* streams: OPEN(remote-id, 0, "service") answered by OKAY(local-id, remote-id)
  or CLSE(0, remote-id); WRTE needs an OKAY before the next WRTE on the same
  stream (one message in flight per direction, no windowing);
* services: ``shell:CMD`` (v1: raw bytes, stderr merged, no exit code),
  ``shell,v2[,raw|pty|TERM=..]:CMD`` (the v2 shell protocol: packets of
  1-byte id + 4-byte LE length + data; ids stdin 0, stdout 1, stderr 2,
  exit 3, close-stdin 4, window-size 5) and ``sync:`` (STAT/LIST/SEND/RECV/
  DATA/DONE/OKAY/FAIL/QUIT, 8-byte id+length requests).

Commands run with ``/bin/sh -c`` on THIS host, in a sandbox folder (the cwd).
Device paths under the mapped prefixes (``/data/local/tmp``, ``/sdcard`` and
any others given) are rewritten to ``SANDBOX/<prefix>`` in the command line,
and every sync path is confined to the sandbox (``/x`` -> ``SANDBOX/x``), so a
test cannot write outside it.  This is a textual rewrite of the command line,
not a chroot: absolute host paths (``/work/main/.venv/bin/python``) still run.
``getprop`` and ``dumpsys`` are small scripts on the sandbox PATH; with ``toybox=PATH`` (Debian's toybox
package) ``taskset``, ``flock`` and ``timeout`` are toybox's applets, as on Android; ``shell=PATH`` runs the
commands with another shell (Android's is mksh); ``without=("taskset",)`` leaves commands out of the shell's
PATH, as on a phone or board whose shell lacks them. The test session's device-side bench lock
($EDGEKD_DEVICE_LOCK, see conftest) is passed to the shell, as tests/sshd.py passes it to a board's.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import socket
import stat
import struct
import subprocess
import threading
from collections.abc import Iterable
from pathlib import Path

# --------------------------------------------------------------------------- transport constants

A_SYNC = 0x434E5953
A_CNXN = 0x4E584E43
A_AUTH = 0x48545541
A_OPEN = 0x4E45504F
A_OKAY = 0x59414B4F
A_CLSE = 0x45534C43
A_WRTE = 0x45545257
A_STLS = 0x534C5453
COMMAND_NAMES = {A_SYNC: "SYNC", A_CNXN: "CNXN", A_AUTH: "AUTH", A_OPEN: "OPEN", A_OKAY: "OKAY",
                 A_CLSE: "CLSE", A_WRTE: "WRTE", A_STLS: "STLS"}

AUTH_TOKEN, AUTH_SIGNATURE, AUTH_RSAPUBLICKEY = 1, 2, 3  # AUTH(type, 0, data)
A_VERSION = 0x01000001  # 0x01000001 = "skip checksum" version: the host then sends checksum 0
MAX_PAYLOAD = 256 * 1024
HEADER = struct.Struct("<6I")

# shell protocol v2 packet ids
SHELL_STDIN, SHELL_STDOUT, SHELL_STDERR, SHELL_EXIT, SHELL_CLOSE_STDIN, SHELL_WINDOW = 0, 1, 2, 3, 4, 5
SHELL_PACKET_DATA = 4096  # data bytes per v2 packet we send (the client's buffer is small)

SYNC_DATA_MAX = 64 * 1024

DEFAULT_PROPS = {
    "ro.product.model": "edgekd-loopback",
    "ro.product.name": "edgekd_loopback",
    "ro.product.device": "loopback",
    "ro.product.manufacturer": "edgekd",
    "ro.product.cpu.abi": "x86_64",
    "ro.build.version.release": "14",
    "ro.build.version.sdk": "34",
    "ro.serialno": "EDGEKDLOOPBACK",
}

DEFAULT_THERMAL = """\
IsStatusOverride: false
ThermalEventListeners:
\tcallbacks: 1
\tkilled: false
\tbroadcasts count: -1
ThermalStatusListeners:
\tcallbacks: 1
\tkilled: false
\tbroadcasts count: -1
Thermal Status: 1
Cached temperatures:
\tTemperature{mValue=31.5, mType=2, mName=battery, mStatus=0}
HAL Ready: true
HAL connection:
\tThermalHAL 2.0 connected: yes
Current temperatures from HAL:
\tTemperature{mValue=41.25, mType=0, mName=cpu0, mStatus=1}
\tTemperature{mValue=31.5, mType=2, mName=battery, mStatus=0}
\tTemperature{mValue=35.0, mType=3, mName=skin, mStatus=0}
Current cooling devices from HAL:
\tCoolingDevice{mValue=0, mType=2, mName=battery}
"""


def checksum(data: bytes) -> int:
    """The 'crc32' field is in fact the byte sum of the payload (ignored by hosts at version >= 0x01000001)."""
    return sum(data) & 0xFFFFFFFF


def pack_message(command: int, arg0: int, arg1: int, data: bytes = b"") -> bytes:
    return HEADER.pack(command, arg0, arg1, len(data), checksum(data), command ^ 0xFFFFFFFF) + data


class StreamClosed(Exception):
    """The stream or its transport connection went away."""


# --------------------------------------------------------------------------- streams


class _Stream:
    """One adb stream: our local id, the host's id, an inbox of WRTE payloads and one write credit."""

    def __init__(self, conn: _Connection, local_id: int, remote_id: int) -> None:
        self.conn = conn
        self.local_id = local_id
        self.remote_id = remote_id
        self._cond = threading.Condition()
        self._inbox = bytearray()
        self._credit = True  # OPEN implies READY: we may send one WRTE before the first OKAY
        self.closed = False
        self._write_lock = threading.Lock()
        self.on_close: list = []  # callbacks run when the host closes the stream or the link drops

    # called by the connection's reader thread
    def _deliver(self, data: bytes) -> None:
        with self._cond:
            self._inbox += data
            self._cond.notify_all()

    def _okay(self) -> None:
        with self._cond:
            self._credit = True
            self._cond.notify_all()

    def _closed_by_peer(self) -> None:
        with self._cond:
            if self.closed:
                return
            self.closed = True
            self._cond.notify_all()
        for callback in self.on_close:
            with contextlib.suppress(Exception):
                callback()

    # used by service threads
    def read_exact(self, n: int) -> bytes:
        with self._cond:
            while len(self._inbox) < n:
                if self.closed:
                    raise StreamClosed
                self._cond.wait()
            out = bytes(self._inbox[:n])
            del self._inbox[:n]
            return out

    def read_some(self) -> bytes:
        with self._cond:
            while not self._inbox:
                if self.closed:
                    raise StreamClosed
                self._cond.wait()
            out = bytes(self._inbox)
            self._inbox.clear()
            return out

    def write(self, data: bytes) -> None:
        """Send data as WRTE messages of at most the host's max payload, each waiting for the host's OKAY."""
        with self._write_lock:
            view = memoryview(data)
            while view:
                chunk, view = view[: self.conn.max_payload], view[self.conn.max_payload:]
                with self._cond:
                    while not self._credit:
                        if self.closed:
                            raise StreamClosed
                        self._cond.wait()
                    if self.closed:
                        raise StreamClosed
                    self._credit = False
                self.conn.send(A_WRTE, self.local_id, self.remote_id, bytes(chunk))

    def close(self) -> None:
        """Close from the device side (CLSE), like adbd when a service ends."""
        with self._cond:
            if self.closed:
                return
            self.closed = True
            self._cond.notify_all()
        self.conn.forget(self)
        with contextlib.suppress(OSError):
            self.conn.send(A_CLSE, self.local_id, self.remote_id)


# --------------------------------------------------------------------------- one transport connection


class _Connection:
    def __init__(self, device: LoopbackAdbDevice, sock: socket.socket) -> None:
        self.device = device
        self.sock = sock
        self.max_payload = 4096  # until the host's CNXN tells us more
        self.host_banner = ""
        self.connected = False
        self._send_lock = threading.Lock()
        self._streams: dict[int, _Stream] = {}
        self._streams_lock = threading.Lock()
        self._next_id = 1
        self.thread = threading.Thread(target=self._run, name=f"adb-loopback-conn-{sock.fileno()}", daemon=True)

    def send(self, command: int, arg0: int, arg1: int, data: bytes = b"") -> None:
        with self._send_lock:
            self.sock.sendall(pack_message(command, arg0, arg1, data))

    def forget(self, stream: _Stream) -> None:
        with self._streams_lock:
            self._streams.pop(stream.local_id, None)

    def _recv_exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("host closed the connection")
            buf += chunk
        return bytes(buf)

    def _run(self) -> None:
        try:
            while True:
                command, arg0, arg1, length, _check, magic = HEADER.unpack(self._recv_exact(HEADER.size))
                if magic != command ^ 0xFFFFFFFF or command not in COMMAND_NAMES:
                    raise ConnectionError(f"bad message header (command {command:#x}, magic {magic:#x})")
                data = self._recv_exact(length) if length else b""
                self._handle(command, arg0, arg1, data)
        except (OSError, ConnectionError):
            pass
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        """Drop the link: every stream sees its peer gone (running shells are killed)."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.sock.close()
        with self._streams_lock:
            streams = list(self._streams.values())
            self._streams.clear()
        for stream in streams:
            stream._closed_by_peer()
        self.device._forget(self)

    def _handle(self, command: int, arg0: int, arg1: int, data: bytes) -> None:
        if command == A_CNXN:
            # CNXN(version, maxdata, "host::features=..."): reply with ours; no AUTH, no TLS.
            self.max_payload = max(4096, min(arg1, MAX_PAYLOAD))
            self.host_banner = data.rstrip(b"\0").decode("utf-8", "replace")
            if not self.device.authorized:
                self.send(A_AUTH, AUTH_TOKEN, 0, os.urandom(20))
                return
            self.connected = True
            self.send(A_CNXN, A_VERSION, MAX_PAYLOAD, self.device.banner().encode())
            return
        if command == A_AUTH and not self.device.authorized:
            if arg0 == AUTH_SIGNATURE:  # no key is ever accepted: ask again, until the host offers its public key
                self.send(A_AUTH, AUTH_TOKEN, 0, os.urandom(20))
            return  # AUTH_RSAPUBLICKEY: the prompt on the phone is never answered
        if command == A_AUTH:
            # Only sent in answer to an AUTH token, which we never send; accept whatever it is.
            self.connected = True
            self.send(A_CNXN, A_VERSION, MAX_PAYLOAD, self.device.banner().encode())
            return
        if not self.connected:
            return  # protocol.txt: messages before CNXN are ignored
        if command == A_OPEN:
            self._open(arg0, data.rstrip(b"\0").decode("utf-8", "replace"))
            return
        with self._streams_lock:
            stream = self._streams.get(arg1)
        if stream is None or stream.remote_id != arg0 and command != A_CLSE:
            return  # a message for a stream already closed: ignored, as the protocol says
        if command == A_OKAY:
            stream._okay()
        elif command == A_WRTE:
            stream._deliver(data)
            self.send(A_OKAY, stream.local_id, stream.remote_id)
        elif command == A_CLSE:
            self.forget(stream)
            stream._closed_by_peer()

    def _open(self, remote_id: int, service: str) -> None:
        handler = self.device._service_for(service)
        if handler is None or remote_id == 0:
            self.send(A_CLSE, 0, remote_id)
            return
        with self._streams_lock:
            local_id = self._next_id
            self._next_id += 1
            stream = _Stream(self, local_id, remote_id)
            self._streams[local_id] = stream
        self.device.opened_services.append(service)
        self.send(A_OKAY, local_id, remote_id)
        threading.Thread(target=self._serve, args=(handler, stream), name=f"adb-loopback-{service[:20]}",
                         daemon=True).start()

    def _serve(self, handler, stream: _Stream) -> None:
        try:
            handler(stream)
        except (StreamClosed, OSError):
            pass
        finally:
            stream.close()


# --------------------------------------------------------------------------- the device


class LoopbackAdbDevice:
    """TEST STAND-IN: an adb "device" on 127.0.0.1 backed by a sandbox folder on this host.

    >>> dev = LoopbackAdbDevice(tmp_path / "sandbox").start()
    >>> # adb -P SERVER_PORT connect 127.0.0.1:{dev.port}   -> serial "127.0.0.1:{dev.port}"
    >>> dev.stop()
    """

    def __init__(
        self,
        sandbox: Path,
        *,
        shell_v2: bool = True,
        props: dict[str, str] | None = None,
        mapped_prefixes: Iterable[str] = ("/data/local/tmp", "/sdcard"),
        thermal: str | None = DEFAULT_THERMAL,
        host: str = "127.0.0.1",
        authorized: bool = True,
        toybox: str | None = None,
        shell: str = "/bin/sh",
        without: Iterable[str] = (),
    ) -> None:
        self.sandbox = Path(sandbox).resolve()
        if re.search(r"[\s'\"\\$`]", str(self.sandbox)):
            raise ValueError(f"sandbox path must be shell-safe, got {self.sandbox}")
        self.shell_v2 = shell_v2
        self.authorized = authorized
        self.toybox = toybox  # a real toybox binary: its applets stand in for Android's /system/bin tools
        self.shell = shell  # what runs each command (`SHELL -c COMMAND`), as adbd runs Android's sh (mksh)
        self.without = frozenset(without)  # commands this device's shell cannot find (e.g. taskset)
        self.props = {**DEFAULT_PROPS, **(props or {})}
        self.mapped_prefixes = sorted({p.rstrip("/") for p in mapped_prefixes}, key=len, reverse=True)
        self.host = host
        self.space_left: int | None = None  # bytes a push may still write; None = unlimited
        self.opened_services: list[str] = []  # every service the host opened, for assertions
        self._listener: socket.socket | None = None
        self._port: int | None = None
        self._accept_thread: threading.Thread | None = None
        self._conns: set[_Connection] = set()
        self._procs: set[subprocess.Popen] = set()
        self._lock = threading.Lock()
        self._stopping = False
        self._setup_sandbox(thermal)

    # ---------------------------------------------------------------- lifecycle

    @property
    def port(self) -> int:
        assert self._port is not None, "start() the device first"
        return self._port  # kept after stop(), so the serial still names the device

    @property
    def address(self) -> str:
        """What `adb connect` takes, and the serial the adb server then gives the device."""
        return f"{self.host}:{self.port}"

    def start(self) -> LoopbackAdbDevice:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, 0))
        listener.listen(8)
        self._listener = listener
        self._port = listener.getsockname()[1]
        self._accept_thread = threading.Thread(target=self._accept_loop, name="adb-loopback-accept", daemon=True)
        self._accept_thread.start()
        return self

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Connection(self, sock)
            with self._lock:
                if self._stopping:
                    sock.close()
                    return
                self._conns.add(conn)
            conn.thread.start()

    def disconnect(self) -> None:
        """Simulate a cable pull / Wi-Fi drop: close every transport connection and kill running shells.

        The listener stays open, so the adb server may reconnect later (as it does for a phone that
        comes back), but everything in flight fails.
        """
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            conn.shutdown()
        self._kill_all()

    def stop(self) -> None:
        """Stop listening, drop every connection, kill every process still running. Idempotent."""
        self._stopping = True
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                self._listener.close()
        self.disconnect()
        if self._accept_thread is not None:
            self._accept_thread.join(timeout=5)

    def __enter__(self) -> LoopbackAdbDevice:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _forget(self, conn: _Connection) -> None:
        with self._lock:
            self._conns.discard(conn)

    @property
    def connection_count(self) -> int:
        with self._lock:
            return len(self._conns)

    @property
    def running_shells(self) -> int:
        """Shell commands still running on the device (killed when their stream closes or the link drops)."""
        with self._lock:
            return sum(1 for proc in self._procs if proc.poll() is None)

    def _kill_all(self) -> None:
        with self._lock:
            procs = list(self._procs)
        for proc in procs:
            _kill_group(proc)

    # ---------------------------------------------------------------- sandbox and paths

    def banner(self) -> str:
        features = ["cmd", "fixed_push_mkdir"] + (["shell_v2"] if self.shell_v2 else [])
        keys = ("ro.product.name", "ro.product.model", "ro.product.device")
        props = "".join(f"{k}={self.props[k]};" for k in keys if k in self.props)
        return f"device::{props}features={','.join(features)}"

    def host_path(self, device_path: str) -> Path:
        """Where a device path lives in the sandbox (every absolute path is confined to it)."""
        if not device_path.startswith("/"):
            device_path = "/data/local/tmp/" + device_path
        parts = [p for p in device_path.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise PermissionError(f"'..' is not allowed in device paths: {device_path}")
        return self.sandbox.joinpath(*parts) if parts else self.sandbox

    def map_command(self, command: str) -> str:
        """Rewrite device paths under the mapped prefixes to their sandbox folders (textually)."""
        if not self.mapped_prefixes:
            return command
        alternatives = "|".join(re.escape(p) for p in self.mapped_prefixes)
        pattern = re.compile(rf"(?<![\w./-])({alternatives})(?=/|$|[^\w.-])")
        return pattern.sub(lambda m: str(self.sandbox) + m.group(1), command)

    def _setup_sandbox(self, thermal: str | None) -> None:
        for prefix in self.mapped_prefixes:
            self.host_path(prefix).mkdir(parents=True, exist_ok=True)
        bin_dir = self.sandbox / "system" / "bin"
        bin_dir.mkdir(parents=True, exist_ok=True)
        props_file = self.sandbox / "system" / "build.prop"
        props_file.write_text("".join(f"{k}={v}\n" for k, v in self.props.items()))
        # getprop: no argument -> "[key]: [value]" lines; KEY -> value (empty line when unset), like toolbox's.
        _write_script(bin_dir / "getprop", f"""\
            props={shlex.quote(str(props_file))}
            if [ $# -eq 0 ]; then
              sed -e 's/^\\([^=]*\\)=\\(.*\\)$/[\\1]: [\\2]/' "$props"
            else
              v=$(awk -v k="$1" 'index($0, k "=") == 1 {{ print substr($0, length(k) + 2); exit }}' "$props")
              if [ -z "$v" ] && [ $# -ge 2 ]; then v=$2; fi
              printf '%s\\n' "$v"
            fi
            """)
        dumpsys_dir = self.sandbox / "system" / "dumpsys"
        dumpsys_dir.mkdir(exist_ok=True)
        if thermal is not None:
            (dumpsys_dir / "thermalservice").write_text(thermal)
        _write_script(bin_dir / "dumpsys", f"""\
            f={shlex.quote(str(dumpsys_dir))}/"$1"
            if [ -f "$f" ]; then cat "$f"; else echo "Can't find service: $1"; fi
            """)
        if self.toybox:  # Android's taskset is toybox's, which takes a hex mask and no -c (util-linux's has both);
            for applet in ("taskset", "flock", "timeout"):  # its flock has no -w
                (bin_dir / applet).symlink_to(self.toybox)
        if self.without:  # the shell's PATH is then system/bin and this host's tools, less those, linked in xbin
            xbin = self.sandbox / "system" / "xbin"
            xbin.mkdir(exist_ok=True)
            for folder in ("/usr/local/bin", "/usr/bin", "/bin"):
                for tool in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
                    if tool not in self.without and not (xbin / tool).exists() and not (bin_dir / tool).exists():
                        (xbin / tool).symlink_to(os.path.join(folder, tool))
        self.home = self.host_path("/data/local/tmp")

    def set_thermal(self, text: str | None) -> None:
        """What `dumpsys thermalservice` prints; None makes the service unknown (as on old Androids)."""
        path = self.sandbox / "system" / "dumpsys" / "thermalservice"
        if text is None:
            path.unlink(missing_ok=True)
        else:
            path.write_text(text)

    def _env(self) -> dict[str, str]:
        return {
            "PATH": f"{self.sandbox / 'system' / 'bin'}:" + (f"{self.sandbox / 'system' / 'xbin'}" if self.without
                                                             else "/usr/local/bin:/usr/bin:/bin"),
            "HOME": str(self.home),
            "TMPDIR": str(self.home),
            "LANG": "C.UTF-8",
            "ANDROID_DATA": str(self.host_path("/data")),
            **({"EDGEKD_DEVICE_LOCK": os.environ["EDGEKD_DEVICE_LOCK"]} if os.environ.get("EDGEKD_DEVICE_LOCK")
               else {}),
        }

    # ---------------------------------------------------------------- services

    def _service_for(self, service: str):
        if service == "sync:":
            return self._sync
        head, sep, command = service.partition(":")
        name, *args = head.split(",")
        if name == "shell" and sep:
            v2 = "v2" in args  # e.g. "shell,v2,raw:CMD"; the other args (raw, pty, TERM=...) are ignored
            if v2 and not self.shell_v2:
                return None  # a v1-only adbd does not know "shell,v2"
            if not command:
                return None  # interactive shells are not supported by the stand-in
            return lambda stream: self._shell(stream, command, v2)
        return None

    def _shell(self, stream: _Stream, command: str, v2: bool) -> None:
        proc = subprocess.Popen(
            [self.shell, "-c", self.map_command(command)],
            cwd=self.home,
            env=self._env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE if v2 else subprocess.STDOUT,
            start_new_session=True,
        )
        with self._lock:
            self._procs.add(proc)
        # What adbd does when the host closes a shell stream (AOSP adb/daemon/shell_service.cpp, PassDataStreams:
        # "protocol FD died, sending SIGHUP to pid"): v2 hangs up the shell alone, whose children live on;
        # v1 runs in a PTY, whose hangup reaches the whole foreground group.
        stream.on_close.append(lambda: _hang_up(proc) if v2 else _kill_group(proc))
        try:
            if not v2:
                proc.stdin.close()  # v1 has no "close stdin" signal; the stand-in gives shells no stdin
            pumps = [threading.Thread(target=self._pump, args=(proc.stdout, stream, SHELL_STDOUT if v2 else None),
                                      daemon=True)]
            if v2:
                pumps.append(threading.Thread(target=self._pump, args=(proc.stderr, stream, SHELL_STDERR), daemon=True))
                threading.Thread(target=self._shell_stdin, args=(stream, proc), daemon=True).start()
            for t in pumps:
                t.start()
            for t in pumps:
                t.join()
            code = proc.wait()
            if code < 0:
                code = 128 - code  # killed by a signal: report it the way a shell does
            if v2 and not stream.closed:
                stream.write(_shell_packet(SHELL_EXIT, bytes([code & 0xFF])))
        finally:
            with self._lock:
                self._procs.discard(proc)
            if proc.poll() is None:
                _kill_group(proc)
                proc.wait()

    @staticmethod
    def _pump(pipe, stream: _Stream, packet_id: int | None) -> None:
        fd = pipe.fileno()
        try:
            while True:
                data = os.read(fd, 64 * 1024)
                if not data:
                    return
                if packet_id is None:
                    stream.write(data)
                else:
                    stream.write(b"".join(_shell_packet(packet_id, data[i:i + SHELL_PACKET_DATA])
                                          for i in range(0, len(data), SHELL_PACKET_DATA)))
        except (StreamClosed, OSError):
            # the host went away: keep draining so the process is not blocked on a full pipe
            with contextlib.suppress(OSError):
                while os.read(fd, 64 * 1024):
                    pass
        finally:
            pipe.close()

    @staticmethod
    def _shell_stdin(stream: _Stream, proc: subprocess.Popen) -> None:
        try:
            while True:
                packet_id, length = struct.unpack("<BI", stream.read_exact(5))
                data = stream.read_exact(length) if length else b""
                if packet_id == SHELL_STDIN and proc.stdin:
                    proc.stdin.write(data)
                    proc.stdin.flush()
                elif packet_id == SHELL_CLOSE_STDIN:
                    break
                # window size changes and unknown packets are ignored
        except (StreamClosed, OSError, ValueError):
            pass
        finally:
            with contextlib.suppress(OSError):
                proc.stdin.close()

    # sync: 8-byte requests (4-char id + LE length) on the stream, see SYNC.TXT
    def _sync(self, stream: _Stream) -> None:
        while True:
            ident, length = struct.unpack("<4sI", stream.read_exact(8))
            if ident == b"QUIT":
                return
            if length > 1024:
                _sync_fail(stream, "path too long")
                return
            path = stream.read_exact(length).decode("utf-8", "replace")
            if ident == b"STAT":
                self._sync_stat(stream, path)
            elif ident == b"LIST":
                self._sync_list(stream, path)
            elif ident == b"SEND":
                if not self._sync_send(stream, path):
                    return
            elif ident == b"RECV":
                if not self._sync_recv(stream, path):
                    return
            else:
                _sync_fail(stream, f"unknown sync request {ident!r}")
                return

    def _sync_stat(self, stream: _Stream, path: str) -> None:
        try:
            st = os.lstat(self.host_path(path))
            reply = struct.pack("<4sIII", b"STAT", st.st_mode, st.st_size & 0xFFFFFFFF, int(st.st_mtime))
        except (OSError, PermissionError):
            reply = struct.pack("<4sIII", b"STAT", 0, 0, 0)  # v1 STAT says "missing" with all zeros
        stream.write(reply)

    def _sync_list(self, stream: _Stream, path: str) -> None:
        folder = self.host_path(path)
        out = bytearray()
        with contextlib.suppress(OSError):
            for name in [".", "..", *sorted(os.listdir(folder))]:
                try:
                    st = os.lstat(folder / name)
                except OSError:
                    continue
                raw = name.encode()
                out += struct.pack("<4sIIII", b"DENT", st.st_mode, st.st_size & 0xFFFFFFFF, int(st.st_mtime), len(raw))
                out += raw
        out += struct.pack("<4sIIII", b"DONE", 0, 0, 0, 0)
        stream.write(bytes(out))

    def _sync_send(self, stream: _Stream, spec: str) -> bool:
        path, _, mode_text = spec.rpartition(",")
        if not path:
            path, mode_text = spec, "420"
        try:
            mode = int(mode_text)
        except ValueError:
            mode = 0o644
        error: str | None = None
        target = tmp = None
        fh = None
        try:
            target = self.host_path(path)
            target.parent.mkdir(parents=True, exist_ok=True)  # adbd creates missing parent folders
            tmp = target.with_name(f".{target.name}.adb-tmp")
            fh = open(tmp, "wb")
        except OSError as exc:
            error = f"couldn't create file: {exc.strerror or exc}"
        written = 0
        # Consume DATA chunks until DONE even after an error, then answer once (OKAY or FAIL).
        while True:
            ident, length = struct.unpack("<4sI", stream.read_exact(8))
            if ident == b"DATA":
                if length > SYNC_DATA_MAX:
                    _sync_fail(stream, "oversize data message")
                    return False
                data = stream.read_exact(length)
                if error is None and fh is not None:
                    written += len(data)
                    if self.space_left is not None and written > self.space_left:
                        error = "No space left on device"
                    else:
                        try:
                            fh.write(data)
                        except OSError as exc:
                            error = exc.strerror or str(exc)
            elif ident == b"DONE":
                mtime = length
                break
            else:
                _sync_fail(stream, f"invalid data message {ident!r}")
                return False
        if fh is not None:
            fh.close()
        if error is None:
            try:
                os.replace(tmp, target)
                os.chmod(target, stat.S_IMODE(mode) or 0o644)
                os.utime(target, (mtime, mtime))
                if self.space_left is not None:
                    self.space_left -= written
            except OSError as exc:
                error = exc.strerror or str(exc)
        if error is not None:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
            _sync_fail(stream, error)
            return False
        stream.write(struct.pack("<4sI", b"OKAY", 0))
        return True

    def _sync_recv(self, stream: _Stream, path: str) -> bool:
        try:
            fh = open(self.host_path(path), "rb")
        except (OSError, PermissionError) as exc:
            _sync_fail(stream, getattr(exc, "strerror", None) or str(exc))
            return False
        with fh:
            while True:
                block = fh.read(SYNC_DATA_MAX)
                if not block:
                    break
                stream.write(struct.pack("<4sI", b"DATA", len(block)) + block)
        stream.write(struct.pack("<4sI", b"DONE", 0))
        return True


def _sync_fail(stream: _Stream, message: str) -> None:
    raw = message.encode()
    stream.write(struct.pack("<4sI", b"FAIL", len(raw)) + raw)


def _shell_packet(packet_id: int, data: bytes) -> bytes:
    return struct.pack("<BI", packet_id, len(data)) + data


def _hang_up(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        with contextlib.suppress(OSError):
            os.kill(proc.pid, signal.SIGHUP)


def _kill_group(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)


def _write_script(path: Path, body: str) -> None:
    import textwrap

    path.write_text("#!/bin/sh\n" + textwrap.dedent(body))
    path.chmod(0o755)
