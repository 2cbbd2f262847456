"""Pruning a student or teacher: structured (channels and neurons physically removed, so the exported graph
is smaller and faster), unstructured magnitude pruning and N:M (2:4) masks (zeros in dense weights: smaller
once compressed, but dense runtimes do not run them faster — reported honestly).

Structured pruning uses torch-pruning's dependency graph (no hand-written graph walking): removing a
conv's output channels also removes the matching BatchNorm entries and the next layer's input channels.
Channel counts are rounded to multiples of `round_to` (8 by default), which CPU kernels handle best; every
layer keeps at least one group, and the share really removed is measured (`channels_removed`).
The classifier (the last Linear the forward runs) keeps its outputs.
The plan (torch-pruning's pruning history: which layer lost which channels) is stored with the
checkpoint, so `rebuild` turns a fresh model of the same family into the pruned architecture again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import torch
from torch import nn

from edgekd.errors import CheckpointError, CompressionError, first_line

logger = logging.getLogger(__name__)

Method = Literal["structured", "unstructured", "nm"]
PRUNABLE = (nn.Linear, nn.Conv2d)


@dataclass
class PruneResult:
    model: nn.Module
    plan: dict[str, Any]  # JSON-able: method, ratio, history (structured), sparsity
    parameters_before: int
    parameters_after: int
    zeros: int = 0  # weights set to zero (unstructured / N:M)
    notes: list[str] = field(default_factory=list)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def zero_masks(model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(weight, where it is non-zero) for every weight matrix or kernel holding zeros: what unstructured and N:M
    pruning zeroed, which any later training (KD recovery, quantization-aware distillation) must keep at zero."""
    return [(p, p != 0) for name, p in model.named_parameters() if name.endswith("weight") and p.dim() > 1
            and bool((p == 0).any())]


@torch.no_grad()
def keep_zeros(masks: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Zero the masked weights again (after an optimizer step moved them)."""
    for weight, mask in masks:
        weight.mul_(mask)


def _channels(model: nn.Module, classifier: nn.Module) -> int:
    """Output channels and neurons of every prunable layer but the classifier: what structured pruning removes."""
    return sum(m.out_channels if isinstance(m, nn.Conv2d) else m.out_features for m in model.modules()
               if isinstance(m, PRUNABLE) and m is not classifier)


def _torch_pruning():
    try:
        import torch_pruning
    except ImportError:
        raise CompressionError("structured pruning needs torch-pruning, which is not installed",
                               why="edgekd lists it as a dependency; this environment lacks it",
                               fix="pip install torch-pruning") from None
    return torch_pruning


def _pruner_class(tp):
    """torch-pruning's MetaPruner, except that rounding to `round_to` keeps at least one group of channels.

    MetaPruner rounds the kept channels down to a multiple of `round_to`; where fewer than `round_to` would
    be left (32 channels at ratio 0.8 with round_to 8) that is zero, which it refuses, and it then leaves the
    layer whole — so ratio 0.9 pruned a cnn less than 0.7 did. Keeping one group is what the ratio asks for
    as nearly as the rounding allows."""

    class KeepOneGroup(tp.pruner.MetaPruner):
        def _round_to(self, n_pruned: int, current_channels: int, round_to: int) -> int:
            kept = current_channels - n_pruned
            kept = max(kept - kept % round_to, min(round_to, current_channels))
            return max(current_channels - kept, 0)

    return KeepOneGroup


def _check_ratio(ratio: float) -> None:
    if not 0.0 < float(ratio) < 1.0:
        raise CompressionError(f"prune ratio {ratio} is outside (0, 1)",
                               why="the ratio is the share of channels (structured) or weights (unstructured) removed",
                               fix="use e.g. 0.25, 0.5 or 0.75")


def _check_budget(max_parameters: int) -> None:
    """A budget of 0 divided by zero in the message saying it cannot be met; a negative one said "-122x"."""
    if isinstance(max_parameters, bool) or not isinstance(max_parameters, int) or max_parameters < 1:
        raise CompressionError(f"a parameter budget must be a whole number ≥ 1, got {max_parameters!r}",
                               why="max_parameters is how many parameters the pruned model may keep at most",
                               fix="give e.g. max_parameters=50000 (compress.prune.max_parameters)")


def _classifier(model: nn.Module, in_shape: Sequence[int] | None = None) -> nn.Module:
    """The Linear layer whose outputs are the classes, never pruned: the last one the forward runs (a model may
    define its head before its body), or without `in_shape` the last one defined."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise CompressionError("the model has no Linear classifier layer", fix="prune a classifier model")
    if in_shape is None:
        return linears[-1]
    ran: list[nn.Module] = []
    hooks = [m.register_forward_hook(lambda module, _inputs, _output: ran.append(module)) for m in linears]
    training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(2, *in_shape))
    except Exception:  # noqa: BLE001 - a forward that fails here fails again, with its error, where it is pruned
        pass
    finally:
        for hook in hooks:
            hook.remove()
        model.train(training)
    return ran[-1] if ran else linears[-1]


