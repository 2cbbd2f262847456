"""Atomic writes and the stage manifest."""

from __future__ import annotations

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
    assert run.load_manifest()["stages"] == {}
