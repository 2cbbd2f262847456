"""A rank's share of a batch in distributed training, and how losses reduce over it so N ranks step as one process.

`trainer.fit(distributed=True)` gives every rank the same batch and each its rows `idx[rank::world]`;
DistributedDataParallel then averages the ranks' gradients. A loss that is a mean over its own rows would
weight a row by 1/share instead of 1/batch, so uneven shares (5 and 4 rows), or labelled rows spread unevenly
(a rank without labels halves the cross-entropy gradient), would change the gradient. Inside `batch_share`,
losses return their rows' part of the whole batch's mean, times world (DDP divides by it again): the averaged
gradient is then the single-process gradient on the whole batch. Relation losses, which compare samples with
each other, see the whole batch through `gather_rows`.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Iterator

import torch


@dataclass(frozen=True)
class Share:
    """This rank's place in the batch: its rank, every rank's row count, and the batch's labelled rows."""

    rank: int
    sizes: tuple[int, ...]
    labelled: int

    @property
    def world(self) -> int:
        return len(self.sizes)

    @property
    def rows(self) -> int:
        return sum(self.sizes)


_CURRENT: ContextVar[Share | None] = ContextVar("edgekd_batch_share", default=None)


@contextmanager
def batch_share(share: Share | None) -> Iterator[None]:
    """Losses computed inside reduce as this rank's part of the whole batch (None: a whole batch, as usual)."""
    token = _CURRENT.set(share)
    try:
        yield
    finally:
        _CURRENT.reset(token)


def current_share() -> Share | None:
    return _CURRENT.get()


def of_rows(loss: torch.Tensor, rows: int) -> torch.Tensor:
    """`loss`, a mean over this rank's `rows` rows, as their part of the whole batch's mean × world."""
    share = _CURRENT.get()
    return loss if share is None else loss * (rows * share.world / share.rows)


def of_labelled(loss: torch.Tensor, labelled: int) -> torch.Tensor:
    """`loss`, a mean over this rank's `labelled` labelled rows, as their part of the batch's labelled mean × world."""
    share = _CURRENT.get()
    if share is None or share.labelled == 0:
        return loss
    return loss * (labelled * share.world / share.labelled)


def gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Every rank's rows of `x` (rank by rank), the gradient flowing only to this rank's own rows.

    Every rank then computes a relation loss L on the whole batch; the caller weights it by world, so DDP's
    average of the ranks' gradients is ∂L through every rank's own rows: the single-process gradient
    (relation losses do not depend on the order of the samples).
    """
    share = _CURRENT.get()
    if share is None:
        return x
    import torch.distributed as dist

    pad = max(share.sizes) - x.shape[0]
    sent = x.detach()
    if pad:
        sent = torch.cat([sent, sent.new_zeros((pad, *x.shape[1:]))])
    parts = [torch.empty_like(sent) for _ in share.sizes]
    dist.all_gather(parts, sent.contiguous())
    rows = [part[:n] for part, n in zip(parts, share.sizes)]
    rows[share.rank] = x
    return torch.cat(rows)


def weighted_by_world(loss: torch.Tensor) -> torch.Tensor:
    """A whole-batch loss every rank computes: its gradient × world (DDP divides by it), its value unchanged."""
    share = _CURRENT.get()
    if share is None or share.world == 1:
        return loss
    return loss + (share.world - 1) * (loss - loss.detach())
