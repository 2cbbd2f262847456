"""Distillation losses: pure functions on tensors, registered by name.

Signature: `LOSSES[name](student_logits, teacher_logits, target=None, **params) -> scalar Tensor`.
`target` holds class indices; -1 marks a sample whose label the student may not see
(the unlabelled part of a transfer set), which contributes to the soft term only.

KD convention (Hinton et al.; torchdistill's KDLoss):
    loss = α · T² · KL(softmax(t/T) ‖ softmax(s/T)) + (1 − α) · CE(s, y)
α weights the *soft* term. Texts that weight the hard term with α instead use α' = 1 − α;
texts that leave out T² put it into their weight: their β = α · T².
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from edgekd.registry import Registry

LossFn = Callable[..., torch.Tensor]
LOSSES: Registry[LossFn] = Registry("loss", "losses")

UNLABELLED = -1


def _hard_ce(student_logits: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
    """Cross-entropy over the labelled samples of the batch (0 when none is labelled)."""
    if target is None:
        return student_logits.new_zeros(())
    labelled = target != UNLABELLED
    if not bool(labelled.any()):
        return student_logits.new_zeros(())
    return F.cross_entropy(student_logits[labelled], target[labelled])


def soft_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T² · KL(softmax(t/T) ‖ softmax(s/T)), mean over the batch (T² keeps gradients T-independent)."""
    t = temperature
    return F.kl_div(
        F.log_softmax(student_logits / t, dim=-1),
        F.log_softmax(teacher_logits / t, dim=-1),
        reduction="batchmean",
        log_target=True,
    ) * (t * t)


@LOSSES.register("kd")
def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None, target: torch.Tensor | None = None,
            *, temperature: float = 4.0, alpha: float = 0.9) -> torch.Tensor:
    """Response KD. YAML: `loss: {name: kd, temperature: 4, alpha: 0.9}` (α weights the soft term)."""
    if teacher_logits is None:
        raise ValueError("kd needs teacher logits")
    soft = soft_kl(student_logits, teacher_logits, temperature)
    if alpha >= 1.0:
        return soft
    return alpha * soft + (1.0 - alpha) * _hard_ce(student_logits, target)


@LOSSES.register("ce")
def ce_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None = None,
            target: torch.Tensor | None = None, **_: float) -> torch.Tensor:
    """Plain cross-entropy on labels (the scratch baseline). YAML: `loss: {name: ce}`."""
    return _hard_ce(student_logits, target)
