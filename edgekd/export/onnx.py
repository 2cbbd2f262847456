"""PyTorch → ONNX (torch.onnx dynamo exporter + onnxslim) and onnxruntime INT8 quantization.

Graphs have one float32 input `x` with a dynamic batch dimension and one output `logits`.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np

from edgekd.errors import ArtifactError, ExportError, first_line
from edgekd.export.calibration import checked_calibration
from edgekd.export.quiet import captured_output
from edgekd.rundir import atomic_path, process_temp_dir

if TYPE_CHECKING:
    from torch import nn

logger = logging.getLogger(__name__)

INPUT_NAME = "x"
OUTPUT_NAME = "logits"
_NOISY_LOGGERS = ("torch.onnx", "torch._dynamo", "torch.export", "torch.fx", "onnxscript")
# onnxruntime's quantizer logs through `logging.warning`, which would configure the root logger
# (basicConfig) as a side effect; capturing it for the call leaves the root logger as it was.
_QUANT_LOGGERS = ("onnxruntime", "")


def _example(in_shape: tuple[int, ...]):
    import torch

    # Batch 2, not 1: with a batch-1 example torch.export specialises the batch dimension to 1.
    return (torch.zeros(2, *in_shape, dtype=torch.float32),)


def _to_onnx_program(model: "nn.Module", in_shape: tuple[int, ...], opset: int):
    import torch

    model.eval()
    with captured_output(*_NOISY_LOGGERS):
        try:
            return torch.onnx.export(
                model,
                _example(in_shape),
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes={INPUT_NAME: {0: torch.export.Dim("batch")}},
                opset_version=opset,
                verbose=False,
                optimize=True,
            )
        except Exception as exc:  # the exporter raises many types; all mean "cannot export"
            raise ExportError(
                f"model '{type(model).__name__}' cannot be exported to ONNX"
                + _offending_module(model, in_shape, opset),
                why=first_line(exc),
                fix="replace the named module with exportable operations (no Python-side data access such as "
                    ".numpy() or .item(), no data-dependent control flow), or register a different model family",
            ) from None


def _recorder(inputs: dict[str, tuple], name: str):
    """A forward hook that records a module's inputs and returns None (a returned value would replace the output)."""

    def hook(module, args, output) -> None:
        inputs.setdefault(name, args)

    return hook


def _offending_module(model: "nn.Module", in_shape: tuple[int, ...], opset: int) -> str:
    """Name the first leaf module that fails torch.export on its own input (found with forward hooks)."""
    import torch

    inputs: dict[str, tuple] = {}
    hooks = []
    for name, module in model.named_modules():
        if name and not list(module.children()):
            hooks.append(module.register_forward_hook(_recorder(inputs, name)))
    try:
        with torch.no_grad():
            model(*_example(in_shape))
    except Exception as exc:
        return f": it fails even in eager PyTorch ({first_line(exc)})"
    finally:
        for h in hooks:
            h.remove()
    modules = dict(model.named_modules())
    for name, args in inputs.items():
        try:
            with captured_output(*_NOISY_LOGGERS):
                torch.export.export(modules[name], tuple(args))
        except Exception:
            return f": module '{name}' ({type(modules[name]).__name__}) is not exportable"
    return ""


_PROTOBUF_LIMIT = 2 * 1024 ** 3


def check_fits_one_file(model: "nn.Module") -> None:
    """Refuse weights past protobuf's 2 GiB: ONNX would move them to a side file named after the temp file,
    which the atomic rename would leave behind, and a model that size is no on-device model anyway."""
    weight_bytes = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    if weight_bytes >= _PROTOBUF_LIMIT:
        raise ExportError(f"'{type(model).__name__}' has {weight_bytes / 1024 ** 3:.1f} GiB of weights; "
                          "edgekd writes single-file ONNX models, which protobuf caps at 2 GiB",
                          fix="export a smaller model (a distilled or pruned student), or export this one with "
                              "torch.onnx and external data yourself")


