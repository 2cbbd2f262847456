"""Per-layer quantization error: where, between the FP32 ONNX graph and its INT8 version, accuracy goes.

Both graphs run on the same real inputs with every layer's output exposed as a graph output (on in-memory
copies). A layer is a Conv / Gemm / MatMul node of the FP32 graph; its output is followed through a
directly following Relu/Clip, because onnxruntime's QDQ quantizer folds those activations into the
QuantizeLinear range (in the QDQ graph the Gemm then writes the pre-activation values under the Relu's
tensor name). In the quantized graph the tensor that carries an FP32 tensor `t` is, in order:

- `t_DequantizeLinear_Output` — the activation after its quantize/dequantize pair (what the next layer reads);
- `t` itself — a graph output (its DequantizeLinear keeps the name), a layer kept in FP32, or an INT8 dynamic
  graph (MatMulInteger + Mul + Add write the FP32 name).

By default the quantized graph runs as onnxruntime deploys it (fused integer kernels), one run per layer;
the QDQ graph evaluated as written is reported beside it (see `layer_errors`).

Per layer: SQNR in dB (10·log10(Σx² / Σ(x−q)²)), cosine similarity, max absolute error. The errors are
cumulative (a layer's output carries the error of every layer before it); the drop in SQNR from one layer
to the next is that layer's own share.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from edgekd.errors import ArtifactError, first_line

LAYER_OPS = ("Conv", "Gemm", "MatMul")
_FOLDED_ACTIVATIONS = ("Relu", "Clip")
_DQ_SUFFIX = "_DequantizeLinear_Output"


def _load(path: Path):
    import onnx

    try:
        return onnx.load(str(path))
    except Exception as exc:
        raise ArtifactError(f"{path} is not a readable ONNX model", why=first_line(exc),
                            fix="give an exported .onnx file") from None


def _consumers(graph) -> dict[str, list]:
    out: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            out.setdefault(name, []).append(node)
    return out


def fp32_layers(model) -> list[tuple[str, str, str]]:
    """(node name, op type, output tensor) of each Conv/Gemm/MatMul of an FP32 graph, in graph order; the
    output is followed through a Relu/Clip that is the tensor's only consumer."""
    graph = model.graph
    consumers = _consumers(graph)
    graph_outputs = {o.name for o in graph.output}
    layers = []
    for index, node in enumerate(graph.node):
        if node.op_type not in LAYER_OPS or node.domain not in ("", "ai.onnx"):
            continue
        tensor = node.output[0]
        while tensor not in graph_outputs:
            users = consumers.get(tensor, [])
            if len(users) != 1 or users[0].op_type not in _FOLDED_ACTIVATIONS:
                break
            tensor = users[0].output[0]
        layers.append((node.name or f"{node.op_type}_{index}", node.op_type, tensor))
    return layers


def carrier(model, tensor: str) -> str | None:
    """The tensor of a quantized graph that carries FP32 tensor `tensor` (see the module docstring)."""
    produced = {o for node in model.graph.node for o in node.output} | {i.name for i in model.graph.input}
    for candidate in (tensor + _DQ_SUFFIX, tensor):
        if candidate in produced:
            return candidate
    return None


