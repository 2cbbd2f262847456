"""PyTorch → TFLite (.tflite) with litert-torch (no TensorFlow), ai-edge-quantizer INT8/INT4, LiteRT checks.

Everything heavy is imported inside the functions, so importing this module costs nothing and a
machine without the [tflite] extra fails with a MissingExtraError that says how to install it.

Models have one float32 input `x` (signature `serving_default`) and one output `logits`. TFLite fixes
the batch dimension at conversion; it is 1 by default (what a device runs per request), so
`tflite_predict` feeds one row at a time.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from edgekd.errors import ArtifactError, ExportError, MissingExtraError, first_line
from edgekd.export.calibration import checked_calibration
from edgekd.export.quiet import captured_output
from edgekd.rundir import atomic_path

if TYPE_CHECKING:
    from torch import nn

logger = logging.getLogger(__name__)

INPUT_NAME = "x"
OUTPUT_NAME = "logits"
SIGNATURE = "serving_default"
PRECISIONS = ("fp32", "int8_dynamic", "int8_static", "int4")
EXTRA = "tflite"

# Where the converter stack talks: torchao and torch log at import (torch's own stderr handler),
# jax/absl log through Python logging, ai-edge-quantizer warns via the root logger (`logging.warning`),
# litert-torch prints a rich progress tree to stdout, and the MLIR converter and the LiteRT runtime
# log from C++ straight to file descriptor 2 (absl), which no Python-level redirect reaches.
_NOISY_LOGGERS = ("torch", "torchao", "jax", "absl", "litert_torch", "ai_edge_quantizer", "ai_edge_litert", "")

# INT4 recipes, measured with ai-edge-litert 2.3 (x86): weight-only (`weight_only_wi4_afp32`: int4 weights +
# DEQUANTIZE to float) falls off XNNPACK entirely, DEQUANTIZE and the ops it feeds. The dynamic-range recipe
# (int4 weights, activations quantized to int8 on the fly) keeps FULLY_CONNECTED on XNNPACK, per channel or
# block-wise, but its per-channel int4 CONV_2D falls off (digits CNN teacher: 2x slower than FP32). Its block-wise
# recipes quantize FULLY_CONNECTED only and would leave convolutions float32, so edgekd's block-wise setting
# pairs them with per-channel int4 for the other ops: `tflite_weight_bits` shows the result.
_INT4_CHANNELWISE = "dynamic_wi4_afp32"
_BLOCK_SIZES = (32, 64)  # the block-wise int4 recipes ai-edge-quantizer 0.10 names


# --------------------------------------------------------------------------- imports and output


def _require(module: str) -> Any:
    """Import an optional dependency of the [tflite] extra, or say how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        missing = (exc.name or module) if isinstance(exc, ModuleNotFoundError) else module
        raise MissingExtraError(EXTRA, missing, "TFLite export") from None


@contextlib.contextmanager
def _native_output(buffer: io.StringIO) -> Iterator[None]:
    """Point file descriptors 1 and 2 at a temporary file for the block, then append its text to `buffer`.

    C++ code (the MLIR converter, the LiteRT runtime, absl logging) writes to the descriptors directly.
    """
    for stream in (sys.__stdout__, sys.__stderr__, sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    try:
        saved = (os.dup(1), os.dup(2))
    except OSError:  # no real descriptors (embedded interpreters): leave the output alone
        yield
        return
    with tempfile.TemporaryFile() as sink:
        try:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            yield
        finally:
            _flush_c_stdio()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            sink.seek(0)
            buffer.write(sink.read().decode("utf-8", errors="replace"))


def _flush_c_stdio() -> None:
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None).fflush(None)


@contextlib.contextmanager
def _quiet() -> Iterator[io.StringIO]:
    """captured_output for the Python side, descriptor redirection for C++, no litert-torch progress tree."""
    saved = os.environ.get("LITERT_TORCH_SHOW_PROGRESS")
    os.environ["LITERT_TORCH_SHOW_PROGRESS"] = "0"
    try:
        with captured_output(*_NOISY_LOGGERS) as buffer, _native_output(buffer):
            yield buffer
    finally:
        if saved is None:
            os.environ.pop("LITERT_TORCH_SHOW_PROGRESS", None)
        else:
            os.environ["LITERT_TORCH_SHOW_PROGRESS"] = saved