@contextlib.contextmanager
def _keeping_ort_log_severity() -> Iterator[None]:
    """Hold off onnxruntime's process-wide log severity setter for the block.

    onnxslim.slim sets it to ERROR (its init_logging): every later onnxruntime session of the caller's process
    then hid its warnings. onnxruntime has no getter to put the caller's level back afterwards, so the call is
    turned into a no-op while slim runs (a thread of the caller setting the level meanwhile would be ignored).
    """
    import onnxruntime

    setter = onnxruntime.set_default_logger_severity
    onnxruntime.set_default_logger_severity = lambda severity: None
    try:
        yield
    finally:
        onnxruntime.set_default_logger_severity = setter


def export_onnx(model: "nn.Module", in_shape: tuple[int, ...], path: Path, *, opset: int) -> Path:
    """Export `model` to an FP32 ONNX file at `path` (atomically), simplified by onnxslim."""
    import onnx
    import onnxslim

    check_fits_one_file(model)
    program = _to_onnx_program(model, in_shape, opset)
    with atomic_path(path) as tmp:
        with captured_output(*_NOISY_LOGGERS), _keeping_ort_log_severity():
            program.save(str(tmp))
            slim = onnxslim.slim(str(tmp))
        onnx.save(slim, str(tmp))
        onnx.checker.check_model(str(tmp))
    return path


def _calibration_reader(x: np.ndarray, batch_size: int = 32):
    """onnxruntime's CalibrationDataReader over a numpy array (what to feed, apart from how to quantize)."""
    from onnxruntime.quantization import CalibrationDataReader

    class ArrayReader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches: Iterator[np.ndarray] = (x[i:i + batch_size] for i in range(0, len(x), batch_size))

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._batches, None)
            return None if batch is None else {INPUT_NAME: np.ascontiguousarray(batch, dtype=np.float32)}

    return ArrayReader()


CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
DEFAULT_CALIB_PERCENTILE = 99.99


def quantize_static_int8(fp32: Path, out: Path, calibration: np.ndarray, *, method: str = "minmax",
                         percentile: float = DEFAULT_CALIB_PERCENTILE,
                         nodes_to_exclude: list[str] | tuple[str, ...] = (),
                         reduce_range: bool = False) -> dict[str, object]:
    """INT8 static QDQ, per-channel weights, activations calibrated on `calibration` inputs.

    `method` is onnxruntime's calibration: minmax (observed range), entropy (KL-divergence threshold on a
    histogram) or percentile (the `percentile`-th percentile of |activation|). `nodes_to_exclude` are node
    names kept in FP32 (the mixed-precision fallback). `reduce_range` stores weights on a 7-bit grid
    ([-64, 64]), which x86 CPUs without VNNI need (edgekd.compress.isa.choose_reduce_range).
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if method not in CALIBRATION_METHODS:
        raise ExportError(f"unknown calibration method '{method}'", why=f"known: {', '.join(CALIBRATION_METHODS)}",
                          fix="fix export.calibration_method in the recipe")
    if method == "percentile" and not 0 < percentile <= 100:
        raise ExportError(f"calibration percentile {percentile} is outside (0, 100]",
                          fix="give export.calibration_percentile such as 99.99")
    calibration = checked_calibration(calibration)
    calibrate = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                 "percentile": CalibrationMethod.Percentile}[method]
    reader = _calibration_reader(calibration)
    settings: dict[str, object] = {"format": "QDQ", "per_channel": True, "weights": "int8", "activations": "int8",
                                   "calibration": method, "calibration_samples": int(len(calibration)),
                                   "reduce_range": bool(reduce_range)}
    if method == "percentile":
        settings["calibration_percentile"] = float(percentile)
    if nodes_to_exclude:
        settings["kept_fp32"] = list(nodes_to_exclude)
    if method == "entropy":
        settings["entropy_bins"] = {"histogram": ENTROPY_BINS, "quantized": ENTROPY_QUANTIZED_BINS}
    with atomic_path(out) as tmp, captured_output(*_QUANT_LOGGERS), process_temp_dir("export") as work:
        cache = Path(work) / "ranges.json"
        _calibrated_ranges(fp32, reader, cache, Path(work), calibrate, percentile)
        quantize_static(str(fp32), str(tmp), None, quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        calibrate_method=calibrate, nodes_to_exclude=list(nodes_to_exclude) or None,
                        calibration_cache_path=cache, reduce_range=bool(reduce_range))
    return settings


# quantize_static builds its entropy calibrator with 128 histogram bins and 128 quantized bins, which makes the
# KL search keep the whole range (= minmax); edgekd computes the ranges itself with a finer histogram (512 bins
# searched for the best 128-bin threshold; TensorRT's 2048 costs ~20 s in onnxruntime's Python KL search even on
# a two-layer MLP) and hands them over to quantize_static as a calibration cache.
ENTROPY_BINS, ENTROPY_QUANTIZED_BINS = 512, 128


def _calibrated_ranges(fp32: Path, reader, cache: Path, work: Path, method, percentile: float) -> None:
    """Activation ranges computed in this process's scratch folder `work` and handed to quantize_static as a
    calibration cache: quantize_static's own calibration writes its augmented model to a TemporaryDirectory of
    the system's temp area, which a SIGKILL left there for good (`process_temp_dir` folders are removed by the
    next export)."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator, save_tensors_data

    extra = {CalibrationMethod.Entropy: {"num_bins": ENTROPY_BINS, "num_quantized_bins": ENTROPY_QUANTIZED_BINS},
             CalibrationMethod.Percentile: {"percentile": float(percentile)}}.get(method, {})
    calibrator = create_calibrator(fp32, None, augmented_model_path=str(work / "augmented.onnx"),
                                   calibrate_method=method, extra_options=extra)
    calibrator.collect_data(reader)
    save_tensors_data(calibrator.compute_data(), cache)


