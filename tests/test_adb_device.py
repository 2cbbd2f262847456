"""AdbDevice against the REAL adb client and server, talking to a loopback adb-protocol device (tests/adb_device.py).

A private adb server (its own port, HOME and TMPDIR) is started for this module and killed at the end; the
loopback device listens on 127.0.0.1 and is attached with `adb connect`, exactly like a phone over Wi-Fi.
Nothing is mocked: every call goes AdbDevice -> adb client -> adb server -> TCP -> the stand-in's shell/sync.
These tests need Debian's `adb` package and fail (never skip) without it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from edgekd.devices.adb import ADB_WORKDIR, AdbDevice, parse_thermal
from edgekd.devices.base import (runner_name, DeviceError, DeviceOutOfSpace, DeviceProfile, DeviceTimeout,
                                 DeviceUnreachable, RunResult)
from edgekd.devices.loopback import alive

sys.path.insert(0, str(Path(__file__).parent))
from adb_device import DEFAULT_THERMAL, LoopbackAdbDevice  # noqa: E402

RUNNER = Path(__file__).resolve().parents[1] / "edgekd" / "bench" / "runner.py"
ADB = shutil.which("adb")
WD = ADB_WORKDIR


@dataclass
class AdbServer:
    port: int
    env: dict[str, str]

    def adb(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run([ADB, "-P", str(self.port), *args], env=self.env, capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=timeout, check=False)

    def connect(self, device: LoopbackAdbDevice) -> None:
        out = self.adb("connect", device.address)
        assert "connected to" in out.stdout, out
        deadline = time.monotonic() + 15
        while self.adb("-s", device.address, "get-state").stdout.strip() != "device":
            assert time.monotonic() < deadline, f"{device.address} never came online: {self.adb('devices').stdout}"
            time.sleep(0.05)

    def disconnect(self, device: LoopbackAdbDevice) -> None:
        self.adb("disconnect", device.address)


def test_adb_client_is_installed():
    """Fails (never skips) without adb, so a machine missing it cannot pass this module silently."""
    assert ADB is not None, ("the adb client is not installed: these tests drive the real adb client and server; "
                             "install it with `apt-get install adb` (Debian/Ubuntu)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _private_adb_server(home: Path):
    """A private adb server: its own port (so tests never touch the user's 5037 server), HOME and TMPDIR."""
    if ADB is None:
        pytest.fail("the adb client is not installed: these tests drive the real adb client and server; "
                    "install it with `apt-get install adb` (Debian/Ubuntu)", pytrace=False)
    for _ in range(3):  # the free port can be taken between _free_port() and the server's bind(): retry
        port = _free_port()
        env = {**os.environ, "HOME": str(home), "TMPDIR": str(home), "ANDROID_ADB_SERVER_PORT": str(port)}
        env.pop("ANDROID_SERIAL", None)
        server = AdbServer(port, env)
        try:
            started = server.adb("start-server")
        except subprocess.TimeoutExpired as exc:  # something else took the port and never answers
            started = exc
        # Ours only if it says it started one: exit 0 alone may mean another server (a parallel worker's) was there.
        if getattr(started, "returncode", None) == 0 and "daemon started successfully" in started.stderr:
            break
    else:
        pytest.fail(f"no private adb server could be started on a free port (3 tries); the last: {started}",
                    pytrace=False)
    try:
        yield server
    finally:
        server.adb("kill-server")


@pytest.fixture(scope="module")
def adb_server(tmp_path_factory):
    with _private_adb_server(tmp_path_factory.mktemp("adb-home")) as server:
        yield server


def _sandbox(tmp_path_factory, name: str) -> Path:
    return tmp_path_factory.mktemp(name)


@contextlib.contextmanager
def _attached(server: AdbServer, device: LoopbackAdbDevice):
    device.start()
    try:
        server.connect(device)
        yield device
    finally:
        server.disconnect(device)
        device.stop()


@pytest.fixture(scope="module")
def phone(adb_server, tmp_path_factory):
    """The loopback device (shell v2, like Android 7+), with a fake cpufreq governor file."""
    sandbox = _sandbox(tmp_path_factory, "phone")
    gov = sandbox / "sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"
    gov.parent.mkdir(parents=True)
    gov.write_text("schedutil\n")
    device = LoopbackAdbDevice(sandbox, mapped_prefixes=("/data/local/tmp", "/sdcard", "/sys/devices/system/cpu"))
    with _attached(adb_server, device):
        yield device


def _adb_device(server: AdbServer, serial: str, *, python: str | None = None, **options) -> AdbDevice:
    profile = DeviceProfile(name="loopback", kind="adb", python=python, workdir=WD,
                            options={"serial": serial, "server_port": server.port, **options})
    return AdbDevice(profile)


@pytest.fixture()
def dev(adb_server, phone) -> AdbDevice:
    return _adb_device(adb_server, phone.address)


# --------------------------------------------------------------------------- connection


def test_adb_connect_lists_the_loopback_device(adb_server, phone, dev):
    listing = adb_server.adb("devices", "-l").stdout
    line = next(line for line in listing.splitlines() if line.startswith(phone.address))
    assert line.split()[1] == "device" and "model:edgekd_loopback" in line
    assert dev.shell_v2() is True
    assert dev.workdir == "/data/local/tmp/edgekd"
    # the generic profile default (/tmp/edgekd-work: no /tmp on Android) becomes the adb default
    generic = AdbDevice(DeviceProfile(name="p", kind="adb", options={"serial": "x"}))
    assert generic.workdir == ADB_WORKDIR


# --------------------------------------------------------------------------- files


def test_push_pull_round_trip_binary(dev, phone, tmp_path):
    payload = np.random.default_rng(0).integers(0, 256, size=300_000, dtype=np.uint8).tobytes()
    payload += bytes(range(256)) + b"\r\n\0\n"  # every byte value, CR/LF and NUL survive
    src = tmp_path / "blob.bin"
    src.write_bytes(payload)
    remote = f"{WD}/files/sub dir/blob.bin"  # missing parent folders (with a space) are created by the push
    dev.push(src, remote)
    assert phone.host_path(remote).read_bytes() == payload
    back = tmp_path / "out" / "blob.bin"
    dev.pull(remote, back)
    assert back.read_bytes() == payload
    assert not list(back.parent.glob(".*adb-part"))
    assert dev.sha256(remote) == hashlib.sha256(payload).hexdigest()


def test_local_paths_that_start_with_a_dash_are_files_not_options(dev, phone, tmp_path, monkeypatch):
    # A results folder named "-exp" given relative to the current folder: adb read "-exp/m.onnx" as one of its
    # options ("adb: unrecognized option"), reported as a remote path or locked-device problem.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "-exp").mkdir()
    (tmp_path / "-exp" / "m.onnx").write_bytes(b"model")
    remote = f"{WD}/dash/m.onnx"
    dev.push(Path("-exp/m.onnx"), remote)
    assert phone.host_path(remote).read_bytes() == b"model"
    dev.pull(remote, Path("-exp/back.onnx"))
    assert (tmp_path / "-exp" / "back.onnx").read_bytes() == b"model"


def test_a_work_directory_with_shell_metacharacters_stays_literal(adb_server, phone, tmp_path):
    # Every remote path reaches the phone's shell through shlex quoting, and adb's sync protocol takes it as is.
    odd = f"{WD}/edge kd $(touch PWNED) 'q' ;x"
    dev = AdbDevice(DeviceProfile(name="loopback", kind="adb", python=sys.executable, workdir=odd,
                                  options={"serial": phone.address, "server_port": adb_server.port}))
    (tmp_path / "in put.txt").write_text("data")
    remote = f"{odd}/sub dir/a b;$(id).txt"
    dev.push(tmp_path / "in put.txt", remote)
    assert phone.host_path(remote).read_text() == "data"
    assert dev.sha256(remote) == hashlib.sha256(b"data").hexdigest()
    dev.pull(remote, tmp_path / "back.txt")
    assert (tmp_path / "back.txt").read_text() == "data"
    assert dev.info()["python"]  # the runner, pushed into the odd folder and run from there
    assert not list(phone.sandbox.rglob("PWNED")) and not list(tmp_path.rglob("PWNED"))


def test_sha256_of_a_missing_file_is_none(dev):
    assert dev.sha256(f"{WD}/no/such/file.bin") is None


def test_pull_of_a_missing_file_says_so(dev, tmp_path):
    with pytest.raises(DeviceError) as err:
        dev.pull(f"{WD}/missing.json", tmp_path / "missing.json")
    assert not isinstance(err.value, DeviceUnreachable)
    assert "does not exist" in (err.value.why or "")
    assert not (tmp_path / "missing.json").exists()


def test_push_without_space_is_device_out_of_space(dev, phone, tmp_path):
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(200_000))
    phone.space_left = 50_000
    try:
        with pytest.raises(DeviceOutOfSpace) as err:
            dev.push(src, f"{WD}/big.bin")
    finally:
        phone.space_left = None
    assert "No space left on device" in err.value.why
    assert "free space" in err.value.fix and "`edgekd devices --clean loopback`" in err.value.fix
    assert not phone.host_path(f"{WD}/big.bin").exists()


