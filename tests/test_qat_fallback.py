"""Quantization-aware distillation in the export stage (export.qat): when it runs, the `<role>-onnx-int8_qat`
artifact it writes (parity, lineage, comparison with FP32 and post-training INT8), and the recipe checks."""

from __future__ import annotations

import shutil

import pytest
import yaml

import edgekd
from edgekd.compress.qat_fallback import decide
from edgekd.errors import RecipeError
from edgekd.export.artifact import Artifact, Parity

from conftest import TINY_RECIPE


def _recipe(tmp_path, name: str, qat: dict, **export) -> dict:
    recipe = yaml.safe_load(TINY_RECIPE.read_text())
    recipe.update(name=name, output_dir=str(tmp_path))
    recipe["scratch"] = {"enabled": False}
    recipe["bench"]["enabled"] = False
    recipe["export"].update(formats=["onnx"], qat=qat, **export)
    recipe["export"]["targets"] = {"teacher": [], "student": ["fp32", "int8_static"], "scratch": []}
    return recipe


@pytest.fixture(scope="module")
def forced(tmp_path_factory):
    """A tiny run (real training, export, onnxruntime) with export.qat.enabled: true."""
    out = tmp_path_factory.mktemp("qat_fallback")
    recipe = _recipe(out, "qat", {"enabled": True, "epochs": 2})
    return edgekd.run(edgekd.load_recipe(recipe)), out


def test_forced_qat_writes_a_verified_int8_artifact_with_lineage(forced):
    from edgekd.compress.isa import choose_reduce_range
    from edgekd.rundir import sha256_file

    result, _ = forced
    arts = {a.name: a for a in result.artifacts}
    assert {"student-onnx-fp32", "student-onnx-int8_static", "student-onnx-int8_qat"} <= set(arts)
    qat = arts["student-onnx-int8_qat"]
    assert qat.precision == "int8_qat" and qat.format == "onnx" and qat.role == "student"
    qat.verify_file()
    assert qat.op_histogram.get("QuantizeLinear", 0) >= 2 and qat.weight_bits["share_8bit"] > 0.5
    # parity against the fake-quant model it was trained as, on the test split
    assert qat.parity.reference == "PyTorch student (QAT fake-quant)" and qat.parity.samples == 270
    assert qat.parity.passed, qat.parity.reason
    # lineage: the student checkpoint, then QAT against the run's teacher, then the INT8 conversion, in order
    steps = qat.lineage["steps"]
    assert steps[0] == "student checkpoint" and [s["step"] for s in steps[1:]] == ["qat", "int8_static"]
    assert steps[1]["epochs"] == 2 and steps[1]["reason"] == "export.qat.enabled is true"
    assert steps[1]["teacher_checkpoint_sha256"] == sha256_file(result.rundir.checkpoints / "teacher.pt")
    assert qat.lineage["checkpoint_sha256"] == sha256_file(result.rundir.checkpoints / "student.pt")
    # the weight grid training used is the one the artifact holds
    chosen = choose_reduce_range("auto", ())  # bench is disabled: no target device, so the safe 7-bit grid
    assert chosen["reduce_range"] is True and qat.quantization["reduce_range"] is True
    assert steps[1]["weight_grid"] == "7-bit"
    # how it compares with the FP32 model and post-training INT8
    q = qat.quantization["qat"]
    assert q["fp32_accuracy"] == pytest.approx(arts["student-onnx-fp32"].parity.accuracy)
    assert q["ptq_accuracy"] == pytest.approx(arts["student-onnx-int8_static"].parity.accuracy)
    assert q["qat_accuracy"] == pytest.approx(qat.parity.accuracy)
    assert 0.8 <= q["agreement_with_fp32_model"] <= 1.0
    assert [r["node"] for r in qat.quantization["layer_errors"]] == ["node_linear", "node_linear_1"]
    assert Artifact.load(qat.path.parent).quantization["qat"] == q  # the record on disk has it


