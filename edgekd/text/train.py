"""Training for the text task: the teacher's class head, the distilled student and the scratch baseline.

The student learns the teacher's sentence embeddings (cosine, the feature term), the pairwise similarity
structure of each batch (similarity-preserving relation KD) and the teacher head's class distribution
(response KD, α·T²·KL + (1−α)·CE where a label is known). Teacher outputs are computed once and kept as
arrays, so a training step never runs the 22M-parameter teacher.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from edgekd.distill.feature_losses import cosine_loss, similarity_loss
from edgekd.distill.losses import ce_loss, kd_loss
from edgekd.distill.trainer import Objective, TrainResult, fit, seed_everything
from edgekd.progress import Reporter


@dataclass(frozen=True)
class TextLossWeights:
    cosine: float = 1.0
    relation: float = 1.0
    response: float = 1.0
    temperature: float = 4.0
    alpha: float = 0.9
    response_into_encoder: bool = True


class TextKDObjective(Objective):
    """cosine(student emb, teacher emb) + relation(similarity matrices) + response KD on the class logits.

    With `response_into_encoder=False` the response term trains the class head alone (on a detached
    embedding): the encoder then follows the teacher's embedding only, which the class KL otherwise bends."""

    def __init__(self, teacher_embeddings: np.ndarray, teacher_logits: np.ndarray, weights: TextLossWeights) -> None:
        self.embeddings = torch.from_numpy(np.ascontiguousarray(teacher_embeddings, dtype=np.float32))
        self.logits = torch.from_numpy(np.ascontiguousarray(teacher_logits, dtype=np.float32))
        self.w = weights

    def __call__(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        embedding = model.encode(trim_padding(x, getattr(model, "pad_id", 0)))
        logits = model.head(embedding if self.w.response_into_encoder else embedding.detach())
        t_emb = self.embeddings[index]
        loss = self.w.cosine * cosine_loss(embedding, t_emb)
        if self.w.relation:
            loss = loss + self.w.relation * similarity_loss(embedding, t_emb)
        if self.w.response:
            loss = loss + self.w.response * kd_loss(logits, self.logits[index], target,
                                                    temperature=self.w.temperature, alpha=self.w.alpha)
        return loss


class LabelsOnlyObjective(Objective):
    """Cross-entropy on the labels alone: the scratch baseline (no teacher anywhere)."""

    def __call__(self, model, x, target, index):
        return ce_loss(model(trim_padding(x, getattr(model, "pad_id", 0)))[0], None, target)


def trim_padding(ids: torch.Tensor, pad_id: int = 0) -> torch.Tensor:
    """Drop the columns that are padding in every row of the batch (right padding): the same outputs, since
    padding is masked out of attention and pooling, for a fraction of the compute on short sentences."""
    used = (ids != pad_id).any(0).nonzero()
    return ids[:, : int(used.max()) + 1] if len(used) else ids[:, :1]


def train_head(embeddings: np.ndarray, labels: np.ndarray, *, seed: int, epochs: int = 300,
               lr: float = 0.05, weight_decay: float = 1e-4) -> nn.Linear:
    """A linear classifier on the frozen teacher's sentence embeddings (full batch; it is small)."""
    seed_everything(seed)
    x = torch.from_numpy(np.ascontiguousarray(embeddings, dtype=np.float32))
    y = torch.from_numpy(labels.astype(np.int64))
    head = nn.Linear(x.shape[1], int(labels.max()) + 1)
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(epochs):
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(head(x * _HEAD_SCALE), y).backward()
        optimizer.step()
    with torch.no_grad():  # fold the input scale into the weights: the head takes unit-norm embeddings as they are
        head.weight.mul_(_HEAD_SCALE)
    return head.eval()


_HEAD_SCALE = 10.0  # unit-norm embeddings give tiny logits at first; scaling them speeds up the fit


def train_student(model: nn.Module, ids: np.ndarray, targets: np.ndarray, *, objective: Objective, steps: int,
                  batch_size: int, lr: float, weight_decay: float, seed: int, reporter: Reporter | None,
                  description: str) -> TrainResult:
    return fit(model, ids, targets, steps=steps, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
               seed=seed, objective=objective, reporter=reporter, description=description)


def predict(model: nn.Module, ids: np.ndarray, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(logits, embeddings) of a PyTorch text model over int64 ids."""
    logits, embeddings = [], []
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(ids), batch_size):
            lo, em = model(torch.from_numpy(ids[start:start + batch_size]))
            logits.append(lo.numpy())
            embeddings.append(em.numpy())
    return np.concatenate(logits), np.concatenate(embeddings)
