"""The training loop shared by the teacher, the distilled student and the scratch baseline.

All three take the same number of optimizer steps of the same batch size with the same seed, so
"KD vs scratch" compares what the student learns from, not how long it trains.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from edgekd.distill.batch_share import Share, batch_share
from edgekd.distill.losses import UNLABELLED, LossFn
from edgekd.errors import TrainingError
from edgekd.progress import Reporter, SilentReporter

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    steps: int
    seconds: float
    final_loss: float
    val_accuracy: float
    history: list[dict[str, float]] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def steps_for(n_samples: int, batch_size: int, epochs: int) -> int:
    """Optimizer steps of `epochs` passes over `n_samples` (the shared training budget)."""
    return epochs * batches_per_pass(n_samples, batch_size)


def batches_per_pass(n: int, batch_size: int) -> int:
    """Batches of one pass over n samples (_pass_slices)."""
    return len(_pass_slices(n, batch_size))


def _pass_slices(n: int, batch_size: int) -> list[tuple[int, int]]:
    """(start, end) of each batch of one pass over n samples. A pass's one sample left over joins its last batch:
    alone, it crashed batch norm over 1×1 maps ("more than 1 value per channel")."""
    size = min(batch_size, n)
    starts = list(range(0, n, size))
    if len(starts) > 1 and n - starts[-1] == 1:
        starts.pop()
    return list(zip(starts, starts[1:] + [n]))


def _batches(n: int, batch_size: int, steps: int, rng: np.random.Generator):
    """Yield `steps` index batches, reshuffling at every pass over the n samples (_pass_slices)."""
    slices = _pass_slices(n, batch_size)
    done = 0
    while done < steps:
        order = rng.permutation(n)
        for start, end in slices:
            if done == steps:
                return
            yield order[start:end]
            done += 1


@torch.no_grad()
def predict_logits(model: nn.Module, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Logits of `model` on a numpy array, in eval mode, as float32 numpy."""
    model.eval()
    outs = [model(torch.from_numpy(x[i:i + batch_size])).float().numpy() for i in range(0, len(x), batch_size)]
    return np.concatenate(outs) if outs else np.zeros((0,), dtype=np.float32)


def accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    return float((logits.argmax(axis=1) == y).mean()) if len(y) else float("nan")


