"""Run an exported artifact on the host and compare it with its PyTorch model.

Parity is measured on real test-split inputs (random inputs hide real divergence): top-1 agreement,
max/mean absolute error of the logits, and the artifact's own accuracy, overall and per class.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekd.errors import ArtifactError, first_line
from edgekd.export.artifact import Parity


PREDICT_BATCH = 64  # the device runner's default predict batch (bench/runner.py PREDICT_FIELDS)


def onnx_predict(path: Path, x: np.ndarray, batch_size: int = PREDICT_BATCH) -> np.ndarray:
    """Outputs of an ONNX file under onnxruntime (CPU), in batches of the device runner's size: dynamic INT8
    scales activations per batch, so the same rows batched differently can flip a borderline prediction,
    and parity would then disagree with the accuracy the device reports."""
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ArtifactError(f"onnxruntime cannot load {path}", why=first_line(exc),
                            fix="re-export the artifact") from None
    name = session.get_inputs()[0].name
    outs = [session.run(None, {name: np.ascontiguousarray(x[i:i + batch_size])})[0]
            for i in range(0, len(x), batch_size)]
    return np.concatenate(outs).astype(np.float32)


def per_class_accuracy(logits: np.ndarray, y: np.ndarray, num_classes: int) -> list[float]:
    pred = logits.argmax(axis=1)
    return [float((pred[y == c] == c).mean()) if np.any(y == c) else float("nan") for c in range(num_classes)]


# An FP32 artifact computes what PyTorch computes, up to the order of float additions: logits farther apart
# than this share of their scale mean a broken export, even when the top-1 classes still agree.
FP32_MAX_REL_ERROR = 1e-3


def max_rel_error_for(precision: str) -> float | None:
    """The logit-error bound parity applies to an artifact of `precision` (FP32 only: quantized ones round)."""
    return FP32_MAX_REL_ERROR if precision == "fp32" else None


def parity(outputs: np.ndarray, reference: np.ndarray, y: np.ndarray, *, num_classes: int,
           threshold: float, reference_name: str, max_rel_error: float | None = None) -> Parity:
    """Compare an artifact's outputs with its PyTorch model's outputs on the same inputs: top-1 agreement at
    least `threshold`, finite outputs, and (`max_rel_error`, for FP32) the largest logit error at most that
    share of the logits' scale (max |reference|, at least 1)."""
    if outputs.shape != reference.shape:
        return Parity(reference=reference_name, samples=len(y), agreement=0.0, max_abs_error=float("inf"),
                      mean_abs_error=float("inf"), accuracy=0.0, reference_accuracy=0.0,
                      per_class_accuracy=[], threshold=threshold, passed=False,
                      reason=f"output shape {outputs.shape} differs from PyTorch's {reference.shape}")
    diff = np.abs(outputs.astype(np.float64) - reference.astype(np.float64))
    agreement = float((outputs.argmax(1) == reference.argmax(1)).mean())
    max_error = float(diff.max()) if diff.size else 0.0
    error_bound = None if max_rel_error is None else max_rel_error * max(1.0, float(np.abs(reference).max(initial=0)))
    reason = None
    if not np.isfinite(outputs).all():
        reason = "outputs contain NaN or infinity"
    elif agreement < threshold:
        reason = f"top-1 agreement {agreement:.2%} is below the threshold {threshold:.2%}"
    elif error_bound is not None and max_error > error_bound:
        reason = (f"max |logit error| {max_error:.3g} exceeds {error_bound:.3g} ({max_rel_error:g} of the logits' "
                  "scale): an FP32 export must compute what PyTorch does")
    passed = reason is None
    return Parity(
        reference=reference_name,
        samples=int(len(y)),
        agreement=agreement,
        max_abs_error=max_error,
        mean_abs_error=float(diff.mean()) if diff.size else 0.0,
        accuracy=float((outputs.argmax(1) == y).mean()),
        reference_accuracy=float((reference.argmax(1) == y).mean()),
        per_class_accuracy=per_class_accuracy(outputs, y, num_classes),
        threshold=threshold,
        max_abs_error_bound=error_bound,
        passed=passed,
        reason=reason,
    )
