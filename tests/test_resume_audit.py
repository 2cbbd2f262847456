"""Resume audit: a changed recipe field reruns the stages whose results it changes, a damaged file is never used
silently. Real runs of tiny models (no bench, ONNX only, small budgets)."""

from __future__ import annotations

import edgekd
from edgekd.progress import SilentReporter

from conftest import NoteKeeper


def _tiny(tmp_path, **overrides) -> dict:
    """A small recipe: an MLP teacher, one ONNX FP32 student artifact, no scratch baseline and no bench."""
    recipe = {"name": "audit", "seed": 0, "output_dir": str(tmp_path / "out"),
              "data": {"name": "digits", "label_fraction": 0.1},
              "teacher": {"model": {"family": "mlp", "params": {"width": 16}}, "train": {"epochs": 1}},
              "student": {"model": {"family": "mlp", "params": {"width": 8}}},
              "distill": {"train": {"epochs": 1}},
              "scratch": {"enabled": False},
              "export": {"formats": ["onnx"], "targets": {"student": ["fp32"]}, "qat": {"enabled": False}},
              "bench": {"enabled": False}}
    for path, value in overrides.items():
        *parents, leaf = path.split(".")
        section = recipe
        for key in parents:
            section = section.setdefault(key, {})
        section[leaf] = value
    return recipe


def _teacher_checkpoint(tmp_path, recipe: dict):
    """A teacher checkpoint of the recipe's architecture (untrained: only its bytes matter here)."""
    from edgekd.checkpoints import save_checkpoint
    from edgekd.distill.api import load_splits, new_model

    r = edgekd.load_recipe(recipe)
    return save_checkpoint(new_model(r, load_splits(r), "teacher"), tmp_path / "teacher.pt", role="teacher")


def _run(recipe: dict) -> dict[str, str]:
    return edgekd.run(edgekd.load_recipe(recipe), reporter=SilentReporter()).stages


def test_an_ensemble_member_trained_by_the_run_retrains_when_the_teacher_budget_changes(tmp_path):
    """Members without a checkpoint train with teacher.train; a teacher loaded from its checkpoint is the same
    bytes whatever teacher.train says, so the distill stage's hash must cover teacher.train itself."""
    recipe = _tiny(tmp_path, **{"distill.strategy": "ensemble",
                                "distill.ensemble": {"members": [{"model": {"family": "mlp",
                                                                            "params": {"width": 8}}}]}})
    recipe["teacher"]["checkpoint"] = str(_teacher_checkpoint(tmp_path, recipe))
    assert _run(recipe)["distill"] == "ran"
    recipe["teacher"]["train"]["epochs"] = 3
    stages = _run(recipe)
    assert stages["distill"] == "ran", stages


def test_a_stop_between_the_manifest_and_its_copy_keeps_the_stage_that_finished(tmp_path, monkeypatch):
    """A Ctrl-C (or SIGKILL) between the two writes of a stage's record: the manifest, which a resumed run reads,
    must already hold it; the copy is read only when the manifest is damaged."""
    from edgekd import rundir
    from edgekd.rundir import RunDir, atomic_write

    run = RunDir(tmp_path / "run")
    run.create()
    out = atomic_write(run.checkpoints / "teacher.pt", b"weights")
    run.mark_done("teacher", "hash-t", [out], 1.0)
    student = atomic_write(run.checkpoints / "student.pt", b"student weights")
    written = []
    real = rundir.atomic_write_json

    def stopped_at_the_second_write(path, obj):
        written.append(path)
        if len(written) == 2:
            raise KeyboardInterrupt
        return real(path, obj)

    monkeypatch.setattr(rundir, "atomic_write_json", stopped_at_the_second_write)
    try:
        run.mark_done("distill", "hash-d", [student], 1.0)
    except KeyboardInterrupt:
        pass
    monkeypatch.undo()
    resumed = RunDir(run.root)
    assert resumed.is_done("teacher", "hash-t") and resumed.is_done("distill", "hash-d")
    assert resumed.manifest_problem() is None


def test_a_folder_named_as_a_bench_result_is_named_not_an_internal_error(tmp_path):
    """The bench stage removes the run's old results before measuring; a folder among them stopped the run with
    IsADirectoryError (exit 1, 'internal error') instead of saying which folder is in the way."""
    import pytest

    from edgekd.errors import EdgeKDError

    recipe = _tiny(tmp_path, **{"bench": {"warmup_runs": 1, "min_runs": 5, "min_seconds": 0.0, "rounds": 1,
                                          "floor": False, "eval_samples": 0}})
    in_the_way = tmp_path / "out" / "audit" / "results" / "bench-student-onnx-fp32.json"
    in_the_way.mkdir(parents=True)
    with pytest.raises(EdgeKDError) as caught:
        _run(recipe)
    assert str(in_the_way) in caught.value.what and "folder" in caught.value.what
    assert caught.value.exit_code == 2


