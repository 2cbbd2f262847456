"""A compressed model's artifacts list the steps that made them, in order: a quantized one ends with its
quantization (README: source checkpoint, pruning, KD recovery, quantization), not with the step before it."""

from __future__ import annotations

import numpy as np

STEPS = ["student checkpoint", "structured pruning 50% of channels", "KD recovery: 2 epochs from the teacher"]


def test_a_quantized_compressed_artifact_ends_its_steps_with_the_quantization(tmp_path) -> None:
    import torch

    from edgekd.export.formats import ExportOptions
    from edgekd.exporter import export_model
    from edgekd.models import create_model

    torch.manual_seed(0)
    model = create_model("mlp", in_shape=(16,), num_classes=4, width=16, depth=1).eval()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 16)).astype(np.float32)
    y = rng.integers(0, 4, size=64)
    arts = {a.precision: a for a in export_model(
        model, role="compressed", formats=["onnx"], precisions=["fp32", "int8_dynamic"], out_root=tmp_path,
        in_shape=(16,), x_test=x, y_test=y, num_classes=4, options=ExportOptions(), min_agreement=0.0,
        min_agreement_int4=0.0, lineage={"run": "r", "steps": list(STEPS)})}
    assert arts["fp32"].lineage["steps"] == STEPS
    *before, last = arts["int8_dynamic"].lineage["steps"]
    assert before == STEPS and last == {"step": "int8_dynamic", "format": "onnx"}


def test_an_artifact_without_compression_steps_gets_none(tmp_path) -> None:
    import torch

    from edgekd.export.formats import ExportOptions
    from edgekd.exporter import export_model
    from edgekd.models import create_model

    torch.manual_seed(0)
    model = create_model("mlp", in_shape=(16,), num_classes=4, width=16, depth=1).eval()
    x = np.random.default_rng(0).normal(size=(32, 16)).astype(np.float32)
    (art,) = export_model(model, role="student", formats=["onnx"], precisions=["int8_dynamic"], out_root=tmp_path,
                          in_shape=(16,), x_test=x, y_test=np.zeros(32, dtype=np.int64), num_classes=4,
                          options=ExportOptions(), min_agreement=0.0, min_agreement_int4=0.0, lineage={"run": "r"})
    assert "steps" not in art.lineage
