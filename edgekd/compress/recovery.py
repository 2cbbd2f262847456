"""Compress a trained model and win back the accuracy it cost with KD fine-tuning (recovery).

Accuracy is measured before pruning, right after it and after recovery, so the report shows what each
step cost and what distillation recovered. Zeroed weights (unstructured, N:M) stay zero during recovery.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from edgekd.progress import Reporter, SilentReporter
from edgekd.recipe import Recipe

if TYPE_CHECKING:
    from edgekd.compress.prune import PruneResult
    from edgekd.data import Splits
    from edgekd.recipe import PruneConfig


@dataclass
class CompressOutcome:
    model: nn.Module
    plan: dict[str, Any]
    steps: list[str]  # what was done, in order (the artifact's lineage)
    metrics: dict[str, Any] = field(default_factory=dict)


def _describe_loss(name: str, params: dict[str, Any]) -> str:
    """The recovery loss for the lineage: kd as 'T=4.0, α=0.9', others by name and parameters."""
    if name == "kd" and set(params) == {"temperature", "alpha"}:
        return f"T={params['temperature']}, α={params['alpha']}"
    return ", ".join([name, *(f"{k}={v}" for k, v in params.items())])


def recovers_from_blackbox(recipe: Recipe) -> bool:
    """Recovery from "the teacher" of a black-box run means the teacher the student learned from: its outputs
    (distill.blackbox.source), not the teacher this run trains for comparison, which the student never saw."""
    return recipe.compress.recovery.teacher == "teacher" and recipe.distill.strategy == "blackbox"


def recovery_teacher_name(recipe: Recipe) -> str:
    return "black-box teacher's outputs" if recovers_from_blackbox(recipe) else recipe.compress.recovery.teacher


def recovery_logits(recipe: Recipe, splits: "Splits", teacher: nn.Module | None, x: np.ndarray,
                    rows: np.ndarray) -> np.ndarray:
    """The recovery teacher's logits on the transfer set `x` (rows `rows` of the training split)."""
    from edgekd.distill.api import blackbox_logits_fn
    from edgekd.distill.trainer import predict_logits

    if recovers_from_blackbox(recipe):
        return blackbox_logits_fn(recipe, splits, rows)()
    if teacher is None:
        raise ValueError("a recovery teacher model is needed outside black-box runs")
    return predict_logits(teacher, x)


def prune_as_configured(model: nn.Module, in_shape: tuple[int, ...], p: "PruneConfig") -> tuple["PruneResult", str]:
    """Prune `model` in place as compress.prune says; returns the result and its lineage step."""
    from edgekd.compress.prune import prune, prune_to_budget

    if p.method == "structured" and p.max_parameters is not None:
        result = prune_to_budget(model, in_shape, p.max_parameters, round_to=p.round_to, skip=p.skip)
        return result, (f"structured pruning to ≤ {p.max_parameters:,} parameters (ratio {result.plan['ratio']:.3f}, "
                        f"{result.plan['channels_removed']:.0%} of channels removed)")
    result = prune(model, in_shape, p.method, p.ratio, round_to=p.round_to, skip=p.skip, nm=p.nm)
    return result, {"structured": f"structured pruning {p.ratio:.0%} of channels (multiples of {p.round_to}; "
                                  f"{result.plan.get('channels_removed', 0):.0%} removed)",
                    "unstructured": f"unstructured magnitude pruning {p.ratio:.0%} of weights "
                                    f"({result.plan.get('sparsity', 0):.0%} zero)",
                    "nm": f"{p.nm[0]}:{p.nm[1]} sparsity ({result.plan.get('sparsity', 0):.0%} of the prunable "
                          "weights zero)"}[p.method]


def check_pruning(model: nn.Module, in_shape: tuple[int, ...], p: "PruneConfig") -> None:
    """Prune a copy of a fresh (untrained) model of the source's architecture as compress.prune says, so that a
    setting that cannot work there (a model torch-pruning cannot trace, a budget out of reach, N:M without a group
    of M inputs) fails before any training: what it depends on is the architecture, not the weights."""
    prune_as_configured(copy.deepcopy(model), in_shape, p)


def compress_and_recover(recipe: Recipe, splits: "Splits", source: nn.Module, teacher: nn.Module | None, *,
                         reporter: Reporter | None = None) -> CompressOutcome:
    """Prune a copy of `source` as `recipe.compress.prune` says, then distil from `teacher` (in a black-box run
    with recovery.teacher "teacher": from the black-box outputs, see recovers_from_blackbox) for
    `recovery.epochs` passes over the transfer set with the recipe's response loss (distill.loss: its name,
    temperature, alpha and params; distill.features terms are not used, the pruned layers may have changed)."""
    from edgekd.compress.prune import keep_zeros, zero_masks
    from edgekd.distill.api import transfer_set
    from edgekd.distill.losses import LOSSES
    from edgekd.distill.strategies import response_params
    from edgekd.distill.trainer import accuracy, fit, predict_logits, steps_for

    cfg = recipe.compress
    reporter = reporter or SilentReporter()
    p = cfg.prune

    def test_accuracy(model: nn.Module) -> float:
        return accuracy(predict_logits(model, splits.x_test), splits.y_test)

    before = test_accuracy(source)
    result, what = prune_as_configured(copy.deepcopy(source), splits.input_shape, p)
    steps = [f"{cfg.source} checkpoint", what]
    after_prune = test_accuracy(result.model)
    metrics: dict[str, Any] = {
        "method": p.method, "parameters_before": result.parameters_before, "parameters_after": result.parameters_after,
        "zeroed_weights": result.zeros, "channels_removed": result.plan.get("channels_removed"),
        "sparsity": result.plan.get("sparsity"), "accuracy_before": before, "accuracy_after_prune": after_prune,
        "notes": result.notes}
    r = cfg.recovery
    if r.epochs > 0:
        x, target, rows = transfer_set(recipe, splits)
        masks = zero_masks(result.model)

        loss = recipe.distill.loss
        t = recipe.distill.train
        params = response_params(loss)
        training = fit(result.model, x, target, loss_fn=LOSSES[loss.name], teacher_logits=recovery_logits(recipe, splits, teacher, x, rows),
                       loss_params=params, steps=steps_for(len(x), t.batch_size, r.epochs), batch_size=t.batch_size,
                       lr=r.lr, weight_decay=t.weight_decay, seed=recipe.seed, val=(splits.x_val, splits.y_val),
                       reporter=reporter, description="KD recovery",
                       after_step=partial(keep_zeros, masks) if masks else None)
        steps.append(f"KD recovery: {r.epochs} epochs from the {recovery_teacher_name(recipe)} "
                     f"({_describe_loss(loss.name, params)})")
        metrics.update(accuracy_after_recovery=test_accuracy(result.model), recovery_steps=training.steps,
                       recovery_seconds=round(training.seconds, 2))
    return CompressOutcome(result.model, result.plan, steps, metrics)