def test_clean_removes_edgekd_files_from_the_phone_and_says_how_much(adb_server, phone, dev, tmp_path):
    """`edgekd devices --clean` through adb: sizes from the phone's du, the user's files in the folder stay."""
    from edgekd.bench.clean import clean

    blob = tmp_path / "blob.bin"
    blob.write_bytes(os.urandom(300_000))
    ours = [f"{WD}/artifacts/{'ab' * 8}.tflite", f"{WD}/inputs/{'cd' * 8}.npy", f"{WD}/{runner_name()}"]
    theirs = [f"{WD}/artifacts/readme.txt", f"{WD}/photo.jpg"]
    for remote in ours + theirs:
        dev.push(blob, remote)
    profile = tmp_path / "phone.yaml"
    profile.write_text(json.dumps({"name": "loopback", "kind": "adb", "serial": phone.address,
                                   "server_port": adb_server.port}))  # JSON is YAML; workdir: the default, WD
    cleaned = clean(str(profile))
    assert cleaned.workdir == WD and cleaned.files >= len(ours) and not cleaned.failed
    assert cleaned.kib >= len(ours) * 290 and not cleaned.unsized  # du -k: ~293 KiB each
    assert not any(phone.host_path(r).exists() for r in ours)
    assert all(phone.host_path(r).exists() for r in theirs)
    for remote in theirs:
        phone.host_path(remote).unlink()


