"""SSHDevice against a real sshd on 127.0.0.1 with the real OpenSSH client: no mocks.

The "remote" is this machine, reached over SSH as the current user; its Python is the one running the
tests. The device's work directory has a space in its name, so every path goes through quoting.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import signal
import stat
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from edgekd.devices.base import (
    runner_name,
    DeviceError,
    DeviceOutOfSpace,
    DeviceProfile,
    DeviceTimeout,
    DeviceUnreachable,
    HostKeyMismatch,
    python_argv,
)
from edgekd.devices.ssh import SSHDevice
from conftest import skip_or_fail_on_ci
from edgekd.devices.loopback import alive
from sshd import INSTALL_HINT, LoopbackSSHD, find_sshd, free_port, keygen

RUNNER = Path(__file__).resolve().parents[1] / "edgekd" / "bench" / "runner.py"
DEVICE_PYTHON = sys.executable  # /work/main/.venv/bin/python when run as `.venv/bin/python -m pytest`


def _require_openssh() -> None:
    # Not a skip: CI installs openssh-server and these tests must run there.
    if find_sshd() is None:
        pytest.fail(INSTALL_HINT, pytrace=False)
    if shutil.which("ssh") is None or shutil.which("scp") is None:
        pytest.fail("the OpenSSH client is not installed: apt-get install openssh-client", pytrace=False)


@pytest.fixture(scope="session")
def sshd(tmp_path_factory):
    """One loopback sshd for the whole session."""
    _require_openssh()
    server = LoopbackSSHD(tmp_path_factory.mktemp("sshd")).start()
    yield server
    server.stop()


def make_device(server: LoopbackSSHD, workdir: Path, **overrides) -> SSHDevice:
    options = {**server.profile_options(), **overrides}
    return SSHDevice(DeviceProfile(name="loopback", kind="ssh", python=DEVICE_PYTHON, workdir=str(workdir),
                                   options=options))


@pytest.fixture()
def workdir(tmp_path) -> Path:
    return tmp_path / "remote work"  # a space: every remote path must be quoted (or taken literally)


@pytest.fixture()
def own_board(tmp_path, workdir):
    """(server, device) on an sshd of the test's own, which the test may stop: a board that goes away."""
    _require_openssh()
    server = LoopbackSSHD(tmp_path / "sshd").start()
    device = make_device(server, workdir)
    try:
        yield server, device
    finally:
        device.close()
        server.stop()


@pytest.fixture()
def device(sshd, workdir):
    dev = make_device(sshd, workdir)
    yield dev
    dev.close()


def accepted_logins(server: LoopbackSSHD) -> int:
    return server.log.read_text(errors="replace").count("Accepted publickey")


def _command_in(fix: str, starts: str) -> str:
    """The command a fix quotes between backticks that starts with `starts`."""
    return next(part for part in fix.split("`")[1::2] if part.startswith(starts))


# ---------------------------------------------------------------------- files and commands

def test_push_run_pull_round_trip(device, workdir, tmp_path):
    local = tmp_path / "in.txt"
    local.write_text("hello edge\n" * 1000)
    remote = f"{workdir}/sub dir/in.txt"  # workdir and sub dir are created on first use
    device.push(local, remote)
    assert (workdir / "sub dir" / "in.txt").read_text() == local.read_text()

    result = device.run(["sh", "-c", 'tr a-z A-Z < "$1" > "$2"', "sh", remote, f"{workdir}/sub dir/out.txt"])
    assert (result.returncode, result.stderr) == (0, "")
    back = tmp_path / "back" / "out.txt"
    device.pull(f"{workdir}/sub dir/out.txt", back)
    assert back.read_text() == "HELLO EDGE\n" * 1000

    echoed = device.run(["cat", remote])
    assert echoed.stdout == local.read_text()
    assert device.run(["sh", "-c", "echo oops >&2; exit 7"]).returncode == 7  # remote status passes through