def _skipped(model: nn.Module, skip: Sequence[str]) -> list[nn.Module]:
    from edgekd.distill.features import resolve

    return list(resolve(model, list(skip), role="pruned").values()) if skip else []


def prune_structured(model: nn.Module, in_shape: Sequence[int], ratio: float, *, round_to: int | None = 8,
                     skip: Sequence[str] = ()) -> PruneResult:
    """Remove `ratio` of the channels/neurons of every prunable layer (L2 magnitude), rounded to `round_to`."""
    _check_ratio(ratio)
    tp = _torch_pruning()
    classifier = _classifier(model, in_shape)
    before, channels = count_parameters(model), _channels(model, classifier)
    ignored = [classifier, *_skipped(model, skip)]
    example = torch.zeros(2, *in_shape)
    model.eval()
    try:
        pruner = _pruner_class(tp)(model, example, importance=tp.importance.MagnitudeImportance(p=2),
                                      pruning_ratio=float(ratio), ignored_layers=ignored,
                                      round_to=round_to or None, global_pruning=False)
        pruner.step()
    except CompressionError:
        raise
    except Exception as exc:
        raise CompressionError(f"torch-pruning cannot trace {type(model).__name__} for structured pruning",
                               why=first_line(exc),
                               fix="prune with method: unstructured or nm, or skip the layers it cannot follow "
                                   "(compress.prune.skip)") from None
    history = [[name, bool(is_out), [int(i) for i in idxs]] for name, is_out, idxs in pruner.pruning_history()]
    after = count_parameters(model)
    if after == before:
        raise CompressionError(
            f"torch-pruning found no channels it could remove from {type(model).__name__}",
            why="its dependency graph follows autograd: a forward that leaves it (numpy round trips, in-place "
                "tricks, data-dependent Python control flow) hides which layers feed which, every prunable "
                f"layer is skipped, or none has more than round_to ({round_to}) channels to remove a group from",
            fix="make the forward pure torch operations, unskip layers, lower compress.prune.round_to, or use "
                "method: unstructured or nm")
    try:
        with torch.no_grad():
            model(example)
    except Exception as exc:
        raise CompressionError(f"the pruned {type(model).__name__} no longer runs", why=first_line(exc),
                               fix="skip the layer named in the error (compress.prune.skip)") from None
    # measured: rounding to round_to groups (and skipped layers) make it differ from the ratio asked for
    removed = 1 - _channels(model, classifier) / channels
    return PruneResult(model, {"method": "structured", "ratio": float(ratio), "round_to": round_to,
                               "skip": list(skip), "history": history, "channels_removed": removed},
                       parameters_before=before, parameters_after=after)


def _weights(model: nn.Module, skip_modules: list[nn.Module], in_shape: Sequence[int] | None) -> list[torch.Tensor]:
    # a skipped container (skip: [features]) keeps every layer inside it dense, as structured pruning does
    keep_dense = {id(sub) for m in skip_modules for sub in m.modules()} | {id(_classifier(model, in_shape))}
    weights = [m.weight for m in model.modules() if isinstance(m, PRUNABLE) and id(m) not in keep_dense]
    if not weights:
        raise CompressionError(f"{type(model).__name__} has no weights to prune",
                               why="its only Linear/Conv2d layers are the classifier (kept dense) and the skipped ones",
                               fix="remove layers from compress.prune.skip, or compress a model with hidden layers")
    return weights