# --------------------------------------------------------------------------- commands


def test_run_returns_exit_codes_and_separate_streams(dev, phone):
    assert dev.run(["true"]).returncode == 0
    assert dev.run(["sh", "-c", "exit 7"]).returncode == 7
    result = dev.run(["sh", "-c", "echo out; printf err >&2; exit 3"])
    assert (result.returncode, result.stdout, result.stderr) == (3, "out\n", "err")
    assert dev.run(["no-such-tool-edgekd"]).returncode == 127
    assert dev.run(["-not-an-adb-option"]).returncode == 127  # reaches the device shell, not adb's option parser
    assert dev.run(["printf", "no newline"]).stdout == "no newline"
    assert any(s.startswith("shell,v2") for s in phone.opened_services)


def test_run_passes_arguments_literally(dev, phone):
    nasty = ["a b", "$(touch pwned)", "`touch pwned2`", "semi;colon", "it's", '"dq"', "*", "&&", "|", "x\ty",
             "$HOME", "-n", "", "new\nline", "ünï©ødé"]
    result = dev.run(["printf", "[%s]\n", *nasty])
    assert result.returncode == 0, result
    assert result.stdout == "".join(f"[{a}]\n" for a in nasty)
    assert not list(phone.sandbox.rglob("pwned*"))


def test_run_timeout(dev, phone):
    # Only the client's own 1 s timeout raises this (the sleep would have returned 0), so it was not waited out.
    with pytest.raises(DeviceError, match="did not finish within 1 s"):
        dev.run(["sleep", "300"], timeout=1)
    # ... and, as the error says, the device closed the shell with its stream: no sleep left running there
    deadline = time.monotonic() + 60  # only so that a shell never killed fails the test instead of hanging it
    while phone.running_shells:
        assert time.monotonic() < deadline, "the device's shell still runs after the adb client was stopped"
        time.sleep(0.05)


