"""GAN model A (the PyTorch DCGAN faces tutorial) and model B (PixelShuffle G, spectral-norm D).

Both take z of shape (N, nz, 1, 1) and produce/judge 3x64x64 images in [-1, 1].
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

NZ = 100


def dcgan_init(m: nn.Module) -> None:
    """The tutorial's init: conv weights N(0, 0.02), BatchNorm gamma N(1, 0.02), beta 0."""
    name = type(m).__name__
    if "Conv" in name and hasattr(m, "weight"):
        w = m.parametrizations.weight.original if hasattr(m, "parametrizations") else m.weight
        nn.init.normal_(w, 0.0, 0.02)
    elif "BatchNorm" in name:
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


class Generator(nn.Module):
    """Model A generator: z (N,100,1,1) -> (N,3,64,64)."""

    def __init__(self, nz: int = NZ, ngf: int = 64) -> None:
        super().__init__()
        self.main = nn.Sequential(
            nn.ConvTranspose2d(nz, ngf * 8, 4, 1, 0, bias=False),
            nn.BatchNorm2d(ngf * 8),
            nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 8, ngf * 4, 4, 2, 1, bias=False),
            nn.BatchNorm2d(ngf * 4),
            nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1, bias=False),
            nn.BatchNorm2d(ngf * 2),
            nn.ReLU(True),
            nn.ConvTranspose2d(ngf * 2, ngf, 4, 2, 1, bias=False),
            nn.BatchNorm2d(ngf),
            nn.ReLU(True),
            nn.ConvTranspose2d(ngf, 3, 4, 2, 1, bias=False),
            nn.Tanh(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.main(z)


class Discriminator(nn.Module):
    """Model A / B discriminator: (N,3,64,64) -> probability (N,). Model B wraps convs in spectral norm."""

    def __init__(self, ndf: int = 64, spectral: bool = False) -> None:
        super().__init__()
        sn = spectral_norm if spectral else (lambda m: m)
        self.main = nn.Sequential(
            sn(nn.Conv2d(3, ndf, 4, 2, 1, bias=False)),
            nn.LeakyReLU(0.2, inplace=True),
            sn(nn.Conv2d(ndf, ndf * 2, 4, 2, 1, bias=False)),
            nn.BatchNorm2d(ndf * 2),
            nn.LeakyReLU(0.2, inplace=True),
            sn(nn.Conv2d(ndf * 2, ndf * 4, 4, 2, 1, bias=False)),
            nn.BatchNorm2d(ndf * 4),
            nn.LeakyReLU(0.2, inplace=True),
            sn(nn.Conv2d(ndf * 4, ndf * 8, 4, 2, 1, bias=False)),
            nn.BatchNorm2d(ndf * 8),
            nn.LeakyReLU(0.2, inplace=True),
            sn(nn.Conv2d(ndf * 8, 1, 4, 1, 0, bias=False)),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x).view(-1)


class GeneratorB(nn.Module):
    """Model B generator: Upsample(4) then four [Conv same, BN, ReLU, Dropout, PixelShuffle(2)] blocks."""

    def __init__(self, nz: int = NZ, dropout: float = 0.2) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Upsample(scale_factor=4.0)]
        c_in = nz
        for c_out in (256, 256, 128, 128):
            layers += [
                nn.Conv2d(c_in, c_out, 3, 1, padding="same"),
                nn.BatchNorm2d(c_out),
                nn.ReLU(True),
                nn.Dropout(dropout),
                nn.PixelShuffle(2),
            ]
            c_in = c_out // 4
        layers += [nn.Conv2d(c_in, 3, 3, 1, padding="same"), nn.Tanh()]
        self.main = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.main(z)

    def _get_name(self) -> str:  # the report prints both generators as "Generator"
        return "Generator"


def build_gan(model: str) -> tuple[nn.Module, nn.Module]:
    """(generator, discriminator) of model "A" or "B", initialised as the tutorial does."""
    if model == "A":
        g, d = Generator(), Discriminator()
    elif model == "B":
        g, d = GeneratorB(), Discriminator(spectral=True)
    else:
        raise ValueError(f"GAN model must be 'A' or 'B', got {model!r}")
    g.apply(dcgan_init)
    d.apply(dcgan_init)
    return g, d