def quantize_dynamic_int8(fp32: Path, out: Path, *, nodes_to_exclude: list[str] | tuple[str, ...] = (),
                          reduce_range: bool = False) -> dict[str, object]:
    """INT8 dynamic, restricted to MatMul/Gemm: on Conv it leaves unfused ConvInteger, several times slower.

    Conv weights are still stored as int8 (per output channel) and folded back to FP32 when onnxruntime loads
    the session, so the file is INT8-sized while Conv runs at FP32 speed. `nodes_to_exclude` (MatMul/Gemm node
    names) stay FP32 (the mixed-precision fallback). `reduce_range` puts the MatMul/Gemm weights on a 7-bit grid
    (their u8 × s8 kernels saturate on x86 without VNNI); the folded Conv weights run in FP32 and keep 8 bits.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from edgekd.export.onnx_int4 import conv_weights_lowbit

    ops = ["MatMul", "Gemm"]
    # Per-channel dynamic quantization first rewrites each Gemm into a MatMul named "<gemm>_MatMul" (and an Add),
    # then applies nodes_to_exclude to the rewritten graph: a Gemm is excluded under both names.
    exclude = [name for node in nodes_to_exclude for name in (node, f"{node}_MatMul")]
    with atomic_path(out) as tmp, captured_output(*_QUANT_LOGGERS):
        quantize_dynamic(str(fp32), str(tmp), op_types_to_quantize=ops, per_channel=True,
                         weight_type=QuantType.QInt8, nodes_to_exclude=exclude or None,
                         reduce_range=bool(reduce_range))
        model = onnx.load(str(tmp))
        convs = conv_weights_lowbit(model, "fold", bits=8)
        if convs:
            onnx.save(model, str(tmp))
    settings: dict[str, object] = {
        "per_channel": True, "weights": "int8", "activations": "dynamic uint8", "op_types": ops,
        "reduce_range": bool(reduce_range),
        "conv_weights": f"int8 per channel, folded to FP32 at load ({convs} Conv)" if convs else None}
    if nodes_to_exclude:
        settings["kept_fp32"] = list(nodes_to_exclude)
    return settings


def load_onnx_checked(path: Path):
    """Load and check an ONNX file, turning a corrupt or non-ONNX file into a clear error."""
    import onnx

    if not path.is_file():
        raise ArtifactError(f"artifact not found: {path}", why="no such file",
                            fix="give the path of an exported .onnx file")
    def invalid(exc: Exception) -> ArtifactError:
        return ArtifactError(f"{path} is not a valid ONNX model", why=first_line(exc),
                             fix="re-export it (edgekd export / edgekd run --force) or check that the file was "
                                 "copied completely")

    try:
        model = onnx.load(str(path))
    except Exception as exc:
        raise invalid(exc) from None
    try:
        onnx.checker.check_model(model)
    except Exception as exc:
        if not _onnxruntime_loads(path):  # old files (IR version 3) fail the checker alone
            raise invalid(exc) from None
    return model


def _onnxruntime_loads(path: Path) -> bool:
    """Whether onnxruntime (CPU) loads the file: the runtime that runs it is the judge of a model the checker
    refuses (IR version 3 files list their weights as inputs, which the checker calls an error)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception:  # noqa: BLE001 - any failure to load means no
        return False
    return True