def test_a_command_that_times_out_is_stopped_on_the_phone(dev, phone):
    # adbd hangs up only the shell when the adb client goes away: the command the shell started lives on, and a
    # hung runner would keep a core of the phone busy under every later benchmark.
    started = f"{WD}/timed-out.pid"
    assert dev.run(["mkdir", "-p", WD]).returncode == 0
    with pytest.raises(DeviceTimeout, match="did not finish within 5 s"):
        dev.run(["sh", "-c", 'echo $$ > "$1"; exec sleep 300', "sh", started], timeout=5)
    pid = int(phone.host_path(started).read_text())
    deadline = time.monotonic() + 30  # only so that a command never stopped fails the test instead of hanging it
    while alive(pid):
        assert time.monotonic() < deadline, "the command still runs on the phone after the adb client was stopped"
        time.sleep(0.05)
    assert dev.run(["sh", "-c", "echo out; echo err >&2; exit 4"]) == RunResult(4, "out\n", "err\n")


def test_shell_v1_device_exit_codes_via_marker(adb_server, tmp_path_factory):
    """An old adbd without shell_v2: adb exits 0 whatever the command did; the marker recovers the status."""
    old = LoopbackAdbDevice(_sandbox(tmp_path_factory, "old-phone"), shell_v2=False)
    with _attached(adb_server, old):
        dev = _adb_device(adb_server, old.address)
        assert dev.shell_v2() is False
        result = dev.run(["sh", "-c", "echo out; echo err >&2; exit 5"])
        assert result.returncode == 5
        assert result.stdout == "out\nerr\n"  # v1 merges stderr into stdout
        assert dev.run(["printf", "%s|", "a b", "$(id)"]).stdout == "a b|$(id)|"
        assert all(s.startswith("shell:") for s in old.opened_services if s != "sync:")


@pytest.mark.parametrize("shell_v2", [True, False], ids=["v2", "v1"])
def test_lines_of_a_running_command_reach_the_caller_while_it_runs(adb_server, tmp_path_factory, shell_v2):
    """run(on_line=…) passes each line on while the command still runs (a runner waiting for the device says
    so): stderr on a v2 shell, stdout on a v1 one, which merges the two; the result keeps the whole output."""
    from concurrent.futures import ThreadPoolExecutor

    device = LoopbackAdbDevice(_sandbox(tmp_path_factory, f"lines-{shell_v2}"), shell_v2=shell_v2)
    go = tmp_path_factory.mktemp("lines") / "go"
    seen: list[str] = []
    script = 'echo out; echo "said early" >&2; while [ ! -e "$1" ]; do sleep 0.05; done; echo "said late" >&2'
    with _attached(adb_server, device), ThreadPoolExecutor(1) as pool:
        dev = _adb_device(adb_server, device.address)
        try:
            running = pool.submit(dev.run, ["sh", "-c", script, "sh", str(go)], timeout=300, on_line=seen.append)
            deadline = time.monotonic() + 120
            while "said early" not in seen:
                assert not running.done(), running.exception()
                assert time.monotonic() < deadline, f"no line came while the command ran: {seen}"
                time.sleep(0.05)
        finally:
            go.touch()  # the command ends
        result = running.result(timeout=120)
    assert result.returncode == 0
    assert [line for line in seen if "said" in line] == ["said early", "said late"]  # each line once
    assert (result.stdout, result.stderr) == (("out\n", "said early\nsaid late\n") if shell_v2 else
                                              ("out\nsaid early\nsaid late\n", ""))


# --------------------------------------------------------------------------- device description


def test_info_from_getprop_without_python(dev, phone):
    info = dev.info()
    assert info["python"] is None
    assert info["system"]["system"] == "Android"
    assert info["system"]["machine"] == "x86_64"
    assert info["system"]["release"] == "14"
    assert info["system"]["governor"] == "schedutil"
    # the CPU as the phone's /proc/cpuinfo names it (here: this host's), as a bench result on it does
    from edgekd.bench.runner import parse_cpuinfo

    cpu, features = parse_cpuinfo(Path("/proc/cpuinfo").read_text())
    assert cpu and info["system"]["cpu_model"] == cpu and info["system"]["cpu_features"] == features
    assert info["system"]["cpu_count_logical"] == os.cpu_count()
    assert info["android"]["model"] == "edgekd-loopback"
    assert info["android"]["abi"] == "x86_64"
    assert info["android"]["sdk"] == "34"
    assert info["serial"] == phone.address
    thermal = info["thermal"]
    assert thermal["status"] == 1 and thermal["status_name"] == "light"
    assert {t["name"]: t["value"] for t in thermal["temperatures"]} == {"cpu0": 41.25, "battery": 31.5, "skin": 35.0}
    assert dev.getprop("ro.product.model") == "edgekd-loopback"
    assert dev.getprop("ro.no.such.prop") is None


