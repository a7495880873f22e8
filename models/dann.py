"""DANN (Ganin & Lempitsky): feature extractor, label predictor, domain classifier, gradient reversal.

Inputs are 3x32x32; the extractor's five 2x2 pools leave a 512-d feature.
"""
from __future__ import annotations

import math

import torch
from torch import nn


class GradReverse(torch.autograd.Function):
    """Identity forward; multiplies the gradient by -lambda backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, lamb: float) -> torch.Tensor:  # type: ignore[override]
        ctx.lamb = lamb
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return grad.neg() * ctx.lamb, None


def grad_reverse(x: torch.Tensor, lamb: float) -> torch.Tensor:
    return GradReverse.apply(x, lamb)


def lambda_at(progress: float, lamb: float, schedule: str) -> float:
    """Domain-loss weight: fixed, or the paper's ramp lamb * (2 / (1 + exp(-10 p)) - 1), p in [0, 1]."""
    if schedule == "fixed":
        return lamb
    return lamb * (2.0 / (1.0 + math.exp(-10.0 * progress)) - 1.0)


class FeatureExtractor(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for c_out in (64, 128, 256, 256, 512):
            layers += [nn.Conv2d(c_in, c_out, 3, 1, 1), nn.BatchNorm2d(c_out), nn.ReLU(), nn.MaxPool2d(2)]
            c_in = c_out
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).flatten(1)  # (N, 512)


class LabelPredictor(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10)
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.layer(h)


class DomainClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for _ in range(4):
            layers += [nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU()]
        self.layer = nn.Sequential(*layers, nn.Linear(512, 1))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.layer(h).view(-1)  # logit: 1 = source domain


class DANN(nn.Module):
    """The three parts together, so one state_dict and one optimizer hold them."""

    def __init__(self) -> None:
        super().__init__()
        self.feature = FeatureExtractor()
        self.label = LabelPredictor()
        self.domain = DomainClassifier()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.label(self.feature(x))
