"""TFLite export against the real converter (litert-torch), quantizer (ai-edge-quantizer) and runtime (LiteRT).

One tiny MLP, trained for a few hundred steps on digits so its outputs mean something, is converted
once and quantized to every precision; the tests read those files. Runner tests go through
`python runner.py SPEC` exactly as a device would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest

from edgekd.errors import ExportError

from conftest import import_or_skip

ROOT = Path(__file__).resolve().parents[1]
RUNNER = ROOT / "edgekd" / "bench" / "runner.py"
FAST = {"warmup_runs": 5, "warmup_min_seconds": 0.01, "min_runs": 50, "min_seconds": 0.05, "max_seconds": 5.0,
        "memory_runs": 3}
# Minimum top-1 agreement with the PyTorch model on the 270 test samples.
MIN_AGREEMENT = {"fp32": 1.0, "int8_dynamic": 0.97, "int8_static": 0.97, "int4": 0.90}


def _require_extra() -> None:
    for module in ("litert_torch", "ai_edge_quantizer", "ai_edge_litert"):
        import_or_skip(module, "the [tflite] extra is not installed")  # skips locally, fails on CI


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A trained digits MLP (64-64-10), its test split and its .tflite files in every precision."""
    _require_extra()
    from edgekd.data import load_data
    from edgekd.distill.losses import LOSSES
    from edgekd.distill.trainer import fit, predict_logits
    from edgekd.export import tflite
    from edgekd.models import create_model

    splits = load_data("digits")
    model = create_model("mlp", in_shape=(64,), num_classes=10, width=64)
    fit(model, splits.x_train, splits.y_train, loss_fn=LOSSES["ce"], steps=250, batch_size=64, lr=1e-2,
        weight_decay=1e-4, seed=0)
    out = tmp_path_factory.mktemp("tflite")
    paths = {"fp32": tflite.export_tflite(model, splits.input_shape, out / "fp32.tflite")}
    calibration = splits.x_train[np.random.default_rng(0).permutation(len(splits.x_train))[:256]]
    settings = {}
    for precision in ("int8_dynamic", "int8_static", "int4"):
        paths[precision] = out / f"{precision}.tflite"
        settings[precision] = tflite.quantize_tflite(paths["fp32"], paths[precision], precision, calibration)
    return {"model": model, "splits": splits, "reference": predict_logits(model, splits.x_test), "paths": paths,
            "settings": settings, "dir": out}


@pytest.mark.parametrize("precision", list(MIN_AGREEMENT))
def test_round_trip_parity(exported, precision: str, record_property):
    from edgekd.export.tflite import tflite_predict

    splits, reference = exported["splits"], exported["reference"]
    outputs = tflite_predict(exported["paths"][precision], splits.x_test)
    assert outputs.shape == reference.shape and outputs.dtype == np.float32
    agreement = float((outputs.argmax(1) == reference.argmax(1)).mean())
    accuracy = float((outputs.argmax(1) == splits.y_test).mean())
    max_error = float(np.abs(outputs - reference).max())
    record_property("measured", {"agreement": agreement, "accuracy": accuracy, "max_abs_error": max_error})
    assert float((reference.argmax(1) == splits.y_test).mean()) > 0.9  # the model learned something
    assert agreement >= MIN_AGREEMENT[precision], (precision, agreement)
    if precision == "fp32":
        assert max_error < 1e-3


def test_quantization_settings_and_signature(exported):
    from edgekd.export.tflite import describe_io

    settings = exported["settings"]
    assert settings["int8_dynamic"]["recipe"] == "dynamic_wi8_afp32"
    assert settings["int4"]["recipe"] == "dynamic_wi4_afp32" and settings["int4"]["weights"] == "int4"
    static = settings["int8_static"]
    assert static["recipe"] == "static_wi8_ai8" and static["calibration"] == "minmax"
    assert static["calibration_samples"] == 256
    assert static["xnnpack_on_host"]["undelegated"] == {}

    inputs, outputs = describe_io(exported["paths"]["fp32"])
    assert [(i["name"], i["shape"], i["dtype"]) for i in inputs] == [("x", [1, 64], "float32")]
    assert [(o["name"], o["shape"], o["dtype"]) for o in outputs] == [("logits", [1, 10], "float32")]
    inputs, outputs = describe_io(exported["paths"]["int8_static"])
    assert inputs[0]["dtype"] == "int8" and inputs[0]["quantization"]["scale"] > 0  # the caller must quantize
    assert outputs[0]["dtype"] == "int8"


