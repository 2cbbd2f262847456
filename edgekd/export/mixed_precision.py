"""Mixed-precision fallback for ONNX INT8: keep the most sensitive layers in FP32 until parity passes.

Layers (Conv/Gemm/MatMul of the FP32 graph) are ranked by sensitivity, most sensitive first:

- "isolated" (default): the graph is quantized with only that layer in INT8 (every other layer excluded) and
  its logits are compared with the FP32 graph's on the ranking inputs; the lower the SQNR, the more sensitive.
  This measures each layer's own damage (N extra quantizations; cheap for edge-sized models).
- "sqnr": the per-layer SQNR of the fully quantized graph (`quant_error.layer_errors`), lowest first. One
  run, but the values are cumulative, so late layers look worse than they are.

The graph is then re-quantized with `nodes_to_exclude = ranking[:k]`, k = 1, 2, …, until the top-1 agreement
with the PyTorch model reaches the parity threshold or every ranked layer is FP32. The artifact's quantization
settings list the layers kept in FP32 (`kept_fp32`) and how they were found (`mixed_precision`).

Every choice — whether to fall back at all, the ranking, when to stop — is made on selection rows that are not
the test rows (the validation split, or the calibration rows): choosing k where the test rows first pass and then
reporting parity on those rows would report the best of several tries as if it were one measurement. The
artifact's parity is then measured once, on the test rows, for the file chosen.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np

from edgekd.export.quant_error import errors, fp32_layers, layer_errors
from edgekd.rundir import process_temp_dir

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
        with process_temp_dir("export") as tmp:  # one a SIGKILL left goes at the next
            probe = Path(tmp) / f"probe{backend.suffix}"
            for node in candidates:
                others = tuple(n for n in candidates if n != node)
                backend.quantize(fp32_path, probe, precision, dataclasses.replace(options, keep_fp32=others))
                scored.append({"node": node, "sqnr_db": errors(reference, backend.predict(probe, x))["sqnr_db"]})
    else:
        raise ValueError(f"unknown ranking method '{method}' (known: {', '.join(RANKINGS)})")
    order = {n: i for i, n in enumerate(candidates)}
    return sorted(scored, key=lambda s: (s["sqnr_db"], order[s["node"]]))


def agreement(outputs: np.ndarray, reference: np.ndarray) -> float:
    """Top-1 agreement of outputs with reference logits (0 when any output is not finite, or shapes differ)."""
    if outputs.shape != reference.shape or not np.isfinite(outputs).all():
        return 0.0
    return float((outputs.argmax(1) == reference.argmax(1)).mean())


def fallback(backend, fp32_path: Path, path: Path, precision: str, options, *, x_select: np.ndarray,
             reference: np.ndarray, threshold: float, rows: str, method: str = "isolated") -> dict[str, Any]:
    """Decide on the selection rows `x_select` (whose PyTorch logits are `reference`; never the test rows)
    whether the quantized file at `path` needs layers in FP32, and if so re-quantize `fp32_path` into `path`
    keeping ever more of the most sensitive layers in FP32 until its agreement on those rows reaches
    `threshold` (or all layers are FP32). Returns the settings to merge into the artifact's quantization record:
    `mixed_precision_check` (the selection rows, `rows` names them, and their agreement) when the file already
    agrees there; else `kept_fp32` and a `mixed_precision` record of the selection rows, the ranking and every
    attempt."""
    first = agreement(backend.predict(path, x_select), reference)
    record: dict[str, Any] = {"selection_rows": rows, "selection_samples": int(len(x_select)),
                              "threshold": threshold, "initial_agreement": first}
    if first >= threshold:
        return {"mixed_precision_check": record}
    ranking = rank_layers(backend, fp32_path, path, precision, options, x_select, method=method)
    if not ranking:
        return {"mixed_precision_check": {**record, "reason": "no layer the fallback could keep in FP32"}}
    attempts: list[dict[str, Any]] = []
    settings: dict[str, Any] = {}
    for k in range(1, len(ranking) + 1):
        kept = tuple(r["node"] for r in ranking[:k])
        settings = dict(backend.quantize(fp32_path, path, precision, dataclasses.replace(options, keep_fp32=kept)))
        reached = agreement(backend.predict(path, x_select), reference)
        attempts.append({"kept_fp32": list(kept), "agreement": reached, "passed": reached >= threshold})
        logger.info("%s with %s in FP32: agreement %.4f on the %s", path, ", ".join(kept), reached, rows)
        if reached >= threshold:
            break
    settings["kept_fp32"] = attempts[-1]["kept_fp32"]
    settings["mixed_precision"] = {
        **record, "method": method, "ranking_samples": int(len(x_select)),
        "ranking": [{"node": r["node"], "sqnr_db": _finite(r["sqnr_db"])} for r in ranking],
        "attempts": attempts, "passed": attempts[-1]["passed"],
        "layers_total": len(candidate_layers(fp32_path, precision)),
    }
    return settings


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None