def test_thermal_unavailable_is_none(dev, phone):
    phone.set_thermal(None)
    try:
        assert dev.thermal() is None
    finally:
        phone.set_thermal(DEFAULT_THERMAL)


def test_info_via_runner_with_python(adb_server, phone):
    dev = _adb_device(adb_server, phone.address, python=sys.executable)
    info = dev.info()
    assert info["schema"] == "edgekd.runner-info/1"
    assert info["python"] and info["runtimes"]["onnxruntime"]
    assert info["android"]["model"] == "edgekd-loopback" and info["thermal"]["status"] == 1
    assert phone.host_path(f"{WD}/{runner_name()}").read_bytes() == RUNNER.read_bytes()


def test_parse_thermal():
    parsed = parse_thermal(DEFAULT_THERMAL)
    assert parsed["status_name"] == "light"
    assert [t["type"] for t in parsed["temperatures"]] == ["cpu", "battery", "skin"]
    cached_only = ("Thermal Status: 3\nCached temperatures:\n"
                   "\tTemperature{mValue=48.0, mType=3, mName=skin, mStatus=3}\n")
    assert parse_thermal(cached_only)["temperatures"] == [{"name": "skin", "type": "skin", "value": 48.0, "status": 3}]
    assert parse_thermal("Can't find service: thermalservice\n") is None
    assert parse_thermal("") is None


# --------------------------------------------------------------------------- a benchmark through adb


def test_runner_benchmark_through_adb(dev, phone, tmp_path):
    from edgekd.export.onnx import write_identity_model

    bundle = f"{WD}/bench-identity"
    model = write_identity_model(tmp_path / "identity.onnx", (64,), 18)
    x = np.random.default_rng(1).standard_normal((1, 64)).astype(np.float32)
    rows = np.random.default_rng(2).standard_normal((10, 64)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "rows.npy", rows)
    spec = {"artifact": "identity.onnx", "runtime": "onnxruntime", "inputs": {"x": "x.npy"},
            "warmup_runs": 5, "warmup_min_seconds": 0.01, "min_runs": 50, "min_seconds": 0.05, "max_seconds": 5.0,
            "memory_runs": 3, "predict": {"inputs": {"x": "rows.npy"}, "batch_size": 4, "output": "pred.npy"}}
    (tmp_path / "spec.json").write_text(json.dumps(spec))

    runner = f"{WD}/{runner_name()}"
    dev.push(RUNNER, runner)
    for name in ("identity.onnx", "x.npy", "rows.npy", "spec.json"):
        dev.push(tmp_path / name, f"{bundle}/{name}")
    assert dev.sha256(f"{bundle}/identity.onnx") == hashlib.sha256(model.read_bytes()).hexdigest()

    result = dev.run([sys.executable, runner, f"{bundle}/spec.json"], timeout=120)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["ok"] is True and out["schema"] == "edgekd.runner/1"
    assert out["runtime"]["name"] == "onnxruntime"
    assert len(out["latencies_ns"]) >= 50 and min(out["latencies_ns"]) > 0
    assert out["inputs"][0]["shape"] == [1, 64]

    dev.pull(f"{bundle}/pred.npy", tmp_path / "pred.npy")
    np.testing.assert_array_equal(np.load(tmp_path / "pred.npy"), rows)  # Identity: predictions == inputs

    # a runner failure comes back as exit 3 with its JSON error, not as a transport error
    bad = dev.run([sys.executable, runner, f"{bundle}/no-spec.json"], timeout=120)
    assert bad.returncode == 3 and json.loads(bad.stdout)["error"]["kind"] == "spec"


# --------------------------------------------------------------------------- lost devices


def test_unknown_serial_is_unreachable(adb_server):
    dev = _adb_device(adb_server, f"127.0.0.1:{_free_port()}")
    with pytest.raises(DeviceUnreachable) as err:
        dev.run(["true"])
    assert f"-P {adb_server.port} connect" in err.value.fix and f"-P {adb_server.port} devices" in err.value.fix


