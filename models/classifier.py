"""The digit evaluator: a small CNN that judges generated 28x28 RGB digits (not from the report)."""
from __future__ import annotations

import torch
from torch import nn


def _block(c_in: int, c_out: int, convs: int) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for i in range(convs):
        layers += [nn.Conv2d(c_in if i == 0 else c_out, c_out, 3, 1, 1), nn.BatchNorm2d(c_out), nn.ReLU()]
    return layers + [nn.MaxPool2d(2)]


class DigitClassifier(nn.Module):
    """(N,3,28,28) in [-1,1] -> logits (N,10); `features` gives the 128-d penultimate layer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(*_block(3, 32, 2), *_block(32, 64, 2), *_block(64, 128, 1))  # -> (N,128,3,3)
        self.embed = nn.Sequential(nn.Flatten(), nn.Dropout(0.3), nn.Linear(128 * 9, 128), nn.ReLU())
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(128, 10))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(self.conv(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