def test_a_stage_run_again_for_a_damaged_or_missing_output_says_which_file(tmp_path):
    """A deleted or damaged output reruns its stage (minutes of training, for a teacher): the run names the file
    instead of starting it over in silence."""
    recipe = edgekd.load_recipe(_tiny(tmp_path))
    first = edgekd.run(recipe, reporter=SilentReporter())
    (first.rundir.checkpoints / "student.pt").write_bytes(b"damaged")
    (first.rundir.results / "summary.json").unlink()
    notes = NoteKeeper()
    again = edgekd.run(recipe, reporter=notes)
    assert again.stages["distill"] == "ran" and again.stages["export"] == "skipped"  # the same student again
    assert "distill: checkpoints/student.pt changed since the stage wrote it (another sha256); running the stage " \
           "again" in notes.notes, notes.notes
    assert "report: results/summary.json is missing; running the stage again" in notes.notes, notes.notes
    assert not any("teacher:" in n and "again" in n for n in notes.notes)


def test_a_quantization_aware_artifact_is_made_again_when_the_distillation_settings_it_trains_with_change(tmp_path):
    """QAT (export stage) trains with distill.loss, distill.train and the transfer set; with only the teacher
    exported, the export stage's hash held none of them and kept the int8_qat artifact of the old settings."""
    recipe = _tiny(tmp_path, **{"export.targets": {"teacher": ["fp32", "int8_qat"]},
                                "export.qat": {"enabled": "auto", "epochs": 1}})
    assert _run(recipe)["export"] == "ran"
    recipe["distill"]["loss"] = {"name": "kd", "temperature": 2.0}
    stages = _run(recipe)
    assert stages["distill"] == "ran" and stages["export"] == "ran", stages


def test_the_same_teacher_checkpoint_at_another_path_does_not_redo_the_distillation(tmp_path):
    """The teacher stage's checkpoint carried the path it was loaded from: the same weights moved (or named by
    another path) gave other bytes, and distillation, export and report all ran again."""
    import shutil

    recipe = _tiny(tmp_path)
    recipe["teacher"]["checkpoint"] = str(_teacher_checkpoint(tmp_path, recipe))
    _run(recipe)
    moved = tmp_path / "moved" / "teacher.pt"
    moved.parent.mkdir()
    shutil.copy(recipe["teacher"]["checkpoint"], moved)
    recipe["teacher"]["checkpoint"] = str(moved)
    stages = _run(recipe)
    assert stages["teacher"] == "ran" and stages["distill"] == "skipped" and stages["export"] == "skipped", stages


def test_two_processes_checking_one_folder_at_once_both_find_it_writable(tmp_path):
    """writable_dir proved a folder writable with one fixed file name: of two edgekd processes starting at once
    (two runs of one recipe, benches of two devices into one --results-dir), one could delete the other's probe
    and be told the folder cannot be written ('No such file or directory'), instead of getting to its lock."""
    import threading

    from edgekd.errors import EdgeKDError
    from edgekd.rundir import writable_dir

    failures: list[str] = []

    def check() -> None:
        for _ in range(4000):
            try:
                writable_dir(tmp_path, fix="-")
            except EdgeKDError as exc:
                failures.append(f"{exc.what}: {exc.why}")

    threads = [threading.Thread(target=check) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures[:3]
    assert list(tmp_path.iterdir()) == []


def test_a_stage_turned_off_and_on_again_is_taken_back_not_redone(tmp_path):
    """scratch.enabled: false dropped the baseline's record (so the report leaves it out); turned on again with
    the same inputs and its checkpoint intact, the baseline was trained again from the start."""
    recipe = _tiny(tmp_path, **{"scratch.enabled": True})
    assert _run(recipe)["scratch"] == "ran"
    recipe["scratch"]["enabled"] = False
    assert _run(recipe)["scratch"] == "disabled"
    recipe["scratch"]["enabled"] = True
    again = edgekd.run(edgekd.load_recipe(recipe), reporter=SilentReporter())
    assert again.stages["scratch"] == "skipped", again.stages
    assert again.rundir.load_manifest()["stages"]["scratch"]["metrics"]["steps"] > 0  # the report has it again
