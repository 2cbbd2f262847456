"""Static INT8 calibration rows are checked before a quantizer reads them (edgekd.export.calibration).

Called directly, onnxruntime's quantize_static failed on no rows with its own internal error, and NaN rows gave
NaN ranges. The pipeline never passes such rows; a Python caller can.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgekd.errors import ExportError

from conftest import import_or_skip


@pytest.fixture(scope="module")
def fp32_onnx(tmp_path_factory) -> Path:
    from edgekd.export.onnx import export_onnx
    from edgekd.models import create_model

    model = create_model("mlp", in_shape=(8,), num_classes=4, width=8, depth=1)
    return export_onnx(model, (8,), tmp_path_factory.mktemp("calibration") / "fp32.onnx", opset=18)


def _nan_rows() -> np.ndarray:
    rows = np.random.default_rng(0).random((16, 8), dtype=np.float32)
    rows[3, 2] = np.nan
    return rows


@pytest.mark.parametrize("rows, said", [(None, "needs calibration inputs"),
                                        (np.zeros((0, 8), np.float32), "got none"),
                                        (_nan_rows(), "NaN or infinite"),
                                        (np.full((4, 8), np.inf, np.float32), "NaN or infinite"),
                                        ([["a"] * 8], "not numbers")])
def test_onnx_static_int8_refuses_bad_rows(fp32_onnx, tmp_path, rows, said):
    from edgekd.export.onnx import quantize_static_int8

    out = tmp_path / "int8.onnx"
    with pytest.raises(ExportError, match=said) as caught:
        quantize_static_int8(fp32_onnx, out, rows)
    assert caught.value.fix and not out.exists()


def test_onnx_static_int8_takes_finite_rows(fp32_onnx, tmp_path):
    from edgekd.export.onnx import quantize_static_int8

    settings = quantize_static_int8(fp32_onnx, tmp_path / "int8.onnx", _nan_rows()[4:])
    assert settings["calibration_samples"] == 12 and (tmp_path / "int8.onnx").is_file()


def test_tflite_static_int8_refuses_nan_rows(tmp_path):
    import_or_skip("ai_edge_quantizer", "the [tflite] extra is not installed")
    from edgekd.export.tflite import quantize_tflite

    # the rows are checked before the model file is read: the message is about them, not a missing file
    with pytest.raises(ExportError, match="NaN or infinite"):
        quantize_tflite(tmp_path / "fp32.tflite", tmp_path / "int8.tflite", "int8_static", _nan_rows())


def test_export_options_without_rows_say_which_field(fp32_onnx, tmp_path):
    from edgekd.export.formats import FORMATS, ExportOptions

    with pytest.raises(ExportError, match="int8_static needs calibration") as caught:
        FORMATS["onnx"]().quantize(fp32_onnx, tmp_path / "int8.onnx", "int8_static",
                                   ExportOptions(calibration=np.zeros((0, 8), np.float32)))
    assert "export.calibration_samples" in caught.value.fix
