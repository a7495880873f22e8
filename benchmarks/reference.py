"""Reference-style implementations of each workload, written from the report's description, for
`benchmarks.throughput` to compare gentune against on the same data and step counts.

- GAN A: the PyTorch DCGAN faces tutorial: images as JPEG files read by torchvision's ImageFolder
  (Resize, CenterCrop, ToTensor, Normalize) through DataLoader(shuffle=True, num_workers=2), an
  fp32 eager loop with BCELoss, two backward passes for D and `.item()` statistics every step.
- GAN B: the same loop with model B's soft labels and D's SGD(momentum).
- DDPM: TeaPearce/Conditional_Diffusion_MNIST: its training forward (random t, noise, context
  mask, MSE) and its guided sampler (noise drawn on the host and copied each step, x_t stored to
  numpy at the steps it stores), fp32 eager.
- DANN: a plain loop: source and target DataLoaders zipped, fp32 eager, gradient reversal, two Adams.
- FID: pytorch-fid's way: batches of 50 from [0, 1] floats, fp32, features to numpy, scipy sqrtm.

The networks themselves are gentune's (they print the same as the report's); only the loops,
data paths and samplers are the reference's. Nothing here is used by gentune itself.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# ----------------------------------------------------------------------------- data (the tutorial)


def write_jpegs(images_u8: torch.Tensor, folder: Path, quality: int = 95) -> Path:
    """Write uint8 (N,3,H,W) images as JPEG files in ImageFolder's layout: folder/faces/000000.jpg.
    Returns the ImageFolder root (folder)."""
    from PIL import Image

    sub = Path(folder) / "faces"
    sub.mkdir(parents=True, exist_ok=True)
    arr = images_u8.permute(0, 2, 3, 1).contiguous().cpu().numpy()
    for i, a in enumerate(arr):
        Image.fromarray(a).save(sub / f"{i:06d}.jpg", quality=quality)
    return Path(folder)


def tutorial_loader(root: Path, batch_size: int, image_size: int = 64, workers: int = 2) -> torch.utils.data.DataLoader:
    """The DCGAN tutorial's dataset and loader, verbatim in substance."""
    import torchvision.datasets as dset
    from torchvision import transforms

    dataset = dset.ImageFolder(
        root=str(root),
        transform=transforms.Compose([
            transforms.Resize(image_size),
            transforms.CenterCrop(image_size),
            transforms.ToTensor(),
            transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
        ]),
    )
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers)


def endless(loader):
    """Batches forever, a new epoch (new iterator: workers restart, as in the tutorial's loop) when one ends."""
    while True:
        yield from loader


def tutorial_epoch(loader, device: torch.device) -> int:
    """One epoch of the tutorial's data path: every batch moved to the training device. Returns images."""
    n = 0
    for data in loader:
        real = data[0].to(device)
        n += real.shape[0]
    return n


# ----------------------------------------------------------------------------- GAN (the tutorial's loop)


class GANState:
    """The tutorial's objects: netG, netD, criterion, optimizers, label values."""

    def __init__(self, G: nn.Module, D: nn.Module, device: torch.device, model: str = "A") -> None:
        self.netG, self.netD, self.device, self.model = G.to(device), D.to(device), device, model
        self.criterion = nn.BCELoss()
        self.optimizerG = torch.optim.Adam(G.parameters(), lr=1e-4, betas=(0.5, 0.999))
        if model == "A":
            self.optimizerD = torch.optim.Adam(D.parameters(), lr=1e-4, betas=(0.5, 0.999))
        else:  # the report's model B: D trained with SGD(lr 1e-3, momentum 0.5)
            self.optimizerD = torch.optim.SGD(D.parameters(), lr=1e-3, momentum=0.5)
        self.stats: list[tuple[float, float, float, float, float]] = []