@pytest.mark.parametrize("shared", ["/", "/tmp"])
def test_a_push_from_python_refuses_a_shared_work_directory(sshd, tmp_path, shared):
    """A bench refuses such a work directory before its first copy; a caller of SSHDevice.push used to write into
    `/` unchecked (its mkdir skipped "/"), where `edgekd devices --clean` will not clean."""
    local = tmp_path / "in.txt"
    local.write_text("x")
    dev = make_device(sshd, Path(shared))
    try:
        with pytest.raises(DeviceError, match="will not use the work directory"):
            dev.push(local, f"{shared.rstrip('/')}/edgekd-should-not-be-here.txt")
    finally:
        dev.close()
    assert not Path(shared, "edgekd-should-not-be-here.txt").exists()


def test_pull_missing_file_is_a_clear_error(device, workdir, tmp_path):
    with pytest.raises(DeviceError) as err:
        device.pull(f"{workdir}/nope.bin", tmp_path / "nope.bin")
    assert "No such file" in str(err.value.why) and not isinstance(err.value, (DeviceUnreachable, HostKeyMismatch))


def test_push_missing_local_file(device, workdir, tmp_path):
    with pytest.raises(DeviceError, match="cannot push"):
        device.push(tmp_path / "absent.bin", f"{workdir}/absent.bin")


def test_sha256_present_and_absent(device, workdir, tmp_path):
    local = tmp_path / "blob.bin"
    local.write_bytes(os.urandom(100_000))
    remote = f"{workdir}/it's a \"blob\".bin"
    assert device.sha256(remote) is None
    device.push(local, remote)
    assert device.sha256(remote) == hashlib.sha256(local.read_bytes()).hexdigest()
    assert device.sha256(f"{workdir}") is None  # a folder is not a file


def test_argv_with_spaces_and_shell_metacharacters_arrive_literally(device, tmp_path):
    marker = tmp_path / "pwned"
    args = ["two words", f"; touch {marker}", f"$(touch {marker})", f"`touch {marker}`", f"| touch {marker}",
            f"&& touch {marker}", "'single' \"double\"", "*", "$HOME", "", "back\\slash", "new\nline", "ünï cødé",
            "--not-an-option", "-o", "tab\there", "#comment"]
    result = device.run([DEVICE_PYTHON, "-c", "import json, sys; print(json.dumps(sys.argv[1:]))", *args])
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == args
    assert not marker.exists()


def test_run_timeout(device):
    # Only the client's own 1 s timeout raises this (sleep 30 would have returned 0), so it was not waited out.
    with pytest.raises(DeviceError, match="did not finish within 1 s"):
        device.run(["sleep", "30"], timeout=1)


def test_a_command_that_times_out_is_stopped_on_the_device(device, tmp_path):
    # sshd leaves a command running when its session closes (no terminal, no SIGHUP): a hung runner would
    # keep loading the board for every later benchmark.
    started = tmp_path / "pid"
    assert device.run(["true"]).returncode == 0  # connected: the time limit is all the command's
    with pytest.raises(DeviceTimeout, match="did not finish within 5 s") as err:
        device.run(["sh", "-c", 'echo $$ > "$1"; exec sleep 120', "sh", str(started)], timeout=5)
    pid = int(started.read_text())
    _wait_for(lambda: not alive(pid))
    assert f"pid {pid} killed" in err.value.why
    assert device.run(["sh", "-c", "echo out; echo err >&2"]).stderr == "err\n"  # the PID line is not passed on