def _import_converter() -> Any:
    with _quiet():  # importing litert_torch logs (torchao's missing CUDA kernels, torch pytree notices)
        litert_torch = _require("litert_torch")
        _require("ai_edge_litert.interpreter")
    return litert_torch


# --------------------------------------------------------------------------- conversion


def _unsupported_operator(message: str) -> str | None:
    """The aten operator a litert-torch failure names, if the failure is about an unsupported operator."""
    match = re.search(r"Lowering not found: (?:torch\.ops\.)?([\w.]+)", message)
    if match is None and re.search(r"unsupported|not supported|no lowering", message, re.IGNORECASE):
        match = re.search(r"target=torch\.ops\.([\w.]+)", message)  # the FX node being lowered
    if match is None:
        return None
    name = match.group(1)
    return name[: -len(".default")] if name.endswith(".default") else name


def _named(model: "nn.Module") -> "nn.Module":
    """Wrap `model` so the TFLite signature output is called `logits` (a dict output names it)."""
    import torch

    class Logits(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {OUTPUT_NAME: self.inner(x)}

    Logits.__qualname__ = "Logits"  # tensor names in the .tflite start with the wrapper's qualified name
    return Logits(model).eval()


def export_tflite(model: "nn.Module", in_shape: tuple[int, ...], path: Path, *, batch_size: int = 1) -> Path:
    """Convert `model` to an FP32 .tflite at `path` (atomically), input `x` of shape (batch_size, *in_shape)."""
    import torch

    litert_torch = _import_converter()
    model.eval()
    sample = {INPUT_NAME: torch.zeros(batch_size, *in_shape, dtype=torch.float32)}
    with _quiet() as log:
        try:
            edge = litert_torch.signature(SIGNATURE, _named(model), sample_kwargs=sample).convert()
            content = edge.model_content()
        except Exception as exc:  # torch.export, the lowering and the MLIR converter raise many types
            raise _conversion_error(model, exc, log.getvalue()) from None
    with atomic_path(path) as tmp:
        tmp.write_bytes(content)
    return Path(path)


def _conversion_error(model: "nn.Module", exc: BaseException, log: str) -> ExportError:
    message = f"{exc}\n{log}"
    operator = _unsupported_operator(message)
    what = f"model '{type(model).__name__}' cannot be converted to TFLite by litert-torch"
    if operator:
        what += f": operator '{operator}' is not supported"
    return ExportError(
        what,
        why=first_line(exc),
        fix=("replace the operation that uses it with supported ones (or register a different model family); "
             if operator else "")
            + "check the model exports with torch.export and uses no data-dependent control flow",
    )


# --------------------------------------------------------------------------- quantization


def int4_recipe_name(block_size: int | None) -> str:
    return _INT4_CHANNELWISE if block_size is None else f"dynamic_wi4b{block_size}_afp32+wi4c"


def _blockwise_int4_recipe(block_size: int) -> Any:
    """Block-wise int4 where ai-edge-quantizer has it (FULLY_CONNECTED), per-channel int4 for the rest.

    Its own block-wise recipes cover FULLY_CONNECTED and EMBEDDING_LOOKUP only and leave convolutions
    float32 (a CNN teacher's file stays at ~64% of FP32); per-channel int4 convolutions keep the file
    at ~15%. Later entries of a recipe take precedence for the ops they name.
    """
    from ai_edge_quantizer import qtyping, recipe_manager

    op, granularity = qtyping.TFLOperationName, qtyping.QuantGranularity
    manager = recipe_manager.RecipeManager()
    manager.add_dynamic_config(regex=".*", operation_name=op.ALL_SUPPORTED, num_bits=4,
                               granularity=granularity.CHANNELWISE)
    manager.add_dynamic_config(regex=".*", operation_name=op.FULLY_CONNECTED, num_bits=4,
                               granularity=getattr(granularity, f"BLOCKWISE_{block_size}"))
    return manager.get_quantization_recipe()


def _recipe(precision: str, block_size: int | None) -> tuple[str, Any, dict[str, Any]]:
    """(recipe name, recipe, settings describing it) of an edgekd precision."""
    from ai_edge_quantizer import recipe

    if precision == "int8_dynamic":
        return "dynamic_wi8_afp32", recipe.dynamic_wi8_afp32(), {
            "weights": "int8", "granularity": "channelwise", "activations": "float32 (int8 on the fly)"}
    if precision == "int8_static":
        return "static_wi8_ai8", recipe.static_wi8_ai8(), {
            "weights": "int8", "granularity": "channelwise", "activations": "int8", "input_dtype": "int8"}
    if precision == "int4":
        if block_size is not None and block_size not in _BLOCK_SIZES:
            raise ExportError(f"unsupported INT4 block size {block_size}",
                              why=f"ai-edge-quantizer has block sizes {', '.join(map(str, _BLOCK_SIZES))}",
                              fix="use one of them, or no block size (per-channel)")
        name = int4_recipe_name(block_size)
        if block_size is None:
            return name, recipe.dynamic_wi4_afp32(), {
                "weights": "int4", "granularity": "channelwise", "activations": "float32 (int8 on the fly)"}
        return name, _blockwise_int4_recipe(block_size), {
            "weights": "int4", "granularity": f"blockwise ({block_size}) for FULLY_CONNECTED, channelwise elsewhere",
            "activations": "float32 (int8 on the fly)"}
    raise ExportError(f"unknown TFLite precision '{precision}'", why=f"known: {', '.join(PRECISIONS[1:])}",
                      fix="fix export.targets in the recipe")


def quantize_tflite(fp32_path: Path, out_path: Path, precision: str, calibration: np.ndarray | None = None, *,
                    block_size: int | None = None) -> dict[str, Any]:
    """Quantize an FP32 .tflite with ai-edge-quantizer; returns the settings to store in the artifact record.

    precision: "int8_dynamic" (dynamic_wi8_afp32), "int8_static" (static_wi8_ai8, calibrated on
    `calibration` rows; the model input becomes int8, quantized with the input tensor's scale and
    zero point) or "int4" (int4 weights, per channel or, with `block_size`, per block of input channels).
    """
    from importlib.metadata import version

    with _quiet():
        quantizer_module = _require("ai_edge_quantizer")
        _require("ai_edge_litert.interpreter")
    name, recipe, settings = _recipe(precision, block_size)
    if precision == "int8_static":
        calibration = checked_calibration(calibration)
    if not Path(fp32_path).is_file():
        raise ArtifactError(f"FP32 model not found: {fp32_path}", fix="export it first with export_tflite")
    calibration_method = None
    with _quiet() as log:
        try:
            quantizer = quantizer_module.Quantizer(Path(fp32_path).read_bytes(), recipe)
            calibration_result = None
            if quantizer.need_calibration:
                calibration_result, calibration_method = _calibrate(fp32_path, recipe, calibration, quantizer)
            result = quantizer.quantize(calibration_result, enable_progress_report=False)
        except ExportError:
            raise
        except Exception as exc:
            raise ExportError(f"ai-edge-quantizer could not quantize {fp32_path} to {precision} (recipe {name})",
                              why=first_line(exc) if str(exc).strip() else log.getvalue().strip()[-300:],
                              fix="export FP32 only, or choose another precision") from None
    with atomic_path(out_path) as tmp:
        tmp.write_bytes(bytes(result.quantized_model))
    settings = {"tool": "ai-edge-quantizer", "tool_version": version("ai-edge-quantizer"), "recipe": name,
                "block_size": block_size, **settings}
    if calibration_method is not None:
        settings.update(calibration=calibration_method, calibration_samples=int(len(calibration)))
    settings["float_weight_ops_left"] = tflite_float_weight_ops(out_path)
    with contextlib.suppress(Exception):  # informative only: never fail an export over it
        delegation = tflite_delegation(out_path)
        settings["xnnpack_on_host"] = {"delegated_ops": delegation["delegated_ops"], "ops": delegation["ops"],
                                       "undelegated": delegation["undelegated"],
                                       "ai_edge_litert": version("ai-edge-litert")}
    return settings


def _calibrate(fp32_path: Path, recipe: Any, calibration: np.ndarray, quantizer: Any) -> tuple[dict, str]:
    """Activation ranges over the calibration rows: (QSVs, method).

    ai-edge-quantizer's own `calibrate` merges per-step ranges with a moving average (factor 0.95); with
    the batch fixed at 1 every step is one sample, so ranges shrink towards a typical sample and the
    logits saturate (digits MLP: mean |error| 0.28 vs 0.034 with true min/max). Use its Calibrator with
    the plain min/max update (what onnxruntime's MinMax does); fall back to the default if that API moves.
    """
    batch = _fixed_batch(fp32_path)
    rows = np.ascontiguousarray(calibration, dtype=np.float32)
    samples = [{INPUT_NAME: rows[i:i + batch]} for i in range(0, len(rows) - batch + 1, batch)]
    if not samples:
        raise ExportError(f"int8_static needs at least {batch} calibration rows, got {len(rows)}")
    try:
        from ai_edge_quantizer import calibrator, recipe_manager
        from ai_edge_quantizer.utils import qsv_utils

        manager = recipe_manager.RecipeManager()
        manager.load_quantization_recipe(recipe)
        calib = calibrator.Calibrator(Path(fp32_path).read_bytes(), num_threads=1,
                                      qsv_update_func=qsv_utils.min_max_update)
    except (ImportError, AttributeError, TypeError):
        return quantizer.calibrate({SIGNATURE: samples}), "moving-average min/max (ai-edge-quantizer default)"
    calib.calibrate({SIGNATURE: samples}, manager)
    return calib.get_model_qsvs(), "minmax"


# --------------------------------------------------------------------------- running


def _interpreter(path: Path, *, num_threads: int = 1, delegates: bool = True) -> Any:
    """A LiteRT Interpreter with tensors allocated (XNNPACK applies unless `delegates` is False)."""
    with _quiet():
        module = _require("ai_edge_litert.interpreter")
    if not Path(path).is_file():
        raise ArtifactError(f"artifact not found: {path}", why="no such file",
                            fix="give the path of an exported .tflite file")
    kwargs: dict[str, Any] = {"model_path": str(path), "num_threads": num_threads}
    if not delegates:
        kwargs["experimental_op_resolver_type"] = module.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    with _quiet() as log:  # the runtime announces its XNNPACK delegate on fd 2
        try:
            interpreter = module.Interpreter(**kwargs)
            interpreter.allocate_tensors()
        except Exception as exc:
            raise ArtifactError(f"LiteRT cannot load {path}", why=first_line(exc) or log.getvalue().strip()[-300:],
                                fix="re-export the artifact or check the file was copied completely") from None
    return interpreter


def _io(interpreter: Any) -> tuple[list[tuple[str, dict]], list[tuple[str, dict]]]:
    """(name, tensor details) of the inputs and outputs: signature names where the model has one signature."""
    inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
    plain = [(d["name"], d) for d in inputs], [(d["name"], d) for d in outputs]
    signatures = interpreter.get_signature_list()
    if len(signatures) != 1:
        return plain
    runner = interpreter.get_signature_runner(next(iter(signatures)))
    by_index = {d["index"]: d for d in [*inputs, *outputs]}
    named = ([(n, d["index"]) for n, d in runner.get_input_details().items()],
             [(n, d["index"]) for n, d in runner.get_output_details().items()])
    if not all(i in by_index for pairs in named for _, i in pairs):  # a signature on another subgraph
        return plain
    return [(n, by_index[i]) for n, i in named[0]], [(n, by_index[i]) for n, i in named[1]]


def _fixed_batch(path: Path) -> int:
    inputs, _ = _io(_interpreter(path, delegates=False))
    dim = int(inputs[0][1]["shape_signature"][0])
    return dim if dim > 0 else 1


def quantize_input(x: np.ndarray, detail: dict) -> np.ndarray:
    """Float input → the tensor's integer type with its (scale, zero point); float tensors pass through."""
    dtype = np.dtype(detail["dtype"])
    scale, zero_point = detail["quantization"]
    if dtype.kind not in "iu" or not scale:
        return np.ascontiguousarray(x, dtype=dtype)
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale) + zero_point, info.min, info.max).astype(dtype)


