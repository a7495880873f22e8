"""GAN model A (the PyTorch DCGAN faces tutorial) and model B (PixelShuffle G, spectral-norm D).

Both take z of shape (N, nz, 1, 1) and produce/judge 3x64x64 images in [-1, 1].
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import _SpectralNorm

NZ = 100


class _SpectralNormFP32(_SpectralNorm):
    """torch's spectral norm (same buffers, same power iteration), always computed in float32.

    Under CUDA bf16 autocast torch.mv runs in bf16: every D call would cast W three times and
    estimate sigma (and update u, v in place) to bf16 accuracy. Only the conv that uses W/sigma
    runs in bf16. Without autocast this is exactly torch's code path. Prints as torch's.
    """

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if torch.is_autocast_enabled(weight.device.type):
            with torch.autocast(weight.device.type, enabled=False):
                return super().forward(weight.float())
        return super().forward(weight)

    def _get_name(self) -> str:
        return "_SpectralNorm"


def spectral_norm(module: nn.Module, n_power_iterations: int = 1, eps: float = 1e-12) -> nn.Module:
    """torch.nn.utils.parametrizations.spectral_norm on `weight` (dim 0: Conv2d), float32 under autocast."""
    parametrize.register_parametrization(module, "weight", _SpectralNormFP32(module.weight, n_power_iterations, 0, eps))
    return module


def pixel_shuffle_channels_last(x: torch.Tensor, r: int) -> torch.Tensor:
    """F.pixel_shuffle for a channels_last (N, C*r*r, H, W) tensor, returning channels_last (N, C, H*r, W*r).

    CUDA's pixel_shuffle returns a contiguous (NCHW) result for channels_last input, so the next
    (channels_last) conv converts it back: two full copies per block, forward and backward. In
    NHWC memory the shuffle is one permute-copy. Pure data movement: bitwise the same values.
    """
    n, c, h, w = x.shape
    oc = c // (r * r)
    y = x.permute(0, 2, 3, 1).reshape(n, h, w, oc, r, r)  # view of the NHWC memory; channel = oc*r*r + i*r + j
    y = y.permute(0, 1, 4, 2, 5, 3).reshape(n, h * r, w * r, oc)  # (n, h, i, w, j, oc) -> NHWC output, one copy
    return y.permute(0, 3, 1, 2)


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

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """D's score before the Sigmoid, (N,): what regularisers such as R1 act on."""
        return self.main[:-1](x).view(-1)


class GeneratorB(nn.Module):
    """Model B generator: Upsample(4) then four [Conv same, BN, ReLU, Dropout, PixelShuffle(2)] blocks."""

    def __init__(self, nz: int = NZ, dropout: float = 0.2, width: int = 64) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Upsample(scale_factor=4.0)]
        c_in = nz
        for c_out in (4 * width, 4 * width, 2 * width, 2 * width):  # the report's (256, 256, 128, 128) at width 64
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
        x = z
        for layer in self.main:
            if isinstance(layer, nn.PixelShuffle) and x.device.type != "cpu" and x.is_contiguous(memory_format=torch.channels_last):
                x = pixel_shuffle_channels_last(x, layer.upscale_factor)
            else:
                x = layer(x)
        return x

    def _get_name(self) -> str:  # the report prints both generators as "Generator"
        return "Generator"


def build_gan(model: str, width: int = 64) -> tuple[nn.Module, nn.Module]:
    """(generator, discriminator) of model "A" or "B", initialised as the tutorial does.

    `width` is DCGAN's ngf = ndf (the report's: 64); B's generator channels scale with it. A multiple of 4."""
    if width < 4 or width % 4:
        raise ValueError(f"GAN width must be a positive multiple of 4, got {width}")
    if model == "A":
        g, d = Generator(ngf=width), Discriminator(ndf=width)
    elif model == "B":
        g, d = GeneratorB(width=width), Discriminator(ndf=width, spectral=True)
    else:
        raise ValueError(f"GAN model must be 'A' or 'B', got {model!r}")
    g.apply(dcgan_init)
    d.apply(dcgan_init)
    return g, d
