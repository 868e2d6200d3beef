"""A frozen ImageNet ResNet-50 as a tile-feature extractor, loaded from a local weights file (nothing downloaded).

What CLAM-based baselines (CMTA, MoME, MCAT) feed their models: CLAM's ``resnet50_trunc``, the ResNet-50 up to
``layer3`` followed by global average pooling, 1,024 features per 256-px tile (``truncate="layer3"``, the default);
``truncate="layer4"`` gives the full network's 2,048 (MultiSurv's ResNeXt position). The module follows
torchvision's ``resnet50`` layout and parameter names (v1.5: the stride in each bottleneck's 3x3 convolution), so
a torchvision state dict (``resnet50-*.pth``, or ``model.state_dict()`` saved with ``torch.save``) loads as is;
its ``fc`` (and, truncated, ``layer4``) weights are ignored. Tiles are normalised with the ImageNet mean and std.
Eval mode throughout: batch norms use their running statistics.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from imputmae.model import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["ResNet50Features", "load_resnet50_features"]


class _Bottleneck(nn.Module):
    def __init__(self, c_in: int, width: int, stride: int):
        super().__init__()
        c_out = width * 4
        self.conv1 = nn.Conv2d(c_in, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, c_out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
                           if stride != 1 or c_in != c_out else None)

    def forward(self, x: Tensor) -> Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet50Features(nn.Module):
    """tiles: float [K, 3, H, W] in [0, 1] -> features [K, 1024] (layer3) or [K, 2048] (layer4)."""

    def __init__(self, truncate: Literal["layer3", "layer4"] = "layer3"):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages = [(64, 3, 1), (128, 4, 2), (256, 6, 2)] + ([(512, 3, 2)] if truncate == "layer4" else [])
        c = 64
        for i, (width, n, stride) in enumerate(stages, start=1):
            blocks = []
            for j in range(n):
                blocks.append(_Bottleneck(c, width, stride if j == 0 else 1))
                c = width * 4
            self.add_module(f"layer{i}", nn.Sequential(*blocks))
        self.n_stages = len(stages)
        self.out_features = c
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, tiles: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1((tiles - self.mean) / self.std))))
        for i in range(1, self.n_stages + 1):
            x = getattr(self, f"layer{i}")(x)
        return x.mean((2, 3))


def load_resnet50_features(path: str | Path, truncate: Literal["layer3", "layer4"] = "layer3") -> ResNet50Features:
    """The extractor with torchvision-layout weights from ``path`` (a state dict, optionally under ``state_dict``
    or with a ``module.`` prefix), frozen, in eval mode. Every weight the extractor needs must be in the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no ResNet-50 weights file (a torchvision resnet50 state dict saved with "
                                "torch.save)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    state = {k.removeprefix("module."): v for k, v in state.items()}
    model = ResNet50Features(truncate)
    res = model.load_state_dict(state, strict=False)
    if res.missing_keys:
        raise ValueError(f"{path}: not a ResNet-50 state dict in torchvision's layout: {len(res.missing_keys)} "
                         f"weights missing (e.g. {res.missing_keys[:3]})")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model