def dequantize_output(y: np.ndarray, detail: dict) -> np.ndarray:
    scale, zero_point = detail["quantization"]
    if y.dtype.kind not in "iu" or not scale:
        return y.astype(np.float32)
    return ((y.astype(np.float32) - zero_point) * scale).astype(np.float32)


def tflite_predict(path: Path, x: np.ndarray, *, num_threads: int = 1) -> np.ndarray:
    """First output of a .tflite under LiteRT for every row of `x` (quantizing/dequantizing int8 I/O)."""
    interpreter = _interpreter(path, num_threads=num_threads)
    inputs, outputs = _io(interpreter)
    if len(inputs) != 1:
        raise ArtifactError(f"{path} has {len(inputs)} inputs; tflite_predict feeds one")
    (_, inp), (_, out) = inputs[0], outputs[0]
    batch = int(inp["shape_signature"][0])
    dynamic = batch <= 0
    batch = 256 if dynamic else batch
    chunks = []
    for start in range(0, len(x), batch):
        rows = x[start:start + batch]
        real = len(rows)
        if dynamic:
            if tuple(interpreter.get_input_details()[0]["shape"]) != rows.shape:
                interpreter.resize_tensor_input(inp["index"], list(rows.shape))
                interpreter.allocate_tensors()
        elif real < batch:
            rows = np.concatenate([rows, np.zeros((batch - real, *rows.shape[1:]), dtype=rows.dtype)])
        interpreter.set_tensor(inp["index"], quantize_input(rows, inp))
        interpreter.invoke()
        chunks.append(dequantize_output(interpreter.get_tensor(out["index"]), out)[:real])
    if not chunks:
        return np.zeros((0, *out["shape"][1:]), dtype=np.float32)
    return np.concatenate(chunks)


