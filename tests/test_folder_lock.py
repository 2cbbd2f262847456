"""Two edgekd processes on one folder or device: the second run of a run folder, the second bench of a results
folder on the same device, or the second bench of one device into any folder, stops at once (exit 2, who holds
it and what to do); the lock dies with its holder, so a run killed with SIGKILL leaves nothing that blocks the
next one. Real processes throughout."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import TINY_RECIPE

CLI = [sys.executable, "-m", "edgekd.cli"]


def _slow_recipe(folder: Path) -> Path:
    """The tiny recipe with a one-epoch teacher and a 400-epoch distillation: a run that stays busy until killed."""
    recipe = folder / "slow.yaml"
    recipe.write_text(TINY_RECIPE.read_text().replace("name: tiny", "name: slow")
                      .replace("train: {epochs: 3}", "train: {epochs: 1}")
                      .replace("train: {epochs: 6}", "train: {epochs: 400}"))
    return recipe


def _stop(proc: subprocess.Popen) -> str | None:
    """SIGKILL a process this test started (also when the test failed: never leave a 400-epoch run behind);
    returns the rest of its stderr when that is a pipe."""
    if proc.poll() is None:
        proc.kill()
    return proc.communicate()[1]


def _line_starting(proc: subprocess.Popen, prefix: str) -> str | None:
    """The first line of `proc`'s stdout that starts with `prefix`, or None when it ends without one."""
    for line in proc.stdout:
        if line.startswith(prefix):
            return line.strip()
    return None