class Objective:
    """What a training step minimises: `objective(model, x, target, index) -> loss`.

    `index` holds the batch's row numbers in the training arrays (for precomputed teacher outputs);
    `parameters()` are extra trainable tensors the objective owns (feature adapters, auxiliary heads),
    optimised with the model and never exported.
    """

    def __call__(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def parameters(self) -> list[torch.Tensor]:
        return []


class ResponseObjective(Objective):
    """loss_fn(student logits, teacher logits of the batch (precomputed) or None, target, **params)."""

    def __init__(self, loss_fn: LossFn, teacher_logits: np.ndarray | None = None,
                 params: dict[str, float] | None = None) -> None:
        self.loss_fn = loss_fn
        self.teacher = torch.from_numpy(np.ascontiguousarray(teacher_logits)) if teacher_logits is not None else None
        self.params = params or {}

    def __call__(self, model, x, target, index):
        teacher = self.teacher[index] if self.teacher is not None else None
        return self.loss_fn(model(x), teacher, target, **self.params)


def distributed_world() -> tuple[int, int]:
    """(rank, world size) of the torch.distributed group this process is in, (0, 1) outside one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def fit(
    model: nn.Module,
    x: np.ndarray,
    target: np.ndarray,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    seed: int,
    loss_fn: LossFn | None = None,
    teacher_logits: np.ndarray | None = None,
    loss_params: dict[str, float] | None = None,
    objective: Objective | None = None,
    val: tuple[np.ndarray, np.ndarray] | None = None,
    reporter: Reporter | None = None,
    description: str = "train",
    on_epoch: Callable[[int], None] | None = None,
    distributed: bool = False,
    after_step: Callable[[], None] | None = None,
) -> TrainResult:
    """Train `model` for exactly `steps` AdamW steps on (x, target) minimising `objective`
    (or, for the plain case, `loss_fn` against precomputed `teacher_logits`).

    `target` uses -1 for samples whose label may not be used. A cosine learning-rate schedule
    runs over the whole budget, so equal budgets mean equal schedules.

    `distributed=True` inside a torch.distributed group (torchrun, gloo on CPU): every rank draws the
    same batch, trains on its rows idx[rank::world], and gradients are averaged. Losses reduce a share as
    its part of the whole batch's mean (edgekd.distill.batch_share), so the averaged gradient is the
    single-process gradient on the whole batch even when shares or their labelled rows are uneven; the
    logged loss is the whole batch's. A batch with fewer rows than ranks is trained whole on every rank.
    BatchNorm layers still normalise each share by its own statistics (torch 2.13's SyncBatchNorm refuses
    CPU tensors; the reporter gets a note). Only `model` is wrapped in
    DistributedDataParallel, from the second step on and over the parameters the first step's loss reached
    (see _wrap_after_first_step); the objective's own parameters (adapters, heads) are averaged by an
    explicit all-reduce.
    `after_step` runs after every optimizer step (e.g. to keep pruned weights at zero).
    """
    import time

    if objective is None:
        if loss_fn is None:
            raise ValueError("fit needs a loss_fn or an objective")
        objective = ResponseObjective(loss_fn, teacher_logits, loss_params)
    rank, world = distributed_world() if distributed else (0, 1)
    seed_everything(seed)
    rng = np.random.default_rng(seed)
    reporter = reporter or SilentReporter()
    if world > 1 and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        reporter.note(f"note: {description}: under DDP each process's BatchNorm normalises its own share of a batch "
                      "(torch's SyncBatchNorm refuses CPU tensors), so it does not train as one process would "
                      "(README: Several processes or machines)")
    extra = [p for p in objective.parameters() if p.requires_grad]
    # fused: one kernel per step instead of a Python loop of per-tensor ops; on the CPU it is ~5x faster
    # (a 30k x 128 token table: 8 ms against 42 ms a step), the same update up to float rounding.
    optimizer = torch.optim.AdamW([*model.parameters(), *extra], lr=lr, weight_decay=weight_decay, fused=True)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(steps, 1))
    trained: nn.Module = model  # under DDP: wrapped after the first step (_wrap_after_first_step)
    frozen: list[nn.Parameter] = []
    x_t = torch.from_numpy(np.ascontiguousarray(x))
    y_t = torch.from_numpy(np.ascontiguousarray(target)).long()
    per_pass = batches_per_pass(len(x), batch_size)
    task = reporter.task(description, steps)
    history: list[dict[str, float]] = []
    loss_value = float("nan")
    val_acc = float("nan")
    start = time.perf_counter()
    model.train()
    try:
        for step, idx in enumerate(_batches(len(x), batch_size, steps, rng), start=1):
            share = _share_of(idx, y_t, rank, world)
            index = torch.from_numpy(idx[rank::world] if share is not None else idx)
            with batch_share(share):
                loss = objective(trained, x_t[index], y_t[index], index)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if world > 1:
                if trained is model:
                    trained, frozen = _wrap_after_first_step(model, world)
                _average_gradients(extra, world)
            optimizer.step()
            if after_step is not None:
                after_step()
            schedule.step()
            loss_value = _batch_loss(loss, share)  # the whole batch's: every rank decides alike
            if not math.isfinite(loss_value):
                raise _diverged(description, step, steps, loss_value)
            if step % per_pass == 0 or step == steps:
                if val is not None:
                    val_acc = accuracy(predict_logits(model, val[0]), val[1])
                    model.train()
                history.append({"step": step, "loss": loss_value, "val_accuracy": val_acc})
                if on_epoch is not None:
                    on_epoch(step // per_pass)
            task.advance(1, loss=loss_value, val_accuracy=val_acc)
    finally:
        for p in frozen:
            p.requires_grad_(True)
        del trained  # the DDP wrapper's reducer unhooks the parameters when it goes
    task.close()
    model.eval()
    return TrainResult(steps=steps, seconds=time.perf_counter() - start, final_loss=loss_value,
                       val_accuracy=val_acc, history=history)


def _diverged(description: str, step: int, steps: int, loss_value: float) -> TrainingError:
    """A NaN or infinite loss: every later step would be NaN too, and the export would fail on its weights."""
    return TrainingError(f"{description} diverged: its loss is {loss_value} at step {step} of {steps}",
                         why="the learning rate is too high for this model and data, or the inputs or the "
                             "teacher's outputs hold NaN or infinite values",
                         fix="lower this training's lr in the recipe (teacher/distill/scratch/compress `train: "
                             "{lr: ...}`) and run again")


def _share_of(idx: np.ndarray, target: torch.Tensor, rank: int, world: int) -> Share | None:
    """This rank's share of the batch `idx`; None outside DDP, or when the batch has fewer rows than ranks
    (every rank then trains on all of it: DDP averages equal gradients)."""
    if world == 1 or len(idx) < world:
        return None
    sizes = tuple(len(idx[r::world]) for r in range(world))
    return Share(rank, sizes, int((target[torch.from_numpy(idx)] != UNLABELLED).sum()))


def _batch_loss(loss: torch.Tensor, share: Share | None) -> float:
    """The whole batch's loss: on a share, the sum of the ranks' parts (each × world) over world."""
    if share is None:
        return float(loss.detach())
    import torch.distributed as dist

    total = loss.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return float(total) / share.world


def _wrap_after_first_step(model: nn.Module, world: int) -> tuple[nn.Module, list[nn.Parameter]]:
    """After the first step's backward (run on the bare model): average its gradients by hand, freeze the
    parameters no rank's loss reached, and wrap the model in DistributedDataParallel for the later steps.

    Why: an objective may leave parameters unused, e.g. a progressive hint stage trains the student only up
    to the tapped layer although the forward runs it whole. DDP's default then waits for gradients that never
    come and fails at the next step; find_unused_parameters looks for unused parameters from the forward's
    output (the logits, which reach every parameter), so it fails the same way; static_graph runs but, as the
    forward's output is not in the loss, never averages the gradients (each rank steps on its own share's).
    Frozen parameters (requires_grad off, restored by fit) are outside DDP and get no gradient, exactly as in
    one process, where AdamW skips parameters without a gradient. The set a loss reaches is fixed for an
    objective (edgekd's models have no data-dependent branches), so the first step tells it for all of them.
    """
    import torch.distributed as dist

    params = [p for p in model.parameters() if p.requires_grad]
    used = torch.tensor([p.grad is not None for p in params], dtype=torch.uint8)
    dist.all_reduce(used, op=dist.ReduceOp.MAX)  # reached on any rank: every rank then reduces the same tensors
    frozen = []
    for p, u in zip(params, used.tolist()):
        if not u:
            p.requires_grad_(False)
            frozen.append(p)
        elif p.grad is None:
            p.grad = torch.zeros_like(p)
    _average_gradients([p for p in params if p.grad is not None], world)
    return _wrap_distributed(model), frozen


def _wrap_distributed(model: nn.Module) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model)


def _average_gradients(parameters: list[torch.Tensor], world: int) -> None:
    """Average the gradients over the ranks in one all-reduce (every rank must pass the same tensors)."""
    import torch.distributed as dist

    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= world
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def masked_targets(y: np.ndarray, labelled: np.ndarray) -> np.ndarray:
    """Labels where the student may see them, UNLABELLED (-1) elsewhere."""
    return np.where(labelled, y, UNLABELLED).astype(np.int64)
