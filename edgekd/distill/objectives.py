"""Training objectives of the distillation families: what one step of `trainer.fit` minimises.

Each objective is `objective(model, x, target, index) -> loss` (see trainer.Objective): `index` picks the
batch's rows of precomputed teacher outputs, so a frozen teacher's logits are computed once (and cached),
while feature terms run the teacher live under no_grad, because intermediate activations are not cached.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from edgekd.distill.batch_share import gather_rows, of_rows, weighted_by_world
from edgekd.distill.losses import LOSSES, UNLABELLED, ensemble_kd, is_relational, kd_loss
from edgekd.distill.trainer import Objective

LOGITS = "logits"  # the feature path that names a model's output


@dataclass
class FeatureTerm:
    """One weighted feature/relation loss between a student and a teacher activation."""

    loss: str
    student: str
    teacher: str
    weight: float
    params: dict[str, float]
    key: str  # adapter key in the ModuleDict (nn.Identity where shapes already match)


def _unwrap(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel (hooks are registered on the inner module)."""
    return getattr(model, "module", model)


class FeatureTerms:
    """Feature/relation terms with their adapters; taps the student and runs the teacher live."""

    def __init__(self, terms: Sequence[FeatureTerm], teacher: nn.Module | None, adapters: nn.ModuleDict) -> None:
        self.terms = list(terms)
        self.teacher = teacher
        self.adapters = adapters
        self._student_tap = None
        self._teacher_tap = None

    def attach(self, student: nn.Module) -> None:
        from edgekd.distill.features import FeatureTap

        self.close()
        paths = sorted({t.student for t in self.terms if t.student != LOGITS})
        self._student_tap = FeatureTap(student, paths, role="student") if paths else None
        teacher_paths = sorted({t.teacher for t in self.terms if t.teacher != LOGITS})
        if self.teacher is not None and teacher_paths:
            self._teacher_tap = FeatureTap(self.teacher, teacher_paths, role="teacher")

    def close(self) -> None:
        for tap in (self._student_tap, self._teacher_tap):
            if tap is not None:
                tap.close()
        self._student_tap = self._teacher_tap = None

    def parameters(self) -> list[torch.Tensor]:
        return list(self.adapters.parameters())

    def loss(self, x: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
        """Σ weight · loss(adapter(student feature), teacher feature) for the batch just run by the student."""
        if not self.terms:
            return student_logits.new_zeros(())
        teacher_logits = None
        if self.teacher is not None:
            with torch.no_grad():
                teacher_logits = self.teacher(x)
        total = student_logits.new_zeros(())
        for term in self.terms:
            s = student_logits if term.student == LOGITS else self._student_tap.features[term.student]
            t = teacher_logits if term.teacher == LOGITS else self._teacher_tap.features[term.teacher]
            s = self.adapters[term.key](s)
            if is_relational(term.loss):  # on a distributed rank: the whole batch's relations
                value = weighted_by_world(LOSSES[term.loss](gather_rows(s), gather_rows(t.detach()), **term.params))
            else:  # a mean over the samples: on a distributed rank, its rows' part of the batch's mean
                value = of_rows(LOSSES[term.loss](s, t.detach(), **term.params), len(s))
            total = total + term.weight * value
        return total


class DistillObjective(Objective):
    """Response term against precomputed teacher logits (one teacher, or an ensemble) + feature terms.

    teacher_logits: (N, C) for one teacher, or (K, N, C) for an ensemble combined with `ensemble`
    (mode, weights, temperature, alpha) by losses.ensemble_kd.
    """

    def __init__(self, loss_name: str, loss_params: dict[str, Any], teacher_logits: np.ndarray,
                 features: FeatureTerms | None = None, ensemble: dict[str, Any] | None = None) -> None:
        self.loss_fn = LOSSES[loss_name]
        self.loss_params = loss_params
        self.teacher = torch.from_numpy(np.array(teacher_logits, dtype=np.float32))  # a writable copy of the memmap
        self.features = features
        self.ensemble = ensemble

    def attach(self, student: nn.Module) -> "DistillObjective":
        if self.features is not None:
            self.features.attach(student)
        return self

    def close(self) -> None:
        if self.features is not None:
            self.features.close()

    def parameters(self) -> list[torch.Tensor]:
        return self.features.parameters() if self.features is not None else []

    def __call__(self, model, x, target, index):
        logits = model(x)
        if self.ensemble is not None:
            loss = ensemble_kd(logits, self.teacher[:, index], target, **self.ensemble)
        else:
            loss = self.loss_fn(logits, self.teacher[index], target, **self.loss_params)
        if self.features is not None:
            loss = loss + self.features.loss(x, logits)
        return loss


class HintObjective(Objective):
    """A progressive stage: only the hint between one student layer and one teacher layer."""

    def __init__(self, features: FeatureTerms) -> None:
        self.features = features

    def parameters(self) -> list[torch.Tensor]:
        return self.features.parameters()

    def __call__(self, model, x, target, index):
        return self.features.loss(x, model(x))


class AuxiliaryHeads(nn.Module):
    """Deep supervision: a classifier head on each named student layer (pooled and flattened)."""

    def __init__(self, shapes: dict[str, tuple[int, ...]], num_classes: int) -> None:
        super().__init__()
        self.paths = list(shapes)
        self.heads = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(shape[0], num_classes)) if len(shape) == 3
            else nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(shape)), num_classes))
            for shape in shapes.values())