def _holding(folder: Path) -> subprocess.Popen:
    """A process that holds `folder`'s lock (as a run does) until it is stopped."""
    holder = subprocess.Popen([sys.executable, "-c", "import sys; from edgekd.rundir import exclusive_folder\n"
                               f"with exclusive_folder({str(folder)!r}, what='run', fix='-'):\n"
                               "    print('held', flush=True); sys.stdin.read()"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    if holder.stdout.readline().strip() != "held":
        _stop(holder)
        pytest.fail("the holder process did not take the lock")
    return holder


def _one_block(stderr: str) -> str:
    return " ".join(stderr.split())


def test_a_second_run_on_a_busy_run_folder_stops_and_a_killed_run_does_not_block_the_next(tmp_path):
    recipe, out = _slow_recipe(tmp_path), tmp_path / "out"
    command = [*CLI, "run", str(recipe), "--output-dir", str(out)]
    manifest = out / "slow" / "manifest.json"
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120  # a bound on a hung test, not a speed requirement
        while not (manifest.exists() and "teacher" in json.loads(manifest.read_text())["stages"]):
            assert time.monotonic() < deadline and first.poll() is None, "the first run never finished its teacher"
            time.sleep(0.2)
        # Now inside the 400-epoch distillation: a second terminal, or a CI retry, starts the same run.
        second = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            _, stderr = second.communicate(timeout=120)
        finally:
            _stop(second)
        assert first.poll() is None, "the first run ended: the second one was not refused while it ran"
    finally:
        _stop(first)
    said = _one_block(stderr)
    assert second.returncode == 2, said
    assert f"error: the run folder {out / 'slow'} is in use by another edgekd process (pid {first.pid})" in said
    assert "why: one process at a time may write it" in said and "--output-dir" in said
    assert "Traceback" not in stderr
    assert list(json.loads(manifest.read_text())["stages"]) == ["teacher"]
    # The first run was killed while holding the lock: the OS released it; a new run proceeds and resumes.
    third = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        teacher = _line_starting(third, "teacher: ")
    finally:
        rest = _stop(third)
    assert teacher == "teacher: up to date, skipped", (teacher, rest)


def test_report_reads_a_run_folder_another_process_holds(tiny_run, tmp_path):
    """`edgekd report` only reads: it takes no lock, so it works while a run (here: a process holding the run
    folder's lock) is writing the folder."""
    folder = tmp_path / "tiny"
    shutil.copytree(tiny_run.rundir.root, folder)
    holder = _holding(folder)
    try:
        report = subprocess.run([*CLI, "report", str(folder)], capture_output=True, text=True, timeout=120)
        run = subprocess.run([*CLI, "run", str(TINY_RECIPE), "--output-dir", str(tmp_path)], capture_output=True,
                             text=True, timeout=120)
    finally:
        _stop(holder)
    assert report.returncode == 0 and f"report: {folder / 'report' / 'index.html'}" in report.stdout, report.stderr
    assert f"a run is writing {folder} now (pid {holder.pid})" in _one_block(report.stdout)
    assert run.returncode == 2 and f"(pid {holder.pid})" in _one_block(run.stderr), run.stderr  # the lock is held


def test_report_of_a_run_still_under_way_says_so(tmp_path):
    """A run that has not reached its report stage: 'run the recipe first' told the user to start a second one."""
    folder = tmp_path / "tiny"
    folder.mkdir()
    holder = _holding(folder)
    try:
        during = subprocess.run([*CLI, "report", str(folder)], capture_output=True, text=True, timeout=120)
    finally:
        _stop(holder)
    after = subprocess.run([*CLI, "report", str(folder)], capture_output=True, text=True, timeout=120)
    assert during.returncode == 2 and f"no report in {folder} yet" in _one_block(during.stderr), during.stderr
    assert f"a run is writing that folder now (pid {holder.pid})" in _one_block(during.stderr)
    assert after.returncode == 2 and "run the recipe first" in _one_block(after.stderr), after.stderr


def test_a_second_bench_into_the_same_results_on_the_same_device_stops(tmp_path):
    """Two benches of one artifact into one results folder: the second would overwrite the first's result file
    (an interrupted one's partial result over a complete one) and load the CPU the first is timing."""
    from edgekd.export.onnx import write_identity_model

    model = write_identity_model(tmp_path / "m.onnx", (8,), 18)
    results, history = tmp_path / "results", tmp_path / "h.sqlite"
    common = [*CLI, "bench", str(model), "--results-dir", str(results), "--history", str(history)]
    first = subprocess.Popen([*common, "--rounds", "50", "--min-seconds", "5"], stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert _line_starting(first, "bench on host: started") is not None, first.stderr.read()
        second = subprocess.run([*common, "--rounds", "1"], capture_output=True, text=True, timeout=120)
        assert first.poll() is None, "the first bench ended: the second one was not refused while it ran"
    finally:
        _stop(first)
    said = _one_block(second.stderr)
    assert second.returncode == 2, said
    assert (f"error: the results folder {results} (for device 'host') is in use by another edgekd process "
            f"(pid {first.pid})") in said and "--results-dir" in said and "Traceback" not in said
    # The killed bench's lock is gone with it: the next bench measures and saves.
    third = subprocess.run([*common, "--rounds", "1", "--min-seconds", "0.05"], capture_output=True, text=True,
                           timeout=120)
    assert third.returncode == 0, third.stderr
    assert json.loads((results / "bench-m.json").read_text())["complete"] is True


def test_a_second_bench_of_a_busy_device_into_another_folder_stops_and_other_devices_run_side_by_side(tmp_path):
    """Two benches of one device into two results folders: each would time its model under the other's load.
    The second stops at once, naming the device, the holder and where it saves; another device is free."""
    from edgekd.export.onnx import write_identity_model

    model = write_identity_model(tmp_path / "m.onnx", (8,), 18)
    other = tmp_path / "other.yaml"  # a second device (this host again, under another name)
    other.write_text(f"kind: local\npython: {sys.executable}\nworkdir: {tmp_path / 'other-work'}\n")
    first_results = tmp_path / "first"

    def bench_cmd(results: str, *options: str) -> list[str]:
        return [*CLI, "bench", str(model), "--results-dir", str(tmp_path / results), "--history",
                str(tmp_path / f"{results}.sqlite"), *options]

    first = subprocess.Popen(bench_cmd("first", "--rounds", "50", "--min-seconds", "5"), stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert _line_starting(first, "bench on host: started") is not None, first.stderr.read()
        quick = ("--rounds", "1", "--min-seconds", "0.05")
        second, beside = (subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                          for command in (bench_cmd("second", *quick), bench_cmd("beside", *quick, "--device",
                                                                                 str(other))))
        try:
            (_, second_err), (_, beside_err) = second.communicate(timeout=120), beside.communicate(timeout=120)
        finally:
            _stop(second)
            _stop(beside)
        assert first.poll() is None, "the first bench ended: the others did not run while it held the device"
    finally:
        _stop(first)
    said = _one_block(second_err)
    assert second.returncode == 2, said
    assert (f"error: device 'host' is in use by another edgekd process (pid {first.pid}, saving to "
            f"{first_results})") in said and "Traceback" not in said
    assert "why: a bench times models on it" in said and "fix: wait for that bench to end" in said
    assert "bench another device" in said
    assert not (tmp_path / "second" / "bench-m.json").exists()
    assert beside.returncode == 0, beside_err
    assert json.loads((tmp_path / "beside" / "bench-m@other.json").read_text())["complete"] is True


@pytest.mark.parametrize("other", ["board", None])
def test_the_locks_of_a_bench_free_other_devices_and_hold_the_device_across_folders(tmp_path, other):
    """A bench holds its results folder for its device, and its device in every folder: the same folder for
    another device is free; another folder for the same device is free as a folder, but the device is not."""
    from edgekd.bench.device_lock import device_lock
    from edgekd.bench.harness import _results_lock
    from edgekd.errors import FolderInUseError

    with _results_lock(tmp_path / "results", "host"), device_lock("host", tmp_path / "results"):
        folder = tmp_path / ("results" if other else "elsewhere")
        with _results_lock(folder, other or "host"):
            pass
        if other:
            with device_lock(other, folder):
                pass
        else:
            with pytest.raises(FolderInUseError, match="device 'host' is in use"):
                with device_lock("host", folder):
                    pass


def test_device_lock_file_names_are_safe_and_never_shared():
    from edgekd.bench.device_lock import lock_name

    names = ["pi", "Pi", "PI", "a/b", "a%2Fb", "a%2fb", "..", "a b", "é", "x" * 300, "x" * 300 + "y", "."]
    files = [lock_name(n) for n in names]
    assert len({f.lower() for f in files}) == len(names), files  # distinct even where case is not
    for f in files:
        assert re.fullmatch(r"bench@[a-z0-9._%~-]+\.lock", f) and len(f) < 255, f


def test_the_device_lock_folder_is_private_and_one_of_another_user_is_refused(tmp_path, monkeypatch):
    from edgekd.bench.device_lock import LOCK_DIR_ENV, device_lock
    from edgekd.errors import OutputDirError

    mine = tmp_path / "mine"
    monkeypatch.setenv(LOCK_DIR_ENV, str(mine))
    with device_lock("host", None):
        pass
    assert stat.S_IMODE(mine.stat().st_mode) == 0o700
    theirs = Path("/usr")  # root's
    if os.getuid() == 0:  # root gives one away
        theirs = tmp_path / "theirs"
        theirs.mkdir()
        os.chown(theirs, 4242, 4242)
    monkeypatch.setenv(LOCK_DIR_ENV, str(theirs))
    with pytest.raises(OutputDirError, match="belongs to another user") as err:
        with device_lock("host", None):
            pass
    assert LOCK_DIR_ENV in err.value.fix


def test_a_second_export_into_a_busy_output_folder_stops(tmp_path):
    """Two exports into one folder would write, and remove, each other's artifact folders: the second stops."""
    from edgekd.checkpoints import save_checkpoint
    from edgekd.models import create_model

    model = create_model("mlp", in_shape=(64,), num_classes=10, width=16, depth=1)
    checkpoint = save_checkpoint(model, tmp_path / "student.pt", role="student", data={"name": "digits"})
    out = tmp_path / "artifacts"
    holder = _holding(out)  # as an export (or a run) writing that folder does
    try:
        second = subprocess.run([*CLI, "export", str(checkpoint), "--output-dir", str(out), "--precision", "fp32"],
                                capture_output=True, text=True, timeout=120)
    finally:
        _stop(holder)
    said = _one_block(second.stderr)
    assert second.returncode == 2, said
    assert f"error: the output folder {out} is in use by another edgekd process (pid {holder.pid})" in said
    assert "fix: wait for that export to end" in said and "--output-dir" in said and "Traceback" not in said
    assert [p.name for p in out.iterdir()] == [".edgekd.lock"]  # nothing exported
