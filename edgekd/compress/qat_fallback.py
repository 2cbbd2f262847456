"""The export stage's quantization-aware distillation: when a role's post-training INT8 (ONNX int8_static) loses
more accuracy than `export.qat.max_int8_loss` allows, or when the recipe asks for it, fine-tune that role's model
with fake quantization against the teacher that role learned from (`qat_teacher`; edgekd.compress.qat) and export
it as `<role>-onnx-int8_qat`.

The QAT artifact is an addition, not a replacement: the post-training one stays, so the report shows both.
Its parity reference is the fake-quant PyTorch model it was trained as (what the artifact implements); its
quantization record also says how it compares with the FP32 model and the post-training artifact.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from edgekd.export.artifact import Artifact
from edgekd.progress import Reporter, SilentReporter

if TYPE_CHECKING:
    from torch import nn

    from edgekd.data import Splits
    from edgekd.export.formats import ExportOptions
    from edgekd.recipe import Recipe

logger = logging.getLogger(__name__)

PRECISION = "int8_qat"
FORMAT = "onnx"


# What decides "auto": (FP32 accuracy, int8_static accuracy), 0-1, on the validation split — never the test split,
# which only reports (deciding on it, then comparing on it, would credit QAT with the bad luck that triggered it).
Validation = Callable[[Artifact], tuple[float, float]]


@dataclass(frozen=True)
class QatDecision:
    """Whether a role gets a QAT artifact, why, and the post-training test-split numbers it is compared with
    (accuracy, 0-1; the auto rule itself decides on the validation split)."""

    run: bool
    reason: str
    fp32_accuracy: float | None = None
    ptq_accuracy: float | None = None

    @property
    def ptq_loss_points(self) -> float | None:
        if self.fp32_accuracy is None or self.ptq_accuracy is None:
            return None
        return (self.fp32_accuracy - self.ptq_accuracy) * 100


def decide(recipe: "Recipe", role: str, artifacts: list[Artifact], validation: Validation | None = None) -> QatDecision:
    """QAT for `role` when its targets list int8_qat, when export.qat.enabled is true and it has an ONNX INT8
    target, or (auto) when its ONNX int8_static artifact loses more than max_int8_loss points vs FP32 on the
    validation split (`validation(ptq_artifact)`, e.g. `validation_accuracies`); without it, auto does not run."""
    cfg, targets = recipe.export.qat, list(recipe.export.targets.get(role) or [])
    ptq = next((a for a in artifacts if a.format == FORMAT and a.precision == "int8_static" and a.parity), None)
    fp32 = next((a for a in artifacts if a.format == FORMAT and a.precision == "fp32" and a.parity), None)
    fp32_acc = fp32.parity.accuracy if fp32 else (ptq.parity.reference_accuracy if ptq else None)
    numbers = {"fp32_accuracy": fp32_acc, "ptq_accuracy": ptq.parity.accuracy if ptq else None}
    if FORMAT not in recipe.export.formats:
        return QatDecision(False, "QAT artifacts are ONNX and onnx is not in export.formats", **numbers)
    if PRECISION in targets:
        return QatDecision(True, f"export.targets.{role} lists {PRECISION}", **numbers)
    if cfg.enabled is False:
        return QatDecision(False, "export.qat.enabled is false", **numbers)
    if "int8_static" not in targets:
        return QatDecision(False, f"export.targets.{role} has no ONNX int8_static artifact", **numbers)
    if cfg.enabled is True:
        return QatDecision(True, "export.qat.enabled is true", **numbers)
    if ptq is None or fp32_acc is None:
        return QatDecision(False, "no int8_static accuracy to compare with FP32", **numbers)
    if validation is None:
        return QatDecision(False, "auto: no validation accuracy to decide on (the test split only reports)",
                           **numbers)
    fp32_val, ptq_val = validation(ptq)
    loss = (fp32_val - ptq_val) * 100
    verdict = ">" if loss > cfg.max_int8_loss else "≤"
    return QatDecision(loss > cfg.max_int8_loss,
                       f"auto: int8_static loses {loss:.2f} points vs FP32 on the validation split ({verdict} "
                       f"max_int8_loss {cfg.max_int8_loss:g})", **numbers)


def validation_accuracies(ptq: Artifact, *, model: "nn.Module", splits: "Splits") -> tuple[float, float]:
    """(FP32 model, int8_static artifact) accuracy on the validation split: what the auto rule decides on."""
    from edgekd.distill.trainer import accuracy, predict_logits
    from edgekd.export.verify import onnx_predict

    return (accuracy(predict_logits(model, splits.x_val), splits.y_val),
            accuracy(onnx_predict(ptq.path, splits.x_val), splits.y_val))


@dataclass(frozen=True)
class QatTeacher:
    """Whom a role's QAT learns from, for its lineage: `logits(inputs, rows)` on the transfer set (rows index the
    training split), and the checkpoint it is (None for black-box outputs and the role's own model)."""

    name: str
    logits: Callable[[np.ndarray, np.ndarray], np.ndarray]
    checkpoint_sha256: str | None = None


def qat_teacher(recipe: "Recipe", splits: "Splits", role: str, model: "nn.Module",
                trained: Callable[[str], "nn.Module"], checkpoint_sha256: Callable[[str], str]) -> QatTeacher:
    """The teacher a role learned from, so QAT recovers what quantization lost without bringing in knowledge
    the FP32 model never had: the scratch baseline (which never sees the teacher), the teacher itself and a
    self-distilled or mutual student learn from their own FP32 model; a black-box student from the black-box
    outputs; a compressed model from its recovery teacher; other students from the run's teacher."""
    from edgekd.compress.recovery import recovers_from_blackbox
    from edgekd.distill.api import blackbox_logits_fn
    from edgekd.distill.trainer import predict_logits

    def checkpoint(name: str, of: str) -> QatTeacher:
        return QatTeacher(name, lambda x, rows: predict_logits(trained(of), x), checkpoint_sha256(of))

    blackbox = QatTeacher("black-box teacher's outputs",
                          lambda x, rows: blackbox_logits_fn(recipe, splits, rows)())
    strategy = recipe.distill.strategy
    if role == "compressed":
        if recovers_from_blackbox(recipe):
            return blackbox
        if recipe.compress.recovery.teacher == "uncompressed":
            return checkpoint(f"{recipe.compress.source} checkpoint (uncompressed)", recipe.compress.source)
        return checkpoint("teacher checkpoint", "teacher")
    if role == "student" and strategy == "blackbox":
        return blackbox
    if role == "student" and strategy not in ("self", "mutual"):
        return checkpoint("teacher checkpoint", "teacher")
    return QatTeacher("its own FP32 model", lambda x, rows: predict_logits(model, x))


def qat_artifact(recipe: "Recipe", splits: "Splits", *, role: str, model: "nn.Module", teacher: QatTeacher,
                 decision: QatDecision, out_root: Path, options: "ExportOptions", lineage: dict[str, Any],
                 reporter: Reporter | None = None) -> Artifact:
    """Distil `model` with fake quantization from `teacher` (export.qat.epochs over the transfer set, the
    recipe's response loss distill.loss with its parameters), export it as `<role>-onnx-int8_qat` and record
    how it compares."""
    from edgekd.compress.isa import choose_reduce_range
    from edgekd.compress.qat import qat_distill
    from edgekd.distill.api import transfer_set
    from edgekd.distill.strategies import response_params
    from edgekd.distill.trainer import predict_logits, steps_for
    from edgekd.exporter import artifact_name, export_retrained

    reporter = reporter or SilentReporter()
    cfg, train, loss = recipe.export.qat, recipe.distill.train, recipe.distill.loss
    x, target, rows = transfer_set(recipe, splits)
    steps = steps_for(len(x), train.batch_size, cfg.epochs)
    reduce_range = choose_reduce_range(options.int8_reduce_range, options.int8_targets)["reduce_range"]
    teacher_logits = teacher.logits(x, rows)  # before training: `model` may be the teacher
    params = response_params(loss)
    trained, fake_quant = qat_distill(model, teacher_logits, x, target, steps=steps, batch_size=train.batch_size,
                                      lr=cfg.lr, loss=loss.name, loss_params=params, seed=recipe.seed,
                                      calibration=options.calibration, weight_decay=train.weight_decay,
                                      return_qat=True, reduce_range=reduce_range)
    named = {"temperature": loss.temperature, "alpha": loss.alpha} if loss.name == "kd" else {}
    qat_step = {"step": "qat", "reason": decision.reason, "epochs": cfg.epochs, "steps": steps, "lr": cfg.lr,
                **named, "loss": loss.name, "loss_params": params, "teacher": teacher.name,
                "teacher_checkpoint_sha256": teacher.checkpoint_sha256,
                "weight_grid": "7-bit" if reduce_range else "8-bit"}
    name = artifact_name(role, FORMAT, PRECISION)
    artifact = export_retrained(
        trained, name=name, role=role, fmt=FORMAT, precision=PRECISION, quantize_as="int8_static",
        out_root=out_root, in_shape=splits.input_shape, x_test=splits.x_test, y_test=splits.y_test,
        num_classes=splits.num_classes, options=options, reference=predict_logits(fake_quant, splits.x_test),
        reference_name=f"PyTorch {role} (QAT fake-quant)", min_agreement=recipe.export.parity.min_agreement,
        lineage={**lineage, "derived_from": lineage.get("checkpoint"),
                 "steps": [*(lineage.get("steps") or [f"{role} checkpoint"]), qat_step,
                           {"step": "int8_static", "format": "QDQ", "calibration": options.calibration_method,
                            "reduce_range": reduce_range}]})
    artifact.quantization = {**(artifact.quantization or {}), "qat": _comparison(decision, artifact, model, splits)}
    artifact.save()
    _note(reporter, name, decision, artifact)
    return artifact


def _comparison(decision: QatDecision, artifact: Artifact, model: "nn.Module", splits: "Splits") -> dict[str, Any]:
    """How the QAT artifact compares with the FP32 model and the post-training artifact (accuracies 0-1)."""
    from edgekd.distill.trainer import predict_logits
    from edgekd.export.verify import onnx_predict

    qat_acc = artifact.parity.accuracy
    fp32_acc = decision.fp32_accuracy
    if fp32_acc is None:
        fp32_acc = float((predict_logits(model, splits.x_test).argmax(1) == splits.y_test).mean())
    agreement = float((onnx_predict(artifact.path, splits.x_test).argmax(1)
                       == predict_logits(model, splits.x_test).argmax(1)).mean())
    gap = decision.ptq_loss_points
    # at most the whole gap: QAT trains for more epochs, so it can beat FP32 ("closes 1400% of the INT8 gap")
    closed = None if gap is None or gap <= 0 else min(((qat_acc - (decision.ptq_accuracy or 0)) * 100) / gap, 1.0)
    return {"reason": decision.reason, "fp32_accuracy": fp32_acc, "ptq_accuracy": decision.ptq_accuracy,
            "qat_accuracy": qat_acc, "ptq_loss_points": gap, "qat_loss_points": (fp32_acc - qat_acc) * 100,
            "gap_closed": closed, "agreement_with_fp32_model": agreement}


def _note(reporter: Reporter, name: str, decision: QatDecision, artifact: Artifact) -> None:
    q = artifact.quantization["qat"]
    ptq = "" if q["ptq_accuracy"] is None else f", int8_static {q['ptq_accuracy']:.2%}"
    message = (f"{name} ({decision.reason}): accuracy {q['qat_accuracy']:.2%} (FP32 {q['fp32_accuracy']:.2%}{ptq})"
               + ("" if artifact.parity.passed else f"; FAILED parity: {artifact.parity.reason}"))
    reporter.note(message)
    logger.info(message)
