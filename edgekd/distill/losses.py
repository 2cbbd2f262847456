"""Distillation losses: pure functions on tensors, registered by name.

Two kinds of entry live in `LOSSES`; `loss_kind(name)` tells them apart:
- "logits": `LOSSES[name](student_logits, teacher_logits, target=None, **params) -> scalar Tensor` (kd, ce, dkd);
- "features": `LOSSES[name](student_feat, teacher_feat, **params) -> scalar Tensor` (hint, mse, cosine,
  attention, similarity, rkd; defined in `edgekd.distill.feature_losses`). `needs_same_shape(name)` says
  whether the caller must adapt the student feature to the teacher's shape first.
`target` holds class indices; -1 marks a sample whose label the student may not see
(the unlabelled part of a transfer set), which contributes to the soft term only.
Batch means go through `batch_share` (of_rows, of_labelled), so a distributed rank's share of a batch adds
exactly its part of the whole batch's loss.

KD convention (Hinton et al.; torchdistill's KDLoss):
    loss = α · T² · KL(softmax(t/T) ‖ softmax(s/T)) + (1 − α) · CE(s, y)
α weights the *soft* term. Texts that weight the hard term with α instead use α' = 1 − α;
texts that leave out T² put it into their weight: their β = α · T².

Multi-teacher KD is not a registry entry: `ensemble_kd` / `ensemble_targets` take teacher logits [K, N, C].
"""

from __future__ import annotations

from typing import Callable, Literal, Sequence

import torch
import torch.nn.functional as F

from edgekd.distill.batch_share import of_labelled, of_rows
from edgekd.registry import Registry

LossFn = Callable[..., torch.Tensor]
LOSSES: Registry[LossFn] = Registry("loss", "losses")

UNLABELLED = -1

LossKind = Literal["logits", "features"]
EnsembleMode = Literal["soft_average", "loss_average", "confidence"]
ENSEMBLE_MODES: tuple[str, ...] = ("soft_average", "loss_average", "confidence")


def _loss(name: str, kind: LossKind, *, same_shape: bool = False,
          relational: bool = False) -> Callable[[LossFn], LossFn]:
    """Register `fn` under `name` and record its kind, whether it compares features element-wise, and whether
    it relates the batch's samples to each other (so it is not a mean of per-sample terms)."""
    if kind not in ("logits", "features"):
        raise ValueError(f"loss kind must be 'logits' or 'features', not {kind!r}")

    def decorator(fn: LossFn) -> LossFn:
        fn.kind = kind  # type: ignore[attr-defined]
        fn.same_shape = same_shape  # type: ignore[attr-defined]
        fn.relational = relational  # type: ignore[attr-defined]
        return LOSSES.register(name)(fn)

    return decorator


def loss_kind(name: str) -> str:
    """'logits' or 'features' for a registered loss (RegistryError for an unknown name)."""
    return str(getattr(LOSSES[name], "kind"))


def needs_same_shape(name: str) -> bool:
    """True when the loss compares features element-wise (hint, mse, cosine): the caller must adapt shapes first."""
    return bool(getattr(LOSSES[name], "same_shape", False))


def is_relational(name: str) -> bool:
    """True when the loss relates the batch's samples to each other (similarity, rkd), rather than averaging
    per-sample terms: a distributed rank must see the whole batch for it (batch_share.gather_rows)."""
    return bool(getattr(LOSSES[name], "relational", False))