def tutorial_gan_step(st: GANState, data) -> int:
    """One iteration of the tutorial's training loop (model B: soft real/fake labels). Returns images."""
    nz, device, netG, netD, criterion = 100, st.device, st.netG, st.netD, st.criterion
    real_label, fake_label = 1.0, 0.0
    # (1) Update D network: maximize log(D(x)) + log(1 - D(G(z)))
    netD.zero_grad()
    real_cpu = data[0].to(device)
    b_size = real_cpu.size(0)
    if st.model == "A":
        label = torch.full((b_size,), real_label, dtype=torch.float, device=device)
    else:
        label = torch.empty(b_size, device=device).uniform_(0.7, 1.0)
    output = netD(real_cpu).view(-1)
    errD_real = criterion(output, label)
    errD_real.backward()
    D_x = output.mean().item()
    noise = torch.randn(b_size, nz, 1, 1, device=device)
    fake = netG(noise)
    if st.model == "A":
        label.fill_(fake_label)
    else:
        label = torch.empty(b_size, device=device).uniform_(0.0, 0.33)
    output = netD(fake.detach()).view(-1)
    errD_fake = criterion(output, label)
    errD_fake.backward()
    D_G_z1 = output.mean().item()
    errD = errD_real + errD_fake
    st.optimizerD.step()
    # (2) Update G network: maximize log(D(G(z)))
    netG.zero_grad()
    label = torch.full((b_size,), real_label, dtype=torch.float, device=device)
    output = netD(fake).view(-1)
    errG = criterion(output, label)
    errG.backward()
    D_G_z2 = output.mean().item()
    st.optimizerG.step()
    st.stats.append((errD.item(), errG.item(), D_x, D_G_z1, D_G_z2))
    return b_size


# ----------------------------------------------------------------------------- DDPM (TeaPearce style)


class TeaPearceDDPM(nn.Module):
    """TeaPearce's DDPM wrapper: the schedule as buffers, forward = the training loss."""

    def __init__(self, nn_model: nn.Module, sqrtab, sqrtmab, oneover_sqrta, mab_over_sqrtmab, sqrt_beta_t, n_T: int,
                 drop_prob: float = 0.1) -> None:
        super().__init__()
        self.nn_model, self.n_T, self.drop_prob = nn_model, n_T, drop_prob
        for k, v in {"sqrtab": sqrtab, "sqrtmab": sqrtmab, "oneover_sqrta": oneover_sqrta,
                     "mab_over_sqrtmab": mab_over_sqrtmab, "sqrt_beta_t": sqrt_beta_t}.items():
            self.register_buffer(k, v.detach().clone())
        self.loss_mse = nn.MSELoss()

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        _ts = torch.randint(1, self.n_T + 1, (x.shape[0],)).to(x.device)
        noise = torch.randn_like(x)
        x_t = self.sqrtab[_ts, None, None, None] * x + self.sqrtmab[_ts, None, None, None] * noise
        context_mask = torch.bernoulli(torch.zeros_like(c, dtype=torch.float) + self.drop_prob).to(x.device)
        return self.loss_mse(noise, self.nn_model(x_t, c, _ts / self.n_T, context_mask))

    @torch.no_grad()
    def sample(self, n_sample: int, size, device, guide_w: float = 0.0):
        """TeaPearce's sample(): digits 0..9 repeated, guided, x_i stored at the steps he stores."""
        x_i = torch.randn(n_sample, *size).to(device)
        c_i = torch.arange(0, 10).to(device)
        c_i = c_i.repeat(int(n_sample / c_i.shape[0]))
        context_mask = torch.zeros_like(c_i, dtype=torch.float).to(device)
        c_i = c_i.repeat(2)
        context_mask = context_mask.repeat(2)
        context_mask[n_sample:] = 1.0
        x_i_store = []
        for i in range(self.n_T, 0, -1):
            t_is = torch.tensor([i / self.n_T]).to(device)
            t_is = t_is.repeat(n_sample, 1, 1, 1)
            x_i = x_i.repeat(2, 1, 1, 1)
            t_is = t_is.repeat(2, 1, 1, 1)
            z = torch.randn(n_sample, *size).to(device) if i > 1 else 0
            eps = self.nn_model(x_i, c_i, t_is, context_mask)
            eps1 = eps[:n_sample]
            eps2 = eps[n_sample:]
            eps = (1 + guide_w) * eps1 - guide_w * eps2
            x_i = x_i[:n_sample]
            x_i = self.oneover_sqrta[i] * (x_i - eps * self.mab_over_sqrtmab[i]) + self.sqrt_beta_t[i] * z
            if i % 20 == 0 or i == self.n_T or i < 8:
                x_i_store.append(x_i.detach().cpu().numpy())
        return x_i, np.array(x_i_store)