def test_forced_qat_is_in_the_manifest_and_the_report(forced):
    from edgekd.rundir import read_json

    result, _ = forced
    manifest = result.rundir.load_manifest()["stages"]["export"]
    assert "student-onnx-int8_qat" in manifest["artifacts"] and not manifest["failed_parity"]
    summary = read_json(result.summary_path)
    row = next(r for r in summary["rows"] if r["name"] == "student-onnx-int8_qat")
    assert row["qat"]["reason"] == "export.qat.enabled is true" and row["kept_fp32"] == []
    assert any(f.startswith("Quantization-aware distillation") and "student-onnx-int8_qat" in f
               for f in summary["findings"])
    assert "student-onnx-int8_qat" in result.report_path.read_text()


def test_auto_below_the_loss_threshold_skips_qat_and_removes_a_stale_artifact(forced, tmp_path):
    result, _ = forced
    shutil.copytree(result.rundir.root, tmp_path / "qat")  # rerun a copy: the other tests read the shared run
    recipe = _recipe(tmp_path, "qat", {"enabled": "auto", "max_int8_loss": 100.0, "epochs": 2})
    again = edgekd.run(edgekd.load_recipe(recipe))
    assert again.stages["export"] == "ran" and again.stages["distill"] == "skipped"
    names = {a.name for a in again.artifacts}
    assert "student-onnx-int8_static" in names and "student-onnx-int8_qat" not in names
    assert not (again.rundir.artifacts / "student-onnx-int8_qat").exists()


def _artifact(precision: str, accuracy: float, fmt: str = "onnx") -> Artifact:
    parity = Parity(reference="PyTorch student (fp32)", samples=270, agreement=0.99, max_abs_error=0.1,
                    mean_abs_error=0.01, accuracy=accuracy, reference_accuracy=0.97, per_class_accuracy=[],
                    threshold=0.9, passed=True)
    return Artifact(name=f"student-{fmt}-{precision}", role="student", format=fmt, precision=precision,
                    file=f"model.{fmt}", size_bytes=1, sha256="0" * 64, parity=parity)


@pytest.mark.parametrize("qat, targets, ptq, run, reason", [
    ({"enabled": "auto"}, ["fp32", "int8_static"], 0.960, True, "loses 1.00 points vs FP32 on the validation"),
    ({"enabled": "auto"}, ["fp32", "int8_static"], 0.966, False, "loses 0.40 points"),
    ({"enabled": "auto", "max_int8_loss": 2.0}, ["fp32", "int8_static"], 0.960, False, "≤ max_int8_loss 2"),
    ({"enabled": True}, ["fp32", "int8_static"], 0.970, True, "enabled is true"),
    ({"enabled": True}, ["fp32", "int8_dynamic"], 0.970, False, "no ONNX int8_static"),
    ({"enabled": False}, ["fp32", "int8_static"], 0.900, False, "enabled is false"),
    ({"enabled": "auto"}, ["fp32", "int8_qat"], None, True, "lists int8_qat"),
])
def test_decide_when_qat_runs(qat, targets, ptq, run, reason):
    """`ptq` is the int8_static accuracy on the validation split (FP32: 0.970) the auto rule decides on."""
    recipe = edgekd.load_recipe({"export": {"qat": qat, "targets": {"student": targets}}})
    made = [_artifact("fp32", 0.970)] + ([_artifact("int8_static", 0.5)] if ptq is not None else [])
    decision = decide(recipe, "student", made, validation=lambda artifact: (0.970, ptq))
    assert decision.run is run and reason in decision.reason, decision


def test_auto_qat_decides_on_the_validation_split_not_on_the_test_split():
    """The test split only reports: an int8_static that loses 5 points on the test rows but 0.2 on the
    validation rows gets no QAT (choosing on the test rows, then comparing on them, would credit QAT with the
    bad luck that triggered it), and without validation numbers auto does not run."""
    recipe = edgekd.load_recipe({"export": {"qat": {"enabled": "auto"}, "targets": {"student": ["fp32", "int8_static"]}}})
    made = [_artifact("fp32", 0.970), _artifact("int8_static", 0.920)]  # test split: 5 points lost
    decision = decide(recipe, "student", made, validation=lambda artifact: (0.970, 0.968))
    assert not decision.run and "loses 0.20 points vs FP32 on the validation split" in decision.reason
    assert decision.ptq_loss_points == pytest.approx(5.0)  # the comparison reported stays on the test split
    worse = decide(recipe, "student", made, validation=lambda artifact: (0.970, 0.950))
    assert worse.run and worse.ptq_accuracy == 0.920
    blind = decide(recipe, "student", made)
    assert not blind.run and "no validation accuracy" in blind.reason


