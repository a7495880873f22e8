"""Model pieces: gradient reversal, the lambda ramp, the noise schedule, guided sampling, GAN losses."""
from __future__ import annotations

import math

import pytest
import torch

from models.ddpm import DDPM, GuidedSampler, NoiseSchedule
from models.dann import grad_reverse, lambda_at
from models.gan import build_gan
from trainables.gan import bce, flip, soft_targets


def test_gradient_reversal_flips_and_scales() -> None:
    x = torch.randn(4, 3, requires_grad=True)
    (grad_reverse(x, 0.3) * torch.arange(3.0)).sum().backward()
    assert torch.allclose(x.grad, -0.3 * torch.arange(3.0).expand(4, 3))


def test_lambda_schedule() -> None:
    assert lambda_at(0.7, 0.3, "fixed") == 0.3
    assert lambda_at(0.0, 0.3, "ramp") == 0.0
    assert math.isclose(lambda_at(0.5, 1.0, "ramp"), 2 / (1 + math.exp(-5)) - 1)
    assert 0.29 < lambda_at(1.0, 0.3, "ramp") <= 0.3


def test_noise_schedule_matches_ddpm() -> None:
    s = NoiseSchedule(500, 1e-4, 0.02)
    assert torch.allclose(s.sqrtab**2 + s.sqrtmab**2, torch.ones(501), atol=1e-5)
    assert math.isclose(float(s.beta_t[0]), 1e-4, rel_tol=1e-4) and math.isclose(float(s.beta_t[-1]), 0.02, rel_tol=1e-4)
    x0 = torch.zeros(8, 3, 28, 28)
    x_t, eps, t = s.noise(x0)
    assert ((t >= 1) & (t <= 500)).all()
    assert torch.allclose(x_t, s.sqrtmab[t, None, None, None] * eps)


class Recorder(torch.nn.Module):
    """eps = 1 for conditional rows, 3 for unconditional rows: makes the guidance formula visible."""

    def forward(self, x, c, t, drop):
        return torch.ones_like(x) + 2 * drop[:, None, None, None]


def test_guided_sampler_formula_and_seed() -> None:
    s = NoiseSchedule(10)
    labels = torch.tensor([0, 1])
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    a, kept = GuidedSampler(Recorder(), s).sample(labels, 0.0, generator=g1, keep_at=(10, 5, 0))
    b, _ = GuidedSampler(Recorder(), s).sample(labels, 2.0, generator=g2)
    assert set(kept) == {10, 5, 0} and torch.equal(kept[0], a)
    # w=0 uses eps = 1 throughout, w=2 eps = (1+2)*1 - 2*3 = -3: each chain is the reverse update with that constant
    # eps and the generator's draws (x_T first, then one z per step above t = 1), computed here in float64
    assert torch.allclose(a, chain_by_hand(s, 1.0, labels, 0), atol=1e-5)
    assert torch.allclose(b, chain_by_hand(s, -3.0, labels, 0), atol=1e-5)
    g3 = torch.Generator().manual_seed(0)
    a2, _ = GuidedSampler(Recorder(), s).sample(labels, 0.0, generator=g3)
    assert torch.equal(a, a2)


def chain_by_hand(s: NoiseSchedule, eps: float, labels: torch.Tensor, seed: int) -> torch.Tensor:
    """The reverse chain x_{t-1} = (x_t - eps beta_t / sqrt(1 - abar_t)) / sqrt(alpha_t) + sqrt(beta_t) z_t with a
    constant eps, betas linear from 1e-4 to 0.02 over t = 0..T (the reference's formula), in float64."""
    g = torch.Generator().manual_seed(seed)
    n, T = labels.shape[0], s.T
    x = torch.randn((n, 3, 28, 28), generator=g).double()
    beta = [1e-4 + (0.02 - 1e-4) * t / T for t in range(T + 1)]
    abar = [math.prod(1 - b for b in beta[: t + 1]) for t in range(T + 1)]
    for t in range(T, 0, -1):
        z = torch.randn((n, 3, 28, 28), generator=g).double() if t > 1 else torch.zeros_like(x)
        x = (x - eps * beta[t] / math.sqrt(1 - abar[t])) / math.sqrt(1 - beta[t]) + math.sqrt(beta[t]) * z
    return x.float()