def external_data_files(path: Path) -> list[str]:
    """The files an ONNX model keeps its weights in (saved with external data), relative to its folder, where
    onnxruntime looks for them; one outside that folder is refused (it would not travel with the model)."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    model = onnx.load(str(path), load_external_data=False)
    tensors = [*model.graph.initializer, *(a.t for n in model.graph.node for a in n.attribute if a.HasField("t"))]
    files = sorted({ExternalDataInfo(t).location for t in tensors if uses_external_data(t)})
    for name in files:
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise ArtifactError(f"{path} keeps weights in {name}, outside its own folder",
                                why="a model's external data travels with it to the device, in its folder",
                                fix="save the model with its external data beside it (onnx.save_model(..., "
                                    "save_as_external_data=True, location=NAME))")
    return files


def describe_io(model) -> tuple[list[dict], list[dict]]:
    """Names, shapes (symbolic dims as strings) and dtypes of an ONNX model's inputs and outputs, as onnxruntime
    sees them: a graph input that is also an initializer (torch.onnx's keep_initializers_as_inputs, older model
    zoo files) is a weight with a default, not an input; a value that is no tensor (a scikit-learn ZipMap's
    sequence of maps) has the kind of value as its dtype and no shape."""
    import onnx

    def one(value) -> dict:
        kind = value.type.WhichOneof("value")
        if kind != "tensor_type":
            return {"name": value.name, "shape": [], "dtype": (kind or "unknown").removesuffix("_type")}
        tensor = value.type.tensor_type
        dims = [d.dim_param or d.dim_value for d in tensor.shape.dim]
        return {"name": value.name, "shape": dims,
                "dtype": onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name}

    weights = {init.name for init in model.graph.initializer}
    return ([one(v) for v in model.graph.input if v.name not in weights],
            [one(v) for v in model.graph.output])


def op_histogram(model) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def write_identity_model(path: Path, in_shape: tuple[int | str, ...], opset: int, *, input_name: str = INPUT_NAME,
                         int64: bool = False) -> Path:
    """An Identity graph of the model's input shape (and name, and type: a text model's int64 token ids): timing
    it gives the runtime's per-call floor."""
    import onnx
    from onnx import TensorProto, helper

    dims = ["batch", *in_shape]
    kind = TensorProto.INT64 if int64 else TensorProto.FLOAT
    graph = helper.make_graph(
        [helper.make_node("Identity", [input_name], [OUTPUT_NAME])], "floor",
        [helper.make_tensor_value_info(input_name, kind, dims)],
        [helper.make_tensor_value_info(OUTPUT_NAME, kind, dims)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))
    return path


def onnx_parameter_count(path: Path) -> int:
    """Elements in a graph's initializers (its weights and constants)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    total = 0
    for tensor in model.graph.initializer:
        count = 1
        for d in tensor.dims:
            count *= d
        total += count
    return total