def test_decide_without_fp32_artifact_uses_the_pytorch_accuracy():
    recipe = edgekd.load_recipe({"export": {"targets": {"student": ["int8_static"]}}})
    decision = decide(recipe, "student", [_artifact("int8_static", 0.95)], validation=lambda artifact: (0.97, 0.95))
    assert decision.run and decision.fp32_accuracy == 0.97 and decision.ptq_loss_points == pytest.approx(2.0)
    tflite_only = edgekd.load_recipe({"export": {"formats": ["tflite"]}})
    assert not decide(tflite_only, "student", [_artifact("int8_static", 0.5, "tflite")]).run
    with pytest.raises(RecipeError, match="qat.enabled: true .* is an ONNX setting, and formats has no onnx"):
        edgekd.load_recipe({"export": {"formats": ["tflite"], "qat": {"enabled": True}}})  # was accepted, did nothing


def test_recipe_checks_int8_qat_targets():
    assert edgekd.load_recipe({"export": {"targets": {"student": ["fp32", "int8_qat"]}}}).export.qat.enabled == "auto"
    with pytest.raises(RecipeError, match="export.formats has no onnx"):
        edgekd.load_recipe({"export": {"formats": ["tflite"], "targets": {"student": ["int8_qat"]}}})
    with pytest.raises(RecipeError, match="export.qat.enabled is false"):
        edgekd.load_recipe({"export": {"qat": {"enabled": False}, "targets": {"student": ["int8_qat"]}}})
    with pytest.raises(RecipeError, match="export.qat.enabled: must be one of"):
        edgekd.load_recipe({"export": {"qat": {"enabled": "sometimes"}}})
    with pytest.raises(RecipeError, match="export.qat.max_int8_loss: must be >= 0"):
        edgekd.load_recipe({"export": {"qat": {"max_int8_loss": -1}}})
    with pytest.raises(RecipeError, match="export.int8_reduce_range: must be one of"):
        edgekd.load_recipe({"export": {"int8_reduce_range": "maybe"}})


@pytest.mark.parametrize("strategy, recovery, role, expected", [
    ("standard", "teacher", "student", "teacher checkpoint"),
    ("standard", "teacher", "scratch", "its own FP32 model"),  # the baseline never sees the teacher
    ("standard", "teacher", "teacher", "its own FP32 model"),
    ("self", "teacher", "student", "its own FP32 model"),
    ("mutual", "teacher", "student", "its own FP32 model"),
    ("blackbox", "teacher", "student", "black-box teacher's outputs"),  # not the white-box teacher
    ("blackbox", "teacher", "compressed", "black-box teacher's outputs"),
    ("standard", "teacher", "compressed", "teacher checkpoint"),
    ("standard", "uncompressed", "compressed", "student checkpoint (uncompressed)"),
])
def test_qat_learns_from_what_the_role_learned_from(tmp_path, strategy, recovery, role, expected):
    """QAT recovers what quantization lost; learning from another teacher than the role's own would add
    knowledge its FP32 model never had (a scratch baseline's int8_qat artifact was a KD student)."""
    import numpy as np
    import torch

    from edgekd.compress.qat_fallback import qat_teacher

    recipe = edgekd.load_recipe(_recipe(tmp_path, "who", {"enabled": True}))
    recipe = recipe.model_copy(update={
        "distill": recipe.distill.model_copy(update={"strategy": strategy}),
        "compress": recipe.compress.model_copy(update={
            "recovery": recipe.compress.recovery.model_copy(update={"teacher": recovery})})})
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    loaded: list[str] = []

    def trained(of: str):
        loaded.append(of)
        return model

    teacher = qat_teacher(recipe, None, role, model, trained, lambda of: f"sha-of-{of}")
    assert teacher.name == expected
    if expected == "its own FP32 model":
        x = np.random.default_rng(0).standard_normal((4, 1, 8, 8)).astype(np.float32)
        with torch.no_grad():
            own = model(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(teacher.logits(x, np.arange(4)), own, rtol=1e-6)
        assert loaded == [] and teacher.checkpoint_sha256 is None
    elif "checkpoint" in expected:
        of = expected.split()[0]
        assert teacher.checkpoint_sha256 == f"sha-of-{of}"
