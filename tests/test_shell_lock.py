"""edgekd.bench.shell_lock: the device's bench lock (the runner's) taken by the device's shell for a command that
runs there without the runner, in the real shells and flock tools of boards and phones: dash, bash and busybox
with util-linux flock, and Android's mksh with toybox's flock and timeout (no -w)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgekd.bench import clean, shell_lock
from conftest import hold_device_lock, skip_or_fail_on_ci, waiting_on

# What a command run under the lock sees from outside: whether another open of the file can lock it (it cannot
# while the command holds it) and who the file says holds it.
PROBE = """
import errno, fcntl, json, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    held = False
except OSError as e:
    held = e.errno in (errno.EWOULDBLOCK, errno.EAGAIN)
print(json.dumps({"held": held, "pid": os.getpid(), "file": json.loads(open(sys.argv[1]).read())}))
"""


def _android_bin(tmp_path: Path) -> Path:
    """A PATH folder whose flock and timeout are toybox's, as on Android (the rest is this host's)."""
    toybox = shutil.which("toybox")
    if toybox is None:
        skip_or_fail_on_ci("toybox (Android's flock) is not installed: apt-get install toybox")
    folder = tmp_path / "android-bin"
    folder.mkdir()
    for applet in ("flock", "timeout"):
        (folder / applet).symlink_to(toybox)
    return folder


def _shell(name: str, tmp_path: Path) -> tuple[list[str], dict[str, str]]:
    """(the shell's argv prefix, its environment's PATH) for one of the device shells."""
    path = os.environ["PATH"]
    if name == "android":
        shell = shutil.which("mksh")
        if shell is None:
            skip_or_fail_on_ci("mksh (Android's shell) is not installed: apt-get install mksh")
        return [shell], {"PATH": f"{_android_bin(tmp_path)}:{path}"}
    found = shutil.which(name.split()[0])
    if found is None:
        skip_or_fail_on_ci(f"{name} is not installed")
    return [found, *name.split()[1:]], {"PATH": path}


SHELLS = ["dash", "bash", "busybox sh", "android"]


def _run(shell: str, tmp_path: Path, lock: Path, argv: list[str], wait: float,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    prefix, extra = _shell(shell, tmp_path)
    locked = shell_lock.locked_argv(argv, wait)
    assert locked[0] == "sh"
    return subprocess.run([*prefix, *locked[1:]], env={**os.environ, **extra, "EDGEKD_DEVICE_LOCK": str(lock),
                                                        **(env or {})},
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("shell", SHELLS)
def test_the_command_runs_holding_the_lock_and_the_file_names_it(shell, tmp_path):
    lock = tmp_path / "device.lock"  # missing: created, for every user to lock
    proc = _run(shell, tmp_path, lock, [sys.executable, "-c", PROBE, str(lock)], 30)
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout)
    assert seen["held"] is True  # the command itself holds it (Android's mksh closed the fd of `exec 9<`)
    assert seen["file"]["pid"] == seen["pid"]  # the shell wrote its pid, the command's after exec
    assert lock.stat().st_mode & 0o777 == 0o666
    report = shell_lock.report(proc.stderr)
    assert report.record() == {"path": str(lock), "state": "held", "waited_s": 0.0, "waited_for": None}
    assert report.output == ""  # the lock's lines are not the command's output


@pytest.mark.parametrize("shell", SHELLS)
def test_a_lock_held_for_the_whole_wait_is_busy_and_the_command_does_not_run(shell, tmp_path):
    lock = tmp_path / "device.lock"
    fd = hold_device_lock(lock)
    try:
        proc = _run(shell, tmp_path, lock, [sys.executable, "-c", "print('ran')"], 0.2)
    finally:
        os.close(fd)
    assert proc.returncode == shell_lock.BUSY_EXIT and proc.stdout == "", proc.stderr
    report = shell_lock.report(proc.stderr)
    assert report.busy and report.path == str(lock)
    assert report.holder == f"pid {os.getpid()}, user alice, from 192.0.2.7"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/locks")
@pytest.mark.parametrize("shell", ["dash", "android"])
def test_a_lock_released_during_the_wait_is_taken_and_the_wait_recorded(shell, tmp_path):
    lock = tmp_path / "device.lock"
    fd = hold_device_lock(lock)
    prefix, extra = _shell(shell, tmp_path)
    locked = shell_lock.locked_argv([sys.executable, "-c", "print('ran')"], 120)
    proc = subprocess.Popen([*prefix, *locked[1:]], env={**os.environ, **extra, "EDGEKD_DEVICE_LOCK": str(lock)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not waiting_on(lock):  # the shell's flock blocks (no polling): now the other bench ends
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the shell never waited for the lock"
            time.sleep(0.05)
    finally:
        os.close(fd)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and out == "ran\n", err
    record = shell_lock.report(err).record()
    assert record["state"] == "held" and record["waited_s"] >= 0
    assert record["waited_for"] == f"pid {os.getpid()}, user alice, from 192.0.2.7"


def test_without_a_flock_tool_the_command_runs_unlocked_and_says_so(tmp_path):
    lock = tmp_path / "device.lock"
    empty = tmp_path / "no-tools"
    empty.mkdir()
    proc = _run("dash", tmp_path, lock, [sys.executable, "-c", "print('ran')"], 1, env={"PATH": str(empty)})
    assert proc.returncode == 0 and proc.stdout == "ran\n", proc.stderr
    assert shell_lock.report(proc.stderr).record() == {
        "path": str(lock), "state": "unavailable",
        "why": "the device has no flock tool (util-linux, busybox or toybox)"}


def test_a_symbolic_link_at_the_lock_path_is_not_opened(tmp_path):
    lock = tmp_path / "device.lock"
    target = tmp_path / "a-file-of-ours"
    lock.symlink_to(target)
    proc = _run("dash", tmp_path, lock, [sys.executable, "-c", "print('ran')"], 1)
    assert proc.returncode == 0 and proc.stdout == "ran\n", proc.stderr
    record = shell_lock.report(proc.stderr).record()
    assert record["state"] == "unavailable" and "symbolic link" in record["why"]
    assert not target.exists()


def test_clean_on_an_android_shell_is_not_stopped_by_a_lock_nobody_holds(tmp_path):
    """The clean's lock was `exec 9<FILE; flock -n 9`: Android's mksh closes fd 9 in the commands it starts, so
    toybox's flock failed (bad file descriptor) and every clean of a phone whose lock file existed said that a
    bench was measuring there."""
    lock = tmp_path / "device.lock"
    lock.write_text("")  # left by an earlier bench
    work = tmp_path / "work"
    (work / "inputs").mkdir(parents=True)
    (work / "inputs" / ("ab" * 8 + ".npy")).write_bytes(b"x" * 2048)
    prefix, extra = _shell("android", tmp_path)
    proc = subprocess.run([*prefix, "-c", clean._SCRIPT, "sh", shell_lock.wait_arg(0), str(work)],
                          env={**os.environ, **extra, "EDGEKD_DEVICE_LOCK": str(lock)}, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.split() == ["4"], proc.stderr
    assert shell_lock.report(proc.stderr).state == "held" and not (work / "inputs").exists()
