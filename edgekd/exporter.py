"""Export a trained PyTorch model to every requested precision, each verified against the model.

An artifact whose parity check fails is kept on disk for inspection but its record says
`parity.passed: false` with the reason; nothing downstream treats it as good.
"""

from __future__ import annotations

import logging
import platform
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekd.errors import CheckpointError, RecipeError
from edgekd.export.artifact import Artifact
from edgekd.progress import Reporter, SilentReporter
from edgekd.rundir import sha256_file

if TYPE_CHECKING:
    from torch import nn

logger = logging.getLogger(__name__)

ONNX_PRECISIONS = ("fp32", "int8_static", "int8_dynamic")


def runtime_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("torch", "onnx", "onnxruntime", "onnxslim", "onnxscript", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def artifact_name(role: str, fmt: str, precision: str) -> str:
    return f"{role}-{fmt}-{precision}"


def export_model(
    model: "nn.Module",
    *,
    role: str,
    precisions: list[str],
    out_root: Path,
    in_shape: tuple[int, ...],
    x_test: np.ndarray,
    y_test: np.ndarray,
    x_calibration: np.ndarray,
    num_classes: int,
    opset: int,
    min_agreement: float,
    lineage: dict[str, Any],
    reporter: Reporter | None = None,
) -> list[Artifact]:
    """Export `model` to ONNX in each precision, check parity on (x_test, y_test), write records."""
    from edgekd.distill.trainer import predict_logits
    from edgekd.export import onnx as onnx_export
    from edgekd.export.verify import onnx_predict, parity
    from edgekd.models import count_parameters

    unknown = [p for p in precisions if p not in ONNX_PRECISIONS]
    if unknown:
        raise RecipeError(f"unknown ONNX precision(s): {', '.join(unknown)}", why=f"known: {', '.join(ONNX_PRECISIONS)}",
                          fix="fix export.targets in the recipe")
    reporter = reporter or SilentReporter()
    reference = predict_logits(model, x_test)
    ordered = ["fp32"] + [p for p in precisions if p != "fp32"]  # quantizers start from the FP32 file
    fp32_path = out_root / artifact_name(role, "onnx", "fp32") / "model.onnx"
    artifacts: list[Artifact] = []
    task = reporter.task(f"export {role}", len(ordered))
    for precision in ordered:
        name = artifact_name(role, "onnx", precision)
        path = out_root / name / "model.onnx"
        started = time.perf_counter()
        quantization: dict[str, Any] | None = None
        if precision == "fp32":
            onnx_export.export_onnx(model, in_shape, path, opset=opset)
        elif precision == "int8_static":
            quantization = onnx_export.quantize_static_int8(fp32_path, path, x_calibration)
        else:
            quantization = onnx_export.quantize_dynamic_int8(fp32_path, path)
        seconds = time.perf_counter() - started
        graph = onnx_export.load_onnx_checked(path)
        inputs, outputs = onnx_export.describe_io(graph)
        check = parity(onnx_predict(path, x_test), reference, y_test, num_classes=num_classes,
                       threshold=min_agreement, reference_name=f"PyTorch {role} (fp32)")
        artifact = Artifact(
            name=name, role=role, format="onnx", precision=precision, file=path.name,
            size_bytes=path.stat().st_size, sha256=sha256_file(path), parameters=count_parameters(model),
            opset=opset, runtime_versions=runtime_versions(), inputs=inputs, outputs=outputs,
            op_histogram=onnx_export.op_histogram(graph), quantization=quantization, parity=check,
            lineage={**lineage, "conversion_seconds": round(seconds, 3),
                     "derived_from": None if precision == "fp32" else artifact_name(role, "onnx", "fp32")},
            directory=path.parent,
        )
        artifact.save()
        if not check.passed:
            reporter.note(f"[warning] {name} FAILED parity: {check.reason}")
            logger.warning("%s failed parity: %s", name, check.reason)
        artifacts.append(artifact)
        task.advance(1)
    task.close()
    if "fp32" not in precisions:  # exported only as the quantizers' source: not a deliverable
        _remove_artifact(out_root / artifact_name(role, "onnx", "fp32"))
        artifacts = [a for a in artifacts if a.precision != "fp32"]
    return artifacts


def _remove_artifact(folder: Path) -> None:
    for child in folder.iterdir():
        child.unlink()
    folder.rmdir()


def floor_artifact(out_root: Path, in_shape: tuple[int, ...], opset: int) -> Artifact:
    """The Identity graph of the models' input shape: benchmarking it measures the runtime's per-call floor."""
    from edgekd.export import onnx as onnx_export

    path = out_root / "floor-onnx-fp32" / "model.onnx"
    onnx_export.write_identity_model(path, in_shape, opset)
    graph = onnx_export.load_onnx_checked(path)
    inputs, outputs = onnx_export.describe_io(graph)
    artifact = Artifact(name="floor-onnx-fp32", role="floor", format="onnx", precision="fp32", file=path.name,
                        size_bytes=path.stat().st_size, sha256=sha256_file(path), parameters=0, opset=opset,
                        runtime_versions=runtime_versions(), inputs=inputs, outputs=outputs,
                        op_histogram=onnx_export.op_histogram(graph),
                        lineage={"purpose": "runtime per-call floor (Identity graph)"}, directory=path.parent)
    artifact.save()
    return artifact


def export_checkpoint(checkpoint: str | Path, output_dir: str | Path, *, precisions: list[str] | None = None,
                      opset: int = 18, min_agreement: float = 0.99, calibration_samples: int = 256,
                      reporter: Reporter | None = None) -> list[Artifact]:
    """Export an edgekd checkpoint (it records its architecture and data set) to verified ONNX artifacts."""
    from edgekd.checkpoints import load_weights, read_checkpoint
    from edgekd.data import load_data
    from edgekd.models import create_model

    checkpoint = Path(checkpoint)
    payload = read_checkpoint(checkpoint)
    spec, meta = payload.get("spec"), payload.get("meta") or {}
    data_cfg = meta.get("data")
    if not spec or not data_cfg:
        raise CheckpointError(
            f"{checkpoint} does not record its architecture and data set",
            why="a bare state dict cannot be rebuilt into a model on its own",
            fix="export from a run instead (edgekd run RECIPE), which knows the architecture",
        )
    model = create_model(spec["family"], in_shape=tuple(spec["in_shape"]), num_classes=spec["num_classes"],
                         **spec["params"])
    role = str(meta.get("role", checkpoint.stem))
    load_weights(model, checkpoint, role=role)
    splits = load_data(**data_cfg)
    rng = np.random.default_rng(0)
    calib = splits.x_train[rng.permutation(len(splits.x_train))[:calibration_samples]]
    return export_model(model, role=role, precisions=list(precisions or ONNX_PRECISIONS),
                        out_root=Path(output_dir), in_shape=splits.input_shape, x_test=splits.x_test,
                        y_test=splits.y_test, x_calibration=calib, num_classes=splits.num_classes, opset=opset,
                        min_agreement=min_agreement,
                        lineage={"checkpoint": str(checkpoint), "checkpoint_sha256": sha256_file(checkpoint),
                                 **{k: v for k, v in meta.items() if k not in ("data",)}},
                        reporter=reporter)
