"""ONNX INT4 weight-only quantization that really stores 4-bit weights, for every model edgekd exports.

onnxruntime's `MatMulNBitsQuantizer` rewrites only MatMul nodes with a constant weight, but torch exports a
Linear as Gemm and a conv as Conv, so on its own it leaves an edgekd model almost entirely FP32. Here:

* Gemm (transA=0) becomes MatMul + Add with the weight stored as (K, N) (transB, alpha and beta are folded
  into the constants), so `MatMulNBitsQuantizer` turns it into a `com.microsoft.MatMulNBits` node: symmetric
  block-wise 4-bit weights (`block_size` values of one output column share an FP32 scale), computed by MLAS
  with FP32 activations (`accuracy_level` 0) or int8-quantized activations (`accuracy_level` 4).
* Conv weights become a standard ONNX int4 initializer (symmetric, one FP32 scale per output channel; int4
  needs opset ≥ 21, so an older graph is converted with onnx's version converter). onnxruntime's CPU provider
  has no int4 (or weight-only) conv kernel, so the weight must become FP32 before the Conv; two encodings:
  - conv="qdq" (default): int4 → `DequantizeLinear(axis=0)` → Conv, the standard QDQ weight-only form that
    QDQ-aware execution providers recognise. onnxruntime keeps DequantizeLinear out of constant folding
    (unless the session sets `session.disable_quant_qdq=1`, which also turns off the INT8 QDQ fusions), so on
    CPU it dequantizes every weight on every call and cannot pre-pack the Conv weights: measured 3.7-4× slower
    than FP32 on the CNN teacher at batch 1 (AMD EPYC, AVX2, onnxruntime 1.32).
  - conv="fold": int4 → `Cast(to=float)` → `Mul(scale[M,1,1,1])` → Conv, the same numbers; onnxruntime
    constant-folds it at session load, so the file is 4-bit and the session runs the FP32 Conv at FP32 speed
    (FP32 weights in memory): the choice for onnxruntime CPU.
  onnxruntime's own int4 QDQ path (`quantize_static(weight_type=QuantType.QInt4)`) is not weight-only: it
  needs calibration data, adds int8 QuantizeLinear/DequantizeLinear pairs on the activations, and its
  int4-weight Conv is not fused into QLinearConv on CPU either (measured slower still).

`onnx_weight_bits` counts an ONNX file's initializer bytes by how they are stored, so a record can say how
many of its weight bytes are really 4-bit.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from edgekd.errors import ExportError, first_line
from edgekd.export.quiet import captured_output
from edgekd.rundir import atomic_path

logger = logging.getLogger(__name__)

# onnxruntime's quantizers log through `logging` (and matmul_nbits_quantizer calls logging.basicConfig at
# import); capturing these loggers keeps the root logger untouched and the terminal quiet.
_QUANT_LOGGERS = ("onnxruntime", "")
CONV_MODES = ("qdq", "fold", "fp32")
ACCURACY_LEVELS = (0, 1, 2, 3, 4)
INT4_OPSET = 21  # first ONNX opset whose DequantizeLinear and Cast take int4
_MS_DOMAIN = "com.microsoft"

FC_METHOD = ("Gemm->MatMul+Add, onnxruntime MatMulNBitsQuantizer (RTN, symmetric, block-wise) "
             "-> com.microsoft.MatMulNBits")
CONV_METHODS = {
    "qdq": "int4 initializer, symmetric per-output-channel FP32 scales, DequantizeLinear(axis=0) -> Conv "
           "(dequantized on every call by onnxruntime CPU)",
    "fold": "int4 initializer, symmetric per-output-channel FP32 scales, Cast(float) -> Mul(scale) -> Conv "
            "(constant-folded to FP32 at session load by onnxruntime)",
    "fp32": "fp32 (unchanged)",
}


# ----------------------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------------------
def _check_settings(block_size: Any, accuracy_level: Any, conv: Any) -> None:
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 16 \
            or block_size & (block_size - 1):
        raise ExportError(
            f"INT4 block_size must be a power of two ≥ 16, got {block_size!r}",
            why="onnxruntime's MatMulNBits kernels only take power-of-two blocks of at least 16 values",
            fix="use 32 (most accurate), 64 or 128 (smallest file)",
        )
    if isinstance(accuracy_level, bool) or accuracy_level not in ACCURACY_LEVELS:
        raise ExportError(
            f"INT4 accuracy_level must be one of {', '.join(map(str, ACCURACY_LEVELS))}, got {accuracy_level!r}",
            why="it is MatMulNBits' compute type: 0 = unset (FP32), 1 = FP32, 2 = FP16, 3 = BF16, 4 = int8",
            fix="use 4 (int8 activations) or 0 (FP32 activations)",
        )
    if conv not in CONV_MODES:
        raise ExportError(
            f"unknown INT4 conv mode {conv!r}",
            why=f"known: {', '.join(CONV_MODES)}",
            fix="use conv='qdq' (int4 → DequantizeLinear → Conv), conv='fold' (int4 → Cast → Mul → Conv, "
                "folded at load) or conv='fp32' (Conv left as it is)",
        )


def _load(path: Path):
    from edgekd.export.onnx import load_onnx_checked

    return load_onnx_checked(path)


# ----------------------------------------------------------------------------------------------------------
# Graph helpers
# ----------------------------------------------------------------------------------------------------------
def _unique_namer(model) -> Any:
    """A function returning names not yet used by any tensor or node of the main graph."""
    graph = model.graph
    used: set[str] = {t.name for t in graph.initializer} | {v.name for v in graph.input} \
        | {v.name for v in graph.output} | {v.name for v in graph.value_info}
    for node in graph.node:
        used.update(node.input)
        used.update(node.output)
        used.add(node.name)

    def fresh(base: str) -> str:
        name, i = base, 1
        while name in used:
            name = f"{base}_{i}"
            i += 1
        used.add(name)
        return name

    return fresh


def _constants_to_initializers(model) -> int:
    """Turn main-graph `Constant` nodes holding a tensor into initializers (weights are then found by name)."""
    from onnx import numpy_helper

    graph = model.graph
    kept, moved = [], 0
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and len(node.attribute) == 1 \
                and node.attribute[0].name == "value":
            array = numpy_helper.to_array(node.attribute[0].t)
            graph.initializer.append(numpy_helper.from_array(array, node.output[0]))
            moved += 1
        else:
            kept.append(node)
    if moved:
        graph.ClearField("node")
        graph.node.extend(kept)
    return moved


def _initializers(model) -> dict[str, Any]:
    return {t.name: t for t in model.graph.initializer}


def _attrs(node) -> dict[str, Any]:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _node_label(node) -> str:
    return f"{node.op_type} node '{node.name}'" if node.name else f"{node.op_type} node producing '{node.output[0]}'"


def _drop_graph_inputs(model, names: set[str]) -> None:
    """Old-style graphs list initializers as inputs too; a replaced weight must leave that list."""
    keep = [v for v in model.graph.input if v.name not in names]
    if len(keep) != len(model.graph.input):
        model.graph.ClearField("input")
        model.graph.input.extend(keep)


def _opset(model, domain: str = "") -> int:
    for entry in model.opset_import:
        if entry.domain in (domain, "ai.onnx" if domain == "" else domain):
            return int(entry.version)
    return 0


# ----------------------------------------------------------------------------------------------------------
# Gemm -> MatMul + Add
# ----------------------------------------------------------------------------------------------------------
def _gemm_to_matmul(model) -> int:
    """Rewrite every main-graph Gemm as MatMul(A, W[K, N]) (+ Add(C)); returns how many were rewritten."""
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = _initializers(model)
    fresh = _unique_namer(model)
    new_nodes, rewritten, replaced = [], 0, set()
    for node in graph.node:
        if node.op_type != "Gemm" or node.domain not in ("", "ai.onnx"):
            new_nodes.append(node)
            continue
        attrs = _attrs(node)
        alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))
        if int(attrs.get("transA", 0)):
            raise ExportError(
                f"cannot quantize {_node_label(node)} to INT4: it has transA=1",
                why="MatMulNBits multiplies an untransposed activation by a constant weight; a Gemm that "
                    "transposes its activation has no such form",
                fix="export the layer without transposing its input (x @ W.T + b, as nn.Linear does), "
                    "or quantize this model with int8_static/int8_dynamic instead",
            )
        b_name = node.input[1]
        if b_name not in inits:
            raise ExportError(
                f"cannot quantize {_node_label(node)} to INT4: its weight '{b_name}' is not a constant initializer",
                why="weight-only quantization needs the weight stored in the file",
                fix="export the model with constant weights (no weights computed at run time), "
                    "or use int8_dynamic for this model",
            )
        weight = numpy_helper.to_array(inits[b_name])
        if weight.ndim != 2 or weight.dtype.kind != "f":
            raise ExportError(
                f"cannot quantize {_node_label(node)} to INT4: weight '{b_name}' is {weight.dtype} of shape "
                f"{list(weight.shape)}",
                why="a Gemm weight must be a 2-D floating-point matrix",
                fix="re-export the model in FP32",
            )
        w_kn = np.ascontiguousarray(weight.T if int(attrs.get("transB", 0)) else weight)
        if alpha != 1.0:
            w_kn = (w_kn * alpha).astype(weight.dtype)
        w_name = fresh(f"{b_name}_KxN")
        graph.initializer.append(numpy_helper.from_array(w_kn, w_name))
        replaced.add(b_name)

        c_name = node.input[2] if len(node.input) > 2 and node.input[2] and beta != 0.0 else ""
        if c_name and beta != 1.0:
            if c_name not in inits:
                raise ExportError(
                    f"cannot quantize {_node_label(node)} to INT4: beta={beta} scales a bias '{c_name}' that is "
                    "not a constant",
                    why="beta is folded into the bias, which needs the bias stored in the file",
                    fix="export the layer with beta=1 (as nn.Linear does) or with a constant bias",
                )
            bias = numpy_helper.to_array(inits[c_name])
            c_name_new = fresh(f"{c_name}_beta")
            graph.initializer.append(numpy_helper.from_array((bias * beta).astype(bias.dtype), c_name_new))
            c_name = c_name_new
        base = node.name or fresh(f"gemm_{rewritten}")
        out = node.output[0]
        mm_out = fresh(f"{out}_matmul") if c_name else out
        new_nodes.append(helper.make_node("MatMul", [node.input[0], w_name], [mm_out], name=fresh(f"{base}_MatMul")))
        if c_name:
            new_nodes.append(helper.make_node("Add", [mm_out, c_name], [out], name=fresh(f"{base}_Add")))
        rewritten += 1
    if rewritten:
        graph.ClearField("node")
        graph.node.extend(new_nodes)
        used = {i for n in graph.node for i in n.input}
        unused = replaced - used
        keep = [t for t in graph.initializer if t.name not in unused]
        graph.ClearField("initializer")
        graph.initializer.extend(keep)
        _drop_graph_inputs(model, unused)
    return rewritten


def _node_block_size(k: int, block_size: int) -> int:
    """The block size used for a weight with K rows: `block_size`, or the smallest power of two ≥ max(K, 16)
    when that is smaller. MatMulNBits pads K up to a whole block, so a block larger than K only stores and
    multiplies zeros (same scales, same values, bigger file): K=64 with block 128 would double the weight."""
    fit = 16
    while fit < k:
        fit *= 2
    return min(block_size, fit)


def _matmul_nbits(model, block_size: int, accuracy_level: int) -> tuple[Any, dict[str, int]]:
    """Run onnxruntime's MatMulNBitsQuantizer on a copy of `model` (it mutates the model it is given).

    Returns the quantized model and the block size used per MatMul node (see `_node_block_size`)."""
    import onnx

    work = onnx.ModelProto()
    work.CopyFrom(model)
    fresh = _unique_namer(work)
    inits = _initializers(work)
    blocks: dict[str, int] = {}
    for node in work.graph.node:
        if node.op_type == "MatMul" and node.domain in ("", "ai.onnx") and node.input[1] in inits:
            if not node.name or node.name in blocks:  # the quantizer selects nodes by name: make them unique
                node.name = fresh(node.name or "MatMul")
            k = int(inits[node.input[1]].dims[-2]) if len(inits[node.input[1]].dims) >= 2 else 0
            blocks[node.name] = _node_block_size(k, block_size)
    with captured_output(*_QUANT_LOGGERS) as buffer:
        try:
            # Imported here: the module calls logging.basicConfig at import time.
            from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

            # One pass per block size; a pass leaves the other nodes alone (nodes_to_exclude).
            for size in sorted(set(blocks.values())):
                others = [name for name, b in blocks.items() if b != size]
                quantizer = MatMulNBitsQuantizer(work, bits=4, block_size=size, is_symmetric=True,
                                                 accuracy_level=accuracy_level, nodes_to_exclude=others,
                                                 op_types_to_quantize=("MatMul",))
                quantizer.process()
                work = quantizer.model.model
        except Exception as exc:
            raise ExportError("onnxruntime's MatMulNBitsQuantizer failed", why=first_line(exc),
                              fix="report this model; conv='fp32' does not avoid it (it quantizes the "
                                  "fully connected layers)") from None
    logger.debug("MatMulNBitsQuantizer: %s", buffer.getvalue().strip()[-2000:])
    return work, blocks


# ----------------------------------------------------------------------------------------------------------
# Conv weights -> int4 + DequantizeLinear (qdq) or Cast + Mul (fold)
# ----------------------------------------------------------------------------------------------------------
def _quantize_per_channel(weight: np.ndarray, bits: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per output channel (axis 0): q in [-2^(b-1), 2^(b-1)-1], w ≈ q · scale[c]."""
    q_max = 2 ** (bits - 1) - 1
    flat = weight.reshape(weight.shape[0], -1).astype(np.float64)
    amax = np.abs(flat).max(axis=1)
    scale = np.where(amax > 0, amax / q_max, 1.0)
    q = np.clip(np.rint(flat / scale[:, None]), -q_max - 1, q_max).astype(np.int8)
    return q.reshape(weight.shape), scale.astype(np.float32)


