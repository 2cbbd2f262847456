"""`edgekd export` into a folder: what it leaves there. A format's FP32 file that was not asked for was written
among the deliverables and removed afterwards, deleting an FP32 artifact an earlier export had left in the same
folder; an export that failed or was interrupted midway left a model file without its record."""

from __future__ import annotations

import pytest

import edgekd
from edgekd.rundir import sha256_file


@pytest.fixture
def checkpoint(tmp_path):
    from edgekd.checkpoints import save_checkpoint
    from edgekd.models import create_model

    model = create_model("mlp", in_shape=(64,), num_classes=10, width=16, depth=1)
    return save_checkpoint(model, tmp_path / "student.pt", role="student", data={"name": "digits"})


def test_a_second_export_keeps_the_fp32_artifact_of_the_first(checkpoint, tmp_path):
    out = tmp_path / "arts"
    (fp32,) = edgekd.export(checkpoint, out, precisions=["fp32"])
    kept = (sha256_file(fp32.path), sha256_file(fp32.path.parent / "artifact.json"))
    (int8,) = edgekd.export(checkpoint, out, precisions=["int8_dynamic"], min_agreement=0.0)
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["student-onnx-fp32", "student-onnx-int8_dynamic"]
    assert (sha256_file(fp32.path), sha256_file(fp32.path.parent / "artifact.json")) == kept
    assert int8.lineage["derived_from"] == "student-onnx-fp32" and int8.ok


def test_an_artifact_cut_short_leaves_no_model_file_without_its_record(checkpoint, tmp_path, monkeypatch):
    """Ctrl-C after the quantizer wrote the INT8 file and before its record: the folder goes; the finished FP32
    artifact stays."""
    import edgekd.exporter as exporter

    real_parity = exporter.parity

    def interrupted(outputs, reference, *args, **kwargs):
        if kwargs.get("max_rel_error") is None:  # a quantized artifact's check (FP32's has a bound)
            raise KeyboardInterrupt
        return real_parity(outputs, reference, *args, **kwargs)

    monkeypatch.setattr(exporter, "parity", interrupted)
    out = tmp_path / "arts"
    with pytest.raises(KeyboardInterrupt):
        edgekd.export(checkpoint, out, precisions=["fp32", "int8_dynamic"])
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["student-onnx-fp32"]
    assert (out / "student-onnx-fp32" / "artifact.json").is_file()
