"""End-to-end behaviour of a run: stages, artifacts with parity, resume, force, interruption, report."""

from __future__ import annotations

import json
import signal
import os
import subprocess
import sys
import time

import pytest

import edgekd
from edgekd.export.artifact import Artifact
from edgekd.rundir import read_json

from conftest import TINY_RECIPE, StepReporter, ctrl_c

EXPECTED = {f"{role}-{fmt}-{precision}" for fmt in ("onnx", "tflite") for role, precisions in (
    ("teacher", ["fp32"]), ("student", ["fp32", "int8_static", "int8_dynamic", "int4"]), ("scratch", ["fp32"]),
    ("floor", ["fp32"])) for precision in precisions}


def test_every_stage_runs_and_writes_its_outputs(tiny_run):
    assert tiny_run.stages == {**{s: "ran" for s in ("teacher", "distill", "scratch", "export", "bench", "report")},
                               "compress": "disabled"}  # off unless the recipe asks
    root = tiny_run.rundir.root
    for rel in ("recipe.yaml", "manifest.json", "checkpoints/teacher.pt", "checkpoints/student.pt",
                "checkpoints/scratch.pt", "results/summary.json", "report/index.html"):
        assert (root / rel).is_file(), rel


def test_artifacts_are_records_with_parity_on_real_data(tiny_run):
    artifacts = {a.name: a for a in tiny_run.artifacts}
    assert set(artifacts) == EXPECTED
    for art in artifacts.values():
        assert art.size_bytes == art.path.stat().st_size
        art.verify_file()
        assert art.inputs[0]["name"] == "x" and art.inputs[0]["shape"][1:] == [64]
        assert art.runtime_versions["onnxruntime" if art.format == "onnx" else "ai-edge-litert"]
        if art.role == "floor":
            continue
        assert art.parity is not None and art.parity.samples == 270
        assert art.parity.passed, (art.name, art.parity.reason)
        assert 0.9 <= art.parity.agreement <= 1.0
        assert len(art.parity.per_class_accuracy) == 10
        assert art.lineage["checkpoint_sha256"]
    for fmt in ("onnx", "tflite"):
        assert artifacts[f"student-{fmt}-fp32"].parity.max_abs_error < 1e-3
        int4 = artifacts[f"student-{fmt}-int4"]
        assert int4.weight_bits["int4_bytes"] > 0 and int4.weight_bits["share_4bit"] > 0.5, int4.weight_bits
        assert int4.size_bytes < artifacts[f"student-{fmt}-int8_dynamic"].size_bytes
    q = artifacts["student-onnx-int8_static"]
    assert q.quantization["per_channel"] and "QuantizeLinear" in q.op_histogram
    d = artifacts["student-onnx-int8_dynamic"]
    assert "MatMulInteger" in d.op_histogram and "ConvInteger" not in d.op_histogram
    assert "MatMulNBits" in artifacts["student-onnx-int4"].op_histogram
    assert artifacts["student-tflite-int8_static"].inputs[0]["dtype"] == "int8"
    teacher_bits = artifacts["teacher-onnx-fp32"].weight_bits
    assert teacher_bits["share_4bit"] == 0 and teacher_bits["share_8bit"] == 0 and teacher_bits["float_bytes"] > 0


def test_bench_results_name_artifacts_by_sha_and_carry_statistics(tiny_run):
    results = {r.artifact["name"]: r for r in tiny_run.results}
    assert set(results) == EXPECTED
    by_name = {a.name: a for a in tiny_run.artifacts}
    for name, res in results.items():
        assert res.artifact["sha256"] == by_name[name].sha256
        lat = res.latency_us
        assert lat["n"] >= 50 and lat["ci95_p50"][0] <= lat["p50"] <= lat["ci95_p50"][1]
        if res.artifact["format"] == "onnx":
            assert res.runtime["intra_op_threads"] == 1 and res.runtime["io_binding"] is True
        else:
            assert res.runtime["name"] == "litert" and "xnnpack" in res.runtime["delegate"]
        assert res.memory_kb["vmhwm"] >= res.memory_kb["baseline_vmhwm"] > 0
        assert res.device["info"]["system"]["cpu_model"]
        assert res.load_ms > 0 and res.first_inference_us > 0
        if by_name[name].role != "floor":  # scored on the device from its own outputs, like a board or phone
            assert res.device_accuracy["samples"] == 270
            assert res.device_accuracy["accuracy"] == pytest.approx(by_name[name].parity.accuracy), name


