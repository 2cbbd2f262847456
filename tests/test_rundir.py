"""Atomic writes and the stage manifest."""

from __future__ import annotations

import json

import pytest

from edgekd.rundir import RunDir, atomic_path, atomic_write, sha256_file


def test_a_failed_write_leaves_neither_the_final_file_nor_a_temp_file(tmp_path):
    target = tmp_path / "model.onnx"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("crash mid-write")
    assert list(tmp_path.iterdir()) == []


def test_an_atomic_write_replaces_the_old_content_whole(tmp_path):
    target = atomic_write(tmp_path / "a.json", "old")
    atomic_write(target, "new")
    assert target.read_text() == "new" and len(list(tmp_path.iterdir())) == 1


def test_a_stage_is_done_only_with_the_same_inputs_and_intact_outputs(tmp_path):
    run = RunDir(tmp_path / "run")
    run.create()
    out = atomic_write(run.checkpoints / "teacher.pt", b"weights")
    run.mark_done("teacher", "hash-1", [out], 1.0, metrics={"acc": 1})
    assert run.is_done("teacher", "hash-1") and not run.is_done("teacher", "hash-2")
    assert run.stage_record("teacher")["outputs"] == {"checkpoints/teacher.pt": sha256_file(out)}
    out.write_bytes(b"tampered")
    assert not run.is_done("teacher", "hash-1")
    run.manifest_path.write_text("{not json")
    assert set(run.load_manifest()["stages"]) == {"teacher"}  # its copy, written with it, vouches
    assert "is used instead" in run.manifest_problem()
    run.manifest_copy_path.write_text("{not json")  # both damaged: nothing is done
    assert run.load_manifest()["stages"] == {} and "does not vouch" in run.manifest_problem()


def test_an_atomic_write_gets_the_mode_a_plain_write_would(tmp_path):
    import os

    plain = tmp_path / "plain"
    plain.write_text("x")
    assert os.stat(atomic_write(tmp_path / "atomic", "x")).st_mode == os.stat(plain).st_mode


def test_equal_weights_give_equal_checkpoint_bytes(tmp_path):
    """Otherwise a rerun that trains the same weights would rerun export, bench and report after it."""
    import torch

    from edgekd.checkpoints import save_checkpoint

    model = torch.nn.Linear(3, 2)
    first, second = save_checkpoint(model, tmp_path / "a.pt"), save_checkpoint(model, tmp_path / "b.pt")
    assert sha256_file(first) == sha256_file(second)


def test_later_stages_read_only_the_files_a_stage_recorded(tmp_path):
    run = RunDir(tmp_path / "run")
    run.create()
    current = atomic_write(run.artifacts / "student-onnx-fp32" / "artifact.json", "{}")
    atomic_write(run.artifacts / "student-onnx-int4" / "artifact.json", "{}")  # left by an earlier export
    run.mark_done("export", "h", [current], 1.0)
    assert run.recorded_outputs("export", "artifact.json") == [current]
    assert run.recorded_outputs("bench", "bench-*.json") == []