def test_an_unauthorized_phone_says_to_accept_the_prompt(adb_server, tmp_path_factory, tmp_path):
    # The real adb client's words for a phone whose "Allow USB debugging?" prompt nobody accepted, on each path.
    locked = LoopbackAdbDevice(_sandbox(tmp_path_factory, "locked-phone"), authorized=False).start()
    try:
        adb_server.adb("connect", locked.address)
        _poll(lambda: f"{locked.address}\tunauthorized" in adb_server.adb("devices").stdout, 30,
              "adb never listed the phone as unauthorized")
        dev = _adb_device(adb_server, locked.address)
        (tmp_path / "f").write_text("x")
        for attempt in (lambda: dev.run(["true"]), lambda: dev.push(tmp_path / "f", f"{WD}/f"),
                        lambda: dev.pull(f"{WD}/f", tmp_path / "g")):
            with pytest.raises(DeviceUnreachable, match="has not authorized this computer") as err:
                attempt()
            assert "Allow USB debugging" in err.value.fix and "unauthorized" in err.value.why
    finally:
        adb_server.disconnect(locked)
        locked.stop()


def test_an_offline_device_says_to_reconnect(adb_server, tmp_path):
    # Something answers TCP at the address but never speaks adb: the server lists the device "offline".
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        serial = f"127.0.0.1:{silent.getsockname()[1]}"
        try:
            adb_server.adb("connect", serial)
            _poll(lambda: f"{serial}\toffline" in adb_server.adb("devices").stdout, 30,
                  "adb never listed the device as offline")
            dev = _adb_device(adb_server, serial)
            (tmp_path / "f").write_text("x")
            for attempt in (lambda: dev.run(["true"]), lambda: dev.push(tmp_path / "f", f"{WD}/f")):
                with pytest.raises(DeviceUnreachable, match="is offline or the connection broke") as err:
                    attempt()
                assert f"-P {adb_server.port} connect {serial}" in err.value.fix
        finally:
            adb_server.adb("disconnect", serial)


def test_missing_adb_binary(adb_server, phone, tmp_path):
    dev = _adb_device(adb_server, phone.address, adb=str(tmp_path / "no-adb"))
    with pytest.raises(DeviceError, match="not installed") as err:
        dev.run(["true"])
    assert "apt-get install adb" in err.value.fix


def test_disconnect_mid_run_is_unreachable(adb_server, tmp_path_factory, tmp_path):
    flaky = LoopbackAdbDevice(_sandbox(tmp_path_factory, "flaky-phone"))
    with _attached(adb_server, flaky):
        dev = _adb_device(adb_server, flaky.address)
        started = flaky.host_path(f"{WD}/started")
        outcome: dict[str, BaseException | object] = {}

        def bench():
            try:
                outcome["result"] = dev.run(["sh", "-c", f"mkdir -p {WD} && touch {WD}/started && echo partial "
                                                         "&& sleep 32 && echo done"], timeout=60)
            except BaseException as exc:  # noqa: BLE001 - handed to the main thread
                outcome["error"] = exc

        t0 = time.monotonic()
        thread = threading.Thread(target=bench)
        thread.start()
        while not started.exists():
            assert time.monotonic() - t0 < 20, "the command never started"
            time.sleep(0.02)
        flaky.disconnect()
        thread.join(30)
        assert not thread.is_alive()  # the run returned; the error below shows the disconnect ended it
        err = outcome.get("error")
        assert isinstance(err, DeviceUnreachable), outcome
        assert "lost the connection" in err.what and flaky.address in err.what
        assert "without the exit status" in err.why
        assert f"-P {adb_server.port} connect {flaky.address}" in err.fix  # the profile's server, not 5037's

        # the device gone for good: the adb server reports it offline, which is DeviceUnreachable too
        flaky.stop()
        deadline = time.monotonic() + 15
        while "device" == adb_server.adb("-s", flaky.address, "get-state").stdout.strip():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        with pytest.raises(DeviceUnreachable, match="offline|does not see"):
            dev.run(["true"])
        with pytest.raises(DeviceUnreachable):
            dev.push(Path(__file__), f"{WD}/x.py")


# --------------------------------------------------------------------------- a link that goes away under the runner

# A run that would go on for 10 minutes (its warmup alone lasts max_seconds): only the tether can end it early.
ENDLESS = {"warmup_runs": 10**9, "warmup_min_seconds": 600.0, "min_runs": 1, "max_runs": 1, "min_seconds": 0.0,
           "max_seconds": 600.0, "memory_runs": 0}