def _hard_ce(student_logits: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
    """Cross-entropy over the labelled samples of the batch (0 when none is labelled).

    The 0 keeps the autograd graph, so a batch (or a distributed rank's share) without labels still backpropagates.
    """
    if target is None:
        return student_logits.new_zeros(())
    labelled = target != UNLABELLED
    count = int(labelled.sum())
    if not count:
        return (student_logits * 0).sum()
    return of_labelled(F.cross_entropy(student_logits[labelled], target[labelled]), count)


def _soft_kl_to(student_logits: torch.Tensor, teacher_log_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """T² · KL(p ‖ softmax(s/T)) for a teacher distribution given as log-probabilities, mean over the batch."""
    t = temperature
    kl = F.kl_div(F.log_softmax(student_logits / t, dim=-1), teacher_log_probs, reduction="batchmean", log_target=True)
    return of_rows(kl, len(student_logits)) * (t * t)


def soft_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T² · KL(softmax(t/T) ‖ softmax(s/T)), mean over the batch (T² keeps gradients T-independent)."""
    return _soft_kl_to(student_logits, F.log_softmax(teacher_logits / temperature, dim=-1), temperature)


@_loss("kd", "logits")
def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None, target: torch.Tensor | None = None,
            *, temperature: float = 4.0, alpha: float = 0.9) -> torch.Tensor:
    """Response KD. YAML: `loss: {name: kd, temperature: 4, alpha: 0.9}` (α weights the soft term)."""
    if teacher_logits is None:
        raise ValueError("kd needs teacher logits")
    soft = soft_kl(student_logits, teacher_logits, temperature)
    if alpha >= 1.0:
        return soft
    return alpha * soft + (1.0 - alpha) * _hard_ce(student_logits, target)


@_loss("ce", "logits")
def ce_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None = None,
            target: torch.Tensor | None = None, **_: float) -> torch.Tensor:
    """Plain cross-entropy on labels (the scratch baseline). YAML: `loss: {name: ce}`."""
    return _hard_ce(student_logits, target)


def _binary_and_rest(logits: torch.Tensor, gt: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """log [p_gt, 1 − p_gt] (N, 2) and log-softmax over the non-gt classes (N, C − 1), all at temperature T.

    Computed in log space from logsumexps, so nothing is -inf or NaN for finite logits.
    """
    z = logits / temperature
    n, c = z.shape
    log_all = torch.logsumexp(z, dim=-1, keepdim=True)
    others = ~F.one_hot(gt, c).bool()
    z_rest = z[others].view(n, c - 1)
    log_rest = torch.logsumexp(z_rest, dim=-1, keepdim=True)
    log_binary = torch.cat([z.gather(1, gt[:, None]) - log_all, log_rest - log_all], dim=1)
    return log_binary, z_rest - log_rest


@_loss("dkd", "logits")
def dkd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None, target: torch.Tensor | None = None,
             *, alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0,
             ce_weight: float = 1.0) -> torch.Tensor:
    """Decoupled KD (Zhao et al., CVPR 2022): ce_weight · CE + α · TCKD + β · NCKD.

    TCKD = T² · KL over the binary split [target class, all others]; NCKD = T² · KL among the non-target
    classes only (both batch means, as in the authors' mdistiller code; their warm-up factor is the caller's).
    With β = 1 − p_target(teacher) per sample, α = 1 and ce_weight = 0 this is exactly `soft_kl`.
    `target` is required; a sample marked -1 (unlabelled) is decoupled at the *teacher's argmax* class and
    adds nothing to the CE term. YAML: `loss: {name: dkd, temperature: 4, params: {alpha: 1, beta: 8}}`.
    """
    if teacher_logits is None:
        raise ValueError("dkd needs teacher logits")
    if target is None:
        raise ValueError("dkd needs a target (use -1 for unlabelled samples: they are decoupled at the "
                         "teacher's argmax)")
    if student_logits.shape[-1] < 2:
        raise ValueError("dkd needs at least 2 classes")
    gt = torch.where(target == UNLABELLED, teacher_logits.argmax(dim=-1), target)
    s_bin, s_rest = _binary_and_rest(student_logits, gt, temperature)
    t_bin, t_rest = _binary_and_rest(teacher_logits, gt, temperature)
    t2 = temperature * temperature
    n = len(student_logits)
    tckd = of_rows(F.kl_div(s_bin, t_bin, reduction="batchmean", log_target=True), n) * t2
    loss = alpha * tckd
    if student_logits.shape[-1] > 2:  # with 2 classes there is no non-target distribution to match
        loss = loss + beta * of_rows(F.kl_div(s_rest, t_rest, reduction="batchmean", log_target=True), n) * t2
    if ce_weight:
        loss = loss + ce_weight * _hard_ce(student_logits, target)
    return loss


# --- multi-teacher (ensemble) KD -------------------------------------------------------------------------------

def _log_teacher_weights(teacher_logits: torch.Tensor, weights: Sequence[float] | None) -> torch.Tensor:
    """log of the static teacher weights, normalised to sum 1, shape (K, 1, 1)."""
    k = teacher_logits.shape[0]
    if weights is None:
        w = teacher_logits.new_full((k,), 1.0 / k)
    else:
        w = torch.as_tensor(list(weights), dtype=teacher_logits.dtype, device=teacher_logits.device)
        if w.shape != (k,):
            raise ValueError(f"ensemble weights: got {w.numel()} weights for {k} teachers")
        if not bool(torch.isfinite(w).all()) or bool((w < 0).any()) or float(w.sum()) <= 0:
            raise ValueError(f"ensemble weights must be finite, non-negative and not all zero: {list(weights)}")
        w = w / w.sum()
    return torch.log(w).view(k, 1, 1)


def _check_teachers(student_logits: torch.Tensor | None, teacher_logits: torch.Tensor) -> None:
    if teacher_logits.dim() != 3 or teacher_logits.shape[0] < 1:
        raise ValueError(f"ensemble teacher logits must be [K, N, C] with K ≥ 1, got {tuple(teacher_logits.shape)}")
    if student_logits is not None and student_logits.shape != teacher_logits.shape[1:]:
        raise ValueError(f"student logits {tuple(student_logits.shape)} do not match the teachers' "
                         f"[N, C] = {tuple(teacher_logits.shape[1:])}")


def ensemble_targets(teacher_logits: torch.Tensor, mode: EnsembleMode = "soft_average",
                     weights: Sequence[float] | None = None, temperature: float = 4.0) -> torch.Tensor:
    """Log-probabilities [N, C] of the ensemble's soft target at temperature T, from teacher logits [K, N, C].

    soft_average and loss_average: Σ_k w_k softmax(t_k/T) (w normalised to sum 1). For loss_average this is the
    target whose KL has the same student gradient as Σ_k w_k KL_k (the two differ by a student-independent
    constant). confidence: per sample, w_kn ∝ w_k · max softmax(t_k) (at T = 1), normalised over teachers.
    Computed in log space (logsumexp), so no entry is -inf for finite logits.
    """
    _check_teachers(None, teacher_logits)
    if mode not in ENSEMBLE_MODES:
        raise ValueError(f"unknown ensemble mode {mode!r}; known: {', '.join(ENSEMBLE_MODES)}")
    log_w = _log_teacher_weights(teacher_logits, weights)  # (K, 1, 1)
    if mode == "confidence":
        log_conf = F.log_softmax(teacher_logits, dim=-1).amax(dim=-1, keepdim=True)  # (K, N, 1)
        log_w = log_w + log_conf
        log_w = log_w - torch.logsumexp(log_w, dim=0, keepdim=True)
    return torch.logsumexp(log_w + F.log_softmax(teacher_logits / temperature, dim=-1), dim=0)


def ensemble_kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor | None = None,
                *, mode: EnsembleMode = "soft_average", weights: Sequence[float] | None = None,
                temperature: float = 4.0, alpha: float = 0.9) -> torch.Tensor:
    """Multi-teacher KD with the `kd` convention: α · T² · KL(ensemble ‖ student) + (1 − α) · CE (labelled rows).

    soft_average: KD against the weighted mean of the teachers' softened probabilities (Hinton et al. 2015).
    loss_average: Σ_k w_k · kd(s, t_k) — the per-teacher losses averaged (You et al. 2017).
    confidence: KD against a per-sample mixture weighted by each teacher's confidence (max prob at T = 1).
    An ensemble of K identical teachers equals single-teacher `kd` in every mode.
    """
    _check_teachers(student_logits, teacher_logits)
    if mode not in ENSEMBLE_MODES:
        raise ValueError(f"unknown ensemble mode {mode!r}; known: {', '.join(ENSEMBLE_MODES)}")
    if mode == "loss_average":
        w = _log_teacher_weights(teacher_logits, weights).exp().flatten()
        soft = student_logits.new_zeros(())
        for k in range(teacher_logits.shape[0]):
            if float(w[k]) > 0:
                soft = soft + w[k] * soft_kl(student_logits, teacher_logits[k], temperature)
    else:
        soft = _soft_kl_to(student_logits, ensemble_targets(teacher_logits, mode, weights, temperature), temperature)
    if alpha >= 1.0:
        return soft
    return alpha * soft + (1.0 - alpha) * _hard_ce(student_logits, target)


# The feature losses register into the same LOSSES registry (import at the bottom: it needs `_loss` above).
import edgekd.distill.feature_losses  # noqa: E402,F401