def _to_opset(model, opset: int):
    import onnx
    import onnx.version_converter

    if _opset(model) >= opset:
        return model
    source = _opset(model)
    try:
        converted = onnx.version_converter.convert_version(model, opset)
        onnx.checker.check_model(converted)
    except Exception as exc:
        raise ExportError(
            f"cannot store Conv weights as int4: the model's opset {source} has no int4 tensors and "
            f"onnx cannot convert it to opset {opset}",
            why=first_line(exc),
            fix=f"export with opset ≥ {opset} (export.opset in the recipe) or use conv='fp32'",
        ) from None
    return converted


def _conv_weights_int4(model, mode: str) -> int:
    return conv_weights_lowbit(model, mode, bits=4)


def conv_weights_lowbit(model, mode: str, bits: int) -> int:
    """Replace every Conv weight initializer by int4/int8 + per-channel scales and the nodes that turn them back
    into the FP32 weight under its original name: DequantizeLinear (mode 'qdq') or Cast + Mul (mode 'fold',
    which onnxruntime folds to FP32 once at session load: a small file at FP32 speed)."""
    return _weights_lowbit(model, mode, bits, op="Conv", weight_input=1)


NARROW_TABLE_COLUMNS = 8  # Gather tables with fewer columns get one scale per column, not per row