def _check_no_layer_emptied(model: nn.Module, weights: list[torch.Tensor], threshold: torch.Tensor,
                            ratio: float, in_shape: Sequence[int] | None) -> None:
    """A global threshold above a whole layer's weights zeroes it; without a path around that layer (a residual)
    the output then no longer depends on the input, and recovery, which keeps the zeros, cannot bring it back
    (a cnn at init lost its last conv at ratio 0.95). Checked on a copy, with two inputs, where `in_shape` is known."""
    names = {id(p): name for name, p in model.named_parameters()}
    emptied = [names.get(id(w), "?") for w in weights
               if bool((w != 0).any()) and not bool((w.abs() > threshold).any())]
    if not emptied or in_shape is None or not _constant_output(model, weights, threshold, in_shape):
        return
    raise CompressionError(f"unstructured pruning at ratio {ratio:g} zeroes every weight of {', '.join(emptied)}",
                           why="the global magnitude threshold is above all of that layer's weights: the model's "
                               "output would no longer depend on its input, and recovery keeps the zeros",
                           fix="lower compress.prune.ratio, keep the layer dense (compress.prune.skip), or use "
                               "method: structured or nm")


def _constant_output(model: nn.Module, weights: list[torch.Tensor], threshold: torch.Tensor,
                     in_shape: Sequence[int]) -> bool:
    """Whether a copy of `model` pruned at `threshold` gives every input the same output."""
    import copy

    names = {id(p): name for name, p in model.named_parameters()}
    pruned = copy.deepcopy(model).eval()
    params = dict(pruned.named_parameters())
    for w in weights:
        target = params[names[id(w)]]
        target.mul_(target.abs() > threshold)
    x = torch.randn(2, *in_shape, generator=torch.Generator().manual_seed(0))
    out = pruned(x)
    return bool(torch.equal(out[0], out[1]))


@torch.no_grad()
def prune_unstructured(model: nn.Module, ratio: float, *, skip: Sequence[str] = (),
                       in_shape: Sequence[int] | None = None) -> PruneResult:
    """Zero the `ratio` smallest-magnitude weights over all prunable layers (global threshold)."""
    _check_ratio(ratio)
    weights = _weights(model, _skipped(model, skip), in_shape)
    flat = torch.cat([w.abs().flatten() for w in weights])
    threshold = torch.quantile(flat, float(ratio)) if flat.numel() < 16_000_000 else flat.kthvalue(
        max(1, int(ratio * flat.numel()))).values
    _check_no_layer_emptied(model, weights, threshold, ratio, in_shape)
    zeros = 0
    for w in weights:
        mask = w.abs() > threshold
        w.mul_(mask)
        zeros += int((~mask).sum())
    total = count_parameters(model)
    return PruneResult(model, {"method": "unstructured", "ratio": float(ratio), "skip": list(skip),
                               "sparsity": zeros / flat.numel()},
                       parameters_before=total, parameters_after=total, zeros=zeros,
                       notes=["unstructured sparsity: dense runtimes (onnxruntime, LiteRT/XNNPACK CPU) run the "
                              "zeros like any weight, so latency does not drop; the file compresses better"])


@torch.no_grad()
def prune_nm(model: nn.Module, n: int = 2, m: int = 4, *, skip: Sequence[str] = (),
             in_shape: Sequence[int] | None = None) -> PruneResult:
    """N:M sparsity: in every group of m consecutive input channels keep the n largest weights (2:4 by default).

    Groups run along the input channels at each output channel and kernel position, as sparse tensor cores
    read them (a conv weight (O, Cin, kh, kw) is grouped as (O·kh·kw, Cin)); channels past the last full
    group, and layers with fewer than m input channels, stay dense.
    """
    if not 0 < n < m:
        raise CompressionError(f"N:M sparsity needs 0 < N < M, got {n}:{m}", fix="use 2:4")
    zeros = 0
    weights = _weights(model, _skipped(model, skip), in_shape)
    _check_groups(model, weights, n, m)
    for w in weights:
        moved = w.movedim(1, -1).contiguous()  # input channels last (a Linear weight stays as it is)
        flat = moved.reshape(-1, moved.shape[-1])
        cols = flat.shape[1] - flat.shape[1] % m
        if cols == 0:
            continue
        groups = flat[:, :cols].reshape(flat.shape[0], -1, m)
        drop = groups.abs().argsort(dim=-1)[..., : m - n]
        mask = torch.ones_like(groups, dtype=torch.bool).scatter_(-1, drop, False)
        groups.mul_(mask)
        flat[:, :cols] = groups.reshape(flat.shape[0], cols)
        w.copy_(flat.reshape(moved.shape).movedim(-1, 1))
        zeros += int((~mask).sum())
    total = count_parameters(model)
    # measured: layers with fewer than m input channels, and channels past the last full group, stay dense
    sparsity = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    return PruneResult(model, {"method": "nm", "n": n, "m": m, "skip": list(skip), "sparsity": sparsity},
                       parameters_before=total, parameters_after=total, zeros=zeros,
                       notes=[f"{n}:{m} sparsity pays off on sparse tensor cores (e.g. Ampere GPUs); CPU runtimes "
                              "run the zeros densely"])


