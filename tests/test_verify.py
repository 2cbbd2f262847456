"""Parity verdicts: what makes an exported artifact count as the model it claims to be."""

from __future__ import annotations

import numpy as np

from edgekd.export.verify import FP32_MAX_REL_ERROR, parity


def _logits(rows: int = 270, classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    reference = rng.normal(0, 8, (rows, classes)).astype(np.float32)
    return reference, reference.argmax(1)


def test_an_fp32_artifact_with_large_logit_errors_fails_even_when_top1_agrees():
    reference, y = _logits()
    broken = reference.copy()
    broken[:2] += 40.0 * (np.arange(10) == reference[:2].argmax(1, keepdims=True))  # same argmax, far-off logits
    check = parity(broken, reference, y, num_classes=10, threshold=0.99, reference_name="pt",
                   max_rel_error=FP32_MAX_REL_ERROR)
    assert check.agreement == 1.0 and not check.passed and "max |logit error| 40" in check.reason
    assert check.max_abs_error_bound == FP32_MAX_REL_ERROR * float(np.abs(reference).max())


def test_float_rounding_passes_and_quantized_artifacts_keep_the_agreement_rule():
    reference, y = _logits()
    rounded = reference + np.float32(1e-5) * np.random.default_rng(1).standard_normal(reference.shape, np.float32)
    assert parity(rounded, reference, y, num_classes=10, threshold=0.99, reference_name="pt",
                  max_rel_error=FP32_MAX_REL_ERROR).passed
    int8 = reference + np.random.default_rng(2).normal(0, 0.05, reference.shape).astype(np.float32)
    check = parity(int8, reference, y, num_classes=10, threshold=0.95, reference_name="pt")
    assert check.passed and check.max_abs_error > FP32_MAX_REL_ERROR * 30 and check.max_abs_error_bound is None
