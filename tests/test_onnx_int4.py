"""ONNX INT4 weight quantization against the real exporter (torch.onnx + onnxslim) and the real onnxruntime.

A digits MLP student (64-64-10, Gemm layers) and the CNN teacher (Reshape + 3 Conv + 2 Gemm, ~160k parameters)
are trained briefly so their outputs mean something, exported once to FP32 ONNX and quantized to INT4; the
tests read those files. Hand-built graphs cover the Gemm rewrite's corner cases and the error paths.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from edgekd.errors import ExportError

MIN_AGREEMENT = 0.97  # top-1 agreement with PyTorch on the 270 test samples
MAX_TEACHER_SIZE_RATIO = 0.20  # INT4 file / FP32 file


def _train(family: str, steps: int, lr: float, **params):
    from edgekd.data import load_data
    from edgekd.distill.losses import LOSSES
    from edgekd.distill.trainer import fit
    from edgekd.models import create_model

    splits = load_data("digits")
    model = create_model(family, in_shape=(64,), num_classes=10, **params)
    fit(model, splits.x_train, splits.y_train, loss_fn=LOSSES["ce"], steps=steps, batch_size=64, lr=lr,
        weight_decay=1e-4, seed=0)
    return model, splits


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """{'student'|'teacher': model, splits, PyTorch test logits, FP32 path, INT4 path and settings (defaults)}."""
    from edgekd.distill.trainer import predict_logits
    from edgekd.export.onnx import export_onnx
    from edgekd.export.onnx_int4 import quantize_int4

    out = tmp_path_factory.mktemp("int4")
    built = {}
    for role, family, steps, lr, params in (("student", "mlp", 300, 1e-2, {"width": 64}),
                                            ("teacher", "cnn", 200, 3e-3, {})):
        model, splits = _train(family, steps, lr, **params)
        fp32 = export_onnx(model, splits.input_shape, out / f"{role}-fp32.onnx", opset=18)
        int4 = out / f"{role}-int4.onnx"
        settings = quantize_int4(fp32, int4, conv="qdq")  # the standard QDQ form; "fold" is tested below
        built[role] = {"model": model, "splits": splits, "reference": predict_logits(model, splits.x_test),
                       "fp32": fp32, "int4": int4, "settings": settings}
    built["dir"] = out
    return built


def _graph(path: Path):
    import onnx

    return onnx.load(str(path))


def _ops(model) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def _agreement(path: Path, entry) -> tuple[float, float]:
    from edgekd.export.verify import onnx_predict

    outputs = onnx_predict(path, entry["splits"].x_test)
    assert outputs.shape == entry["reference"].shape and np.isfinite(outputs).all()
    agreement = float((outputs.argmax(1) == entry["reference"].argmax(1)).mean())
    accuracy = float((outputs.argmax(1) == entry["splits"].y_test).mean())
    return agreement, accuracy


@pytest.mark.parametrize("role", ["student", "teacher"])
def test_int4_runs_and_agrees_with_pytorch(models, role, record_property):
    entry = models[role]
    reference_accuracy = float((entry["reference"].argmax(1) == entry["splits"].y_test).mean())
    assert reference_accuracy > 0.9  # the model learned something
    agreement, accuracy = _agreement(entry["int4"], entry)
    record_property("measured", {"agreement": agreement, "accuracy": accuracy,
                                 "reference_accuracy": reference_accuracy})
    assert agreement >= MIN_AGREEMENT, (role, agreement)


@pytest.mark.parametrize("role", ["student", "teacher"])
def test_fully_connected_layers_are_matmulnbits(models, role):
    import onnx

    fp32_ops, int4 = _ops(_graph(models[role]["fp32"])), _graph(models[role]["int4"])
    ops = _ops(int4)
    assert "Gemm" not in ops and "MatMul" not in ops, ops
    assert ops.get("MatMulNBits", 0) == fp32_ops["Gemm"] >= 2
    for node in int4.graph.node:
        if node.op_type == "MatMulNBits":
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            assert node.domain == "com.microsoft"
            assert attrs["bits"] == 4 and attrs["accuracy_level"] == 4
            assert len(node.input) == 3  # symmetric: A, packed B, scales; no zero points
    settings = models[role]["settings"]
    assert settings["nodes_4bit"]["Gemm"] == fp32_ops["Gemm"]
    assert settings["block_size"] == 32 and settings["accuracy_level"] == 4 and settings["fp32_weight_ops_left"] == []


def test_teacher_conv_weights_are_int4_per_channel(models):
    import onnx
    from onnx import numpy_helper

    graph = _graph(models["teacher"]["int4"])
    inits = {t.name: t for t in graph.graph.initializer}
    producers = {out: node for node in graph.graph.node for out in node.output}
    convs = [n for n in graph.graph.node if n.op_type == "Conv"]
    assert len(convs) == 3
    for conv in convs:
        assert conv.input[1] not in inits  # the weight is computed from the int4 tensor, not stored in FP32
        dq = producers[conv.input[1]]
        assert dq.op_type == "DequantizeLinear"
        q, scale = inits[dq.input[0]], numpy_helper.to_array(inits[dq.input[1]])
        assert q.data_type == onnx.TensorProto.INT4
        assert scale.shape == (q.dims[0],) and (scale > 0).all()  # one scale per output channel
    # Every FP32 initializer left is a quantization scale or a 1-D bias: no FP32 weight matrix or kernel remains.
    scales = {n.input[2] for n in graph.graph.node if n.op_type == "MatMulNBits"} \
        | {n.input[1] for n in graph.graph.node if n.op_type == "DequantizeLinear"}
    left = [(t.name, list(t.dims)) for t in graph.graph.initializer
            if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) > 1 and t.name not in scales]
    assert left == []
    assert graph.opset_import[0].version >= 21 or any(o.domain == "" and o.version >= 21 for o in graph.opset_import)
    settings = models["teacher"]["settings"]
    assert settings["op_types_4bit"] == ["Conv", "Gemm"]
    assert settings["nodes_4bit"] == {"Gemm": 2, "MatMul": 0, "Conv": 3, "Gather": 0}
    assert settings["opset"] == 21 and settings["source_opset"] == 18


@pytest.mark.parametrize("role, min_share", [("student", 0.70), ("teacher", 0.85)])
def test_weight_bits_report_the_4bit_bytes(models, role, min_share, record_property):
    from edgekd.export.onnx_int4 import onnx_weight_bits

    entry = models[role]
    bits = onnx_weight_bits(entry["int4"])
    fp32_bits = onnx_weight_bits(entry["fp32"])
    parameters = sum(p.numel() for p in entry["model"].parameters())
    record_property("measured", {"int4": bits, "fp32": fp32_bits["summary"]})
    summary = bits["summary"]
    assert summary["bytes_4bit"] > 0 and bits["int4"]["bytes"] == summary["bytes_4bit"]
    assert summary["share_4bit"] >= min_share, summary
    # Every weight value is stored in 4 bits (MatMulNBits pads K to whole blocks, so ≥ the parameter count).
    assert bits["int4"]["values"] >= parameters - bits["float32"]["values"]
    assert fp32_bits["summary"]["share_4bit"] == 0.0 and "int4" not in fp32_bits
    assert fp32_bits["float32"]["values"] >= parameters - 2 * 128 * 2  # BN folded into the convs


def test_teacher_int4_file_is_small(models, record_property):
    fp32, int4 = models["teacher"]["fp32"].stat().st_size, models["teacher"]["int4"].stat().st_size
    record_property("measured", {"fp32_bytes": fp32, "int4_bytes": int4, "ratio": int4 / fp32})
    assert int4 <= MAX_TEACHER_SIZE_RATIO * fp32, (int4, fp32)


@pytest.mark.parametrize("conv", ["fold", "fp32"])
def test_teacher_conv_modes(models, conv, record_property):
    from edgekd.export.onnx_int4 import onnx_weight_bits, quantize_int4

    entry = models["teacher"]
    path = models["dir"] / f"teacher-int4-conv-{conv}.onnx"
    settings = quantize_int4(entry["fp32"], path, conv=conv)
    ops = _ops(_graph(path))
    agreement, _ = _agreement(path, entry)
    share = onnx_weight_bits(path)["summary"]["share_4bit"]
    record_property("measured", {"agreement": agreement, "share_4bit": share, "bytes": path.stat().st_size})
    assert agreement >= MIN_AGREEMENT
    assert "Gemm" not in ops and ops["MatMulNBits"] == 2 and "DequantizeLinear" not in ops
    if conv == "fold":
        assert ops["Cast"] == ops["Mul"] == 3 and settings["op_types_4bit"] == ["Conv", "Gemm"]
        assert share >= 0.85 and settings["opset"] == 21
    else:
        assert settings["op_types_4bit"] == ["Gemm"] and len(settings["fp32_weight_ops_left"]) == 3
        assert share < 0.2 and settings["opset"] == 18  # Conv untouched: no opset change needed


def test_block_size_and_accuracy_level_reach_the_nodes(models):
    import onnx

    from edgekd.export.onnx_int4 import quantize_int4

    entry = models["student"]
    path = models["dir"] / "student-int4-b128-a0.onnx"
    settings = quantize_int4(entry["fp32"], path, block_size=128, accuracy_level=0)
    nodes = [n for n in _graph(path).graph.node if n.op_type == "MatMulNBits"]
    attrs = [{a.name: onnx.helper.get_attribute_value(a) for a in n.attribute} for n in nodes]
    # K is 64 for both layers: a 128 block would only pad zeros, so the block shrinks to 64 (same scales).
    assert [a["block_size"] for a in attrs] == [64, 64] and [a["K"] for a in attrs] == [64, 64]
    assert all(a.get("accuracy_level", 0) == 0 for a in attrs)
    assert settings["block_size"] == 128 and settings["block_sizes_used"] == [64]
    assert path.stat().st_size <= models["student"]["int4"].stat().st_size  # fewer scales than block 32
    assert _agreement(path, entry)[0] >= MIN_AGREEMENT


def test_quantization_is_quiet_and_atomic(models, capfd):
    from edgekd.export.onnx_int4 import quantize_int4

    root = logging.getLogger()
    before = (list(root.handlers), root.level)
    quantize_int4(models["teacher"]["fp32"], models["dir"] / "quiet.onnx", block_size=64)
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""
    assert (list(root.handlers), root.level) == before
    assert not [p.name for p in models["dir"].iterdir() if p.name.endswith(".tmp")]


def test_first_use_leaves_root_logger_alone(tmp_path):
    """onnxruntime's matmul_nbits_quantizer calls logging.basicConfig(level=INFO) when first imported; in a
    fresh interpreter (no pytest handlers on the root logger) that must not leak out of quantize_int4."""
    import subprocess
    import sys

    _gemm_model(tmp_path / "fp32.onnx")
    code = (
        "import logging, sys\n"
        "from edgekd.export.onnx_int4 import quantize_int4\n"
        f"quantize_int4({str(tmp_path / 'fp32.onnx')!r}, {str(tmp_path / 'int4.onnx')!r})\n"
        "root = logging.getLogger()\n"
        "assert 'onnxruntime.quantization.matmul_nbits_quantizer' in sys.modules\n"
        "assert root.handlers == [] and root.level == logging.WARNING, (root.handlers, root.level)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr
    assert done.stdout == "" and done.stderr == ""


# -- hand-built graphs: the Gemm rewrite and the error paths ---------------------------------------------------
def _gemm_model(path: Path, *, trans_a: int = 0, trans_b: int = 1, alpha: float = 1.0, beta: float = 1.0,
                constant_weight: bool = True, k: int = 48, n: int = 24) -> dict[str, np.ndarray]:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = rng.standard_normal((n, k) if trans_b else (k, n)).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    a_shape = ["batch", k] if not trans_a else [k, "batch"]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, a_shape)]
    inits = [numpy_helper.from_array(bias, "b")]
    if constant_weight:
        inits.append(numpy_helper.from_array(weight, "w"))
    else:
        inputs.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, list(weight.shape)))
    node = helper.make_node("Gemm", ["x", "w", "b"], ["logits"], transA=trans_a, transB=trans_b, alpha=alpha,
                            beta=beta, name="fc")
    graph = helper.make_graph([node], "gemm", inputs,
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", n])],
                              initializer=inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return {"weight": weight, "bias": bias}


@pytest.mark.parametrize("trans_b, alpha, beta", [(1, 1.0, 1.0), (0, 1.0, 1.0), (0, 0.5, 2.0)])
def test_gemm_rewrite_matches_gemm(tmp_path, trans_b, alpha, beta):
    """transB, alpha and beta are folded into the constants; only 4-bit rounding separates the outputs."""
    from edgekd.export.onnx_int4 import onnx_weight_bits, quantize_int4
    from edgekd.export.verify import onnx_predict

    arrays = _gemm_model(tmp_path / "fp32.onnx", trans_b=trans_b, alpha=alpha, beta=beta)
    settings = quantize_int4(tmp_path / "fp32.onnx", tmp_path / "int4.onnx", block_size=16, accuracy_level=0)
    assert settings["nodes_4bit"]["Gemm"] == 1
    x = np.random.default_rng(1).standard_normal((32, 48)).astype(np.float32)
    w_kn = arrays["weight"].T if trans_b else arrays["weight"]
    expected = alpha * x @ w_kn + beta * arrays["bias"]
    got = onnx_predict(tmp_path / "int4.onnx", x)
    assert np.allclose(onnx_predict(tmp_path / "fp32.onnx", x), expected, atol=1e-4)
    # 4-bit symmetric blocks of 16: relative error of a few percent, not a wrong layout (that would be ~100%).
    assert np.abs(got - expected).max() / np.abs(expected).max() < 0.1
    assert onnx_weight_bits(tmp_path / "int4.onnx")["int4"]["values"] == 48 * 24


@pytest.mark.parametrize("kwargs, message", [
    ({"block_size": 48}, "power of two"),
    ({"block_size": 8}, "power of two"),
    ({"block_size": True}, "power of two"),
    ({"accuracy_level": 5}, "accuracy_level"),
    ({"conv": "int8"}, "conv mode"),
])
def test_bad_settings_raise_export_error(tmp_path, kwargs, message):
    from edgekd.export.onnx_int4 import quantize_int4

    _gemm_model(tmp_path / "fp32.onnx")
    with pytest.raises(ExportError, match=message) as info:
        quantize_int4(tmp_path / "fp32.onnx", tmp_path / "int4.onnx", **kwargs)
    assert info.value.fix
    assert not (tmp_path / "int4.onnx").exists()


@pytest.mark.parametrize("kwargs, message", [
    ({"trans_a": 1}, "transA=1"),
    ({"constant_weight": False}, "not a constant initializer"),
])
def test_unsupported_gemm_raises_export_error(tmp_path, kwargs, message):
    from edgekd.export.onnx_int4 import quantize_int4

    _gemm_model(tmp_path / "fp32.onnx", **kwargs)
    with pytest.raises(ExportError, match=message) as info:
        quantize_int4(tmp_path / "fp32.onnx", tmp_path / "int4.onnx")
    assert "'fc'" in info.value.what and info.value.why and info.value.fix
    assert not (tmp_path / "int4.onnx").exists() and [p.name for p in tmp_path.iterdir()] == ["fp32.onnx"]


def test_an_int4_records_opset_is_the_files(tmp_path):
    """INT4 raises a graph with Conv to opset 21; the record said the opset asked for (18), and a runtime chosen
    from it (no opset 21 in older onnxruntime builds) fails to load the file."""
    import onnx
    import torch

    from edgekd.export.formats import ExportOptions
    from edgekd.exporter import export_model
    from edgekd.models import create_model

    torch.manual_seed(0)
    model = create_model("tiny_cnn", in_shape=(64,), num_classes=10).eval()
    x = np.random.default_rng(0).normal(size=(16, 64)).astype(np.float32)
    arts = {a.precision: a for a in export_model(
        model, role="student", formats=["onnx"], precisions=["fp32", "int4"], out_root=tmp_path, in_shape=(64,),
        x_test=x, y_test=np.zeros(16, dtype=np.int64), num_classes=10, options=ExportOptions(opset=18),
        min_agreement=0.0, min_agreement_int4=0.0, lineage={"run": "r"})}
    for art in arts.values():
        written = next(o.version for o in onnx.load(str(art.path)).opset_import if o.domain in ("", "ai.onnx"))
        assert art.opset == written
    assert arts["fp32"].opset == 18 and arts["int4"].opset == 21