def test_weight_bits_and_operators(exported):
    from edgekd.export.tflite import tflite_op_histogram, tflite_weight_bits

    paths = exported["paths"]
    fp32 = tflite_weight_bits(paths["fp32"])
    assert set(fp32) == {"float32"} and fp32["float32"]["values"] == 64 * 64 + 64 + 64 * 10 + 10
    for precision in ("int8_dynamic", "int8_static"):
        bits = tflite_weight_bits(paths[precision])
        assert bits["int8"]["bytes"] == bits["int8"]["values"] == 64 * 64 + 64 * 10, bits
        assert "int4" not in bits
    int4 = tflite_weight_bits(paths["int4"])
    assert int4["int4"]["values"] == 64 * 64 + 64 * 10
    assert int4["int4"]["bytes"] == int4["int4"]["values"] // 2  # two weights per byte
    assert "int8" not in int4
    for precision, path in paths.items():
        assert tflite_op_histogram(path) == {"FULLY_CONNECTED": 2}, precision
    sizes = {p: path.stat().st_size for p, path in paths.items()}
    assert sizes["int4"] < sizes["int8_dynamic"] < sizes["fp32"]
    assert all(exported["settings"][p]["float_weight_ops_left"] == [] for p in ("int8_dynamic", "int8_static", "int4"))


def test_a_weight_the_quantizer_leaves_float32_is_named_in_the_record(tmp_path: Path):
    """ai-edge-quantizer's int4 leaves a 1-input-channel convolution (a DEPTHWISE_CONV_2D) float32; the record
    said `weights: int4` for the whole file."""
    _require_extra()
    import torch

    from edgekd.export import tflite
    from edgekd.models import create_model

    torch.manual_seed(0)
    model = create_model("tiny_cnn", in_shape=(64,), num_classes=10).eval()
    fp32 = tflite.export_tflite(model, (64,), tmp_path / "fp32.tflite")
    settings = tflite.quantize_tflite(fp32, tmp_path / "int4.tflite", "int4")
    assert settings["weights"] == "int4"
    (left,) = settings["float_weight_ops_left"]
    assert left.startswith("DEPTHWISE_CONV_2D (op ") and left.endswith(", weight 1×3×3×8)")
    assert len(tflite.tflite_float_weight_ops(fp32)) == 3  # every weight of the FP32 file: 2 convs, 1 dense


def _quantization_parameters(path):
    """(scale values, zero-point values) of every tensor, as the LiteRT runtime reads them from the file."""
    from edgekd.export.tflite import _interpreter

    details = _interpreter(path, delegates=False).get_tensor_details()
    params = [d["quantization_parameters"] for d in details]
    return sum(len(p["scales"]) for p in params), sum(len(p["zero_points"]) for p in params)


@pytest.mark.parametrize("precision", ["int4", "int8_dynamic", "int8_static"])
def test_weight_bits_count_scales_and_zero_points(exported, precision):
    """A per-channel 4-bit weight also stores one float32 scale and one int64 zero point per output channel in
    the tensor's quantization parameters (outside the buffers): they are weight bytes, as the scale and
    zero-point initializers of an ONNX file are, so the 4-bit share counts them."""
    from edgekd.export.formats import summarize_weight_bits
    from edgekd.export.tflite import ZERO_POINTS, tflite_weight_bits

    path = exported["paths"][precision]
    scales, zero_points = _quantization_parameters(path)
    assert scales >= 64 + 10 and zero_points >= 64 + 10  # per channel: one per output channel of each layer
    bits = tflite_weight_bits(path)
    biases = 4 * (64 + 10)  # float32 (int32 in static INT8) biases, one per output channel
    assert bits[ZERO_POINTS] == {"tensors": bits[ZERO_POINTS]["tensors"], "values": zero_points,
                                 "bytes": 8 * zero_points}
    floats = bits.get("float32", {}).get("bytes", 0)
    assert floats == 4 * scales + (0 if precision == "int8_static" else biases), bits
    summary = summarize_weight_bits(bits)
    weights = sum(e["bytes"] for e in bits.values())
    assert weights == summary["int4_bytes"] + summary["int8_bytes"] + summary["float_bytes"] + summary["other_bytes"]
    if precision == "int4":
        assert summary["share_4bit"] == pytest.approx((64 * 64 + 64 * 10) / 2 / weights)
        assert summary["share_4bit"] < 0.7  # 2368 of 2368 + 296 biases + 296 scales + 592 zero points


# ---------------------------------------------------------------- runner


