"""DDPM noise schedules and the guided sampler, pinned where mutation testing found them loose (docs/mutation.md).

Reverse chains are recomputed here in float64 from the schedule's formulas (betas linear from beta_start to
beta_end over t = 0..T, abar = prod(1 - beta)) and a network whose output is known in closed form; nothing expected
is read from NoiseSchedule or GuidedSampler themselves.
"""
from __future__ import annotations

import contextlib
import math

import pytest
import torch

from models.ddpm import GuidedSampler, NoiseSchedule


# --- NoiseSchedule -------------------------------------------------------------------------------------


def test_schedule_defaults_are_the_reports() -> None:
    s = NoiseSchedule()
    assert s.T == 500 and s.kind == "linear" and len(s.beta_t) == 501
    assert math.isclose(float(s.beta_t[1]), 1e-4 + (0.02 - 1e-4) / 500, rel_tol=1e-6)


def test_schedule_refusals_name_the_problem() -> None:
    with pytest.raises(ValueError, match=r"^unknown schedule 'quadratic'; expected one of scaled, linear, cosine$"):
        NoiseSchedule(10, kind="quadratic")
    for start, end in ((0.0, 0.02), (0.02, 0.02), (0.03, 0.02), (1e-4, 1.0), (1e-4, 1.5), (-1e-4, 0.02)):
        with pytest.raises(ValueError, match=rf"^need 0 < beta_start < beta_end < 1, got {start}, {end}$"):
            NoiseSchedule(1000, start, end, "linear")
    with pytest.raises(ValueError, match=r"^scaled schedule: beta_end \* 1000 / T = 1\.25 >= 1 at T = 16$"):
        NoiseSchedule(16, 1e-4, 0.02, "scaled")


def test_cosine_ignores_the_linear_ends() -> None:
    s = NoiseSchedule(20, 0.5, 0.1, "cosine")  # beta_start/beta_end unused: not checked either
    assert s.kind == "cosine" and float(s.beta_t[0]) == 0.0
    # cosine's beta_0 = 0 makes (1 - alpha_0) / sqrt(1 - abar_0) = 0 / 0: stored as 0 (t = 0 is never a step)
    assert float(s.mab_over_sqrtmab[0]) == 0.0
    assert torch.isfinite(s.mab_over_sqrtmab).all()


def test_schedule_tables_go_to_the_device_asked_for() -> None:
    s = NoiseSchedule(10, device="meta")  # meta: a device other than the CPU default, on any machine
    for name in ("beta_t", "sqrt_beta_t", "oneover_sqrta", "sqrtab", "sqrtmab", "mab_over_sqrtmab"):
        t = getattr(s, name)
        assert t.device.type == "meta" and t.dtype == torch.float32, name


def test_noise_draws_t_from_1_to_T_inclusive() -> None:
    s = NoiseSchedule(3)
    _, _, t = s.noise(torch.zeros(600, 1, 1, 1), generator=torch.Generator().manual_seed(0))
    assert set(t.tolist()) == {1, 2, 3}


def test_noise_uses_only_the_generator_given_and_keeps_the_dtype() -> None:
    s = NoiseSchedule(10)
    x0 = torch.ones(4, 3, 2, 2, dtype=torch.float64)
    torch.manual_seed(0)
    a = s.noise(x0, generator=torch.Generator().manual_seed(5))
    torch.manual_seed(1)  # another global state: the same result
    b = s.noise(x0, generator=torch.Generator().manual_seed(5))
    for u, v in zip(a, b):
        assert torch.equal(u, v)
    x_t, eps, t = a
    assert eps.dtype == torch.float64 and x_t.dtype == torch.float64
    # x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, abar from the linear betas
    beta = [1e-4 + (0.02 - 1e-4) * k / 10 for k in range(11)]
    for i in range(4):
        ab = math.prod(1 - b for b in beta[: int(t[i]) + 1])
        assert torch.allclose(x_t[i], math.sqrt(ab) * x0[i] + math.sqrt(1 - ab) * eps[i], atol=1e-6)