def test_every_result_of_a_run_names_the_run_in_the_history(tiny_run):
    """The history kept no run, so `edgekd compare` could not say which run a changed file came from; a run's
    per-call floors, exported beside its models, named none either."""
    import sqlite3

    run = tiny_run.rundir.root.name
    assert {r.artifact["run"] for r in tiny_run.results} == {run}
    with sqlite3.connect(tiny_run.rundir.root.parent / "history.sqlite") as con:
        assert con.execute("SELECT DISTINCT run_name FROM results").fetchall() == [(run,)]


def test_eval_samples_scores_the_first_samples_of_the_test_split(tiny_run):
    """BenchSettings.eval_samples: the first N samples of the run's test split are scored on the device (0: none),
    the same N for every artifact."""
    from dataclasses import replace

    import numpy as np
    import onnxruntime as ort

    from edgekd.bench.harness import BenchSettings

    folders = [tiny_run.rundir.artifacts / n for n in ("student-onnx-fp32", "student-tflite-int8_static")]
    quick = BenchSettings(warmup_runs=1, min_runs=5, min_seconds=0.0, rounds=1)
    assert [r.device_accuracy for r in edgekd.bench(folders, settings=replace(quick, eval_samples=0))] == [None, None]
    onnx, tflite = edgekd.bench(folders, settings=replace(quick, eval_samples=40))
    assert onnx.device_accuracy["samples"] == tflite.device_accuracy["samples"] == 40
    x, y = (np.load(tiny_run.rundir.data / f"test_{k}.npy")[:40] for k in "xy")
    session = ort.InferenceSession(str(folders[0] / "model.onnx"), providers=["CPUExecutionProvider"])
    logits = session.run(None, {session.get_inputs()[0].name: x.astype(np.float32)})[0]
    assert onnx.device_accuracy["accuracy"] == float((logits.argmax(axis=1) == y).mean())


def test_a_run_scoring_the_first_test_samples_on_the_device_says_so(tiny_run, tmp_path):
    """bench.eval_samples: the report gives the device accuracy with its samples, and does not take a subset's
    accuracy differing from the whole split's for the device computing differently."""
    import shutil

    shutil.copytree(tiny_run.rundir.root, tmp_path / "tiny")
    recipe = tiny_run.recipe.model_copy(deep=True)
    recipe.output_dir, recipe.bench.eval_samples, recipe.bench.rounds = tmp_path, 30, 1
    result = edgekd.run(recipe)
    assert result.stages["bench"] == "ran" and result.stages["report"] == "ran"
    assert {r.device_accuracy["samples"] for r in result.results if r.device_accuracy} == {30}
    summary = read_json(result.summary_path)
    rows = [r for r in summary["rows"] if r.get("device_accuracy") is not None]
    assert rows and any(abs(r["device_accuracy"] - r["accuracy"]) > 1e-9 for r in rows)  # 30 samples, not 270
    assert not any("differs from the export-time check" in f for f in summary["findings"])
    assert "(first 30 samples)" in (tmp_path / "tiny" / "report" / "index.html").read_text()


def test_summary_and_html_report(tiny_run):
    summary = read_json(tiny_run.summary_path)
    names = [r["name"] for r in summary["rows"]]
    assert names[0] == "teacher-onnx-fp32" and "floor-onnx-fp32" not in names
    student = next(r for r in summary["rows"] if r["name"] == "student-onnx-fp32")
    assert student["speedup_vs_teacher"] > 0 and isinstance(student["speedup_significant"], bool)
    # the class the student loses most on against the teacher (FP32 ONNX both), in accuracy points
    teacher = next(r for r in summary["rows"] if r["name"] == "teacher-onnx-fp32")
    assert student["class_delta_reference"] == "teacher-onnx-fp32"
    deltas = [(a - b) * 100 for a, b in zip(student["per_class_accuracy"], teacher["per_class_accuracy"], strict=True)]
    assert len(deltas) == len(summary["class_names"]) == 10
    assert student["worst_class"] == {"class": summary["class_names"][deltas.index(min(deltas))],
                                      "delta_points": pytest.approx(min(deltas))}
    assert set(summary["floors"]) == {"onnx", "tflite"} and summary["findings"]
    compared = {(c["role"], c["precision"]) for c in summary["runtime_comparison"]}
    assert ("teacher", "fp32") in compared and ("student", "int4") in compared
    html = tiny_run.report_path.read_text()
    assert "data:image/png;base64," in html
    assert "http://" not in html and "https://" not in html  # self-contained, opens offline