def describe_io(path: Path) -> tuple[list[dict], list[dict]]:
    """Signature names, shapes, dtypes (and quantization of integer tensors) of a .tflite's inputs and outputs."""
    interpreter = _interpreter(path, delegates=False)

    def one(name: str, d: dict) -> dict:
        entry: dict[str, Any] = {"name": name, "tensor": d["name"], "shape": [int(v) if v > 0 else "batch"
                                 for v in d["shape_signature"]], "dtype": np.dtype(d["dtype"]).name}
        scale, zero_point = d["quantization"]
        if scale:
            entry["quantization"] = {"scale": float(scale), "zero_point": int(zero_point)}
        return entry

    inputs, outputs = _io(interpreter)
    return [one(n, d) for n, d in inputs], [one(n, d) for n, d in outputs]


# --------------------------------------------------------------------------- inspection


def _schema() -> Any:
    with _quiet():
        return _require("ai_edge_litert.schema_py_generated")


def _read_model(path: Path) -> Any:
    schema = _schema()
    data = Path(path).read_bytes()
    try:
        if len(data) < 8 or not schema.Model.ModelBufferHasIdentifier(data, 0):
            raise ValueError("no TFL3 file identifier")
        model = schema.Model.GetRootAs(data, 0)
        model.SubgraphsLength()
    except Exception as exc:
        raise ArtifactError(f"{path} is not a valid TFLite flatbuffer", why=first_line(exc),
                            fix="re-export the artifact or check the file was copied completely") from None
    return schema, model