def _check_groups(model: nn.Module, weights: list[torch.Tensor], n: int, m: int) -> None:
    """N:M with M above every prunable layer's input channels zeroed nothing, and the run reported 0% sparsity."""
    widest = max(w.shape[1] for w in weights)
    if widest < m:
        raise CompressionError(f"{n}:{m} sparsity finds no group of {m} input channels in {type(model).__name__}",
                               why=f"its widest prunable layer has {widest} input channels; a layer with fewer than "
                                   f"M stays dense, so nothing would be zeroed",
                               fix=f"use M ≤ {widest} (e.g. nm: [2, 4]), or skip fewer layers")


def prune(model: nn.Module, in_shape: Sequence[int], method: Method, ratio: float = 0.5, *,
          round_to: int | None = 8, skip: Sequence[str] = (), nm: tuple[int, int] = (2, 4)) -> PruneResult:
    if method == "structured":
        return prune_structured(model, in_shape, ratio, round_to=round_to, skip=skip)
    if method == "unstructured":
        return prune_unstructured(model, ratio, skip=skip, in_shape=in_shape)
    if method == "nm":
        return prune_nm(model, *nm, skip=skip, in_shape=in_shape)
    raise CompressionError(f"unknown pruning method '{method}'", fix="use structured, unstructured or nm")


def prune_to_budget(model: nn.Module, in_shape: Sequence[int], max_parameters: int, *, round_to: int | None = 8,
                    skip: Sequence[str] = ()) -> PruneResult:
    """The smallest structured ratio whose pruned model has at most `max_parameters` (grid, then bisection;
    every trial prunes a copy)."""
    import copy

    def size(ratio: float) -> int:
        return prune_structured(copy.deepcopy(model), in_shape, ratio, round_to=round_to, skip=skip).parameters_after

    _check_budget(max_parameters)
    before = count_parameters(model)
    if before <= max_parameters:
        return PruneResult(model, {"method": "structured", "ratio": 0.0, "history": [], "skip": list(skip),
                                   "channels_removed": 0.0},
                           parameters_before=before, parameters_after=before)
    grid = [0.1 * k for k in range(1, 10)]
    sizes = {r: size(r) for r in grid}
    fitting = [r for r in grid if sizes[r] <= max_parameters]
    if not fitting:
        smallest = min(sizes.values())
        raise CompressionError(
            f"a budget of {max_parameters:,} parameters cannot be met: the smallest structured pruning leaves "
            f"{smallest:,} ({smallest - max_parameters:,} over, {smallest / max_parameters:.2f}x the budget)",
            why="the classifier and the skipped layers are never pruned, every layer keeps at least one group of "
                f"{round_to or 1} channels",
            fix=f"raise the budget to at least {smallest:,}, lower compress.prune.round_to, or choose a smaller student")
    hi = fitting[0]
    lo = max([r for r in grid if r < hi], default=0.0)
    for _ in range(8):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if size(mid) <= max_parameters else (mid, hi)
    return prune_structured(model, in_shape, hi, round_to=round_to, skip=skip)


def rebuild(model: nn.Module, in_shape: Sequence[int], plan: dict[str, Any]) -> nn.Module:
    """Give a fresh model of the original family the pruned architecture recorded in `plan` (weights are
    loaded afterwards from the pruned checkpoint)."""
    if plan.get("method") != "structured" or not plan.get("history"):
        return model
    tp = _torch_pruning()
    try:
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=torch.zeros(2, *in_shape))
        graph.load_pruning_history([(name, is_out, idxs) for name, is_out, idxs in plan["history"]])
    except Exception as exc:  # an edited or damaged checkpoint's plan: it was an "internal error" AttributeError
        raise CheckpointError(f"the pruning plan recorded with the checkpoint does not fit a {type(model).__name__}",
                              why=first_line(exc),
                              fix="use the compressed.pt its run wrote, unedited, or prune again (edgekd run "
                                  "RECIPE --force compress)") from None
    return model
