"""Quantization-aware distillation: fake-quant training against the teacher, exported as an INT8 QDQ ONNX graph.

When post-training INT8 loses more accuracy than the recipe allows, the student is fine-tuned with fake
quantization in the forward pass (so it learns weights that survive rounding) and the KD loss against the
teacher's logits, then exported as a static INT8 QDQ graph that onnxruntime runs with integer kernels.

Approach (and why):
- Training uses torch's own eager-mode QAT (`torch.ao.quantization.prepare_qat`), the path that exists on
  torch 2.13 CPU: the PT2E quantizers (`quantize_pt2e`, X86InductorQuantizer) are no longer in torch
  (they moved to torchao, which is not a dependency). Conv+BN(+ReLU), Conv+ReLU and Linear+ReLU are fused
  first (`fuse_modules_qat`), so BatchNorm is folded into the conv weights that get fake-quantized, as it is
  in the exported graph. Training is edgekd's `fit` with a `ResponseObjective` on precomputed teacher
  logits (the recipe's response loss, `kd` by default), exactly as distillation and KD recovery run;
  `after_step` freezes the activation observers and BatchNorm statistics for the last quarter of the steps
  (the usual QAT schedule). The weights' scale is never frozen nor averaged: it is max|w| of the weights as
  they are at each step (`_CurrentWeightRange`), as onnxruntime computes it from the final weights at export.
  torch's moving-average weight observer trailed the weights (scales 0.90-1.00 of max|w|/127 after 80 steps,
  clipping the weights that outgrew it) and was frozen for the last quarter: 78-89% of an MLP's weights then
  rounded to another grid point in the artifact than in training (tests/test_qat.py).
- The qconfig mirrors what the artifact will hold, not torch's x86 default: weights per-channel symmetric
  int8 in [-127, 127] (onnxruntime's grid for symmetric int8 weights: scale = max|w| / 127), activations
  per-tensor asymmetric int8 in [-128, 127] without reduce_range (onnxruntime's S8S8 QDQ with minmax
  calibration, what `quantize_static_int8` produces). torch's x86 default (uint8 activations with
  reduce_range, 7-bit) would train for a different rounding than the one the artifact runs. When the
  artifact uses onnxruntime's `reduce_range` (x86 without VNNI, edgekd.compress.isa.choose_reduce_range),
  the weights train on its 7-bit grid instead ([-64, 64], scale = max|w| / 64); activations keep 8 bits.
- Export does not go through torch's fake-quant ops: the fused QAT modules are turned back into the
  original float architecture (conv weights, BatchNorm parameters and running statistics copied back), that
  model goes through edgekd's normal FP32 export, and `quantize_static_int8` makes the QDQ graph. Because the
  weight grid is the same, onnxruntime rounds the weights exactly as training did; activation ranges come
  from minmax calibration on the calibration inputs rather than the observers' moving averages (a small
  difference). This path reuses the exporter every other artifact uses, so it works for every family the
  FP32 export handles; exporting fake-quant ops directly would depend on which of torch's fused fake-quant
  ops the ONNX exporter translates.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn
from torch.ao.quantization.observer import PerChannelMinMaxObserver

from edgekd.errors import CompressionError, first_line

FUSION_PATTERNS: tuple[tuple[type[nn.Module], ...], ...] = (
    (nn.Conv2d, nn.BatchNorm2d, nn.ReLU),
    (nn.Conv2d, nn.BatchNorm2d),
    (nn.Conv2d, nn.ReLU),
    (nn.Linear, nn.ReLU),
)


class _CurrentWeightRange(PerChannelMinMaxObserver):
    """A per-channel range with no history: the weights' range at this step, as onnxruntime takes max|w| from
    the final weights at export (torch's observers keep the extremes, or a moving average, of all they saw)."""

    def forward(self, x_orig: torch.Tensor) -> torch.Tensor:
        self.reset_min_max_vals()
        return super().forward(x_orig)


def artifact_qconfig(reduce_range: bool = False):
    """Fake-quant settings matching onnxruntime's S8S8 static QDQ (per-channel symmetric weights, minmax int8
    activations), the format `edgekd.export.onnx.quantize_static_int8` writes; with `reduce_range`, the weights'
    7-bit grid that onnxruntime then uses ([-64, 64])."""
    from torch.ao.quantization import FakeQuantize, QConfig
    from torch.ao.quantization.observer import MovingAverageMinMaxObserver

    activation = FakeQuantize.with_args(observer=MovingAverageMinMaxObserver, quant_min=-128, quant_max=127,
                                        dtype=torch.qint8, qscheme=torch.per_tensor_affine, reduce_range=False)
    low, high = (-64, 64) if reduce_range else (-127, 127)  # onnxruntime's symmetric int8 weight grids
    weight = FakeQuantize.with_args(observer=_CurrentWeightRange, quant_min=low, quant_max=high,
                                    dtype=torch.qint8, qscheme=torch.per_channel_symmetric, ch_axis=0)
    return QConfig(activation=activation, weight=weight)


def fusion_groups(model: nn.Module) -> list[list[str]]:
    """Names of consecutive (Conv2d, BatchNorm2d, ReLU) / (Conv2d, BatchNorm2d) / (Conv2d, ReLU) / (Linear, ReLU)
    children of every nn.Sequential, the groups eager-mode QAT fuses."""
    groups: list[list[str]] = []
    for prefix, module in model.named_modules():
        if not isinstance(module, nn.Sequential):
            continue
        children = list(module.named_children())
        i = 0
        while i < len(children):
            for pattern in FUSION_PATTERNS:
                window = children[i:i + len(pattern)]
                if len(window) == len(pattern) and all(type(m) is t for (_, m), t in zip(window, pattern)):
                    groups.append([f"{prefix}.{name}" if prefix else name for name, _ in window])
                    i += len(pattern)
                    break
            else:
                i += 1
    return groups


class _Quantized(nn.Module):
    """QuantStub → model → DeQuantStub: where eager-mode QAT puts the input and output quantization."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        from torch.ao.quantization import DeQuantStub, QuantStub

        self.quant = QuantStub()
        self.model = model
        self.dequant = DeQuantStub()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dequant(self.model(self.quant(x)))


def prepare_qat_model(model: nn.Module, reduce_range: bool = False) -> tuple[nn.Module, list[list[str]]]:
    """A fake-quant copy of `model` (fused, observers inserted, in train mode) and the fused groups."""
    from torch.ao.quantization import fuse_modules_qat, prepare_qat

    float_model = copy.deepcopy(model).train()
    groups = fusion_groups(float_model)
    try:
        if groups:
            float_model = fuse_modules_qat(float_model, groups)
        wrapped = _Quantized(float_model)
        wrapped.qconfig = artifact_qconfig(reduce_range)
        prepare_qat(wrapped, inplace=True)
    except Exception as exc:
        raise CompressionError(f"torch cannot prepare {type(model).__name__} for quantization-aware training",
                               why=first_line(exc),
                               fix="keep post-training INT8 for this model (in a recipe: remove int8_qat from "
                                   "export.targets and set export.qat.enabled: false), or build it from "
                                   "Conv2d/BatchNorm2d/ReLU/Linear modules in nn.Sequential blocks") from None
    return wrapped, groups


def freeze(qat_model: nn.Module) -> None:
    """Stop updating the activation ranges and BatchNorm statistics (the end of a QAT schedule). The weights'
    range keeps following the weights, as the export's will (`_CurrentWeightRange`)."""
    from torch.ao.nn.intrinsic.qat import freeze_bn_stats
    from torch.ao.quantization import disable_observer

    qat_model.apply(disable_observer)
    for module in qat_model.modules():
        weight_fake_quant = getattr(module, "weight_fake_quant", None)
        if weight_fake_quant is not None:
            weight_fake_quant.enable_observer()
    qat_model.apply(freeze_bn_stats)


@torch.no_grad()
def to_float(qat_model: nn.Module, original: nn.Module, groups: Sequence[Sequence[str]]) -> nn.Module:
    """The original float architecture carrying the QAT-trained weights (conv, BatchNorm parameters and
    running statistics copied back from the fused modules), ready for edgekd's FP32 export."""
    trained = dict(qat_model.model.named_modules())
    result = copy.deepcopy(original)
    target = dict(result.named_modules())
    fused_heads = {group[0]: group for group in groups}
    for name, module in target.items():
        if not isinstance(module, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)):
            continue
        if name in fused_heads or not any(name in g for g in groups):
            source = trained[name]  # the fused head (or an unfused layer) keeps the conv/linear name
            module.weight.copy_(source.weight)
            if module.bias is not None:
                bias = getattr(source, "bias", None)
                module.bias.copy_(bias if bias is not None else torch.zeros_like(module.bias))
            if isinstance(module, nn.BatchNorm2d):  # an unfused BatchNorm
                _copy_bn(module, source)
        else:  # a BatchNorm fused into the conv before it: the QAT ConvBn module holds it as `.bn`
            head = next(g[0] for g in groups if name in g)
            if isinstance(module, nn.BatchNorm2d):
                _copy_bn(module, trained[head].bn)
    return result.eval()