def _type_names(schema: Any) -> dict[int, str]:
    return {v: k.lower() for k, v in vars(schema.TensorType).items() if not k.startswith("_") and isinstance(v, int)}


# How the TFLite schema stores a tensor's quantization parameters (QuantizationParameters): scale, min and max
# are [float] (4 bytes a value), zero_point is [long] (8 bytes a value). They are not in buffers.
_QUANT_FLOATS = ("Scale", "Min", "Max")
ZERO_POINTS = "int64_zero_points"  # storage class of TFLite zero points: weight bytes, unlike int64 shapes


def tflite_weight_bits(path: Path) -> dict[str, dict[str, int]]:
    """Stored constants (weights, biases, quantized constants and every tensor's quantization parameters) by
    storage dtype: tensors, values and bytes.

    Read from the flatbuffer, so an INT4 file shows how many weight bytes are really 4-bit (two values per
    byte) and which stayed float32/int32. Per-channel scales (and min/max) count as float32 and zero points
    as `int64_zero_points` (the schema stores them as int64), so the 4-bit share counts what a 4-bit weight
    costs, as `onnx_int4.onnx_weight_bits` does with the scale and zero-point initializers of an ONNX file.
    """
    schema, model = _read_model(path)
    names = _type_names(schema)
    seen: set[int] = set()
    out: dict[str, dict[str, int]] = {}

    def add(dtype: str, values: int, size: int, tensors: int = 1) -> None:
        entry = out.setdefault(dtype, {"tensors": 0, "values": 0, "bytes": 0})
        entry["tensors"] += tensors
        entry["values"] += values
        entry["bytes"] += size

    for s in range(model.SubgraphsLength()):
        graph = model.Subgraphs(s)
        for t in range(graph.TensorsLength()):
            tensor = graph.Tensors(t)
            _add_quantization(tensor.Quantization(), add)
            index = tensor.Buffer()
            if index <= 0 or index in seen or index >= model.BuffersLength():
                continue
            buffer = model.Buffers(index)
            size = buffer.DataLength() or (buffer.Size() if buffer.Offset() > 1 else 0)
            if not size:
                continue  # an activation or an input: no stored data
            seen.add(index)
            values = int(np.prod(tensor.ShapeAsNumpy())) if tensor.ShapeLength() else 1
            add(names.get(tensor.Type(), str(tensor.Type())), values, int(size))
    return dict(sorted(out.items(), key=lambda kv: -kv[1]["bytes"]))


