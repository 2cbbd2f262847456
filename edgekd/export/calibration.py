"""The calibration rows a static INT8 quantizer reads, checked once for both the ONNX and the TFLite path.

The quantizers fail on bad rows with their own internals (onnxruntime: a NoneType or a histogram error for no
rows; NaN rows give a NaN range and an artifact that outputs NaN), so the rows are checked before either runs.
"""

from __future__ import annotations

import numpy as np

from edgekd.errors import ExportError


def checked_calibration(calibration: object, precision: str = "int8_static") -> np.ndarray:
    """`calibration` as a finite float array with at least one row, or an ExportError saying what is wrong."""
    fix = "give calibration rows: training inputs of the model's shape (export.calibration_samples in a recipe)"
    if calibration is None:
        raise ExportError(f"{precision} needs calibration inputs", fix=fix)
    try:
        rows = np.asarray(calibration, dtype=np.float32)
    except (TypeError, ValueError):
        raise ExportError(f"{precision} calibration rows are not numbers (got {type(calibration).__name__})",
                          fix=fix) from None
    if rows.ndim == 0 or len(rows) == 0:
        raise ExportError(f"{precision} needs calibration inputs, got none", fix=fix)
    if not np.isfinite(rows).all():
        raise ExportError(f"{precision} calibration rows hold NaN or infinite values",
                          why="the quantizer would take a NaN range and the artifact would output NaN",
                          fix="drop or repair those rows before calibrating")
    return rows