def test_ctrl_c_stops_the_command_on_the_device_too(sshd, workdir, tmp_path):
    # Ctrl-C stops the ssh client, not the command on the board: a 10-minute --sustained run went on there.
    started = tmp_path / "pid"
    script = ("import json, sys\n"
              "from edgekd.devices.base import DeviceProfile\nfrom edgekd.devices.ssh import SSHDevice\n"
              "profile = DeviceProfile(name='loopback', kind='ssh', workdir=sys.argv[2], options=json.loads(sys.argv[1]))\n"
              "SSHDevice(profile).run(['sh', '-c', 'echo $$ > \"$1\"; exec sleep 120', 'sh', sys.argv[3]])\n")
    host = subprocess.Popen([sys.executable, "-c", script, json.dumps(sshd.profile_options()), str(workdir),
                             str(started)], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_for(started.exists)
        pid = int(_wait_for(started.read_text))
        host.send_signal(signal.SIGINT)  # what Ctrl-C does to edgekd
        assert host.wait(timeout=60) != 0 and b"KeyboardInterrupt" in host.stderr.read()
        _wait_for(lambda: not alive(pid))
    finally:
        host.kill()
        host.wait()


# ---------------------------------------------------------------------- info and benchmark through ssh

def test_info_comes_from_the_runner_on_the_device(device, workdir):
    info = device.info()
    assert info["schema"] == "edgekd.runner-info/1"
    assert info["system"]["machine"] == platform.machine()
    assert info["python"] == platform.python_version()
    assert info["runtimes"]["onnxruntime"]
    assert info["emulated"] is False
    assert (workdir / runner_name()).read_bytes() == RUNNER.read_bytes()  # pushed once, then skipped by sha256
    assert device.info()["python"] == info["python"]


def test_runner_benchmark_through_ssh(device, workdir, tmp_path):
    from edgekd.export.onnx import write_identity_model

    model = write_identity_model(tmp_path / "identity.onnx", (64,), 18)
    x = np.random.default_rng(0).standard_normal((1, 64)).astype(np.float32)
    batch = np.random.default_rng(1).standard_normal((10, 64)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "batch.npy", batch)
    spec = {"artifact": "identity.onnx", "runtime": "onnxruntime", "threads": 1, "inputs": {"x": "x.npy"},
            "warmup_runs": 5, "warmup_min_seconds": 0.01, "min_runs": 50, "min_seconds": 0.05,
            "max_seconds": 5.0, "memory_runs": 2,
            "predict": {"inputs": {"x": "batch.npy"}, "batch_size": 4, "output": "out/pred.npy"}}
    (tmp_path / "spec.json").write_text(json.dumps(spec))

    bundle = f"{workdir}/bundle"
    device.push(RUNNER, f"{workdir}/{runner_name()}")
    for name in ("identity.onnx", "x.npy", "batch.npy", "spec.json"):
        device.push(tmp_path / name, f"{bundle}/{name}")
    proc = device.run([*python_argv(device.profile), f"{workdir}/{runner_name()}", f"{bundle}/spec.json"], timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["ok"] is True and result["schema"] == "edgekd.runner/1"
    assert result["runtime"]["name"] == "onnxruntime"
    assert len(result["latencies_ns"]) >= 50 and all(ns > 0 for ns in result["latencies_ns"])
    assert result["inputs"][0]["name"] == "x" and result["system"]["machine"] == platform.machine()

    device.pull(f"{bundle}/out/pred.npy", tmp_path / "pred.npy")  # the predict pass wrote it on the device
    np.testing.assert_array_equal(np.load(tmp_path / "pred.npy"), batch)


# ---------------------------------------------------------------------- one connection

def test_one_controlmaster_connection_is_reused(sshd, workdir, tmp_path):
    device = make_device(sshd, workdir)
    before = accepted_logins(sshd)
    assert device.run(["true"]).returncode == 0
    sockets = [p for p in Path(device._control_dir).iterdir() if stat.S_ISSOCK(p.stat().st_mode)]
    assert len(sockets) == 1, "the first call should leave a ControlMaster socket"
    control_dir = device._control_dir
    assert stat.S_IMODE(os.stat(control_dir).st_mode) == 0o700

    for i in range(10):
        assert device.run(["echo", str(i)]).stdout == f"{i}\n"
    (tmp_path / "f").write_text("x")
    device.push(tmp_path / "f", f"{workdir}/f")
    device.pull(f"{workdir}/f", tmp_path / "g")
    assert device.sha256(f"{workdir}/f") is not None
    assert accepted_logins(sshd) - before == 1, "every call should ride on the first connection"

    device.close()
    assert not os.path.exists(control_dir)
    device.close()  # idempotent


def test_options_reach_the_ssh_client_and_defaults_keep_checking_on(sshd, workdir):
    with make_device(sshd, workdir) as device:
        args = device._base_options()
    assert "StrictHostKeyChecking=yes" in args and "BatchMode=yes" in args
    assert f"UserKnownHostsFile={sshd.known_hosts}" in args and f"Port={sshd.port}" in args
    with make_device(sshd, workdir, ssh_options={"StrictHostKeyChecking": "accept-new"}) as relaxed:
        args = relaxed._base_options()
    assert "StrictHostKeyChecking=accept-new" in args and "StrictHostKeyChecking=yes" not in args


@pytest.mark.parametrize("options, message", [
    ({"host": None}, "has no `host`"),
    ({"host": "-oProxyCommand=touch /tmp/x"}, "not starting with '-'"),
    ({"host": "two words"}, "one word"),
    ({"port": "ssh"}, "must be an integer"),
    ({"port": 70000}, "between 1 and 65535"),
    ({"ssh_options": {"ControlPath": "/tmp/x"}}, "edgekd manages it"),
    ({"ssh_options": {"Port": 22}}, "use `port:`"),
    ({"ssh_options": {"Bad Key": "x"}}, "ssh_config option names"),
    ({"ssh_options": {"ProxyCommand": "a\nb"}}, "on one line"),
    ({"ssh_options": ["NoEquals"]}, "Key=Value"),
    ({"identity_file": "/nonexistent/key"}, "does not exist"),
    ({"connect_timeout": 0}, "> 0"),
])
def test_bad_profiles_are_rejected_before_any_connection(options, message):
    base = {"host": "example.invalid"}
    profile = DeviceProfile(name="bad", kind="ssh", options={**base, **options})
    with pytest.raises(DeviceError, match=message) as err:
        SSHDevice(profile)
    assert err.value.fix


# ---------------------------------------------------------------------- refusals and failures

def test_wrong_host_key_is_refused(sshd, workdir, tmp_path):
    impostor = keygen(tmp_path / "other_host_key", "not-the-server")
    known = tmp_path / "known_hosts"
    known.write_text(sshd.known_hosts_line(impostor))
    device = make_device(sshd, workdir, known_hosts=str(known))
    try:
        with pytest.raises(HostKeyMismatch, match="host key differs") as err:
            device.run(["true"])
        assert "Host key verification failed" in err.value.why
        assert "ssh-keygen -R" in err.value.fix
        assert "ssh-keyscan" in err.value.fix and str(known) in err.value.fix
        with pytest.raises(HostKeyMismatch):  # scp is refused the same way
            (tmp_path / "f").write_text("x")
            device.push(tmp_path / "f", f"{workdir}/f")
        assert not (workdir / "f").exists()
    finally:
        device.close()


def test_the_changed_host_key_fix_runs_as_given_with_a_known_hosts_path_with_spaces(sshd, workdir, tmp_path):
    # `ssh-keygen -R '[127.0.0.1]:PORT' -f /tmp/k h/known hosts` was "Too many arguments": the path was not quoted.
    impostor = keygen(tmp_path / "other_host_key", "not-the-server")
    known = tmp_path / "k h" / "known hosts"
    known.parent.mkdir()
    known.write_text(sshd.known_hosts_line(impostor))
    with make_device(sshd, workdir, known_hosts=str(known)) as device:
        with pytest.raises(HostKeyMismatch, match="host key differs") as err:
            device.run(["true"])
        for starts in ("ssh-keygen -R", "ssh-keyscan"):  # the user's shell runs them as the fix gives them
            command = _command_in(err.value.fix, starts)
            done = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, (command, done.stderr)
        assert sshd.known_hosts_line(impostor).split()[-1] not in known.read_text()  # the old key is gone
        assert device.run(["true"]).returncode == 0  # and the device's own key is known


def test_unknown_host_key_is_refused_not_trusted(sshd, workdir, tmp_path):
    known = tmp_path / "empty_known_hosts"
    known.write_text("")
    with make_device(sshd, workdir, known_hosts=str(known)) as device:
        with pytest.raises(HostKeyMismatch, match="host key is unknown") as err:
            device.sha256(f"{workdir}/x")
    assert "ssh-keyscan" in err.value.fix
    assert known.read_text() == ""  # nothing was added behind the user's back


def test_stopped_sshd_is_unreachable(own_board, workdir):
    server, device = own_board
    assert device.run(["true"]).returncode == 0  # a live ControlMaster connection
    server.stop()  # the listener and its connections: the host went down
    with pytest.raises(DeviceUnreachable) as err:
        device.run(["true"])
    assert err.value.fix and "127.0.0.1" in err.value.what
    with pytest.raises(DeviceUnreachable, match="Connection refused|cannot reach"):
        device.push(RUNNER, f"{workdir}/r.py")


def test_sshd_stopped_mid_command_is_a_lost_connection(own_board, tmp_path, workdir):
    # Through the ControlMaster a dropped connection ends the command with exit 255 and no message at all: it
    # must not pass as the command's own exit status (bench called it "the runner crashed").
    server, device = own_board
    started = tmp_path / "started"
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(device.run, ["sh", "-c", 'touch "$1"; exec sleep 60', "sh", str(started)])
        _wait_for(started.exists)
        server.stop()  # the board goes down while the command runs
        with pytest.raises(DeviceUnreachable, match="lost the connection to loopback") as err:
            running.result()
    assert "while 'sh' was running" in err.value.what and f"-p {server.port}" in err.value.fix


def test_a_copy_after_the_device_went_away_says_so(own_board, tmp_path, workdir):
    # `scp -q` hides ssh's "Connection refused": the copy failed with "scp: Connection closed", which was
    # reported as a path or permission problem.
    server, device = own_board
    (tmp_path / "f").write_text("x")
    device.push(tmp_path / "f", f"{workdir}/f")  # the work directory is made (and not made again)
    server.stop()
    with pytest.raises(DeviceUnreachable, match="cannot reach loopback") as err:
        device.push(tmp_path / "f", f"{workdir}/g")
    assert "Connection refused" in err.value.why
    with pytest.raises(DeviceUnreachable, match="cannot reach loopback"):
        device.pull(f"{workdir}/f", tmp_path / "back")


def test_a_connection_lost_during_a_copy_says_so(own_board, tmp_path, workdir):
    # `scp -q` ends with exit 1 and only "lost connection" when the connection drops mid-copy: that was reported
    # as "check the paths and permissions on both sides".
    from sshd import descendants

    server, device = own_board
    (tmp_path / "f").write_text("x")
    device.push(tmp_path / "f", f"{workdir}/f")  # the work directory is made
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        f.truncate(8 * 2**30)  # sparse here; far more than scp copies before the connection is cut
    target = workdir / "big.bin"
    with ThreadPoolExecutor(1) as pool:
        copying = pool.submit(device.push, big, f"{workdir}/big.bin")
        _wait_for(lambda: target.exists() and target.stat().st_size > 0)
        for pid in descendants(server.proc.pid):  # the connection's processes; the listener stays up
            os.kill(pid, signal.SIGKILL)
        with pytest.raises(DeviceUnreachable, match="lost the connection to loopback") as err:
            copying.result()
    assert "while 'scp' was running" in err.value.what and f"-p {server.port}" in err.value.fix


def test_key_files_and_the_control_socket_in_folders_with_spaces_and_quotes(sshd, workdir, tmp_path, monkeypatch):
    # ssh splits an -o value into words: a key in "my keys/" was "extra arguments at end of line", a
    # known_hosts file there made every host key "unknown", and a $TMPDIR with a space broke every ssh device.
    import tempfile

    keys = tmp_path / "my 'keys\\"
    keys.mkdir()
    options = sshd.profile_options()
    key, known = keys / "id key", keys / 'known "hosts"'
    shutil.copy(options["identity_file"], key)
    key.chmod(0o600)
    shutil.copy(options["known_hosts"], known)
    control_parent = Path(tempfile.mkdtemp(prefix="edgekd t ", dir="/tmp"))  # short: a socket path has a limit
    monkeypatch.setattr(tempfile, "tempdir", str(control_parent))
    try:
        with make_device(sshd, workdir, identity_file=str(key), known_hosts=str(known)) as device:
            assert device.run(["true"]).returncode == 0
            assert " " in device._control_dir
    finally:
        shutil.rmtree(control_parent, ignore_errors=True)


def test_a_key_others_can_read_is_the_problem_said_not_the_devices_keys(sshd, workdir, tmp_path):
    # ssh ignores such a key (`Load key "…": bad permissions`): the login was "refused", with the fix "install
    # your public key (ssh-copy-id)", on a device that has it. The fix given now, run as given, repairs it.
    key = tmp_path / "my keys" / "id key"
    key.parent.mkdir()
    shutil.copy(sshd.profile_options()["identity_file"], key)
    key.chmod(0o644)
    with make_device(sshd, workdir, identity_file=str(key)) as device:
        with pytest.raises(DeviceError) as err:
            device.run(["true"])
        assert f"ignored the key {key}, which other users can read" in err.value.what
        assert "0644" in err.value.why and "ssh-copy-id" not in err.value.fix
        chmod = subprocess.run(["sh", "-c", _command_in(err.value.fix, "chmod 600")], capture_output=True, text=True)
        assert chmod.returncode == 0, chmod.stderr
        assert stat.S_IMODE(key.stat().st_mode) == 0o600 and device.run(["true"]).returncode == 0


def test_a_folder_as_identity_file_is_refused_before_connecting(tmp_path):
    profile = DeviceProfile(name="bad", kind="ssh", options={"host": "nowhere.invalid", "identity_file": str(tmp_path)})
    with pytest.raises(DeviceError) as err:
        SSHDevice(profile)
    assert err.value.what == f"device 'bad': `identity_file` {tmp_path} is not a file"
    assert "private key file" in err.value.fix


def _wait_for(condition, seconds: float = 30.0):
    """condition()'s first true value, polled (bounded, so that a device that never gets there fails the test)."""
    import time

    deadline = time.monotonic() + seconds
    while not (value := condition()):
        assert time.monotonic() < deadline, "the device never got there"
        time.sleep(0.02)
    return value


# ---------------------------------------------------------------------- a link that drops under the runner

# A run that would go on for 10 minutes (its warmup alone lasts max_seconds): only the tether can end it early.
ENDLESS = {"warmup_runs": 10**9, "warmup_min_seconds": 600.0, "min_runs": 1, "max_runs": 1, "min_seconds": 0.0,
           "max_seconds": 600.0, "memory_runs": 0}


def _runner_process(spec_path: str) -> int | None:
    """The PID of the runner (not its starting shell) running this spec on the loopback "device", once it has
    loaded onnxruntime, i.e. is into its run."""
    for entry in os.listdir("/proc"):
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            if (len(argv) > 2 and argv[1].decode().endswith(runner_name()) and argv[-2].decode() == spec_path  # [-1]: ""
                    and "onnxruntime" in Path(f"/proc/{entry}/maps").read_text()):
                return int(entry)
        except (OSError, ValueError):
            continue
    return None


def _master_pid(device: SSHDevice) -> int:
    """The ControlMaster's PID: the process that holds the device's one connection."""
    check = subprocess.run(["ssh", *device._base_options(), "-O", "check", "--", device.host], capture_output=True,
                           text=True, stdin=subprocess.DEVNULL, timeout=30)
    return int(check.stderr.split("pid=")[1].split(")")[0])


def _endless_spec(device: SSHDevice, tmp_path: Path):
    """(bench session, spec) of an ENDLESS identity-model run, its files pushed to the device."""
    from edgekd.bench.harness import _Session
    from edgekd.export.onnx import write_identity_model

    session = _Session(device, tmp_path)
    model = write_identity_model(tmp_path / "identity.onnx", (64,), 18)
    np.save(tmp_path / "x.npy", np.zeros((1, 64), np.float32))
    spec = {"artifact": session.relative(session.push(model, "identity.onnx")), "runtime": "onnxruntime",
            "inputs": {"x": session.relative(session.push(tmp_path / "x.npy", "x.npy"))}, **ENDLESS}
    return session, spec


def _stop(pid: int | None) -> None:
    if pid is not None and alive(pid):
        os.kill(pid, signal.SIGKILL)


def test_runner_ends_when_the_connection_drops_under_it(device, workdir, tmp_path):
    # The host's end of the connection goes away mid-run (edgekd killed, the host's network down: here its
    # ControlMaster is killed): sshd closes the session, but nothing told the runner, which ran on for its
    # whole time limit, loading the board under every later measurement. Measured: no SIGHUP, the starting
    # shell stays its parent, and stdin was /dev/null. Now bench tethers it to a pipe from this host.
    session, spec = _endless_spec(device, tmp_path)
    specs = workdir / "specs"
    runner = None

    def started() -> int | None:
        assert not running.done(), running.exception()
        return next(filter(None, (_runner_process(str(p)) for p in specs.glob("*.json"))), None)

    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(session.run_spec, spec, "endless", 900)
        try:
            runner = _wait_for(started, 60)
            os.kill(_master_pid(device), signal.SIGKILL)  # the connection is gone; nothing can reach the runner
            with pytest.raises(DeviceUnreachable, match="lost the connection"):
                running.result(timeout=60)
            gone = _wait_for(lambda: not alive(runner), 30)
        finally:
            _stop(runner)
    assert gone


def test_runner_ends_when_its_link_goes_silent(device, workdir, tmp_path):
    # A network that goes away without a word closes nothing on the board: sshd (no ClientAliveInterval) keeps
    # the session, and the runner's stdin stays open. Its heartbeats stop (here: the ControlMaster is frozen).
    session, spec = _endless_spec(device, tmp_path)
    remote_spec = session.push(_json_file(tmp_path / "spec.json", spec), "specs/silent.json")
    argv = [*python_argv(device.profile), session.runner, "--tether", "3", remote_spec]
    runner = master = None
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(device.run, argv, timeout=900, tether=True)
        try:
            runner = _wait_for(lambda: _runner_process(remote_spec) or running.done() and running.result(), 60)
            master = _master_pid(device)
            os.kill(master, signal.SIGSTOP)  # the link is silent: no byte passes, nothing is closed
            gone = _wait_for(lambda: not alive(runner), 30)
        finally:
            _stop(runner)
            _stop(master)  # SIGKILL ends a stopped process too; the run then fails as a lost connection
        with pytest.raises(DeviceError):
            running.result(timeout=60)
    assert gone


def _json_file(path: Path, value: object) -> Path:
    path.write_text(json.dumps(value))
    return path


def test_nothing_listening_is_unreachable(sshd, workdir):
    with make_device(sshd, workdir, port=free_port(), connect_timeout=3) as device:
        with pytest.raises(DeviceUnreachable) as err:
            device.run(["true"])
    assert "Connection refused" in err.value.why


def test_full_device_raises_out_of_space(device, tmp_path):
    small = tmp_path / "small fs"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(small)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        skip_or_fail_on_ci(f"cannot mount a small tmpfs here (needs root/CAP_SYS_ADMIN): {mounted.stderr.strip()}")
    try:
        big = tmp_path / "big.bin"
        big.write_bytes(os.urandom(1 << 20))
        with pytest.raises(DeviceOutOfSpace) as err:
            device.push(big, f"{small}/big.bin")
        assert "free space" in err.value.fix and "`edgekd devices --clean loopback`" in err.value.fix
        assert not (small / "big.bin").exists()  # the partial file was removed
    finally:
        subprocess.run(["umount", str(small)], check=False)
