"""Mixed-precision fallback for ONNX INT8: keep the most sensitive layers in FP32 until parity passes.

Layers (Conv/Gemm/MatMul of the FP32 graph) are ranked by sensitivity, most sensitive first:

- "isolated" (default): the graph is quantized with only that layer in INT8 (every other layer excluded) and
  its logits are compared with the FP32 graph's on the ranking inputs; the lower the SQNR, the more sensitive.
  This measures each layer's own damage (N extra quantizations; cheap for edge-sized models).
- "sqnr": the per-layer SQNR of the fully quantized graph (`quant_error.layer_errors`), lowest first. One
  run, but the values are cumulative, so late layers look worse than they are.

The graph is then re-quantized with `nodes_to_exclude = ranking[:k]`, k = 1, 2, …, until the parity check
passes or every ranked layer is FP32. The artifact's quantization settings list the layers kept in FP32
(`kept_fp32`) and how they were found (`mixed_precision`).
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgekd.export.artifact import Parity
from edgekd.export.quant_error import errors, fp32_layers, layer_errors

logger = logging.getLogger(__name__)

SUPPORTED = ("int8_static", "int8_dynamic")
RANKINGS = ("isolated", "sqnr")
_DYNAMIC_OPS = ("Gemm", "MatMul")  # what quantize_dynamic_int8 quantizes (Conv weights are folded to FP32)


def candidate_layers(fp32_path: Path, precision: str) -> list[str]:
    """Node names the fallback may keep in FP32, in graph order."""
    import onnx

    layers = fp32_layers(onnx.load(str(fp32_path)))
    return [node for node, op, _ in layers if precision == "int8_static" or op in _DYNAMIC_OPS]


def rank_layers(backend, fp32_path: Path, quantized_path: Path, precision: str, options, x: np.ndarray, *,
                method: str = "isolated") -> list[dict[str, Any]]:
    """Candidate layers, most sensitive first, each {'node', 'sqnr_db'} (see the module docstring)."""
    candidates = candidate_layers(fp32_path, precision)
    if method == "sqnr":
        rows = [r for r in layer_errors(fp32_path, quantized_path, x) if r["node"] in candidates
                and r.get("quantized_tensor") is not None]
        scored = [{"node": r["node"], "sqnr_db": r["sqnr_db"]} for r in rows]
    elif method == "isolated":
        reference = backend.predict(fp32_path, x)
        scored = []
        with tempfile.TemporaryDirectory(prefix="edgekd-mixed-") as tmp:
            probe = Path(tmp) / f"probe{backend.suffix}"
            for node in candidates:
                others = tuple(n for n in candidates if n != node)
                backend.quantize(fp32_path, probe, precision, dataclasses.replace(options, keep_fp32=others))
                scored.append({"node": node, "sqnr_db": errors(reference, backend.predict(probe, x))["sqnr_db"]})
    else:
        raise ValueError(f"unknown ranking method '{method}' (known: {', '.join(RANKINGS)})")
    order = {n: i for i, n in enumerate(candidates)}
    return sorted(scored, key=lambda s: (s["sqnr_db"], order[s["node"]]))


def fallback(backend, fp32_path: Path, path: Path, precision: str, options, *, check: Callable[[Path], Parity],
             first: Parity, x_rank: np.ndarray, method: str = "isolated") -> tuple[dict[str, Any], Parity]:
    """Re-quantize `fp32_path` into `path` keeping ever more of the most sensitive layers in FP32 until
    `check(path)` passes (or all layers are FP32). Returns the final quantization settings (with
    `kept_fp32` and a `mixed_precision` record of the ranking and every attempt) and the final parity."""
    ranking = rank_layers(backend, fp32_path, path, precision, options, x_rank, method=method)
    if not ranking:
        return {}, first
    attempts: list[dict[str, Any]] = []
    settings: dict[str, Any] = {}
    check_result = first
    for k in range(1, len(ranking) + 1):
        kept = tuple(r["node"] for r in ranking[:k])
        settings = dict(backend.quantize(fp32_path, path, precision, dataclasses.replace(options, keep_fp32=kept)))
        check_result = check(path)
        attempts.append({"kept_fp32": list(kept), "agreement": check_result.agreement,
                         "passed": check_result.passed})
        logger.info("%s with %s in FP32: agreement %.4f", path, ", ".join(kept), check_result.agreement)
        if check_result.passed:
            break
    settings["kept_fp32"] = attempts[-1]["kept_fp32"] if attempts else []
    settings["mixed_precision"] = {
        "method": method, "ranking_samples": int(len(x_rank)),
        "initial_agreement": first.agreement, "threshold": first.threshold,
        "ranking": [{"node": r["node"], "sqnr_db": _finite(r["sqnr_db"])} for r in ranking],
        "attempts": attempts, "passed": check_result.passed,
        "layers_total": len(candidate_layers(fp32_path, precision)),
    }
    return settings, check_result


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None