def teapearce_train_step(ddpm: TeaPearceDDPM, optim: torch.optim.Optimizer, batch, device, ema: list) -> int:
    """One iteration of TeaPearce's training loop. Returns images."""
    x, c = batch
    optim.zero_grad()
    x = x.to(device)
    c = c.to(device)
    loss = ddpm(x, c)
    loss.backward()
    ema[0] = loss.item() if ema[0] is None else 0.95 * ema[0] + 0.05 * loss.item()
    optim.step()
    return x.shape[0]


# ----------------------------------------------------------------------------- DANN (plain loop)


class _ReverseGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, lamb):  # type: ignore[override]
        ctx.lamb = lamb
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        return -ctx.lamb * g, None


class DANNState:
    def __init__(self, model: nn.Module, device: torch.device, lamb: float = 0.3) -> None:
        self.m, self.device, self.lamb = model.to(device), device, lamb
        self.opt_fc = torch.optim.Adam([*model.feature.parameters(), *model.label.parameters()], lr=1e-3)
        self.opt_d = torch.optim.Adam(model.domain.parameters(), lr=1e-3)
        self.class_criterion = nn.CrossEntropyLoss()
        self.domain_criterion = nn.BCEWithLogitsLoss()
        self.running = 0.0


def dann_step(st: DANNState, src, tgt) -> int:
    """One plain DANN iteration on a source and a target batch. Returns images (source + target)."""
    (xs, ys), (xt, _) = src, tgt
    xs, ys, xt = xs.to(st.device), ys.to(st.device), xt.to(st.device)
    mixed = torch.cat([xs, xt], dim=0)
    domain_label = torch.zeros(xs.shape[0] + xt.shape[0], device=st.device)
    domain_label[: xs.shape[0]] = 1
    feature = st.m.feature(mixed)
    class_logits = st.m.label(feature[: xs.shape[0]])
    domain_logits = st.m.domain(_ReverseGrad.apply(feature, st.lamb))
    loss = st.class_criterion(class_logits, ys) + st.domain_criterion(domain_logits, domain_label)
    st.opt_fc.zero_grad()
    st.opt_d.zero_grad()
    loss.backward()
    st.opt_fc.step()
    st.opt_d.step()
    st.running += loss.item()
    return xs.shape[0] + xt.shape[0]


# ----------------------------------------------------------------------------- FID (pytorch-fid's way)


@torch.no_grad()
def pytorch_fid_activations(model: nn.Module, images_u8: torch.Tensor, device, batch_size: int = 50) -> np.ndarray:
    """pytorch-fid's get_activations on in-memory uint8 images: [0, 1] floats in batches of 50, fp32."""
    model.eval()
    pred_arr = []
    for i in range(0, images_u8.shape[0], batch_size):
        batch = (images_u8[i : i + batch_size].cpu().float() / 255.0).to(device)
        pred = model(batch)[0]
        if pred.size(2) != 1 or pred.size(3) != 1:
            pred = F.adaptive_avg_pool2d(pred, output_size=(1, 1))
        pred_arr.append(pred.squeeze(3).squeeze(2).cpu().numpy())
    return np.concatenate(pred_arr)


def pytorch_fid_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """pytorch-fid's calculate_frechet_distance (scipy sqrtm), without the `disp` argument newer scipy removed."""
    from scipy import linalg

    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def pytorch_fid_score(model: nn.Module, fake_u8: torch.Tensor, mu_real, sigma_real, device) -> float:
    act = pytorch_fid_activations(model, fake_u8, device)
    return pytorch_fid_distance(np.mean(act, axis=0), np.cov(act, rowvar=False), mu_real, sigma_real)