def _add_quantization(quantization: Any, add: Any) -> None:
    """Count one tensor's quantization parameters (block-wise scales are tensors of their own, counted there)."""
    if quantization is None:
        return
    floats = sum(getattr(quantization, f"{name}Length")() for name in _QUANT_FLOATS)
    if floats:
        add("float32", floats, 4 * floats, tensors=0)
    zero_points = quantization.ZeroPointLength()
    if zero_points:
        add(ZERO_POINTS, zero_points, 8 * zero_points)


def _opcode_names(schema: Any, model: Any) -> list[str]:
    """The name of each operator code of a model (custom ops by their custom code)."""
    builtin = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_") and isinstance(v, int)}
    codes = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        number = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        name = builtin.get(number, str(number))
        if name == "CUSTOM" and code.CustomCode():
            name = f"CUSTOM:{code.CustomCode().decode()}"
        codes.append(name)
    return codes


def tflite_op_histogram(path: Path) -> dict[str, int]:
    """Operator counts of a .tflite (from the flatbuffer; custom ops by their custom code)."""
    schema, model = _read_model(path)
    codes = _opcode_names(schema, model)
    counts: dict[str, int] = {}
    for s in range(model.SubgraphsLength()):
        graph = model.Subgraphs(s)
        for o in range(graph.OperatorsLength()):
            name = codes[graph.Operators(o).OpcodeIndex()]
            counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


_WEIGHT_OPS = ("FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D")  # their input 1 is the weight


def tflite_float_weight_ops(path: Path) -> list[str]:
    """Labels ("OP (op N, weight AxBxC)") of the ops whose stored weight is still float32 in a quantized file: the
    quantizer leaves some as they were (a 1-input-channel DEPTHWISE_CONV_2D stays float32 under int4), which a
    record's precision alone does not say (ONNX INT4 records have `fp32_weight_ops_left`)."""
    schema, model = _read_model(path)
    codes, float32 = _opcode_names(schema, model), schema.TensorType.FLOAT32
    left = []
    for s in range(model.SubgraphsLength()):
        graph = model.Subgraphs(s)
        for o in range(graph.OperatorsLength()):
            op = graph.Operators(o)
            if codes[op.OpcodeIndex()] not in _WEIGHT_OPS or op.InputsLength() < 2 or op.Inputs(1) < 0:
                continue
            weight = graph.Tensors(op.Inputs(1))
            buffer = model.Buffers(weight.Buffer()) if 0 < weight.Buffer() < model.BuffersLength() else None
            stored = buffer is not None and (buffer.DataLength() or buffer.Offset() > 1)
            if stored and weight.Type() == float32:
                shape = "×".join(str(d) for d in weight.ShapeAsNumpy()) if weight.ShapeLength() else "scalar"
                left.append(f"{codes[op.OpcodeIndex()]} (op {o}, weight {shape})")  # tensor names are torch paths
    return left


def tflite_delegation(path: Path, *, num_threads: int = 1) -> dict[str, Any]:
    """Which operators LiteRT's default XNNPACK delegate takes, and which run on the built-in kernels
    (`undelegated`: reference/optimized built-ins, often much slower for quantized types XNNPACK lacks).
    The walk is the runner's, so host and device report the same thing."""
    from edgekd.bench.runner import delegation

    interpreter = _interpreter(path, num_threads=num_threads)
    ops = interpreter._get_ops_details()  # present in ai-edge-litert 1.x and 2.x
    delegated, undelegated = delegation(ops)
    delegates = [op for op in ops if op["op_name"] == "DELEGATE"]
    plain = [op for op in ops if op["op_name"] != "DELEGATE"]
    return {"delegate": "xnnpack (default)", "delegate_nodes": len(delegates), "ops": len(plain),
            "delegated_ops": len(delegated), "undelegated": undelegated}
