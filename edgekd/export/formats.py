"""Export formats behind one interface, registered by name ("onnx", "tflite").

Each backend exports FP32, quantizes from that FP32 file, runs an artifact on the host (for parity),
inspects it (signature, operators, weight storage) and writes the runtime's per-call floor graph.
The exporter loops over formats × precisions without knowing either.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from edgekd.errors import ExportError
from edgekd.registry import Registry

if TYPE_CHECKING:
    from torch import nn

LAYOUT_OPS = {"Transpose", "TRANSPOSE"}


@dataclass(frozen=True)
class ExportOptions:
    """Knobs shared by the backends (each reads the ones it has)."""

    opset: int = 18
    calibration: np.ndarray | None = None
    int4_block_size: int = 32  # ONNX MatMulNBits block (and the 4-bit Conv weights' blocks where used)
    int4_accuracy_level: int = 4  # ONNX MatMulNBits: 0 = fp32 compute, 4 = int8 compute
    tflite_int4_block_size: int | None = None  # None = per-channel (XNNPACK); 32..256 = block-wise
    calibration_method: str = "minmax"  # ONNX INT8 static: minmax | entropy | percentile
    calibration_percentile: float = 99.99  # ONNX INT8 static, percentile calibration
    mixed_precision_fallback: bool = True  # ONNX INT8: keep the most sensitive layers FP32 until parity passes
    keep_fp32: tuple[str, ...] = ()  # ONNX INT8: node names left in FP32 (set by the mixed-precision fallback)
    int8_reduce_range: str | bool = "auto"  # ONNX INT8: 7-bit weights; auto = decided for int8_targets
    int8_targets: tuple[Any, ...] = ()  # isa.TargetCpu of the devices the artifacts are for; () = unknown (7-bit)


@dataclass
class Inspection:
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    op_histogram: dict[str, int]
    weight_bits: dict[str, Any] = field(default_factory=dict)
    opset: int | None = None  # ONNX: the file's default-domain opset (INT4 raises it to 21), not the one asked for

    @property
    def layout_ops(self) -> int:
        return sum(n for op, n in self.op_histogram.items() if op in LAYOUT_OPS)


class Backend(Protocol):
    name: str
    suffix: str
    runtime: str  # the runner's runtime name
    precisions: tuple[str, ...]

    def check_available(self) -> None: ...

    def export_fp32(self, model: "nn.Module", in_shape: tuple[int, ...], path: Path, opts: ExportOptions) -> None: ...

    def quantize(self, fp32: Path, out: Path, precision: str, opts: ExportOptions) -> dict[str, Any]: ...

    def predict(self, path: Path, x: np.ndarray) -> np.ndarray: ...

    def inspect(self, path: Path) -> Inspection: ...

    def write_floor(self, path: Path, in_shape: tuple[int, ...], opts: ExportOptions) -> None: ...


FORMATS: Registry[Backend] = Registry("export format")


_NOT_WEIGHTS = ("int64", "bool")  # shapes and indices, not weights


def summarize_weight_bits(by_dtype: dict[str, dict[str, int]]) -> dict[str, Any]:
    """Bytes of stored constants by width (4-bit / 8-bit / float / other) and the shares of weight bytes
    (everything but int64/bool shape constants) that are 4-bit and 8-bit. Both backends count a quantized
    weight's scales and zero points as weight bytes (ONNX: initializers; TFLite: its quantization parameters,
    scales as float32 and zero points as `int64_zero_points`, which land in other_bytes)."""
    groups = {"int4_bytes": 0, "int8_bytes": 0, "float_bytes": 0, "other_bytes": 0}
    for dtype, entry in by_dtype.items():
        key = ("int4_bytes" if dtype in ("int4", "uint4") else "int8_bytes" if dtype in ("int8", "uint8")
               else "float_bytes" if dtype.startswith(("float", "bfloat")) else "other_bytes")
        groups[key] += int(entry["bytes"])
    weights = sum(groups.values()) - sum(int(by_dtype[d]["bytes"]) for d in _NOT_WEIGHTS if d in by_dtype) or 1
    return {**groups, "share_4bit": groups["int4_bytes"] / weights, "share_8bit": groups["int8_bytes"] / weights,
            "by_dtype": by_dtype}


@FORMATS.register("onnx")
class OnnxBackend:
    name, suffix, runtime = "onnx", ".onnx", "onnxruntime"
    precisions = ("fp32", "int8_static", "int8_dynamic", "int4")

    def check_available(self) -> None:  # onnx and onnxruntime are base dependencies
        pass

    def export_fp32(self, model, in_shape, path, opts):
        from edgekd.export.onnx import export_onnx

        export_onnx(model, in_shape, path, opset=opts.opset)

    def quantize(self, fp32, out, precision, opts):
        from edgekd.export import onnx as onnx_export

        if precision in ("int8_static", "int8_dynamic"):
            from edgekd.compress.isa import choose_reduce_range

            choice = choose_reduce_range(opts.int8_reduce_range, opts.int8_targets)
            if precision == "int8_static":
                settings = onnx_export.quantize_static_int8(fp32, out, opts.calibration,
                                                            method=opts.calibration_method,
                                                            percentile=opts.calibration_percentile,
                                                            nodes_to_exclude=opts.keep_fp32,
                                                            reduce_range=choice["reduce_range"])
            else:
                settings = onnx_export.quantize_dynamic_int8(fp32, out, nodes_to_exclude=opts.keep_fp32,
                                                             reduce_range=choice["reduce_range"])
            return {**settings, "reduce_range_setting": choice["setting"], "reduce_range_reason": choice["reason"],
                    "reduce_range_targets": choice["targets"]}
        if precision == "int4":
            from edgekd.export.onnx_int4 import quantize_int4

            return quantize_int4(fp32, out, block_size=opts.int4_block_size, accuracy_level=opts.int4_accuracy_level)
        raise _unknown(self, precision)

    def predict(self, path, x):
        from edgekd.export.verify import onnx_predict

        return onnx_predict(path, x)

    def inspect(self, path):
        from edgekd.export.onnx import describe_io, load_onnx_checked, op_histogram
        from edgekd.export.onnx_int4 import onnx_weight_bits

        graph = load_onnx_checked(path)
        inputs, outputs = describe_io(graph)
        bits = {k: v for k, v in onnx_weight_bits(path).items() if k != "summary"}
        opset = next((int(e.version) for e in graph.opset_import if e.domain in ("", "ai.onnx")), None)
        return Inspection(inputs, outputs, op_histogram(graph), summarize_weight_bits(bits), opset)

    def write_floor(self, path, in_shape, opts):
        from edgekd.export.onnx import write_identity_model

        write_identity_model(path, in_shape, opts.opset)


@FORMATS.register("tflite")
class TfliteBackend:
    name, suffix, runtime = "tflite", ".tflite", "litert"
    precisions = ("fp32", "int8_static", "int8_dynamic", "int4")

    def check_available(self) -> None:
        from edgekd.export.tflite import _import_converter

        _import_converter()

    def export_fp32(self, model, in_shape, path, opts):
        from edgekd.export.tflite import export_tflite

        export_tflite(model, in_shape, path)

    def quantize(self, fp32, out, precision, opts):
        from edgekd.export.tflite import quantize_tflite

        if precision not in self.precisions[1:]:
            raise _unknown(self, precision)
        return quantize_tflite(fp32, out, precision,
                               opts.calibration if precision == "int8_static" else None,
                               block_size=opts.tflite_int4_block_size if precision == "int4" else None)

    def predict(self, path, x):
        from edgekd.export.tflite import tflite_predict

        return tflite_predict(path, x)

    def inspect(self, path):
        from edgekd.export.tflite import describe_io, tflite_op_histogram, tflite_weight_bits

        inputs, outputs = describe_io(path)
        return Inspection(inputs, outputs, tflite_op_histogram(path), summarize_weight_bits(tflite_weight_bits(path)))

    def write_floor(self, path, in_shape, opts):
        from torch import nn

        from edgekd.export.tflite import export_tflite

        export_tflite(nn.Identity(), in_shape, path)  # converts to a graph with no operator: pure call overhead


def _unknown(backend: Backend, precision: str) -> ExportError:
    return ExportError(f"unknown {backend.name} precision '{precision}'", why=f"known: {', '.join(backend.precisions)}",
                       fix="fix export.targets in the recipe")


def backend_for_file(path: Path) -> Backend:
    """The backend of a model file, by suffix."""
    for name in FORMATS.names():
        backend = FORMATS[name]()
        if Path(path).suffix == backend.suffix:
            return backend
    raise ExportError(f"unknown model format '{Path(path).suffix}' ({path})",
                      why=f"known suffixes: {', '.join(FORMATS[n].suffix for n in FORMATS.names())}",
                      fix="give an .onnx or .tflite file")
