"""Conditional DDPM: the ContextUnet of TeaPearce/Conditional_Diffusion_MNIST (as the report prints it),
its linear noise schedule, and the classifier-free-guided sampler, each a separate object.

ContextUnet's AvgPool2d(7) fixes the input to 28x28.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ResidualConvBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, is_res: bool = False) -> None:
        super().__init__()
        self.same_channels = in_channels == out_channels
        self.is_res = is_res
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, 1, 1), nn.BatchNorm2d(out_channels), nn.GELU())
        self.conv2 = nn.Sequential(nn.Conv2d(out_channels, out_channels, 3, 1, 1), nn.BatchNorm2d(out_channels), nn.GELU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.conv1(x)
        x2 = self.conv2(x1)
        if not self.is_res:
            return x2
        return ((x if self.same_channels else x1) + x2) / 1.414


class UnetDown(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.model = nn.Sequential(ResidualConvBlock(in_channels, out_channels), nn.MaxPool2d(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class UnetUp(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.model = nn.Sequential(
            nn.ConvTranspose2d(in_channels, out_channels, 2, 2),
            ResidualConvBlock(out_channels, out_channels),
            ResidualConvBlock(out_channels, out_channels),
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.model(torch.cat((x, skip), 1))


class EmbedFC(nn.Module):
    def __init__(self, input_dim: int, emb_dim: int) -> None:
        super().__init__()
        self.input_dim = input_dim
        self.model = nn.Sequential(nn.Linear(input_dim, emb_dim), nn.GELU(), nn.Linear(emb_dim, emb_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.view(-1, self.input_dim))


class ContextUnet(nn.Module):
    """eps_theta(x_t, c, t/T, drop): x (N,3,28,28), c (N,) int labels, t (N,) float in [0,1], drop (N,) 1=unconditional."""

    def __init__(self, in_channels: int = 3, n_feat: int = 128, n_classes: int = 10) -> None:
        super().__init__()
        self.in_channels, self.n_feat, self.n_classes = in_channels, n_feat, n_classes
        self.init_conv = ResidualConvBlock(in_channels, n_feat, is_res=True)
        self.down1 = UnetDown(n_feat, n_feat)
        self.down2 = UnetDown(n_feat, 2 * n_feat)
        self.to_vec = nn.Sequential(nn.AvgPool2d(7), nn.GELU())
        self.timeembed1 = EmbedFC(1, 2 * n_feat)
        self.timeembed2 = EmbedFC(1, 1 * n_feat)
        self.contextembed1 = EmbedFC(n_classes, 2 * n_feat)
        self.contextembed2 = EmbedFC(n_classes, 1 * n_feat)
        self.up0 = nn.Sequential(nn.ConvTranspose2d(2 * n_feat, 2 * n_feat, 7, 7), nn.GroupNorm(8, 2 * n_feat), nn.ReLU())
        self.up1 = UnetUp(4 * n_feat, n_feat)
        self.up2 = UnetUp(2 * n_feat, n_feat)
        self.out = nn.Sequential(
            nn.Conv2d(2 * n_feat, n_feat, 3, 1, 1), nn.GroupNorm(8, n_feat), nn.ReLU(), nn.Conv2d(n_feat, in_channels, 3, 1, 1)
        )

    def forward(self, x: torch.Tensor, c: torch.Tensor, t: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
        x = self.init_conv(x)
        down1 = self.down1(x)  # (N, f, 14, 14)
        down2 = self.down2(down1)  # (N, 2f, 7, 7)
        hidden = self.to_vec(down2)  # (N, 2f, 1, 1)
        keep = (1.0 - drop.to(x.dtype))[:, None]
        c = F.one_hot(c, num_classes=self.n_classes).to(x.dtype) * keep
        t = t.to(x.dtype)
        cemb1 = self.contextembed1(c).view(-1, self.n_feat * 2, 1, 1)
        temb1 = self.timeembed1(t).view(-1, self.n_feat * 2, 1, 1)
        cemb2 = self.contextembed2(c).view(-1, self.n_feat, 1, 1)
        temb2 = self.timeembed2(t).view(-1, self.n_feat, 1, 1)
        up1 = self.up0(hidden)
        up2 = self.up1(cemb1 * up1 + temb1, down2)
        up3 = self.up2(cemb2 * up2 + temb2, down1)
        return self.out(torch.cat((up3, x), 1))


class DDPM(nn.Module):
    """The report's wrapper: holds only the noise-prediction network (the schedule is separate)."""

    def __init__(self, n_feat: int = 128, n_classes: int = 10) -> None:
        super().__init__()
        self.nn_model = ContextUnet(3, n_feat, n_classes)

    def forward(self, x: torch.Tensor, c: torch.Tensor, t: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
        return self.nn_model(x, c, t, drop)


SCHEDULES = ("scaled", "linear", "cosine")
SCALED_REFERENCE_T = 1000  # "scaled": the linear betas are those of a T = 1000 chain, times 1000 / T


class NoiseSchedule:
    """Forward-process schedule over T steps, indexable by integer t in 0..T.

    kind "linear": betas linear from beta_start to beta_end whatever T is (the report's, exact at its
    T = 500; at small T the chain never reaches noise: sqrt(abar_T) = 0.81 at T = 40).
    kind "scaled": the same ends times 1000 / T (as DDPM code bases do when they change T), so every T
    ends near pure noise; needs beta_end * 1000 / T < 1.
    kind "cosine": Nichol & Dhariwal's abar(t) = cos^2(((t/T + s) / (1 + s)) pi/2), betas clipped at 0.999
    (beta_start/beta_end unused). `signal_at_T` = sqrt(abar_T), the share of the image left at t = T.
    """

    def __init__(self, T: int = 500, beta_start: float = 1e-4, beta_end: float = 0.02, kind: str = "linear",
                 device: torch.device | str = "cpu") -> None:
        if kind not in SCHEDULES:
            raise ValueError(f"unknown schedule {kind!r}; expected one of {', '.join(SCHEDULES)}")
        if kind != "cosine" and not 0 < beta_start < beta_end < 1:
            raise ValueError(f"need 0 < beta_start < beta_end < 1, got {beta_start}, {beta_end}")
        self.T, self.kind = T, kind
        steps = torch.arange(0, T + 1, dtype=torch.float64)
        if kind == "cosine":
            f = torch.cos((steps / T + 0.008) / 1.008 * torch.pi / 2) ** 2
            beta_t = torch.zeros(T + 1, dtype=torch.float64)
            beta_t[1:] = (1 - f[1:] / f[:-1]).clamp(max=0.999)
        else:
            if kind == "scaled":
                beta_start, beta_end = (b * SCALED_REFERENCE_T / T for b in (beta_start, beta_end))
                if beta_end >= 1:
                    raise ValueError(f"scaled schedule: beta_end * {SCALED_REFERENCE_T} / T = {beta_end:g} >= 1 at T = {T}")
            beta_t = (beta_end - beta_start) * steps / T + beta_start  # (T+1,), the reference's formula
        alpha_t = 1 - beta_t
        abar = torch.cumsum(torch.log(alpha_t), 0).exp()
        f = lambda v: v.to(device=device, dtype=torch.float32)  # noqa: E731
        self.beta_t, self.sqrt_beta_t = f(beta_t), f(beta_t.sqrt())
        self.oneover_sqrta = f(1 / alpha_t.sqrt())
        self.sqrtab, self.sqrtmab = f(abar.sqrt()), f((1 - abar).sqrt())
        # t = 0 is never a sampling step; cosine's beta_0 = 0 would make it 0 / 0
        self.mab_over_sqrtmab = f(torch.nan_to_num((1 - alpha_t) / (1 - abar).sqrt(), nan=0.0))
        self.signal_at_T = float(abar[T].sqrt())

    def noise(self, x0: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training pair: (x_t, eps, t) with t uniform in 1..T."""
        n = x0.shape[0]
        t = torch.randint(1, self.T + 1, (n,), device=x0.device, generator=generator)
        eps = torch.randn(x0.shape, device=x0.device, generator=generator, dtype=x0.dtype)
        x_t = self.sqrtab[t, None, None, None] * x0 + self.sqrtmab[t, None, None, None] * eps
        return x_t, eps, t


class GuidedSampler:
    """Classifier-free guidance: eps = (1 + w) eps(x, c) - w eps(x, none).

    On CUDA, with the model in eval mode, each reverse step is one replay of a CUDA graph of
    (network, guidance, update): 500 steps of a small network are otherwise bound by kernel
    launches. The noise is drawn outside the graph from the same generator in the same order, so
    the result equals the eager path's up to float rounding (cuDNN may pick other kernels). With
    w = 0 both paths run the conditional half only ((1 + 0) eps_c - 0 eps_u = eps_c). Graphs are
    kept per (batch, size, autocast) on this sampler: reuse one sampler for several w, drop it to
    free the graph's memory. `cuda_graph=False` forces the eager path; CPU always runs eager.
    """

    def __init__(self, model: nn.Module, schedule: NoiseSchedule, cuda_graph: bool = True) -> None:
        self.model, self.schedule, self.cuda_graph = model, schedule, cuda_graph
        self._graphs: dict[tuple, _GraphedStep] = {}

    @torch.no_grad()
    def sample(
        self,
        labels: torch.Tensor,
        w: float,
        generator: torch.Generator | None = None,
        keep_at: tuple[int, ...] = (),
        size: tuple[int, int, int] = (3, 28, 28),
    ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Images in [-1, 1] of shape (N,3,28,28) for `labels`; also x_t at each step listed in keep_at."""
        if self.cuda_graph and labels.device.type == "cuda" and not self.model.training:
            return self._sample_graphed(labels, w, generator, keep_at, size)
        s, device = self.schedule, labels.device
        n = labels.shape[0]
        half = w == 0  # (1 + 0) eps_c - 0 eps_u = eps_c: the conditional half alone, half the work
        x = torch.randn((n, *size), device=device, generator=generator)
        c = labels if half else torch.cat([labels, labels])
        drop = torch.zeros(n, device=device) if half else torch.cat([torch.zeros(n, device=device), torch.ones(n, device=device)])
        kept: dict[int, torch.Tensor] = {}
        if s.T in keep_at:
            kept[s.T] = x.clone()
        for i in range(s.T, 0, -1):
            t = torch.full((len(c), 1), i / s.T, device=device)
            z = torch.randn((n, *size), device=device, generator=generator) if i > 1 else torch.zeros_like(x)
            eps = self.model(x if half else torch.cat([x, x]), c, t, drop).float()
            if not half:
                eps = (1 + w) * eps[:n] - w * eps[n:]
            x = s.oneover_sqrta[i] * (x - eps * s.mab_over_sqrtmab[i]) + s.sqrt_beta_t[i] * z
            if i - 1 in keep_at:
                kept[i - 1] = x.clone()
        return x, kept

    def _sample_graphed(self, labels, w, generator, keep_at, size):
        s, n = self.schedule, labels.shape[0]
        x0 = torch.randn((n, *size), device=labels.device, generator=generator)  # the eager path's first draw
        amp = torch.is_autocast_enabled("cuda")
        dtype = torch.get_autocast_dtype("cuda")
        key = (n, tuple(size), amp, dtype, w == 0, labels.device)
        g = self._graphs.get(key)
        if g is None:
            capture = labels.device.type == "cuda"  # elsewhere (tests on CPU) the same step runs uncaptured
            g = self._graphs[key] = _GraphedStep(self.model, s, n, size, labels, amp, dtype, w == 0, capture)
        g.reset(x0, labels, w)
        kept: dict[int, torch.Tensor] = {}
        if s.T in keep_at:
            kept[s.T] = x0.clone()
        for i in range(s.T, 0, -1):
            if i > 1:
                g.z.normal_(generator=generator)  # = torch.randn(..., generator=generator): same kernel, same draws
            else:
                g.z.zero_()
            g.replay()
            if i - 1 in keep_at:
                kept[i - 1] = g.x.clone()
        return g.x.clone(), kept


class _GraphedStep:
    """One guided reverse step x_i -> x_{i-1} captured as a CUDA graph over static buffers.

    The step index lives on the device (i, decremented by the graph), so a replay needs no host
    input; t/T comes from a table built with the eager path's float arithmetic (i / T in double,
    rounded to float32)."""

    def __init__(self, model, s: NoiseSchedule, n: int, size, labels, amp: bool, dtype, cond_only: bool, capture: bool = True) -> None:
        dev = labels.device
        self.model, self.s, self.n, self.amp, self.dtype, self.cond_only = model, s, n, amp, dtype, cond_only
        self.x = torch.zeros((n, *size), device=dev)
        self.z = torch.zeros_like(self.x)
        self.c = labels.clone()
        self.i = torch.full((1,), s.T, dtype=torch.long, device=dev)  # (1,): index_select, never a host read
        self.w_plus = torch.ones((), device=dev)  # float32(1 + w), as the eager scalar multiply rounds it
        self.w = torch.zeros((), device=dev)
        m = n if cond_only else 2 * n
        self.drop = torch.zeros(n, device=dev) if cond_only else torch.cat([torch.zeros(n, device=dev), torch.ones(n, device=dev)])
        self.t_table = torch.tensor([i / s.T for i in range(s.T + 1)], dtype=torch.float32, device=dev)
        self.m = m
        self.graph: torch.cuda.CUDAGraph | None = None
        if not capture:
            return
        side = torch.cuda.Stream(dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(side):  # warm-up: cuDNN autotuning and allocations happen outside the capture
            for _ in range(2):
                self._step()
        torch.cuda.current_stream(dev).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._step()
        self.graph = graph

    def replay(self) -> None:
        if self.graph is None:
            self._step()
        else:
            self.graph.replay()

    def _step(self) -> None:
        s, n, i = self.s, self.n, self.i

        def at(table: torch.Tensor) -> torch.Tensor:  # table[i] as a (1,) tensor, broadcast like the eager 0-d one
            return table.index_select(0, i)

        # autocast's weight-cast cache must be off inside a graph (cached casts would be freed memory)
        with torch.autocast("cuda", dtype=self.dtype, enabled=self.amp, cache_enabled=False):
            t = at(self.t_table).expand(self.m, 1).clone()
            if self.cond_only:
                eps = self.model(self.x, self.c, t, self.drop).float()
            else:
                eps = self.model(torch.cat([self.x, self.x]), torch.cat([self.c, self.c]), t, self.drop).float()
                eps = self.w_plus * eps[:n] - self.w * eps[n:]
            x = at(s.oneover_sqrta) * (self.x - eps * at(s.mab_over_sqrtmab)) + at(s.sqrt_beta_t) * self.z
        self.x.copy_(x)
        self.i.sub_(1)

    def reset(self, x0: torch.Tensor, labels: torch.Tensor, w: float) -> None:
        self.x.copy_(x0)
        self.c.copy_(labels)
        self.i.fill_(self.s.T)
        self.w_plus.fill_(1 + w)
        self.w.fill_(w)