def gather_tables_lowbit(model, bits: int) -> int:
    """Store every embedding table (the constant data input of a Gather) as int4/int8 with one scale per row
    (per token), turned back into FP32 by Cast + Mul, which onnxruntime folds once at session load.

    onnxruntime's dynamic INT8 and MatMulNBits quantizers leave Gather tables in FP32; in a small text model
    the token table is most of the file, so without this an "INT8" text student would be mostly FP32.
    """
    return _weights_lowbit(model, "fold", bits, op="Gather", weight_input=0)


def _weights_lowbit(model, mode: str, bits: int, *, op: str, weight_input: int) -> int:
    import ml_dtypes
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = _initializers(model)
    fresh = _unique_namer(model)
    names: list[str] = []
    for node in graph.node:
        if node.op_type != op or node.domain not in ("", "ai.onnx"):
            continue
        w_name = node.input[weight_input]
        if op == "Gather" and (w_name not in inits or len(inits[w_name].dims) != 2 or inits[w_name].data_type != 1):
            continue  # an index or shape gather, not an embedding table
        if w_name in names:
            continue
        if w_name not in inits:
            raise ExportError(
                f"cannot quantize {_node_label(node)} to INT{bits}: its weight '{w_name}' is not a constant initializer",
                why="weight-only quantization needs the weight stored in the file",
                fix="export the model with constant weights, or use conv='fp32'",
            )
        if inits[w_name].data_type != 1:  # FLOAT
            raise ExportError(
                f"cannot quantize {_node_label(node)} to INT{bits}: weight '{w_name}' is not float32",
                why="the Conv weight path quantizes FP32 weights",
                fix="re-export the model in FP32, or use conv='fp32'",
            )
        names.append(w_name)
    dq_nodes, dropped = [], set()
    for w_name in names:
        weight = numpy_helper.to_array(inits[w_name])
        narrow = mode == "fold" and op == "Gather" and weight.shape[1] < NARROW_TABLE_COLUMNS
        if narrow:
            # A narrow table (a bag student's per-token weights): one scale per row would take more bytes
            # than the rows themselves, so one per column, broadcast by the Mul below as [1, columns].
            q_t, scale = _quantize_per_channel(np.ascontiguousarray(weight.T), bits)
            q = np.ascontiguousarray(q_t.T)
        else:
            q, scale = _quantize_per_channel(weight, bits)
        q_name, s_name = fresh(f"{w_name}_int{bits}"), fresh(f"{w_name}_scale")
        graph.initializer.append(numpy_helper.from_array(q.astype(ml_dtypes.int4) if bits == 4 else q, q_name))
        # The last node's output keeps the weight's name, so every consumer reads the dequantized tensor.
        if mode == "qdq":
            graph.initializer.append(numpy_helper.from_array(scale, s_name))
            dq_nodes.append(helper.make_node("DequantizeLinear", [q_name, s_name], [w_name], axis=0,
                                             name=fresh(f"{w_name}_DequantizeLinear")))
        else:
            # The scale broadcasts over the output-channel axis (over the rows, for a narrow table).
            shape = (1, len(scale)) if narrow else (len(scale),) + (1,) * (weight.ndim - 1)
            graph.initializer.append(numpy_helper.from_array(scale.reshape(shape), s_name))
            f_name = fresh(f"{w_name}_int{bits}_float")
            dq_nodes.append(helper.make_node("Cast", [q_name], [f_name], to=1, name=fresh(f"{w_name}_Cast")))
            dq_nodes.append(helper.make_node("Mul", [f_name, s_name], [w_name], name=fresh(f"{w_name}_Mul")))
        dropped.add(w_name)
    if dq_nodes:
        keep = [t for t in graph.initializer if t.name not in dropped]
        graph.ClearField("initializer")
        graph.initializer.extend(keep)
        _drop_graph_inputs(model, dropped)
        nodes = dq_nodes + list(graph.node)
        graph.ClearField("node")
        graph.node.extend(nodes)
    return len(names)