def run_runner(spec: dict, workdir: Path) -> tuple[int, dict]:
    (workdir / "spec.json").write_text(json.dumps(spec))
    proc = subprocess.run([sys.executable, str(RUNNER), str(workdir / "spec.json")], capture_output=True, text=True,
                          cwd=str(workdir), timeout=120)
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, f"stdout must be one JSON line, got {proc.stdout!r}; stderr: {proc.stderr}"
    return proc.returncode, json.loads(lines[0])


@pytest.mark.parametrize("precision", ["fp32", "int8_static"])
def test_runner_litert(exported, precision: str, tmp_path: Path):
    from edgekd.export.tflite import tflite_predict

    test_x = exported["splits"].x_test[:20]
    np.save(tmp_path / "x.npy", test_x[:1])
    np.save(tmp_path / "test_x.npy", test_x)
    spec = {"artifact": str(exported["paths"][precision]), "runtime": "litert", "inputs": {"x": "x.npy"}, **FAST,
            "predict": {"inputs": {"x": "test_x.npy"}, "output": "pred.npy"}}
    code, r = run_runner(spec, tmp_path)
    assert code == 0 and r["ok"] is True, r
    assert len(r["latencies_ns"]) >= FAST["min_runs"] and all(v > 0 for v in r["latencies_ns"])
    rt = r["runtime"]
    assert rt["name"] == "litert" and rt["version"] == version("ai-edge-litert")
    assert rt["delegate"] == "xnnpack (default)" and rt["threads"] == 1 and rt["undelegated_ops"] == {}
    # The caller feeds float32 either way; an int8-input model is quantized outside the timed call.
    assert r["inputs"] == [{"name": "x", "shape": [1, 64], "dtype": "float32", "model_shape": [1, 64]}]
    assert r["outputs"][0]["name"] == "logits" and r["outputs"][0]["dtype"] == "float32"
    assert ("x" in rt["quantized_io"]) == (precision == "int8_static")
    assert r["predict"]["rows"] == 20 and r["predict"]["batch_size"] == 1
    np.testing.assert_allclose(np.load(tmp_path / "pred.npy"), tflite_predict(exported["paths"][precision], test_x),
                               rtol=1e-5, atol=1e-5)


def test_runner_corrupt_tflite(tmp_path: Path):
    import_or_skip("ai_edge_litert", "the [tflite] extra is not installed")
    (tmp_path / "bad.tflite").write_bytes(np.random.default_rng(0).bytes(512))
    np.save(tmp_path / "x.npy", np.zeros((1, 64), np.float32))
    code, r = run_runner({"artifact": "bad.tflite", "runtime": "litert", "inputs": {"x": "x.npy"}, **FAST}, tmp_path)
    assert code == 3 and r["ok"] is False
    assert r["error"]["kind"] == "artifact_load" and r["error"]["why"], r


# ---------------------------------------------------------------- errors


def test_missing_extra_says_how_to_install(tmp_path: Path):
    """Block `import litert_torch` with a meta path finder, as on an install without [tflite]."""
    code = textwrap.dedent(f"""
        import json, sys

        class BlockLiteRTTorch:
            def find_spec(self, name, path=None, target=None):
                if name == "litert_torch" or name.startswith("litert_torch."):
                    raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
                return None

        sys.meta_path.insert(0, BlockLiteRTTorch())
        from edgekd.errors import MissingExtraError
        from edgekd.export.tflite import export_tflite
        from edgekd.models import create_model

        try:
            export_tflite(create_model("mlp", in_shape=(64,), num_classes=10), (64,), {str(tmp_path / "m.tflite")!r})
        except MissingExtraError as exc:
            print(json.dumps(exc.to_dict()))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=str(ROOT),
                          env=os.environ.copy())
    assert proc.returncode == 0, proc.stderr
    error = json.loads(proc.stdout.strip().splitlines()[-1])
    assert error["kind"] == "MissingExtraError" and "litert_torch" in error["what"]
    assert error["fix"] == "pip install 'edgekd[tflite]'"
    assert not (tmp_path / "m.tflite").exists()


def test_unconvertible_model_names_the_operator(tmp_path: Path):
    _require_extra()
    import torch

    from edgekd.export.tflite import export_tflite

    class ScaledErfcx(torch.nn.Module):  # torch.export handles it; litert-torch has no lowering for it
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(64, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.special.erfcx(self.fc(x))

    with pytest.raises(ExportError) as info:
        export_tflite(ScaledErfcx(), (64,), tmp_path / "m.tflite")
    assert "ScaledErfcx" in info.value.what and "special_erfcx" in info.value.what
    assert info.value.why and info.value.fix
    assert list(tmp_path.iterdir()) == []  # nothing half-written
