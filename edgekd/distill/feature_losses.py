"""Feature distillation losses, registered into `edgekd.distill.losses.LOSSES` with kind "features".

Signature: `LOSSES[name](student_feat, teacher_feat, **params) -> scalar Tensor`. Any adapter (1×1 conv,
linear projection) is the caller's and is applied to the student feature *before* the loss.
- hint, mse, cosine compare element-wise: shapes must match (`needs_same_shape(name)` is True), else FeatureError.
- attention, similarity, rkd compare structure: channel / feature counts may differ; the batch size may not.
Losses that are scale-invariant divide the inputs by their (detached) max-abs value first, so huge finite
inputs cannot overflow to inf/NaN; this changes neither the value nor the gradient of the exact loss.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from edgekd.distill.losses import _loss
from edgekd.errors import FeatureError

_EPS = 1e-12


def _shapes(student: torch.Tensor, teacher: torch.Tensor) -> str:
    return f"student feature {tuple(student.shape)}, teacher feature {tuple(teacher.shape)}"


def _check_same_shape(name: str, student: torch.Tensor, teacher: torch.Tensor) -> None:
    if student.shape != teacher.shape:
        raise FeatureError(
            f"{name} loss: feature shapes differ ({_shapes(student, teacher)})",
            why=f"{name} compares teacher and student features element by element, so the shapes must be equal",
            fix="put an adapter (1×1 conv or linear layer) on the student feature that maps it to the teacher's "
                "shape, or use a shape-agnostic feature loss (attention, similarity, rkd)",
        )


def _check_batch(name: str, student: torch.Tensor, teacher: torch.Tensor) -> None:
    if student.dim() < 2 or teacher.dim() < 2 or student.shape[0] != teacher.shape[0]:
        raise FeatureError(
            f"{name} loss: features must be batches of the same size ({_shapes(student, teacher)})",
            why=f"{name} pairs the i-th student sample with the i-th teacher sample (dimension 0 is the batch)",
            fix="feed teacher and student the same batch and hook features of shape (N, ...) with N ≥ 1",
        )


def _unit_scale(x: torch.Tensor, per_sample: bool) -> torch.Tensor:
    """x / max|x| (per sample or over the whole batch), the max detached: exact for scale-invariant losses.

    An all-zero sample (a dead ReLU map) is left as it is: dividing it by a tiny clamp would give its
    gradient a factor 1/tiny, which overflows to inf (and NaN weight gradients).
    """
    dims = tuple(range(1, x.dim())) if per_sample else tuple(range(x.dim()))
    scale = x.detach().abs().amax(dim=dims, keepdim=True)
    return x / torch.where(scale > 0, scale, torch.ones_like(scale))


def _unit_rows(x: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """x / ‖x‖ along `dim`. An all-zero vector (a dead feature, two coincident samples' difference) stays 0
    with a gradient of scale 1; F.normalize's eps would give it 1/eps = 1e12, and Adam's second moment then
    damps that parameter for thousands of steps."""
    norm = torch.linalg.vector_norm(x, dim=dim, keepdim=True)
    return x / torch.where(norm > 0, norm, torch.ones_like(norm))


def _zero(x: torch.Tensor) -> torch.Tensor:
    """A 0 that keeps the autograd graph (so `loss.backward()` works on a degenerate batch)."""
    return (x * 0).sum()


@_loss("hint", "features", same_shape=True)
def hint_loss(student_feat: torch.Tensor, teacher_feat: torch.Tensor) -> torch.Tensor:
    """FitNets hint (Romero et al., ICLR 2015): MSE (mean over elements) of the adapted student vs teacher feature.

    The paper writes ½‖·‖² summed; the mean (as in the authors' and mdistiller's code) keeps the scale
    independent of the feature size.
    """
    _check_same_shape("hint", student_feat, teacher_feat)
    return F.mse_loss(student_feat, teacher_feat)


@_loss("mse", "features", same_shape=True)
def mse_loss(student_feat: torch.Tensor, teacher_feat: torch.Tensor) -> torch.Tensor:
    """Plain mean squared error between equally shaped features (e.g. embedding or logit matching)."""
    _check_same_shape("mse", student_feat, teacher_feat)
    return F.mse_loss(student_feat, teacher_feat)


@_loss("cosine", "features", same_shape=True)
def cosine_loss(student_feat: torch.Tensor, teacher_feat: torch.Tensor) -> torch.Tensor:
    """1 − cos(student, teacher) per sample on flattened features, mean over the batch (direction, not scale).

    A zero feature vector has cosine 0 with anything (loss 1), not NaN.
    """
    _check_same_shape("cosine", student_feat, teacher_feat)
    _check_batch("cosine", student_feat, teacher_feat)
    s = _unit_rows(_unit_scale(student_feat.flatten(1), per_sample=True))
    t = _unit_rows(_unit_scale(teacher_feat.flatten(1), per_sample=True))
    return (1.0 - (s * t).sum(dim=1)).mean()


_POOL = {3: F.adaptive_avg_pool1d, 4: F.adaptive_avg_pool2d, 5: F.adaptive_avg_pool3d}


def _attention_map(feat: torch.Tensor, p: float, size: tuple[int, ...] | None) -> torch.Tensor:
    """Q = mean over channels of |f|^p, pooled to `size` (maps only), flattened and L2-normalised per sample."""
    a = _unit_scale(feat, per_sample=True).abs().pow(p)
    if feat.dim() > 2:
        a = a.mean(dim=1)
        if size is not None and tuple(a.shape[1:]) != size:
            a = _POOL[feat.dim()](a.unsqueeze(1), size).squeeze(1)
    return _unit_rows(a.flatten(1))


def check_attention_p(p: float) -> None:
    """Attention transfer needs p ≥ 1: the derivative of |f|^p at f = 0 is infinite for p < 1, and ReLU
    maps are full of exact zeros, so every such element would get a NaN gradient."""
    if not (isinstance(p, (int, float)) and not isinstance(p, bool) and math.isfinite(p) and p >= 1):
        raise FeatureError(f"attention loss: p must be a number ≥ 1, got {p!r}",
                           why="the derivative of |f|^p is infinite at f = 0 for p < 1, so ReLU features "
                               "(exact zeros) would get NaN gradients",
                           fix="use p = 2 (the paper's value) or any p ≥ 1")


@_loss("attention", "features")
def attention_loss(student_feat: torch.Tensor, teacher_feat: torch.Tensor, *, p: float = 2.0) -> torch.Tensor:
    """Attention transfer (Zagoruyko & Komodakis, ICLR 2017): match normalised spatial energy maps.

    For maps (N, C, *spatial) — usually (N, C, H, W) — Q = mean_c |f|^p, flattened and L2-normalised per sample;
    loss = mean over the batch of ‖Q_s − Q_t‖² (the *squared L2 distance*, in [0, 2]; the authors' code
    `(Q_s − Q_t).pow(2).mean()` equals this divided by H·W, so their β = 1000 corresponds to about 1000 / (H·W)
    here). Channel counts may differ. Spatial sizes may differ: each side's energy map is adaptive-average-pooled
    to the per-axis minimum (pooling |f|^p, not f, so signed activations do not cancel).
    For 2-D (N, D) features there is no spatial axis: Q = |f|^p normalised per sample, and D must match.
    """
    _check_batch("attention", student_feat, teacher_feat)
    check_attention_p(p)
    if student_feat.dim() != teacher_feat.dim() or student_feat.dim() > 5:
        raise FeatureError(
            f"attention loss: feature ranks differ or are unsupported ({_shapes(student_feat, teacher_feat)})",
            why="attention transfer compares (N, C, *spatial) maps with 1 to 3 spatial axes, or (N, D) vectors, "
                "of the same rank on both sides",
            fix="hook teacher and student layers of the same kind (both conv maps or both vectors)",
        )
    size = None
    if student_feat.dim() == 2:
        if student_feat.shape[1] != teacher_feat.shape[1]:
            raise FeatureError(
                f"attention loss: vector features differ in size ({_shapes(student_feat, teacher_feat)})",
                why="for (N, D) features the attention map is |f|^p itself, compared position by position",
                fix="hook conv feature maps (channel counts may differ there) or adapt the student to D",
            )
    else:
        size = tuple(min(a, b) for a, b in zip(student_feat.shape[2:], teacher_feat.shape[2:]))
    q_s = _attention_map(student_feat, p, size)
    q_t = _attention_map(teacher_feat, p, size)
    return (q_s - q_t).pow(2).sum(dim=1).mean()


def _similarity(feat: torch.Tensor) -> torch.Tensor:
    f = _unit_scale(feat.flatten(1), per_sample=False)
    return _unit_rows(f @ f.t())


@_loss("similarity", "features", relational=True)
def similarity_loss(student_feat: torch.Tensor, teacher_feat: torch.Tensor) -> torch.Tensor:
    """Similarity-preserving KD (Tung & Mori, ICCV 2019): match the batch's row-normalised Gram matrices.

    G = normalise_rows(F Fᵀ) on flattened features (N × N, so channel counts may differ);
    loss = ‖G_s − G_t‖_F² / N². Invariant to a positive scale of either feature tensor.
    """
    _check_batch("similarity", student_feat, teacher_feat)
    n = student_feat.shape[0]
    return (_similarity(student_feat) - _similarity(teacher_feat)).pow(2).sum() / (n * n)


def _pairwise_distances(e: torch.Tensor) -> torch.Tensor:
    """Euclidean distances (N, N) from differences (exact 0 on the diagonal, safe gradient there), / their mean.

    The mean is over the positive distances, as in the authors' code.
    """
    d = torch.linalg.vector_norm(e.unsqueeze(0) - e.unsqueeze(1), dim=-1)
    mean = d.sum() / (d.detach() > 0).sum().clamp_min(1)
    return d / mean.clamp_min(_EPS)


def _angles(e: torch.Tensor) -> torch.Tensor:
    """cos ∠(e_j − e_i, e_k − e_i) for all (i, j, k), flattened (N³ entries, as in the authors' code)."""
    v = _unit_rows(e.unsqueeze(0) - e.unsqueeze(1), dim=2)
    return torch.bmm(v, v.transpose(1, 2)).flatten()


@_loss("rkd", "features", relational=True)
def rkd_loss(student_feat: torch.Tensor, teacher_feat: torch.Tensor, *,
             distance_weight: float = 1.0, angle_weight: float = 2.0) -> torch.Tensor:
    """Relational KD (Park et al., CVPR 2019): match the batch's distance and angle structure.

    distance_weight · smooth-L1(d_s, d_t) + angle_weight · smooth-L1(cos∠_s, cos∠_t), each a mean, on flattened
    features (feature sizes may differ); pairwise distances are divided by their mean, so the loss is invariant
    to a uniform scale of either side. Defaults 1 and 2 are the official repository's metric-learning ratios;
    the CIFAR re-implementations (RepDistiller, mdistiller) use 25 and 50 with this same per-element-mean
    scaling — pass those to reproduce them. The distance term needs N ≥ 2 and the angle term N ≥ 3; each is 0 below.
    """
    _check_batch("rkd", student_feat, teacher_feat)
    n = student_feat.shape[0]
    s = _unit_scale(student_feat.flatten(1), per_sample=False)
    t = _unit_scale(teacher_feat.flatten(1), per_sample=False)
    loss = _zero(student_feat)
    if n >= 2 and distance_weight:
        loss = loss + distance_weight * F.smooth_l1_loss(_pairwise_distances(s), _pairwise_distances(t))
    if n >= 3 and angle_weight:
        loss = loss + angle_weight * F.smooth_l1_loss(_angles(s), _angles(t))
    return loss