def _runner_on(phone: LoopbackAdbDevice) -> int | None:
    """The PID of a runner (not its starting shell) running from the phone's sandbox, once onnxruntime is loaded."""
    for entry in os.listdir("/proc"):
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            if (len(argv) > 2 and argv[1].decode().startswith(str(phone.sandbox))
                    and argv[1].decode().endswith(runner_name())
                    and "onnxruntime" in Path(f"/proc/{entry}/maps").read_text()):
                return int(entry)
        except (OSError, ValueError):
            continue
    return None


def _poll(condition, seconds: float, what: str):
    """condition()'s first true value, polled; the test fails when it never comes (no assertion on speed)."""
    deadline = time.monotonic() + seconds
    while not (value := condition()):
        assert time.monotonic() < deadline, what
        time.sleep(0.05)
    return value


def _stop(pid: int | None) -> None:
    if pid is not None and alive(pid):
        os.kill(pid, 9)


_BENCH_HOST = """\
import json, sys
from pathlib import Path
import numpy as np
from edgekd.bench.harness import _Session
from edgekd.devices.adb import AdbDevice
from edgekd.devices.base import DeviceProfile
from edgekd.export.onnx import write_identity_model

serial, port, workdir, tmp, endless = sys.argv[1], int(sys.argv[2]), sys.argv[3], Path(sys.argv[4]), sys.argv[5]
device = AdbDevice(DeviceProfile(name="loopback", kind="adb", python=sys.executable, workdir=workdir,
                                 options={"serial": serial, "server_port": port}))
session = _Session(device, tmp)
np.save(tmp / "x.npy", np.zeros((1, 64), np.float32))
model = write_identity_model(tmp / "identity.onnx", (64,), 18)
spec = {"artifact": session.relative(session.push(model, "identity.onnx")), "runtime": "onnxruntime",
        "inputs": {"x": session.relative(session.push(tmp / "x.npy", "x.npy"))}, **json.loads(endless)}
session.run_spec(spec, "endless", 900)
"""


