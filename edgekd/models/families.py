"""Built-in families: `cnn` (teacher), `mlp` and `tiny_cnn` (students)."""

from __future__ import annotations

import torch
from torch import nn

from edgekd.errors import RecipeError
from edgekd.models import MODELS


def _positive(name: str, value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:  # YAML true is an int to Python
        raise RecipeError(f"model parameter {name} must be a positive integer, got {value!r}",
                          fix=f"set {name} to an integer ≥ 1")
    return value


def _conv_stack(in_channels: int, spatial: tuple[int, ...], widths: list[int], batch_norm: bool) -> nn.Sequential:
    """Conv 3×3 (+BN) + ReLU blocks; after the first block, 2×2 max-pool while the map is ≥ 2×2."""
    layers: list[nn.Module] = []
    channels, size = in_channels, min(spatial)
    for i, width in enumerate(widths):
        layers.append(nn.Conv2d(channels, width, 3, padding=1, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm2d(width))
        layers.append(nn.ReLU(inplace=True))
        if i > 0 or len(widths) <= 2:
            if size >= 2:
                layers.append(nn.MaxPool2d(2))
                size //= 2
        channels = width
    return nn.Sequential(*layers)


def _image_shape(in_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(channels, height, width) of a sample: as given, or a flat square single-channel image (64 → 1×8×8)."""
    if len(in_shape) == 3:
        return (in_shape[0], in_shape[1], in_shape[2])
    side = int(round(in_shape[0] ** 0.5)) if len(in_shape) == 1 else 0
    if len(in_shape) == 1 and side * side == in_shape[0]:
        return (1, side, side)
    raise RecipeError(f"a conv model needs image inputs (C, H, W) or a flat square image, got sample shape {in_shape}",
                      fix="use the mlp family for non-image inputs")


class ConvNet(nn.Module):
    """Conv feature stack, then an MLP head on the flattened map."""

    def __init__(self, in_shape: tuple[int, ...], num_classes: int, widths: list[int], hidden: int | None,
                 batch_norm: bool) -> None:
        super().__init__()
        image = _image_shape(in_shape)
        self.to_image = nn.Unflatten(1, image) if tuple(in_shape) != image else nn.Identity()
        self.features = _conv_stack(image[0], image[1:], widths, batch_norm)
        with torch.no_grad():  # two samples: batch norm in training mode refuses one over 1×1 maps (deep stacks)
            flat = self.features(torch.zeros(2, *image)).numel() // 2
        head: list[nn.Module] = [nn.Flatten()]
        if hidden:
            head += [nn.Linear(flat, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_classes)]
        else:
            head += [nn.Linear(flat, num_classes)]
        self.head = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(self.to_image(x)))


class MLP(nn.Module):
    """Flatten, then `depth` hidden layers of `width` units with ReLU."""

    def __init__(self, in_shape: tuple[int, ...], num_classes: int, width: int, depth: int) -> None:
        super().__init__()
        in_features = 1
        for d in in_shape:
            in_features *= d
        layers: list[nn.Module] = [nn.Flatten()]
        for _ in range(depth):
            layers += [nn.Linear(in_features, width), nn.ReLU(inplace=True)]
            in_features = width
        layers.append(nn.Linear(in_features, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@MODELS.register("cnn")
def cnn(*, in_shape: tuple[int, ...], num_classes: int, width: int = 32, depth: int = 3, hidden: int = 128) -> nn.Module:
    """Teacher: `depth` conv+BN blocks doubling from `width` channels, then an FC `hidden` head (~160k params at defaults)."""
    widths = [_positive("width", width) * 2**i for i in range(_positive("depth", depth))]
    return ConvNet(in_shape, num_classes, widths, _positive("hidden", hidden), batch_norm=True)


@MODELS.register("tiny_cnn")
def tiny_cnn(*, in_shape: tuple[int, ...], num_classes: int, width: int = 8, depth: int = 2) -> nn.Module:
    """Student: `depth` small conv blocks doubling from `width` channels, linear classifier (~2k params)."""
    widths = [_positive("width", width) * 2**i for i in range(_positive("depth", depth))]
    return ConvNet(in_shape, num_classes, widths, hidden=None, batch_norm=False)


@MODELS.register("mlp")
def mlp(*, in_shape: tuple[int, ...], num_classes: int, width: int = 32, depth: int = 1) -> nn.Module:
    """Student: an MLP with `depth` hidden layers of `width` units (64-32-10: ~2.4k params on digits)."""
    return MLP(in_shape, num_classes, _positive("width", width), _positive("depth", depth))
