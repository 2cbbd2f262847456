"""`edgekd devices --clean NAME` on this host: after a real bench, only the files edgekd put in the work
directory go (nothing else in it, nothing outside it), never while a bench holds the device, never in a folder
others share. The SSH and adb paths are tested beside their devices (test_bench_devices, test_adb_device)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

import edgekd
from edgekd.bench.device_lock import device_lock
from edgekd.bench.harness import BenchSettings
from edgekd.export.onnx import write_identity_model

CLI = [sys.executable, "-m", "edgekd.cli"]
ONE_ROUND = BenchSettings(warmup_runs=2, min_runs=5, min_seconds=0.01, rounds=1)


def _cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # The test session's $EDGEKD_LOCK_DIR (conftest) reaches the CLI: it sees the locks this process holds.
    return subprocess.run([*CLI, *args], cwd=cwd, env={**os.environ, "COLUMNS": "400"}, capture_output=True,
                          text=True, timeout=120, check=False)


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def _benched_box(tmp_path: Path) -> Path:
    """A local device 'box' with its own work directory, after a bench with a predict pass (outputs/ too)."""
    (tmp_path / "devices").mkdir()
    work = tmp_path / "work"
    (tmp_path / "devices" / "box.yaml").write_text(yaml.safe_dump({"kind": "local", "workdir": str(work)}))
    model = write_identity_model(tmp_path / "m.onnx", (8,), 18)
    np.save(tmp_path / "x.npy", np.zeros((16, 8), np.float32))
    np.save(tmp_path / "y.npy", np.zeros(16, np.int64))
    edgekd.bench([model], device=str(tmp_path / "devices" / "box.yaml"), settings=ONE_ROUND,
                 eval_data=(tmp_path / "x.npy", tmp_path / "y.npy"))
    return work


def test_clean_removes_what_benches_left_and_nothing_else(tmp_path):
    work = _benched_box(tmp_path)
    left = _files(work)
    assert {f.split("/")[0] for f in left} >= {"artifacts", "inputs", "specs", "outputs"}, left
    mine = ["notes.txt", "artifacts/mine.onnx", "artifacts/0123456789abcdeX.onnx", "specs/keep.json"]
    for name in mine:  # the user's own files, some beside edgekd's
        (work / name).write_text("mine")
    (tmp_path / "0123456789abcdef.onnx").write_text("outside")  # edgekd's kind of name, outside the folder
    proc = _cli(tmp_path, "devices", "--clean", "box")
    assert proc.returncode == 0, proc.stderr
    assert f"removed {len(left)} cached file(s)" in proc.stdout and "MiB" in proc.stdout, proc.stdout
    assert _files(work) == sorted(mine)
    assert (tmp_path / "0123456789abcdef.onnx").exists() and not (work / "inputs").exists()  # emptied: gone
    again = _cli(tmp_path, "devices", "--clean", "box")
    assert again.returncode == 0 and "nothing of edgekd's to remove" in again.stdout, again.stdout


def test_clean_waits_for_no_bench_it_stops_while_one_holds_the_device(tmp_path):
    work = _benched_box(tmp_path)
    before = _files(work)
    with device_lock("box", tmp_path / "results"):  # a bench of 'box' running now
        proc = _cli(tmp_path, "devices", "--clean", "box")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    err = " ".join(proc.stderr.split())
    assert "device 'box' is in use by another edgekd process" in err and "would fail it" in err, err
    assert "fix: wait for that bench to end" in err
    assert _files(work) == before


def test_a_bench_started_during_a_clean_is_told_what_holds_the_device(tmp_path):
    from edgekd.errors import FolderInUseError

    with device_lock("box", None, note="cleaning its work directory"):
        try:
            with device_lock("box", tmp_path / "results"):
                raise AssertionError("two holders of one device")
        except FolderInUseError as exc:
            assert "cleaning its work directory" in exc.what


def test_a_shared_or_root_work_directory_is_refused(tmp_path):
    (tmp_path / "devices").mkdir()
    for name, workdir in (("phone", "/data/local/tmp"), ("board", "/"), ("up", "/srv/edgekd/.."),
                          ("slashes", "//tmp"), ("trailing", "/tmp/./")):  # "//tmp" was cleaned: it is /tmp
        # SSH: nothing connects before the refusal (no such host needed), and nothing local is touched
        (tmp_path / "devices" / f"{name}.yaml").write_text(yaml.safe_dump(
            {"kind": "ssh", "host": "nowhere.invalid", "workdir": workdir}))
        proc = _cli(tmp_path, "devices", "--clean", name)
        err = " ".join(proc.stderr.split())
        assert proc.returncode == 2 and f"will not clean the work directory '{workdir}'" in err, proc.stderr
        assert "fix: point `workdir:`" in err


def test_clean_stops_while_a_runner_measures_on_the_device_whoever_started_it(tmp_path):
    """The host's lock cannot see a bench started from another machine or by another user; the runner's lock on
    the device can. Held here as such a runner holds it (flock on the device's lock file, this test session's:
    conftest sets EDGEKD_DEVICE_LOCK, which the device's shell reads as the runner does)."""
    import fcntl

    work = _benched_box(tmp_path)
    before = _files(work)
    fd = os.open(os.environ["EDGEKD_DEVICE_LOCK"], os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        proc = _cli(tmp_path, "devices", "--clean", "box")
    finally:
        os.close(fd)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    err = " ".join(proc.stderr.split())
    assert "device 'box' is measuring for another bench" in err and "another machine" in err, err
    assert _files(work) == before
    assert _cli(tmp_path, "devices", "--clean", "box").returncode == 0 and _files(work) == []