# ----------------------------------------------------------------------------------------------------------
# Checks
# ----------------------------------------------------------------------------------------------------------
def _float_weight_ops(model) -> list[str]:
    """Labels of main-graph MatMul/Gemm/Conv nodes whose weight input is still a float initializer (rank ≥ 2)."""
    inits = _initializers(model)
    left = []
    for node in model.graph.node:
        if node.op_type in ("MatMul", "Gemm", "Conv") and len(node.input) > 1:
            t = inits.get(node.input[1])
            if t is not None and len(t.dims) >= 2 and t.data_type in (1, 10, 11, 16):  # float, f16, f64, bf16
                left.append(_node_label(node))
    return left


def _check_runs(path: Path) -> None:
    """Load the file in onnxruntime (CPU) and run one zero sample, or raise ExportError."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # no C++ warnings on the terminal
    options.intra_op_num_threads = 1
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        if all(v.type == "tensor(float)" for v in session.get_inputs()):
            feeds = {v.name: np.zeros([d if isinstance(d, int) and d > 0 else 1 for d in v.shape], np.float32)
                     for v in session.get_inputs()}
            session.run(None, feeds)
    except Exception as exc:
        raise ExportError(
            "onnxruntime cannot run the INT4 model",
            why=first_line(exc),
            fix="try conv='fold' or conv='fp32' (Conv left in FP32); report the model if its fully connected "
                "part fails",
        ) from None


# ----------------------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------------------
def quantize_int4(fp32_path: str | Path, out_path: str | Path, *, block_size: int = 32, accuracy_level: int = 4,
                  conv: str = "fold") -> dict[str, Any]:
    """Quantize an FP32 ONNX file's weights to 4 bits and write it atomically to `out_path`.

    Fully connected layers (Gemm, MatMul with a constant weight) become MatMulNBits with symmetric block-wise
    4-bit weights (`block_size` values per FP32 scale); `accuracy_level` is MatMulNBits' compute type (0 = FP32
    activations, 4 = int8 activations). Unless conv='fp32', Conv weights are stored as int4 with one FP32 scale per
    output channel (opset ≥ 21), read through DequantizeLinear (conv='qdq': onnxruntime CPU dequantizes them on
    every call) or Cast + Mul (conv='fold': onnxruntime folds them to FP32 once, at session load); conv='fp32'
    leaves Conv as it is. See the module docstring for the measured trade-off.
    Returns the settings for the artifact record.
    """
    import onnx

    _check_settings(block_size, accuracy_level, conv)
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    model = _load(fp32_path)  # our own copy, parsed from the file: the caller's file is never touched
    source_opset = _opset(model)
    _constants_to_initializers(model)
    counts = {op: sum(1 for n in model.graph.node if n.op_type == op) for op in ("Gemm", "MatMul", "Conv")}

    has_tables = any(n.op_type == "Gather" and n.input[0] in _initializers(model) for n in model.graph.node)
    if (conv != "fp32" and counts["Conv"]) or has_tables:
        model = _to_opset(model, INT4_OPSET)
    gemms = _gemm_to_matmul(model)
    model, node_blocks = _matmul_nbits(model, block_size, accuracy_level)
    nbits = sum(1 for n in model.graph.node if n.op_type == "MatMulNBits")
    convs = _conv_weights_int4(model, conv) if conv != "fp32" else 0
    tables = gather_tables_lowbit(model, 4)

    left = _float_weight_ops(model)
    expected_left = [lbl for lbl in left if lbl.startswith("Conv")] if conv == "fp32" else []
    unexpected = [lbl for lbl in left if lbl not in expected_left]
    if unexpected:
        raise ExportError(
            f"INT4 quantization left FP32 weights in {', '.join(unexpected[:5])}"
            + (f" and {len(unexpected) - 5} more" if len(unexpected) > 5 else ""),
            why="MatMulNBits takes only 2-D constant weights (or N-D with leading dimensions of 1)",
            fix="reshape such weights to 2-D in the model, or use int8_dynamic for it",
        )

    with atomic_path(out_path) as tmp:
        onnx.save(model, str(tmp))
        try:
            onnx.checker.check_model(str(tmp))
        except Exception as exc:
            raise ExportError("the INT4 model is not a valid ONNX model", why=first_line(exc),
                              fix="report this model; conv='fp32' leaves its Conv layers out") from None
        _check_runs(tmp)

    weighted_matmuls = max(nbits - gemms, 0)  # not matmuls_before - gemms: activation × activation MatMuls stay
    op_types_4bit = sorted({op for op, n in (("Gemm", gemms), ("MatMul", weighted_matmuls),
                                             ("Conv", convs), ("Gather", tables)) if n})
    return {
        "format": "onnx",
        "weights": "int4",
        "activations": {0: "fp32", 1: "fp32", 2: "fp32 (MatMulNBits computes in fp16)",
                        3: "fp32 (MatMulNBits computes in bf16)",
                        4: "fp32 (MatMulNBits quantizes its input to int8 blocks on the fly)"}[accuracy_level],
        "methods": {"fully_connected": FC_METHOD, "conv": CONV_METHODS[conv]},
        "symmetric": True,
        "block_size": block_size,
        "block_sizes_used": sorted(set(node_blocks.values())),
        "accuracy_level": accuracy_level,
        "conv": conv,
        "conv_granularity": "per output channel" if conv != "fp32" else None,
        "op_types_4bit": op_types_4bit,
        "nodes_4bit": {"Gemm": gemms, "MatMul": weighted_matmuls, "Conv": convs, "Gather": tables},
        "matmulnbits_nodes": nbits,
        "fp32_weight_ops_left": left,
        "opset": _opset(model),
        "source_opset": source_opset,
        "opset_imports": {(e.domain or "ai.onnx"): int(e.version) for e in model.opset_import},
    }


def _tensor_bytes(tensor) -> tuple[int, int]:
    """(values, bytes as stored) of a TensorProto, from its shape and type (external data included)."""
    import onnx

    values = 1
    for d in tensor.dims:
        values *= int(d)
    if tensor.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
        return values, (values + 1) // 2
    if tensor.data_type == onnx.TensorProto.STRING:
        return values, sum(len(s) for s in tensor.string_data)
    itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    return values, values * itemsize


def _storage_class(tensor) -> str:
    import onnx

    t = onnx.TensorProto
    return {t.INT4: "int4", t.UINT4: "int4", t.INT8: "int8", t.UINT8: "int8", t.FLOAT: "float32",
            t.FLOAT16: "float16", t.BFLOAT16: "float16", t.DOUBLE: "float64", t.INT64: "int64",
            t.INT32: "int32", t.INT16: "int16", t.UINT16: "int16", t.BOOL: "bool"}.get(tensor.data_type, "other")


_NOT_WEIGHTS = ("int64", "bool", "other")  # shapes, indices, masks


def _graphs(graph) -> Iterator[Any]:
    import onnx

    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _graphs(g)


def onnx_weight_bits(path: str | Path) -> dict[str, dict[str, Any]]:
    """Initializer (and Constant) bytes of an ONNX file by storage type, plus a `summary`.

    Classes: int4 (INT4/UINT4 tensors, 2 values a byte as stored, and the packed uint8 weight blobs and zero
    points of MatMulNBits nodes with bits=4), int8 (INT8/UINT8), int32 (e.g. static-QDQ biases), float32,
    float16, int64 (shapes, indices: not weights). `summary.share_4bit` = 4-bit bytes / weight bytes, where
    weight bytes are every class but int64/bool; FP32 scales count as FP32 weight bytes.
    """
    import onnx

    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)
    packed4: set[str] = set()
    tensors: list[Any] = []
    for graph in _graphs(model.graph):
        for node in graph.node:
            if node.op_type == "MatMulNBits" and node.domain == _MS_DOMAIN:
                bits = int(_attrs(node).get("bits", 4))
                if bits == 4:
                    packed4.add(node.input[1])
                    if len(node.input) > 3 and node.input[3]:
                        packed4.add(node.input[3])
            if node.op_type == "Constant":
                tensors.extend(a.t for a in node.attribute if a.name == "value")
        tensors.extend(graph.initializer)

    out: dict[str, dict[str, Any]] = {}
    for tensor in tensors:
        values, size = _tensor_bytes(tensor)
        cls = _storage_class(tensor)
        if tensor.name in packed4 and tensor.data_type == onnx.TensorProto.UINT8:
            cls, values = "int4", size * 2
        entry = out.setdefault(cls, {"tensors": 0, "values": 0, "bytes": 0})
        entry["tensors"] += 1
        entry["values"] += values
        entry["bytes"] += size
    total = sum(e["bytes"] for e in out.values())
    weight = sum(e["bytes"] for cls, e in out.items() if cls not in _NOT_WEIGHTS)
    bits4 = out.get("int4", {}).get("bytes", 0)
    result = dict(sorted(out.items()))
    result["summary"] = {
        "file_bytes": path.stat().st_size,
        "initializer_bytes": total,
        "weight_bytes": weight,
        "bytes_4bit": bits4,
        "share_4bit": bits4 / weight if weight else 0.0,
    }
    return result