def test_an_atomic_write_syncs_the_folder_that_holds_the_rename(tmp_path, monkeypatch):
    import os
    import stat

    synced_folders = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            synced_folders.append(os.path.realpath(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    atomic_write(tmp_path / "sub" / "file.json", "{}")
    assert synced_folders == [os.path.realpath(tmp_path / "sub")]



@pytest.mark.parametrize("content", [b"[]", b"null", b'{"stages": []}', b'{"stages": {"teacher": "done"}}',
                                     b'{"stages": {"teacher": {"input_hash": "h", "output_hash": "o", "outputs": []}}}',
                                     b'{"stages": {"teacher": {"input_hash": "h", "outputs": {}}}}',
                                     b"\xff\xfe{}", b'{"schema": "edgekd.bench/1", "stages": {}}'])
def test_a_manifest_of_the_wrong_shape_means_not_done_and_is_rewritten(tmp_path, content):
    """Valid JSON of another shape (a hand edit, another tool) or bytes that are not UTF-8: the stage reruns, as
    with a truncated manifest, instead of an internal error on every later run."""
    run = RunDir(tmp_path / "run")
    run.create()
    out = atomic_write(run.checkpoints / "teacher.pt", b"weights")
    assert run.manifest_problem() is None  # none yet: nothing to say
    run.manifest_path.write_bytes(content)
    assert not run.is_done("teacher", "h") and run.recorded_outputs("teacher", "*.pt") == []
    assert run.manifest_problem()  # said (a run notes it), not silently redone
    run.forget("distill")
    run.mark_done("teacher", "h", [out], 1.0)
    assert run.is_done("teacher", "h") and run.manifest_problem() is None


def test_a_run_folder_a_newer_edgekd_wrote_is_not_redone_from_the_start(tmp_path):
    """A newer version's manifest, read as this one's "wrong shape", would have rerun (and overwritten) its run."""
    from edgekd.errors import OutputDirError

    run = RunDir(tmp_path / "run")
    run.create()
    out = atomic_write(run.checkpoints / "teacher.pt", b"weights")
    run.mark_done("teacher", "h", [out], 1.0)
    newer = {**json.loads(run.manifest_path.read_text()), "schema": "edgekd.manifest/2"}
    run.manifest_path.write_text(json.dumps(newer))
    with pytest.raises(OutputDirError, match="cannot resume the run in") as err:
        run.manifest_problem()
    assert "written by a newer edgekd (schema edgekd.manifest/2" in err.value.why
    assert "pip install -U edgekd" in err.value.fix and "--output-dir" in err.value.fix
    assert json.loads(run.manifest_path.read_text()) == newer  # left as it was


def test_a_run_says_why_it_does_not_trust_its_manifest(tmp_path):
    """A damaged manifest reran every stage without a word: minutes of work started over, unexplained."""
    import edgekd
    from edgekd.progress import SilentReporter

    notes: list[str] = []
    reporter = SilentReporter()
    reporter.note = notes.append  # type: ignore[method-assign]
    recipe = edgekd.load_recipe({"name": "m", "output_dir": str(tmp_path), "bench": {"enabled": False},
                                 "teacher": {"model": {"family": "mlp", "params": {"width": 16}},
                                             "train": {"epochs": 1}},
                                 "distill": {"train": {"epochs": 1}}, "scratch": {"enabled": False},
                                 "export": {"formats": ["onnx"], "targets": {"teacher": ["fp32"],
                                                                             "student": ["fp32"]},
                                            "qat": {"enabled": False}}})
    RunDir(tmp_path / "m").create()
    (tmp_path / "m" / "manifest.json").write_text("{not json")
    edgekd.run(recipe, reporter=reporter)
    assert any("manifest.json: it cannot be read" in n and "run again" in n for n in notes), notes


_HALF_WRITER = """
import sys, time
from edgekd.rundir import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    tmp.write_bytes(b"half a checkpoint")
    print("writing", flush=True)
    time.sleep(600)
"""


def killed_mid_write(path):
    """Write `path` through atomic_path in a real process and SIGKILL it mid-write; returns the temp file it left."""
    import os
    import signal
    import subprocess
    import sys

    before = path.read_bytes() if path.exists() else None
    proc = subprocess.Popen([sys.executable, "-c", _HALF_WRITER, str(path)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert proc.stdout.readline() == "writing\n"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    left = [p for p in path.parent.iterdir() if p.name.startswith(f".{path.name}.")]
    assert len(left) == 1, left
    assert (path.read_bytes() if path.exists() else None) == before  # the file itself is untouched
    return left[0]


def test_temp_files_of_killed_writers_are_removed_and_live_ones_kept(tmp_path):
    from edgekd.rundir import remove_orphan_temp_files

    dead = killed_mid_write(tmp_path / "checkpoints" / "teacher.pt")
    with atomic_path(tmp_path / "artifacts" / "x" / "model.onnx") as live:
        live.write_bytes(b"being written now")
        assert remove_orphan_temp_files(tmp_path) == [dead]
        assert live.is_file() and not dead.exists()
    assert (tmp_path / "artifacts" / "x" / "model.onnx").read_bytes() == b"being written now"


def test_a_live_writer_whose_pid_is_not_seen_here_keeps_its_temp_file(tmp_path):
    """A writer in another container (pid namespace) or on another machine sharing the folder has a pid this
    process cannot see: the cleaner took it for dead and deleted its file mid-write, and the writer failed at its
    rename (FileNotFoundError). Simulated faithfully: a real writer's temp file renamed to carry a pid that no
    process here has; the writer's lock on the file is what keeps it."""
    import os
    import signal
    import subprocess
    import sys

    from edgekd.rundir import remove_orphan_temp_files

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # its pid: one no process here has now
    path = tmp_path / "cache" / "teacher" / "0123abcd.npy"
    writer = subprocess.Popen([sys.executable, "-c", _HALF_WRITER, str(path)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert writer.stdout.readline() == "writing\n"
        [own] = path.parent.glob(f".{path.name}.*.tmp")
        foreign = own.with_name(own.name.replace(f".{writer.pid}-", f".{gone.pid}-"))
        own.rename(foreign)
        assert remove_orphan_temp_files(tmp_path) == [] and foreign.is_file()
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=30)
    assert remove_orphan_temp_files(tmp_path) == [foreign]  # its writer is gone, and with it the lock


_TEMP_DIR_HOLDER = """
import sys
from edgekd.rundir import process_temp_dir
with process_temp_dir("bench") as folder:
    print(folder, flush=True)
    sys.stdin.read()
"""


def test_a_temp_folder_is_removed_by_the_next_process_once_its_owner_is_gone(tmp_path, monkeypatch):
    """process_temp_dir: the folder of an owner killed with SIGKILL (no cleanup ran) goes at the next call; the
    folder of a live owner stays, also when its pid is not seen here (renamed to a gone pid: its lock keeps it)."""
    import os
    import signal
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    from edgekd.rundir import process_temp_dir

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHONPATH": os.pathsep.join(sys.path)}
    holders = [subprocess.Popen([sys.executable, "-c", _TEMP_DIR_HOLDER], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True, env=env) for _ in range(3)]
    killed, live, foreign = holders
    try:
        folders = [Path(h.stdout.readline().strip()) for h in holders]
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=30)
        gone = subprocess.Popen([sys.executable, "-c", "pass"])
        gone.wait()  # a pid no process here has now
        moved = folders[2].with_name(folders[2].name.replace(f"{foreign.pid}-", f"{gone.pid}-"))
        folders[2].rename(moved)
        assert folders[0].is_dir()  # SIGKILL: nothing removed it
        with process_temp_dir("bench") as mine:
            assert sorted(p.name for p in mine.parent.iterdir()) == sorted([mine.name, folders[1].name, moved.name])
    finally:
        for holder in (live, foreign):
            holder.stdin.close()
            holder.wait(timeout=30)
    assert not mine.exists() and not folders[1].exists()  # their owners removed them
    assert moved.is_dir()  # its owner removed another name; the next call finds it unclaimed
    with process_temp_dir("bench") as mine:
        assert [p.name for p in mine.parent.iterdir()] == [mine.name]


def test_a_folder_where_a_file_goes_is_named_before_the_work(tmp_path):
    """os.replace cannot put a file over a folder: a results/summary.json folder was an internal error
    (IsADirectoryError) after the stage's work, with a stray temp file."""
    from edgekd.errors import OutputDirError

    (tmp_path / "summary.json").mkdir()
    ran = []
    with pytest.raises(OutputDirError, match="a folder of that name is in the way") as err:
        with atomic_path(tmp_path / "summary.json") as tmp:
            ran.append(tmp)
    assert not ran and f"remove or rename the folder {tmp_path / 'summary.json'}" in err.value.fix
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


@pytest.mark.parametrize("blocked", ["out", "out/a"])
def test_a_file_where_a_folder_goes_is_named(tmp_path, blocked):
    """The why was "File exists (out/a)" or "Not a directory (out/a/b)", which does not say which path is a file."""
    from edgekd.errors import OutputDirError
    from edgekd.rundir import writable_dir

    (tmp_path / blocked).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / blocked).write_text("in the way")
    for attempt in (lambda: atomic_write(tmp_path / "out" / "a" / "b" / "x.json", "{}"),
                    lambda: writable_dir(tmp_path / "out" / "a" / "b", fix="choose another folder")):
        with pytest.raises(OutputDirError) as err:
            attempt()
        assert err.value.why == f"{tmp_path / blocked} is a file, where a folder is needed", err.value.why
        assert err.value.fix.startswith(f"remove or rename the file {tmp_path / blocked}, or "), err.value.fix


def test_a_lock_under_a_file_names_the_file(tmp_path):
    """A results folder whose parent is a file: the lock, taken first, says which file is in the way (not only
    "File exists")."""
    from edgekd.errors import OutputDirError
    from edgekd.rundir import exclusive_folder

    (tmp_path / "afile").write_text("x")
    with pytest.raises(OutputDirError, match="cannot create the lock file") as err:
        with exclusive_folder(tmp_path / "afile" / "results", what="results", fix="-"):
            pass
    assert err.value.why == f"{tmp_path / 'afile'} is a file, where a folder is needed"


def test_a_link_in_a_loop_where_a_folder_goes_is_named_as_a_link(tmp_path):
    """A symbolic link in a loop was called "a file, where a folder is needed"."""
    import os

    from edgekd.errors import OutputDirError
    from edgekd.rundir import writable_dir

    os.symlink(tmp_path / "loop", tmp_path / "loop")
    with pytest.raises(OutputDirError) as err:
        writable_dir(tmp_path / "loop" / "b", fix="choose another folder")
    assert err.value.why.startswith(f"{tmp_path / 'loop'} is a symbolic link that leads nowhere"), err.value.why
    assert err.value.fix.startswith(f"remove or rename the link {tmp_path / 'loop'}, or "), err.value.fix


def test_an_export_removes_the_temp_files_a_killed_export_left(tmp_path):
    """`edgekd run` cleans its folder of a killed writer's temp files, but `edgekd export` into an output folder
    did not: a model file's temp copy from an export killed mid-write stayed there through every later export."""
    from edgekd.checkpoints import save_checkpoint
    from edgekd.exporter import export_checkpoint
    from edgekd.models import create_model

    model = create_model("mlp", in_shape=(64,), num_classes=10, width=16, depth=1)
    checkpoint = save_checkpoint(model, tmp_path / "student.pt", role="student", data={"name": "digits"})
    orphan = killed_mid_write(tmp_path / "out" / "student-onnx-fp32" / "model.onnx")
    export_checkpoint(checkpoint, tmp_path / "out", precisions=["fp32"], min_agreement=0.0)
    assert not orphan.exists()
    assert sorted(p.name for p in (tmp_path / "out" / "student-onnx-fp32").iterdir()) == ["artifact.json",
                                                                                          "model.onnx"]


def test_a_bench_removes_the_temp_files_a_killed_bench_left_in_its_results_folder(tmp_path):
    import edgekd
    from edgekd.bench.harness import BenchSettings
    from edgekd.export.onnx import write_identity_model

    model = write_identity_model(tmp_path / "m.onnx", (8,), 18)
    orphan = killed_mid_write(tmp_path / "res" / "bench-m.json")
    edgekd.bench([model], settings=BenchSettings(warmup_runs=2, min_runs=5, min_seconds=0.0, rounds=1),
                 results_dir=tmp_path / "res")
    assert not orphan.exists() and (tmp_path / "res" / "bench-m.json").is_file()


def test_an_int8_export_sweeps_the_scratch_folder_a_killed_export_left(tmp_path, monkeypatch):
    """Static INT8 quantization works in a scratch folder (calibration files): an export killed with SIGKILL left
    it in the temp area for good (TemporaryDirectory never ran its cleanup); the next export removes it."""
    import os
    import subprocess
    import sys
    import tempfile

    import numpy as np

    from edgekd.export.onnx import export_onnx, quantize_static_int8
    from edgekd.models import create_model

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid no process here has now: the killed export's
    left = tmp_path / f"edgekd-export@{os.getuid()}" / f"{gone.pid}-killed"
    left.mkdir(parents=True)
    (left / "calibration.bin").write_bytes(b"x" * 1024)
    model = create_model("mlp", in_shape=(8,), num_classes=4, width=8, depth=1)
    fp32 = export_onnx(model, (8,), tmp_path / "fp32.onnx", opset=18)
    quantize_static_int8(fp32, tmp_path / "int8.onnx", np.random.default_rng(0).random((16, 8), dtype=np.float32))
    assert (tmp_path / "int8.onnx").is_file() and not left.exists()
    assert list(left.parent.iterdir()) == []  # and its own went when it ended


def test_a_dead_writers_temp_file_goes_even_when_its_pid_was_reused(tmp_path):
    """After a container restart or reboot pids start again: a temp file named after a pid a live process has
    now was kept for good. Unlocked and older than the moment a writer takes to lock it, it goes; a fresh one
    (its writer may be about to lock it) and a locked one stay."""
    import os
    import time

    from edgekd.rundir import UNCLAIMED_GRACE_S, remove_orphan_temp_files

    reused, fresh = tmp_path / f".student.pt.{os.getpid()}-abc123.tmp", tmp_path / f".teacher.pt.{os.getpid()}-x9.tmp"
    reused.write_bytes(b"a killed writer's half")
    fresh.write_bytes(b"being made")
    old = time.time() - UNCLAIMED_GRACE_S - 5
    os.utime(reused, (old, old))
    with atomic_path(tmp_path / "model.onnx") as live:
        os.utime(live, (old, old))  # locked by its writer: kept however old
        assert remove_orphan_temp_files(tmp_path) == [reused]
        assert fresh.is_file() and live.is_file()


def test_a_temp_folder_whose_pid_was_reused_goes_once_old(tmp_path):
    import os
    import time

    from edgekd.rundir import UNCLAIMED_GRACE_S, remove_orphan_temp_dirs

    old_folder, fresh = tmp_path / f"{os.getpid()}-old", tmp_path / f"{os.getpid()}-new"
    old_folder.mkdir()
    fresh.mkdir()
    old = time.time() - UNCLAIMED_GRACE_S - 5
    os.utime(old_folder, (old, old))
    assert remove_orphan_temp_dirs(tmp_path) == [old_folder] and fresh.is_dir()


def test_a_damaged_manifest_is_read_from_its_copy_and_nothing_is_redone(tiny_run, tmp_path):
    """A manifest damaged from outside (a hand edit, a bad copy) made every stage run again, though every
    output it named was intact; the copy written beside it vouches for them (their sha256 still decide)."""
    import shutil

    import edgekd
    from edgekd.progress import SilentReporter

    shutil.copytree(tiny_run.rundir.root, tmp_path / "tiny")
    recipe = tiny_run.recipe.model_copy(deep=True)
    recipe.output_dir = tmp_path
    assert (tmp_path / "tiny" / ".manifest.json.copy").is_file()
    (tmp_path / "tiny" / "manifest.json").write_text('{"schema": "edgekd.manifest/1", "stages": {"teacher": 5')
    notes: list[str] = []
    reporter = SilentReporter()
    reporter.note = notes.append  # type: ignore[method-assign]
    again = edgekd.run(recipe, reporter=reporter)
    assert set(again.stages.values()) <= {"skipped", "disabled"}, again.stages
    assert any("it cannot be read" in n and "its copy .manifest.json.copy" in n and "is used instead" in n
               and "manifest.json is rewritten from it" in n for n in notes), notes
    # the manifest itself is whole again: a run with every stage up to date wrote none, and each run warned anew
    assert json.loads((tmp_path / "tiny" / "manifest.json").read_text())["stages"].keys() >= {"teacher", "export"}
    notes.clear()
    assert edgekd.run(recipe, reporter=reporter).stages["teacher"] == "skipped"
    assert not [n for n in notes if "manifest" in n], notes