def test_second_run_skips_every_stage(tiny_run):
    again = edgekd.run(tiny_run.recipe)
    assert set(again.stages.values()) == {"skipped", "disabled"} and again.stages["compress"] == "disabled"


def test_changing_a_field_reruns_only_the_stages_it_affects(tiny_run, tmp_path):
    import shutil

    copy = tmp_path / "tiny"
    shutil.copytree(tiny_run.rundir.root, copy)
    recipe = tiny_run.recipe.model_copy(deep=True)
    recipe.output_dir = tmp_path
    recipe.bench.min_runs = 60
    result = edgekd.run(recipe)
    assert result.stages == {"teacher": "skipped", "distill": "skipped", "scratch": "skipped", "compress": "disabled",
                             "export": "skipped", "bench": "ran", "report": "ran"}
    forced = edgekd.run(recipe, force={"export"})
    assert forced.stages["export"] == "ran" and forced.stages["teacher"] == "skipped"


def test_what_a_recipe_no_longer_asks_for_leaves_the_report(tiny_run, tmp_path):
    """Dropped precisions, a disabled scratch baseline and a disabled bench: their files from the earlier run
    must not be reported as current (the report reads what the manifest records, not what lies in folders)."""
    import shutil

    shutil.copytree(tiny_run.rundir.root, tmp_path / "tiny")
    half_made = tmp_path / "tiny" / "artifacts" / "teacher-onnx-int8_dynamic"  # an interrupted export's, no record
    half_made.mkdir()
    shutil.copy(tiny_run.rundir.artifacts / "teacher-onnx-fp32" / "model.onnx", half_made / "model.onnx")
    recipe = tiny_run.recipe.model_copy(deep=True)
    recipe.output_dir = tmp_path
    recipe.export.targets = {"teacher": ["fp32"], "student": ["fp32", "int8_dynamic"]}
    recipe.scratch.enabled = False
    recipe.bench.enabled = False
    result = edgekd.run(recipe)
    assert result.stages == {"teacher": "skipped", "distill": "skipped", "scratch": "disabled",
                             "compress": "disabled", "export": "ran", "bench": "disabled", "report": "ran"}
    kept = {f"{role}-{fmt}-{p}" for fmt in ("onnx", "tflite") for role, ps in
            (("teacher", ["fp32"]), ("student", ["fp32", "int8_dynamic"]), ("floor", ["fp32"])) for p in ps}
    assert {a.name for a in result.artifacts} == kept
    assert {p.name for p in result.rundir.artifacts.iterdir()} == kept  # the dropped and half-made ones are gone
    assert not {"bench", "scratch"} & set(result.rundir.load_manifest()["stages"])
    assert result.results == []
    summary = read_json(result.rundir.results / "summary.json")
    assert {r["name"] for r in summary["rows"]} == kept - {"floor-onnx-fp32", "floor-tflite-fp32"}
    assert all(r.get("p50_us") is None for r in summary["rows"]), "latency of the earlier bench reported"
    assert summary["models"]["scratch"] is None and not summary["machine"]