class Affine(torch.nn.Module):
    """eps(x, c) = 0.5 x + (c + 1) for conditional rows, eps(x, none) = 0.5 x - 3 for unconditional ones; records
    each call's t and drop."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x, c, t, drop):
        self.calls.append((t.flatten().clone(), drop.clone()))
        d = drop[:, None, None, None]
        return 0.5 * x + (1 - d) * (c + 1.0)[:, None, None, None] - 3.0 * d


@pytest.mark.parametrize("w", [0.0, 0.5, 2.0])
def test_guided_step_is_the_closed_form_guidance_combination(w) -> None:
    """One reverse step from t = T with eps = (1 + w) eps_cond - w eps_uncond, computed by hand:
    (1 + w)(0.5 x + c + 1) - w (0.5 x - 3) = 0.5 x + (1 + w)(c + 1) + 3 w. A formula with another weighting, the
    halves swapped or the labels mixed up between rows gives another x_{T-1}."""
    T = 8
    s = NoiseSchedule(T)
    labels = torch.tensor([0, 3, 7])
    net = Affine()
    _, kept = GuidedSampler(net, s).sample(labels, w, generator=torch.Generator().manual_seed(1), keep_at=(T - 1,))
    g = torch.Generator().manual_seed(1)
    x = torch.randn((3, 3, 28, 28), generator=g).double()
    z = torch.randn((3, 3, 28, 28), generator=g).double()
    eps = 0.5 * x + (1 + w) * (labels.double() + 1)[:, None, None, None] + 3 * w
    beta = [1e-4 + (0.02 - 1e-4) * t / T for t in range(T + 1)]
    abar_T = math.prod(1 - b for b in beta)
    want = (x - eps * beta[T] / math.sqrt(1 - abar_T)) / math.sqrt(1 - beta[T]) + math.sqrt(beta[T]) * z
    assert torch.allclose(kept[T - 1].double(), want, atol=1e-5), (kept[T - 1].double() - want).abs().max()
    t0, drop0 = net.calls[0]
    assert torch.allclose(t0, torch.full_like(t0, 1.0)) and len(net.calls) == T  # t / T = 1 at the first step
    assert drop0.tolist() == ([0.0] * 3 if w == 0 else [0.0] * 3 + [1.0] * 3)  # w = 0: the conditional half only


def test_ddpm_net_shapes() -> None:
    m = DDPM(n_feat=16)
    out = m(torch.randn(2, 3, 28, 28), torch.tensor([3, 4]), torch.rand(2, 1), torch.tensor([0.0, 1.0]))
    assert out.shape == (2, 3, 28, 28)


def test_gan_shapes_and_soft_labels() -> None:
    for model in ("A", "B"):
        g, d = build_gan(model)
        x = g(torch.randn(3, 100, 1, 1))
        assert x.shape == (3, 3, 64, 64) and d(x).shape == (3,)
    params = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    for model in ("A", "B"):  # width: DCGAN's ngf = ndf; 64 is the report's, narrower is cheaper, same shapes
        (g64, d64), (g32, d32) = build_gan(model), build_gan(model, 32)
        x = g32(torch.randn(2, 100, 1, 1))
        assert x.shape == (2, 3, 64, 64) and d32(x).shape == (2,)
        assert params(g32) < params(g64) / 2.5 and params(d32) < params(d64) / 2.5
    with pytest.raises(ValueError, match="width must be a positive multiple of 4"):
        build_gan("A", 30)
    t = soft_targets(10000, 0.7, 1.03, torch.device("cpu"))
    assert 0.7 <= float(t.min()) and float(t.max()) <= 1.03
    real, fake = flip(torch.ones(10000), torch.zeros(10000), 0.1)
    assert 0.05 < float((real == 0).float().mean()) < 0.15 and torch.equal(real + fake, torch.ones(10000))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert bce(torch.full((4,), 0.5, dtype=torch.bfloat16), torch.ones(4)).dtype == torch.float32


def test_bce_equals_bceloss_and_takes_the_reports_soft_labels() -> None:
    p = torch.rand(64).clamp(0.01, 0.99)
    t = torch.rand(64)
    assert torch.allclose(bce(p, t), torch.nn.functional.binary_cross_entropy(p, t), atol=1e-6)
    hi = torch.full((64,), 1.03)  # seed.yaml's model B real labels reach 1.03
    assert torch.isfinite(bce(p, hi))
    sat = torch.tensor([0.0, 1.0], requires_grad=True)  # a saturated discriminator
    loss = bce(sat, torch.tensor([0.0, 1.0]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(sat.grad).all()
    g, d = build_gan("B")
    from trainables.gan import soft_targets as st

    real = st(8, 0.7, 1.03, torch.device("cpu"))
    loss = bce(d(torch.rand(8, 3, 64, 64) * 2 - 1), real)
    loss.backward()
    assert torch.isfinite(loss)