def _copy_bn(module: nn.BatchNorm2d, source: nn.BatchNorm2d) -> None:
    for attr in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
        value = getattr(source, attr, None)
        if value is not None and getattr(module, attr, None) is not None:
            getattr(module, attr).copy_(value)


def qat_distill(model: nn.Module, teacher: nn.Module | np.ndarray, x: np.ndarray, target: np.ndarray, *,
                steps: int, batch_size: int, lr: float, temperature: float = 4.0, alpha: float = 0.9,
                seed: int = 0, calibration: np.ndarray | None = None, freeze_at: float = 0.75,
                weight_decay: float = 0.0, return_qat: bool = False, reduce_range: bool = False,
                loss: str = "kd", loss_params: dict[str, float] | None = None):
    """Fine-tune a fake-quant copy of `model` for `steps` steps with the KD loss against `teacher` (a model, or
    its logits on `x`), then return the float model with the QAT-trained weights (export it with
    `qat_export_onnx`). `model` is not modified.

    The loss is `LOSSES[loss]` with `loss_params` (a recipe's distill.loss, see strategies.response_params);
    without `loss_params`, kd with `temperature` and `alpha`.

    `calibration` inputs, when given, are run through the fake-quant model in eval mode before training so the
    observers start from the artifact's calibration ranges instead of the first batch. Observers and
    BatchNorm statistics freeze after `freeze_at` of the steps. With `return_qat`, returns
    (float model, fake-quant model) so the fake-quant model can serve as a parity reference. `reduce_range`
    trains for 7-bit weights: pass what the export will use (`qat_export_onnx(..., reduce_range=)`).
    """
    from edgekd.compress.prune import keep_zeros, zero_masks
    from edgekd.distill.losses import LOSSES
    from edgekd.distill.trainer import ResponseObjective, fit, predict_logits

    if steps <= 0:
        raise CompressionError(f"quantization-aware distillation needs steps ≥ 1, got {steps}",
                               fix="give steps ≥ 1 (in a recipe, export.qat.epochs ≥ 1)")
    teacher_logits = teacher if isinstance(teacher, np.ndarray) else predict_logits(teacher, x)
    if len(teacher_logits) != len(x):
        raise CompressionError(f"{len(teacher_logits)} teacher logits for {len(x)} training samples",
                               fix="give the teacher's logits on exactly the training inputs")
    qat_model, groups = prepare_qat_model(model, reduce_range)
    if calibration is not None and len(calibration):
        with torch.no_grad():
            qat_model.eval()  # BatchNorm keeps its statistics; fake-quant observers still record ranges
            qat_model(torch.from_numpy(np.ascontiguousarray(calibration, dtype=np.float32)))
    freeze_step = max(1, int(steps * freeze_at))
    done = [0]
    masks = zero_masks(qat_model)  # a pruned model's zeros (fused ConvBn modules hold the conv's own weight)

    def after_step() -> None:
        keep_zeros(masks)
        done[0] += 1
        if done[0] == freeze_step:
            freeze(qat_model)

    params = dict(loss_params) if loss_params is not None else {"temperature": temperature, "alpha": alpha}
    objective = ResponseObjective(LOSSES[loss], teacher_logits, params)
    fit(qat_model, x, target, steps=steps, batch_size=batch_size, lr=lr, weight_decay=weight_decay, seed=seed,
        objective=objective, description="quantization-aware distillation", after_step=after_step)
    freeze(qat_model)
    qat_model.eval()
    result = to_float(qat_model, model, groups)
    spec = getattr(model, "edgekd_spec", None)
    if spec is not None:
        result.edgekd_spec = spec
    return (result, qat_model) if return_qat else result


def qat_export_onnx(model: nn.Module, in_shape: tuple[int, ...], path: Path, calibration: np.ndarray, *,
                    opset: int = 18, reduce_range: bool = False) -> Path:
    """Export a `qat_distill` result as a static INT8 QDQ ONNX graph (via an FP32 export next to `path`, which
    is removed afterwards), with the weight grid it was trained for (`reduce_range`). Returns `path`."""
    from edgekd.export.onnx import export_onnx, quantize_static_int8

    path = Path(path)
    fp32 = path.with_name(path.stem + ".qat-fp32.onnx")
    try:
        export_onnx(model, tuple(in_shape), fp32, opset=opset)
        quantize_static_int8(fp32, path, calibration, reduce_range=reduce_range)
    finally:
        fp32.unlink(missing_ok=True)
    return path


def qdq_nodes(path: Path) -> dict[str, int]:
    """How many QuantizeLinear / DequantizeLinear nodes an ONNX file holds."""
    import onnx

    graph = onnx.load(str(path)).graph
    return {op: sum(node.op_type == op for node in graph.node) for op in ("QuantizeLinear", "DequantizeLinear")}