def test_an_interrupted_run_resumes_from_its_last_finished_stage(tmp_path):
    recipe = tmp_path / "slow.yaml"
    text = TINY_RECIPE.read_text().replace("train: {epochs: 6}", "train: {epochs: 400}")
    recipe.write_text(text.replace("name: tiny", "name: slow"))
    manifest = tmp_path / "out" / "slow" / "manifest.json"
    proc = subprocess.Popen([sys.executable, "-m", "edgekd.cli", "run", str(recipe), "--output-dir",
                             str(tmp_path / "out")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if manifest.exists() and "teacher" in json.loads(manifest.read_text())["stages"]:
                break
            time.sleep(0.2)
        else:
            pytest.fail("the teacher stage never finished")
        time.sleep(1.0)  # now inside distillation
    finally:
        proc.kill()  # SIGKILL, also when the test failed: never leave a 400-epoch run behind
        proc.wait(timeout=30)
    stages = json.loads(manifest.read_text())["stages"]
    assert list(stages) == ["teacher"]
    checkpoints = sorted(p.name for p in (tmp_path / "out" / "slow" / "checkpoints").iterdir())
    assert checkpoints == ["teacher.pt"]  # nothing half-written under a final name (temp files are dot-files)
    # Resume with a short budget: the teacher is reused, the rest runs.
    recipe.write_text(TINY_RECIPE.read_text().replace("name: tiny", "name: slow")
                      .replace("bench:\n", "bench:\n  enabled: false\n"))
    resumed = edgekd.run(edgekd.load_recipe(recipe), output_dir=tmp_path / "out")
    assert resumed.stages["teacher"] == "skipped" and resumed.stages["distill"] == "ran"
    # Without a bench the report says so instead of "on None (None, None thread, batch None)".
    from rich.console import Console

    from edgekd.console import summary_table

    summary = json.loads((resumed.rundir.results / "summary.json").read_text())
    console = Console(width=300, record=True)
    console.print(summary_table(summary))
    title = console.export_text().splitlines()[0]
    assert "not benchmarked" in title and "None" not in title, title
    meta = (resumed.rundir.report / "index.html").read_text().split('<p class="meta">')[1].split("</p>")[0]
    assert "not benchmarked" in meta and "None" not in meta, meta


@pytest.mark.parametrize("sig, code, word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_ctrl_c_or_sigterm_ends_a_run_with_one_line_and_no_temp_files(tmp_path, sig, code, word):
    recipe = tmp_path / "slow.yaml"
    recipe.write_text(TINY_RECIPE.read_text().replace("train: {epochs: 6}", "train: {epochs: 400}"))
    manifest = tmp_path / "out" / "tiny" / "manifest.json"
    proc = subprocess.Popen([sys.executable, "-m", "edgekd.cli", "run", str(recipe), "--output-dir",
                             str(tmp_path / "out")], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (manifest.exists() and "teacher" in json.loads(manifest.read_text())["stages"]):
            assert time.monotonic() < deadline and proc.poll() is None, "the teacher stage never finished"
            time.sleep(0.2)
        time.sleep(1.0)  # inside distillation
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:  # the test failed: never leave a 400-epoch run behind
            proc.kill()
            proc.communicate()
    assert proc.returncode == code and f"{word}: finished stages are kept" in stderr, (proc.returncode, stderr)
    assert "Traceback" not in stderr
    assert not list((tmp_path / "out").rglob("*.tmp")), "a temp file was left behind"


def test_python_api_distill_is_the_runs_distill_stage(tiny_run):
    """edgekd.distill (the stage alone, in memory) given the run's teacher makes the run's student: the same split,
    budget, seed and strategy."""
    import torch

    from edgekd.checkpoints import load_weights
    from edgekd.distill.api import load_splits, new_model

    splits = load_splits(tiny_run.recipe)
    trained = {}
    for role in ("teacher", "student"):
        trained[role] = new_model(tiny_run.recipe, splits, role)
        load_weights(trained[role], tiny_run.rundir.checkpoints / f"{role}.pt", role=role)
    outcome = edgekd.distill(tiny_run.recipe, teacher=trained["teacher"])
    assert outcome.steps == tiny_run.rundir.stage_record("distill")["metrics"]["steps"] > 0
    ours, theirs = outcome.student.state_dict(), trained["student"].state_dict()
    assert list(ours) == list(theirs)
    # Bit for bit under the same torch thread count; the tiny run may have trained under a module's one_thread,
    # and another count sums in another order (measured: 6e-8 at most): rounding, never another student.
    worst = max(float((ours[k] - theirs[k]).abs().max()) for k in ours)
    assert worst < 1e-5, f"max |weight difference| {worst:.3g} (torch threads {torch.get_num_threads()})"
    with torch.no_grad():
        x = torch.as_tensor(splits.x_test)
        assert torch.equal(outcome.student(x).argmax(1), trained["student"](x).argmax(1))


def test_python_api_export_and_bench(tiny_run, tmp_path):
    artifacts = edgekd.export(tiny_run.rundir.checkpoints / "student.pt", tmp_path / "arts",
                              precisions=["fp32", "int8_dynamic"], min_agreement=0.9)
    assert [a.precision for a in artifacts] == ["fp32", "int8_dynamic"] and all(a.ok for a in artifacts)
    reloaded = Artifact.load(tmp_path / "arts" / "student-onnx-fp32")
    assert reloaded.sha256 == artifacts[0].sha256
    from edgekd.bench.harness import BenchSettings

    fast = BenchSettings(warmup_runs=5, min_runs=30, min_seconds=0.02)
    results = edgekd.bench([reloaded, artifacts[1].path], device="host", settings=fast, results_dir=tmp_path / "res")
    assert [r.artifact["sha256"] for r in results] == [a.sha256 for a in artifacts]
    assert len(list((tmp_path / "res").glob("bench-*.json"))) == 2


def test_cli_run_prints_the_teacher_vs_student_table(tiny_run):
    out = subprocess.run([sys.executable, "-m", "edgekd.cli", "report", str(tiny_run.rundir.root)],
                         capture_output=True, text=True, check=True).stdout
    assert "teacher-onnx-fp32" in out and "student-tflite-int4" in out and "index.html" in out


def test_the_report_puts_the_pytorch_models_side_by_side(tiny_run):
    """Teacher, KD student and scratch with the labels each learned from: before, the label counts behind the KD
    gain and the teacher's PyTorch accuracy were only sentences in the findings."""
    summary = read_json(tiny_run.rundir.results / "summary.json")
    models = summary["models"]
    out = subprocess.run([sys.executable, "-m", "edgekd.cli", "report", str(tiny_run.rundir.root)],
                         capture_output=True, text=True, check=True, env={**os.environ, "COLUMNS": "200"}).stdout
    table = out[out.index("PyTorch models"):out.index("teacher-onnx-fp32")]
    page = (tiny_run.rundir.report / "index.html").read_text()
    section = page[page.index("<h2>PyTorch models</h2>"):page.index("<h2>Artifacts</h2>")]
    for role, label in (("teacher", "teacher"), ("student", "KD student"), ("scratch", "scratch baseline")):
        m = models[role]
        cells = [label, f"{m['parameters']:,}", f"{m['labelled_samples']:,}", f"{m['steps']:,}",
                 f"{m['test_accuracy']:.2%}"]
        assert " ".join(f"<td>{c}</td>" for c in cells).replace("> <", "><") in section, (role, section)
        assert all(c in table for c in cells), (role, table)
    assert models["teacher"]["labelled_samples"] > models["student"]["labelled_samples"]


def test_parity_batches_rows_as_the_device_runner_does():
    """Dynamic INT8 scales activations per batch: parity and the device must batch alike to agree."""
    from edgekd.bench.runner import PREDICT_FIELDS
    from edgekd.export.verify import PREDICT_BATCH

    assert PREDICT_FIELDS["batch_size"][1] == PREDICT_BATCH


def test_a_compress_stage_alone_reruns_the_report(tiny_run, tmp_path):
    """The report shows the compress stage's accuracy steps: turning compression on (or changing it) without
    exporting the compressed model must still rerun the report, not leave it without (or with stale) steps."""
    import shutil

    shutil.copytree(tiny_run.rundir.root, tmp_path / "tiny")
    recipe = tiny_run.recipe.model_copy(deep=True)
    recipe.output_dir = tmp_path
    recipe.compress.enabled = True
    recipe.compress.recovery.epochs = 1
    assert "compressed" not in recipe.export.targets
    result = edgekd.run(recipe)
    assert result.stages["compress"] == "ran" and result.stages["export"] == "skipped"
    assert result.stages["report"] == "ran"
    assert read_json(result.summary_path)["compression"] is not None


def test_a_run_removes_the_temp_files_a_killed_run_left(tiny_run, tmp_path):
    """SIGKILL mid-write leaves `.NAME.PID-XXXX.tmp` beside the file (never a half file under its name); the
    next run removes it, in the run folder and in the shared caches, whether or not a stage reruns."""
    import shutil

    from test_rundir import killed_mid_write

    shutil.copytree(tiny_run.rundir.root, tmp_path / "tiny")
    left = [killed_mid_write(tmp_path / "tiny" / "checkpoints" / "teacher.pt"),
            killed_mid_write(tmp_path / "tiny" / "artifacts" / "student-onnx-fp32" / "model.onnx"),
            killed_mid_write(tmp_path / "cache" / "teacher" / "0123abcd.npy")]
    result = edgekd.run(tiny_run.recipe, output_dir=tmp_path)
    assert set(result.stages.values()) == {"skipped", "disabled"}
    assert not [p for p in left if p.exists()]


def test_editing_the_device_profile_reruns_the_bench(tiny_run, tmp_path):
    """bench.device names a profile file: measuring again after its threads (or cpus, address) changed is the
    point of editing it, so the bench must not be skipped as up to date."""
    import shutil

    shutil.copytree(tiny_run.rundir.root, tmp_path / "tiny")
    profile = tmp_path / "box.yaml"
    profile.write_text("name: box\nkind: local\nthreads: 1\n")
    recipe = tiny_run.recipe.model_copy(deep=True)
    recipe.output_dir = tmp_path
    recipe.bench.device = str(profile)
    recipe.bench.threads = None  # the profile's threads
    recipe.bench.rounds = 1
    assert edgekd.run(recipe).stages["bench"] == "ran"
    profile.write_text("name: box\nkind: local\nthreads: 2\n")
    result = edgekd.run(recipe)
    assert result.stages["bench"] == "ran"
    assert {r.runtime["intra_op_threads"] for r in result.results if r.artifact["format"] == "onnx"} == {2}


def test_a_run_stopped_in_its_last_bench_round_records_one_whole_session(tiny_run, tmp_path):
    """A run stopped by Ctrl-C in its bench stage's last round had recorded the artifacts it finished as a
    session; run again, its bench stage measured every artifact again and recorded them beside it, so
    `edgekd history` listed a half session for nothing."""
    import shutil

    from edgekd.bench import history

    def last_round_of_the_first_artifact(description: str, total: int) -> int | None:
        return total // 2 + 1 if description.startswith("bench on") else None

    shutil.copytree(tiny_run.rundir.root, tmp_path / "tiny")
    recipe = tiny_run.recipe.model_copy(deep=True)
    recipe.output_dir = tmp_path
    assert recipe.bench.rounds == 2
    with pytest.raises(KeyboardInterrupt):
        edgekd.run(recipe, force={"bench"}, reporter=StepReporter(ctrl_c, at=last_round_of_the_first_artifact))
    result = edgekd.run(recipe)
    assert result.stages["bench"] == "ran" and all(r.complete for r in result.results)
    found = history.sessions(tmp_path / "history.sqlite")
    assert [s["results"] for s in found] == [len(result.results)], found


class _RecordingReporter:
    """Keeps the description of every progress task a run creates: what ran, observed, not timed."""

    def __init__(self) -> None:
        self.tasks: list[str] = []

    def task(self, description, total):
        from edgekd.progress import SilentReporter

        self.tasks.append(description)
        return SilentReporter().task(description, total)

    def note(self, message):
        pass


def test_a_resumed_run_skips_the_exportability_check_that_passed_and_a_new_architecture_reruns_it(tiny_run, tmp_path):
    """Every resume of a run that trains redid the 10-25 s trial exports of both architectures, though nothing
    that decides them had changed."""
    import shutil

    from edgekd.pipeline import EXPORTABLE_PATH, Context
    from edgekd.rundir import RunDir, read_json

    shutil.copytree(tiny_run.rundir.root, tmp_path / "tiny")
    assert (tmp_path / "tiny" / EXPORTABLE_PATH).is_file()  # the tiny run's own check recorded its pass
    recipe = tiny_run.recipe.model_copy(deep=True)
    recipe.output_dir = tmp_path
    resumed = _RecordingReporter()
    result = edgekd.run(recipe, force={"scratch"}, reporter=resumed)  # a stage that trains, so checks first
    assert result.stages["scratch"] == "ran" and "train scratch baseline" in resumed.tasks, resumed.tasks
    assert "check exportability" not in resumed.tasks, resumed.tasks

    wider = recipe.model_copy(deep=True)
    wider.student.model.params["width"] = 32  # another architecture: it may not export, so it is checked
    checked = _RecordingReporter()
    Context(recipe=wider, rundir=RunDir(tmp_path / "tiny"), reporter=checked).preflight()
    assert checked.tasks == ["check exportability"]
    assert read_json(tmp_path / "tiny" / EXPORTABLE_PATH)["checked"]["student"]["params"]["width"] == 32

    forced = _RecordingReporter()  # `--force all`: redo everything, the check too, whatever the folder records
    Context(recipe=wider, rundir=RunDir(tmp_path / "tiny"), reporter=forced, recheck=True).preflight()
    assert forced.tasks == ["check exportability"]


def test_the_exportability_key_changes_with_what_reaches_the_trial_exports_only():
    """A recorded pass is reused only for the same architectures, shape, formats and opset; training settings,
    which never reach a trial export, do not make a resumed run check again."""
    from edgekd.pipeline import exportability_key

    recipe = edgekd.load_recipe(TINY_RECIPE)
    base = exportability_key(recipe, (64,), 10)

    def changed(edit) -> dict:
        other = recipe.model_copy(deep=True)
        edit(other)
        return exportability_key(other, (64,), 10)

    assert changed(lambda r: setattr(r.teacher.train, "epochs", 1)) == base
    assert changed(lambda r: setattr(r.distill.train, "epochs", 1)) == base
    assert changed(lambda r: setattr(r.export, "opset", 17)) != base
    assert changed(lambda r: setattr(r.export, "formats", ["onnx"])) != base
    assert changed(lambda r: r.teacher.model.params.update(depth=3)) != base
    assert changed(lambda r: r.student.model.params.update(width=32)) != base
    assert exportability_key(recipe, (8, 8), 10) != base and exportability_key(recipe, (64,), 3) != base


def test_bench_threads_this_machine_refuses_fail_before_any_training(tmp_path):
    """The bench stage (the runner) refuses threads past 8x the device's cores; on a local device that is
    known up front, and the run trained teacher, student and baseline before saying so."""
    import os

    import yaml

    from edgekd.errors import RecipeError

    recipe = yaml.safe_load(TINY_RECIPE.read_text())
    recipe.update(output_dir=str(tmp_path))
    recipe["bench"].update(device="host", threads=8 * (os.cpu_count() or 1) + 1)
    with pytest.raises(RecipeError, match=r"bench\.threads: \d+ is more than 8x the \d+ cores of device 'host'"):
        edgekd.run(edgekd.load_recipe(recipe))
    assert not list(tmp_path.rglob("*.pt"))  # nothing trained


def test_a_stage_redone_to_the_same_result_does_not_redo_the_stages_after_it(tiny_run, tmp_path):
    """Checkpoints held their training seconds and artifact records their creation time: `--force scratch`
    (the same weights again) re-exported and re-benched everything after it, `--force export` (the same
    files again) re-benched, and a changed distillation loss retrained the baseline, which does not use it."""
    import shutil

    from edgekd.rundir import sha256_file

    shutil.copytree(tiny_run.rundir.root, tmp_path / "tiny")
    recipe = tiny_run.recipe.model_copy(deep=True)
    recipe.output_dir = tmp_path
    scratch = tmp_path / "tiny" / "checkpoints" / "scratch.pt"
    before = sha256_file(scratch)
    again = edgekd.run(recipe, force={"scratch"})
    assert again.stages["scratch"] == "ran" and sha256_file(scratch) == before
    assert again.stages["export"] == again.stages["bench"] == "skipped", again.stages
    again = edgekd.run(recipe, force={"export"})
    assert again.stages["export"] == "ran" and again.stages["bench"] == "skipped", again.stages
    recipe.distill.loss.temperature = 2.0
    again = edgekd.run(recipe)
    assert again.stages["distill"] == "ran" and again.stages["scratch"] == "skipped", again.stages