def _run_exposed(model, tensors: list[str], x: np.ndarray, batch_size: int, *,
                 optimize: bool = False) -> dict[str, np.ndarray]:
    """Run an in-memory copy of `model` with `tensors` added as graph outputs. Without `optimize` the graph is
    evaluated as written (QDQ = float math on quantize/dequantized values); with it onnxruntime fuses what it
    can into its integer kernels, as a deployed session does."""
    import onnx
    import onnxruntime as ort

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    present = {o.name for o in copy.graph.output}
    for name in tensors:
        if name not in present:
            copy.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
            present.add(name)
    options = ort.SessionOptions()
    options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(copy.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ArtifactError("onnxruntime cannot load the graph with its layer outputs exposed",
                            why=first_line(exc), fix="re-export the artifact") from None
    input_name = session.get_inputs()[0].name
    chunks: dict[str, list[np.ndarray]] = {name: [] for name in tensors}
    for start in range(0, len(x), batch_size):
        batch = np.ascontiguousarray(x[start:start + batch_size], dtype=np.float32)
        values = session.run(tensors, {input_name: batch})
        for name, value in zip(tensors, values):
            chunks[name].append(np.asarray(value, dtype=np.float64))
    return {name: np.concatenate(parts) for name, parts in chunks.items()}


def _run_deployed(model, tensor: str, x: np.ndarray, batch_size: int) -> np.ndarray:
    """`tensor` as a deployed session computes it: the graph is cut after `tensor`, so
    `tensor` is a graph output with no other reader, as `logits` is in the whole graph, and onnxruntime fuses
    every QDQ group up to it into its integer kernels. (Adding `tensor` as an extra graph output instead
    stops onnxruntime from fusing the nodes around it, which measures a different computation.)"""
    return _run_exposed(_cut(model, tensor), [tensor], x, batch_size, optimize=True)[tensor]


def _cut(model, tensor: str):
    """A copy of `model` holding only the nodes `tensor` depends on, with `tensor` as its only output."""
    import onnx

    if [o.name for o in model.graph.output] == [tensor]:
        return model
    producer = {o: node for node in model.graph.node for o in node.output}
    needed, stack, seen = set(), [tensor], set()
    while stack:
        name = stack.pop()
        if name in seen or name not in producer:
            continue
        seen.add(name)
        node = producer[name]
        needed.add(id(node))
        stack.extend(i for i in node.input if i)
    cut = onnx.ModelProto()
    cut.CopyFrom(model)
    kept = [n for n in model.graph.node if id(n) in needed]
    del cut.graph.node[:]
    cut.graph.node.extend(kept)
    used = {i for n in kept for i in n.input}
    initializers = [t for t in model.graph.initializer if t.name in used]
    del cut.graph.initializer[:]
    cut.graph.initializer.extend(initializers)
    del cut.graph.output[:]
    cut.graph.output.append(onnx.helper.make_tensor_value_info(tensor, onnx.TensorProto.FLOAT, None))
    return cut


def errors(reference: np.ndarray, quantized: np.ndarray) -> dict[str, float]:
    """SQNR (dB), cosine similarity and max absolute error of `quantized` against `reference`."""
    ref = reference.astype(np.float64).ravel()
    q = quantized.astype(np.float64).ravel()
    signal, noise = float(np.dot(ref, ref)), float(np.dot(ref - q, ref - q))
    sqnr = math.inf if noise == 0 else (-math.inf if signal == 0 else 10 * math.log10(signal / noise))
    norms = float(np.linalg.norm(ref) * np.linalg.norm(q))
    cosine = float(np.dot(ref, q) / norms) if norms > 0 else (1.0 if signal == 0 and noise == 0 else 0.0)
    return {"sqnr_db": sqnr, "cosine": cosine, "max_abs_error": float(np.abs(ref - q).max()) if ref.size else 0.0}


def layer_errors(fp32_path: Path, quantized_path: Path, x: np.ndarray, *, batch_size: int = 256,
                 deployed: bool = True) -> list[dict]:
    """Per-layer error of a quantized ONNX graph (INT8 static QDQ or INT8 dynamic) against its FP32 graph on
    inputs `x`: one dict per Conv/Gemm/MatMul of the FP32 graph, in graph order, with `node`, `op`, `tensor`
    (FP32 name), `quantized_tensor`, `sqnr_db`, `cosine`, `max_abs_error`.

    The values are those of onnxruntime as deployed (`deployed=True`: full graph optimisation, so QDQ
    pairs run as fused integer kernels — with their saturation on CPUs without VNNI, for instance): the
    quantized graph is cut after each layer's output and run once per layer (see `_run_deployed`). `sqnr_db_simulated` is the same
    layer in the graph evaluated as written (float math on quantize/dequantized values, one run).
    A layer whose output the quantized graph does not carry has `quantized_tensor: None` and no values."""
    fp32, quant = _load(Path(fp32_path)), _load(Path(quantized_path))
    layers = fp32_layers(fp32)
    if not layers:
        raise ArtifactError(f"{fp32_path} has no Conv/Gemm/MatMul layer to compare",
                            fix="give the FP32 graph the quantized model was made from")
    matched = [(node, op, tensor, carrier(quant, tensor)) for node, op, tensor in layers]
    wanted = [t for *_, t in matched if t is not None]
    if not wanted:
        raise ArtifactError(f"{quantized_path} carries none of the layer outputs of {fp32_path}",
                            why="the two graphs do not share tensor names",
                            fix="give the quantized model made from this FP32 graph (edgekd quantizes from it)")
    reference = _run_exposed(fp32, [t for *_, t in layers], x, batch_size)
    simulated = _run_exposed(quant, wanted, x, batch_size)
    rows = []
    for node, op, tensor, found in matched:
        row: dict = {"node": node, "op": op, "tensor": tensor, "quantized_tensor": found}
        if found is not None:
            value = _run_deployed(quant, found, x, batch_size) if deployed else simulated[found]
            if value.shape != reference[tensor].shape:
                raise ArtifactError(f"layer '{node}': quantized output {found} has shape {value.shape}, "
                                    f"FP32 {tensor} has {reference[tensor].shape}",
                                    fix="give the quantized model made from this FP32 graph")
            row.update(errors(reference[tensor], value))
            row["sqnr_db_simulated"] = errors(reference[tensor], simulated[found])["sqnr_db"]
        rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    """A plain-text table of `layer_errors` rows (for logs and reports)."""
    lines = [f"{'layer':<32} {'op':<7} {'SQNR dB':>8} {'cosine':>8} {'max abs':>9} {'sim. dB':>8}"]
    for r in rows:
        if r.get("quantized_tensor") is None:
            lines.append(f"{r['node']:<32} {r['op']:<7} {'(not carried by the quantized graph)':>27}")
        else:
            lines.append(f"{r['node']:<32} {r['op']:<7} {r['sqnr_db']:>8.2f} {r['cosine']:>8.5f} "
                         f"{r['max_abs_error']:>9.4f} {r['sqnr_db_simulated']:>8.2f}")
    return "\n".join(lines)