def test_runner_ends_when_its_host_is_killed(adb_server, phone, tmp_path):
    # edgekd killed outright (SIGKILL, an OOM kill, a closed laptop's session): the adb client it started lives
    # on, and the stream stays open, so adbd hangs nothing up and the runner ran for its whole time limit.
    # Tethered, the runner's stdin is a pipe from edgekd that adb forwards; its end reaches the runner as EOF.
    host = subprocess.Popen([sys.executable, "-c", _BENCH_HOST, phone.address, str(adb_server.port), WD,
                             str(tmp_path), json.dumps(ENDLESS)], stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    runner = None
    try:
        runner = _poll(lambda: _runner_on(phone) or host.poll() is not None and pytest.fail(host.stderr.read()),
                       120, "the runner never started")
        host.kill()  # no cleanup of its own can run
        host.wait()
        _poll(lambda: not alive(runner), 30, "the runner still runs on the phone after its host was killed")
    finally:
        _stop(runner)
        host.kill()
        host.wait()


def test_runner_ends_when_its_link_goes_silent(adb_server, phone, tmp_path):
    # A phone on Wi-Fi whose network goes away: adbd sees no close, so it hangs nothing up. Here the adb client is
    # frozen: the stream stays open, and the runner's heartbeats stop.
    from edgekd.bench.harness import _Session
    from edgekd.export.onnx import write_identity_model

    dev = _adb_device(adb_server, phone.address, python=sys.executable)
    session = _Session(dev, tmp_path)
    np.save(tmp_path / "x.npy", np.zeros((1, 64), np.float32))
    model = write_identity_model(tmp_path / "identity.onnx", (64,), 18)
    (tmp_path / "spec.json").write_text(json.dumps(
        {"artifact": session.relative(session.push(model, "identity.onnx")), "runtime": "onnxruntime",
         "inputs": {"x": session.relative(session.push(tmp_path / "x.npy", "x.npy"))}, **ENDLESS}))
    spec = session.push(tmp_path / "spec.json", "specs/silent.json")
    assert dev.can_tether()
    outcome: dict[str, object] = {}

    def bench():
        try:
            outcome["result"] = dev.run([sys.executable, session.runner, "--tether", "3", spec], timeout=900,
                                        tether=True)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            outcome["error"] = exc

    thread = threading.Thread(target=bench)
    thread.start()
    runner = client = None
    try:
        runner = _poll(lambda: _runner_on(phone) or not thread.is_alive() and pytest.fail(str(outcome)), 120,
                       "the runner never started")
        client = next(pid for pid in _children(os.getpid()) if Path(f"/proc/{pid}/exe").resolve().name == "adb")
        os.kill(client, 19)  # SIGSTOP: nothing more passes, nothing is closed
        _poll(lambda: not alive(runner), 30, "the runner still runs on the phone after its link went silent")
    finally:
        _stop(runner)
        _stop(client)  # SIGKILL ends a stopped process too
        thread.join(60)
    assert not thread.is_alive()


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if int(stat[stat.rindex(")") + 2:].split()[1]) == pid:
            out.append(int(entry))
    return out


def _adb_server_pid(server: AdbServer) -> int:
    """The pid of the private adb server (`adb -L tcp:PORT fork-server server ...`)."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                argv = (Path("/proc") / entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"fork-server" in argv and f"tcp:{server.port}".encode() in argv:
                return int(entry)
    raise AssertionError(f"no adb server on port {server.port}")


def test_a_copy_through_a_hung_adb_is_a_clear_timeout(adb_server, dev, tmp_path, monkeypatch):
    """adb push/pull had no time limit: an adb server (or link) that stopped answering left the bench waiting
    forever. A copy now has its size's time at a rate slower than any working link, plus a margin."""
    import signal

    from edgekd.devices import adb as adb_module

    local = tmp_path / "model.onnx"
    local.write_bytes(b"\0" * 4096)
    dev.push(local, f"{WD}/model.onnx")  # a working copy: well within its time
    monkeypatch.setattr(adb_module, "COPY_MIN_S", 3.0)
    monkeypatch.setattr(adb_module, "PULL_TIMEOUT_S", 3.0)
    server = _adb_server_pid(adb_server)
    os.kill(server, signal.SIGSTOP)  # the server stops answering, as a hung one does
    try:
        with pytest.raises(DeviceTimeout, match=r"adb push of model.onnx \(0.0 MB\) did not finish within 3 s"
                           ) as err:
            dev.push(local, f"{WD}/again.onnx")
        assert "stopped answering" in err.value.why and f"adb -P {adb_server.port} kill-server" in err.value.fix
        with pytest.raises(DeviceTimeout, match="adb pull of .*model.onnx did not finish within 3 s"):
            dev.pull(f"{WD}/model.onnx", tmp_path / "back.onnx")
        assert not (tmp_path / "back.onnx").exists()
    finally:
        os.kill(server, signal.SIGCONT)
    dev.pull(f"{WD}/model.onnx", tmp_path / "back.onnx")  # the server answers again: copies work
    assert (tmp_path / "back.onnx").read_bytes() == local.read_bytes()


def test_an_adb_server_that_dies_mid_copy_is_a_lost_connection(tmp_path_factory, tmp_path):
    """adb exits 1 and says nothing when its server dies under a push: that was "exit code 1; check the remote
    path and that the device is unlocked". A server of the test's own, which it kills."""
    import signal
    from concurrent.futures import ThreadPoolExecutor

    with _private_adb_server(tmp_path_factory.mktemp("adb-home-dying")) as server:
        phone = LoopbackAdbDevice(_sandbox(tmp_path_factory, "copy-phone"))
        with _attached(server, phone):
            dev = _adb_device(server, phone.address)
            big = tmp_path / "big.bin"
            with open(big, "wb") as f:
                f.truncate(8 * 2**30)  # sparse here; far more than adb copies before its server dies
            partial = phone.host_path(f"{WD}/.big.bin.adb-tmp")  # where the phone writes until the copy is done
            with ThreadPoolExecutor(1) as pool:
                copying = pool.submit(dev.push, big, f"{WD}/big.bin")
                _poll(lambda: partial.exists() and partial.stat().st_size > 0, 30, "the copy to start")
                os.kill(_adb_server_pid(server), signal.SIGKILL)
                with pytest.raises(DeviceUnreachable, match="lost the connection to loopback") as err:
                    copying.result()
    assert "while pushing big.bin" in err.value.what and "no message" in err.value.why
    assert f"-P {server.port} -s {phone.address} get-state" in err.value.fix
