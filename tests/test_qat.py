"""Quantization-aware distillation on real digits models, exported as INT8 QDQ ONNX and run by onnxruntime."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from edgekd.compress.qat import fusion_groups, qat_distill, qat_export_onnx, qdq_nodes
from edgekd.data import load_data
from edgekd.distill.losses import LOSSES
from edgekd.distill.trainer import accuracy, fit, masked_targets, predict_logits, steps_for
from edgekd.export.onnx import export_onnx, quantize_static_int8
from edgekd.export.verify import onnx_predict, parity
from edgekd.models import create_model


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one intra-op thread (conftest)


@pytest.fixture(scope="module")
def digits():
    s = load_data("digits", label_fraction=0.1)
    teacher = create_model("cnn", in_shape=s.input_shape, num_classes=10, width=16, hidden=64)
    fit(teacher, s.x_train, s.y_train, steps=steps_for(len(s.x_train), 64, 6), batch_size=64, lr=3e-3,
        weight_decay=1e-4, seed=0, loss_fn=LOSSES["ce"])
    return s, teacher, predict_logits(teacher, s.x_train), masked_targets(s.y_train, s.labelled)


def _student(s, teacher_logits, target, family, epochs, **params):
    student = create_model(family, in_shape=s.input_shape, num_classes=10, **params)
    fit(student, s.x_train, target, steps=steps_for(len(s.x_train), 64, epochs), batch_size=64, lr=3e-3,
        weight_decay=1e-4, seed=0, loss_fn=LOSSES["kd"], teacher_logits=teacher_logits,
        loss_params={"temperature": 4.0, "alpha": 0.9})
    return student


def test_fusion_groups_cover_conv_bn_relu_and_linear_relu():
    cnn = create_model("cnn", in_shape=(64,), num_classes=10, width=8)
    assert fusion_groups(cnn) == [["features.0", "features.1", "features.2"], ["features.3", "features.4", "features.5"],
                                  ["features.7", "features.8", "features.9"], ["head.1", "head.2"]]
    assert fusion_groups(create_model("mlp", in_shape=(64,), num_classes=10)) == [["net.1", "net.2"]]


def test_qat_artifact_matches_or_beats_post_training_int8(digits, tmp_path, capsys):
    s, teacher, teacher_logits, target = digits
    student = _student(s, teacher_logits, target, "mlp", 10)
    before = copy.deepcopy(student.state_dict())
    calibration = s.x_train[:256]
    fp32_path = export_onnx(student, s.input_shape, tmp_path / "fp32.onnx", opset=18)
    quantize_static_int8(fp32_path, tmp_path / "ptq.onnx", calibration)
    fp32 = accuracy(onnx_predict(fp32_path, s.x_test), s.y_test)
    ptq = accuracy(onnx_predict(tmp_path / "ptq.onnx", s.x_test), s.y_test)

    model, fake_quant = qat_distill(student, teacher, s.x_train, target, steps=100, batch_size=64, lr=1e-3,
                                    temperature=4.0, alpha=0.9, seed=0, calibration=calibration, return_qat=True)
    assert all(torch.equal(v, student.state_dict()[k]) for k, v in before.items())  # the input is untouched
    path = qat_export_onnx(model, s.input_shape, tmp_path / "qat.onnx", calibration)
    nodes = qdq_nodes(path)
    assert nodes["QuantizeLinear"] >= 2 and nodes["DequantizeLinear"] >= 4
    qat_logits = onnx_predict(path, s.x_test)
    qat = accuracy(qat_logits, s.y_test)
    with capsys.disabled():
        print(f"\n[digits mlp] FP32 {fp32:.4f}  PTQ INT8 {ptq:.4f} (gap {100 * (fp32 - ptq):.2f} pt)  "
              f"QAT INT8 {qat:.4f}  QAT float {accuracy(predict_logits(model, s.x_test), s.y_test):.4f}  "
              f"fake-quant torch {accuracy(predict_logits(fake_quant, s.x_test), s.y_test):.4f}")
    gap = fp32 - ptq
    assert qat >= ptq or qat >= fp32 - gap / 2  # QAT is at least as good as PTQ, or closes half the gap
    # parity of the INT8 artifact with the fake-quant model it was trained as
    record = parity(qat_logits, predict_logits(fake_quant, s.x_test), s.y_test, num_classes=10, threshold=0.95,
                    reference_name="fake-quant PyTorch")
    assert record.passed, record.reason


@pytest.mark.parametrize("family, params", [("tiny_cnn", {}), ("cnn", {"width": 8, "hidden": 32})])
def test_conv_families_export_qdq_that_onnxruntime_runs(digits, tmp_path, family, params):
    s, teacher, teacher_logits, target = digits
    student = _student(s, teacher_logits, target, family, 5, **params)
    calibration = s.x_train[:128]
    model, fake_quant = qat_distill(student, teacher_logits, s.x_train, target, steps=30, batch_size=64, lr=1e-3,
                                    seed=0, calibration=calibration, return_qat=True)
    assert type(model) is type(student) and model.edgekd_spec == student.edgekd_spec
    path = qat_export_onnx(model, s.input_shape, tmp_path / f"{family}.qat.onnx", calibration)
    assert not (tmp_path / f"{family}.qat.qat-fp32.onnx").exists()
    assert min(qdq_nodes(path).values()) > 0
    out = onnx_predict(path, s.x_test)
    assert out.shape == (len(s.x_test), 10) and np.isfinite(out).all()
    record = parity(out, predict_logits(fake_quant, s.x_test), s.y_test, num_classes=10, threshold=0.9,
                    reference_name="fake-quant PyTorch")
    assert record.passed, record.reason
    assert record.accuracy > 0.5


def test_reduce_range_trains_and_exports_on_the_7_bit_weight_grid(digits, tmp_path):
    """With reduce_range (x86 without VNNI), QAT fake-quantizes weights on onnxruntime's 7-bit grid and the artifact
    stores them on it, so the weights onnxruntime runs are the ones training rounded to."""
    import onnx
    from onnx import numpy_helper

    s, teacher, teacher_logits, target = digits
    student = _student(s, teacher_logits, target, "mlp", 5)
    calibration = s.x_train[:128]
    model, fake_quant = qat_distill(student, teacher_logits, s.x_train, target, steps=40, batch_size=64, lr=1e-3,
                                    seed=0, calibration=calibration, return_qat=True, reduce_range=True)
    grids = {(m.quant_min, m.quant_max) for name, m in fake_quant.named_modules() if name.endswith("weight_fake_quant")}
    assert grids == {(-64, 64)}
    path = qat_export_onnx(model, s.input_shape, tmp_path / "qat7.onnx", calibration, reduce_range=True)
    graph = onnx.load(str(path)).graph
    weights = {t.name: numpy_helper.to_array(t) for t in graph.initializer if t.data_type == onnx.TensorProto.INT8
               and len(t.dims) == 2}
    assert len(weights) == 2 and max(int(abs(w.astype(int)).max()) for w in weights.values()) == 64
    # the artifact's per-channel weight scales are the fake-quant ones (same grid, taken from the weights before
    # and after the last step), not twice as fine as an 8-bit export of the same weights would make them
    scales = {t.name: numpy_helper.to_array(t) for t in graph.initializer if t.name.endswith("_scale")}
    modules = dict(fake_quant.named_modules())
    for name in weights:
        layer = name.removesuffix("_quantized").removesuffix(".weight")
        trained = modules[f"model.{layer}"].weight_fake_quant.scale.detach().numpy()
        np.testing.assert_allclose(scales[f"{layer}.weight_scale"], trained, rtol=1e-3)
    record = parity(onnx_predict(path, s.x_test), predict_logits(fake_quant, s.x_test), s.y_test, num_classes=10,
                    threshold=0.95, reference_name="fake-quant PyTorch")
    assert record.passed, record.reason


@pytest.mark.parametrize("reduce_range", [False, True])
def test_the_artifact_rounds_the_weights_to_the_codes_training_rounded_them_to(digits, tmp_path, reduce_range):
    """torch's moving-average weight observer trailed the weights (scales 0.90-1.00 of max|w|/127) and froze for
    the last quarter of the steps, while onnxruntime takes max|w| of the final weights: 89% of an MLP's weight
    codes in the artifact differed from the ones training had rounded to."""
    import onnx
    from onnx import numpy_helper

    s, teacher, teacher_logits, target = digits
    student = _student(s, teacher_logits, target, "mlp", 3)
    model, fake_quant = qat_distill(student, teacher_logits, s.x_train, target, steps=60, batch_size=64, lr=3e-3,
                                    seed=0, calibration=s.x_train[:128], return_qat=True, reduce_range=reduce_range)
    path = qat_export_onnx(model, s.input_shape, tmp_path / "qat.onnx", s.x_train[:128], reduce_range=reduce_range)
    stored = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}
    modules = dict(fake_quant.named_modules())
    layers = [name.removesuffix(".weight_quantized") for name in stored if name.endswith(".weight_quantized")]
    assert layers
    for layer in layers:
        fq = modules[f"model.{layer}"]
        codes = torch.clamp(torch.round(fq.weight.detach() / fq.weight_fake_quant.scale[:, None]),
                            fq.weight_fake_quant.quant_min, fq.weight_fake_quant.quant_max).numpy()
        differ = float((codes != stored[f"{layer}.weight_quantized"]).mean())
        assert differ < 0.01, f"{layer}: {differ:.1%} of the weight codes differ"


@pytest.mark.parametrize("method", ["unstructured", "nm"])
def test_qat_keeps_a_pruned_models_zeros_in_training_and_in_the_int8_artifact(digits, tmp_path, method):
    """A compressed (unstructured / N:M) model's QAT artifact must stay as sparse as the model: fake-quant training
    would regrow the zeros, also inside fused Conv+BatchNorm modules."""
    import onnx
    from onnx import numpy_helper

    from edgekd.compress.prune import prune

    s, teacher, teacher_logits, target = digits
    student = _student(s, teacher_logits, target, "cnn", 2, width=8, hidden=32)
    pruned = prune(student, s.input_shape, method, 0.5).model
    zeros = {name: w == 0 for name, w in pruned.named_parameters() if w.dim() > 1 and bool((w == 0).any())}
    assert "head.1.weight" in zeros and any(zeros[n].dim() == 4 for n in zeros)  # a Linear and a fused Conv+BN+ReLU
    calibration = s.x_train[:128]
    model = qat_distill(pruned, teacher_logits, s.x_train, target, steps=30, batch_size=64, lr=1e-2, seed=0,
                        calibration=calibration)
    trained = dict(model.named_parameters())
    for name, mask in zeros.items():
        assert bool((trained[name][mask] == 0).all()), f"{name}: pruned weights regrew in QAT"
    path = qat_export_onnx(model, s.input_shape, tmp_path / "sparse.qat.onnx", calibration)
    stored = {t.name.removesuffix("_quantized"): numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer
              if t.data_type == onnx.TensorProto.INT8}
    for name, mask in zeros.items():
        assert (stored[name][mask.numpy()] == 0).all(), f"{name}: the INT8 artifact lost the zeros"