def test_noise_stays_on_the_device_of_x0() -> None:
    s = NoiseSchedule(10, device="meta")
    x_t, eps, t = s.noise(torch.zeros(2, 3, 4, 4, device="meta"))
    assert x_t.device.type == eps.device.type == t.device.type == "meta"


# --- the guided sampler: eager path and the graph step (run uncaptured on the CPU) ------------------------


class Affine(torch.nn.Module):
    """eps(x, c) = 0.5 x + (c + 1) for conditional rows, 0.5 x - 3 for unconditional ones; records t and drop."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def forward(self, x, c, t, drop):
        self.calls.append((t.clone(), drop.clone(), c.clone()))
        d = drop[:, None, None, None]
        return 0.5 * x + (1 - d) * (c + 1.0)[:, None, None, None] - 3.0 * d


def chain(T: int, labels: torch.Tensor, w: float, seed: int, keep=()) -> tuple[torch.Tensor, dict]:
    """The guided reverse chain by hand, float64: eps = (1 + w) eps_c - w eps_u = 0.5 x + (1 + w)(c + 1) + 3 w."""
    g = torch.Generator().manual_seed(seed)
    n = labels.shape[0]
    beta = [1e-4 + (0.02 - 1e-4) * t / T for t in range(T + 1)]
    abar = [math.prod(1 - b for b in beta[: t + 1]) for t in range(T + 1)]
    x = torch.randn((n, 3, 28, 28), generator=g).double()
    kept = {T: x.clone()} if T in keep else {}
    for t in range(T, 0, -1):
        z = torch.randn((n, 3, 28, 28), generator=g).double() if t > 1 else torch.zeros_like(x)
        eps = 0.5 * x + (1 + w) * (labels.double() + 1)[:, None, None, None] + 3 * w
        x = (x - eps * beta[t] / math.sqrt(1 - abar[t])) / math.sqrt(1 - beta[t]) + math.sqrt(beta[t]) * z
        if t - 1 in keep:
            kept[t - 1] = x.clone()
    return x, kept


@pytest.mark.parametrize("graphed", [False, True])
@pytest.mark.parametrize("w", [0.0, 1.5])
def test_sampler_is_the_guided_chain_with_every_kept_step(graphed, w) -> None:
    T, labels = 6, torch.tensor([2, 0, 5])
    net = Affine()
    sampler = GuidedSampler(net, NoiseSchedule(T))
    keep = (T, 3, 0)
    if graphed:
        x, kept = sampler._sample_graphed(labels, w, torch.Generator().manual_seed(4), keep, (3, 28, 28))
    else:
        x, kept = sampler.sample(labels, w, generator=torch.Generator().manual_seed(4), keep_at=keep)
    want, want_kept = chain(T, labels, w, 4, keep)
    assert torch.allclose(x.double(), want, atol=1e-5)
    assert sorted(kept) == [0, 3, T]
    for k in keep:
        assert torch.allclose(kept[k].double(), want_kept[k], atol=1e-5), k
    # every step shows the network t = i / T for each row it evaluates, (rows, 1), and drops only the second half
    rows = 3 if w == 0 else 6
    assert len(net.calls) == T
    for step, (t, drop, c) in enumerate(net.calls):
        i = T - step
        assert t.shape == (rows, 1) and torch.allclose(t, torch.full((rows, 1), i / T)), (step, t)
        assert drop.tolist() == [0.0] * 3 + [1.0] * (rows - 3)
        assert c.tolist() == labels.tolist() * (rows // 3)


def test_sampler_output_carries_no_autograd_graph() -> None:
    net = torch.nn.Conv2d(3, 3, 1)  # has parameters: without no_grad the samples would need grad
    x, _ = GuidedSampler(lambda x, c, t, d: net(x), NoiseSchedule(3)).sample(torch.tensor([1]), 0.0)
    assert not x.requires_grad


def test_graph_steps_are_cached_per_shape_and_per_conditional_only() -> None:
    T, labels = 3, torch.tensor([1, 4])
    sampler = GuidedSampler(Affine(), NoiseSchedule(T))
    run = lambda w: sampler._sample_graphed(labels, w, torch.Generator().manual_seed(0), (), (3, 28, 28))[0]  # noqa: E731
    a0 = run(0.0)
    first = list(sampler._graphs.values())
    assert len(first) == 1
    a2 = run(2.0)  # guidance needs both halves: another graph step, not the conditional-only one
    assert len(sampler._graphs) == 2
    assert torch.allclose(a2.double(), chain(T, labels, 2.0, 0)[0], atol=1e-5)
    b0 = run(0.0)  # the same shape and w = 0 again: the first step object, reused
    assert len(sampler._graphs) == 2 and any(g is first[0] for g in sampler._graphs.values())
    assert torch.equal(a0, b0)
    run(0.5)  # another w != 0: the guided step is reused with the new w
    assert len(sampler._graphs) == 2


def test_graph_step_autocast_is_the_callers_without_the_weight_cache(monkeypatch) -> None:
    seen = []

    def autocast(device_type, **kw):
        seen.append((device_type, kw.get("dtype"), kw.get("enabled", True), kw.get("cache_enabled")))
        return contextlib.nullcontext()

    want_dtype = torch.get_autocast_dtype("cuda")
    sampler = GuidedSampler(Affine(), NoiseSchedule(2))
    monkeypatch.setattr(torch, "autocast", autocast)
    sampler._sample_graphed(torch.tensor([0]), 1.0, torch.Generator().manual_seed(0), (), (3, 28, 28))
    # autocast off outside (on the CPU it always is), the dtype autocast would use, its cast cache off in a graph
    assert seen == [("cuda", want_dtype, False, False)] * 2


@pytest.mark.parametrize("cuda_graph, device, training, graphed", [
    (True, "cuda", False, True),  # the only case that replays a CUDA graph
    (False, "cuda", False, False), (True, "cpu", False, False), (True, "cuda", True, False), (False, "cpu", True, False),
])
def test_sample_replays_a_graph_only_with_cuda_labels_an_eval_model_and_cuda_graph_on(
        cuda_graph, device, training, graphed) -> None:
    class Labels:  # stands for a CUDA tensor: the dispatch reads its device only
        def __init__(self, kind):
            self.device = torch.device("cpu") if kind == "cpu" else type("D", (), {"type": kind})()
            self.shape = (1,)

    net = Affine().train(training)
    sampler = GuidedSampler(net, NoiseSchedule(2), cuda_graph=cuda_graph)
    calls = []
    sampler._sample_graphed = lambda *args: calls.append(args) or ("graphed", {})
    labels, gen = Labels(device), torch.Generator().manual_seed(0)
    if graphed:
        assert sampler.sample(labels, 0.5, generator=gen, keep_at=(1,), size=(3, 4, 4)) == ("graphed", {})
        assert calls == [(labels, 0.5, gen, (1,), (3, 4, 4))]
    else:
        with pytest.raises(Exception):  # the eager path ran, and stopped at the stand-in labels
            sampler.sample(labels, 0.5, generator=gen)
        assert calls == []


@pytest.mark.parametrize("w", [0.0, 1.0])
def test_every_tensor_a_sampler_makes_is_on_the_labels_device(w) -> None:
    seen = []

    def net(x, c, t, drop):
        seen.append((x.device.type, c.device.type, t.device.type, drop.device.type))
        return torch.zeros_like(x)

    labels = torch.tensor([1, 2], device="meta")  # meta: a device other than the CPU default, on any machine
    s = NoiseSchedule(2, device="meta")
    x, kept = GuidedSampler(net, s, cuda_graph=False).sample(labels, w, keep_at=(2, 1))
    assert x.device.type == "meta" and {k: v.device.type for k, v in kept.items()} == {2: "meta", 1: "meta"}
    assert seen == [("meta",) * 4] * 2
    seen.clear()
    x, kept = GuidedSampler(net, s)._sample_graphed(labels, w, None, (2, 1), (3, 28, 28))
    assert x.device.type == "meta" and {k: v.device.type for k, v in kept.items()} == {2: "meta", 1: "meta"}
    assert seen == [("meta",) * 4] * 2