class DeepSupervisionObjective(Objective):
    """Self-distillation inside one network (Zhang et al., 2019, "Be Your Own Teacher"): the final classifier
    teaches auxiliary heads on earlier layers (KD at temperature T), every head also learns the labels, and
    the heads are dropped afterwards: the exported student is the plain network."""

    def __init__(self, student: nn.Module, heads: AuxiliaryHeads, temperature: float, alpha: float) -> None:
        from edgekd.distill.features import FeatureTap

        self.heads = heads
        self.temperature = temperature
        self.alpha = alpha
        self.tap = FeatureTap(student, heads.paths, role="student")

    def parameters(self) -> list[torch.Tensor]:
        return list(self.heads.parameters())

    def close(self) -> None:
        self.tap.close()

    def __call__(self, model, x, target, index):
        logits = model(x)
        loss = LOSSES["ce"](logits, None, target)
        final = logits.detach()
        for path, head in zip(self.heads.paths, self.heads.heads):
            aux = head(self.tap.features[path])
            loss = loss + kd_loss(aux, final, target, temperature=self.temperature, alpha=self.alpha)
        return loss


class Peers(nn.Module):
    """Students trained together (deep mutual learning); forward gives peer 0, `all_peers=True` all of them."""

    def __init__(self, peers: Sequence[nn.Module]) -> None:
        super().__init__()
        self.peers = nn.ModuleList(peers)

    def forward(self, x: torch.Tensor, all_peers: bool = False) -> torch.Tensor:
        if all_peers:
            return torch.stack([p(x) for p in self.peers])
        return self.peers[0](x)


class MutualObjective(Objective):
    """Deep mutual learning (Zhang et al., 2018): each peer learns the labels and, from every other peer's
    (detached) soft predictions, T²·KL; no pre-trained teacher."""

    def __init__(self, temperature: float, alpha: float) -> None:
        self.temperature = temperature
        self.alpha = alpha

    def __call__(self, model, x, target, index):
        logits = model(x, all_peers=True)
        k = logits.shape[0]
        loss = logits.new_zeros(())
        for i in range(k):
            others = [logits[j].detach() for j in range(k) if j != i]
            soft = sum(kd_loss(logits[i], o, None, temperature=self.temperature, alpha=1.0) for o in others) / len(others)
            hard = LOSSES["ce"](logits[i], None, target)
            loss = loss + self.alpha * soft + (1.0 - self.alpha) * hard
        return loss


__all__ = ["LOGITS", "FeatureTerm", "FeatureTerms", "DistillObjective", "HintObjective", "AuxiliaryHeads",
           "DeepSupervisionObjective", "Peers", "MutualObjective", "UNLABELLED"]
