"""GAN trainer: model A (the DCGAN tutorial) or B (soft/noisy labels, SGD discriminator), 64x64 faces."""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from models.augment import diff_augment
from models.gan import NZ, build_gan
from trainables.common import Base, ema_update, to_uint8
from trainables.config import GANConfig, augment_policy
from trainables.data import batches, epoch_steps
from trainables.device import autocast
from trainables.loop import check_finite


def soft_targets(n: int, lo: float, hi: float, device: torch.device) -> torch.Tensor:
    """Targets uniform in [lo, hi] (hard labels when lo == hi)."""
    return torch.rand(n, device=device) * (hi - lo) + lo


def flip(real_t: torch.Tensor, fake_t: torch.Tensor, p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Swap the real and fake targets of each sample with probability p (noisy labels)."""
    if p <= 0:
        return real_t, fake_t
    swap = torch.rand_like(real_t) < p
    return torch.where(swap, fake_t, real_t), torch.where(swap, real_t, fake_t)


def bce(p: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE in float32 (BCELoss is unsafe under autocast), written out so that soft targets above 1
    (the report's real labels 0.7-1.03) work: F.binary_cross_entropy refuses targets outside [0, 1].
    Probabilities are clamped before the log (not the log after it: the gradient of log at 0 would be
    0 * inf = NaN), so a saturated D gives a finite loss and gradient, as in BCELoss."""
    p, t = p.float(), target.float()
    tiny = torch.finfo(torch.float32).tiny
    return -(t * torch.log(p.clamp_min(tiny)) + (1 - t) * torch.log((1 - p).clamp_min(tiny))).mean()


def r1_penalty(logits_fn, real: torch.Tensor) -> torch.Tensor:
    """Mescheder et al.'s R1: mean over the batch of |grad_x D(x)|^2 at real x, on D's logits, kept in the
    graph (create_graph) so that D's step descends it. Computed in float32 outside autocast."""
    x = real.detach().float().requires_grad_(True)
    (grad,) = torch.autograd.grad(logits_fn(x).float().sum(), x, create_graph=True)
    return grad.pow(2).flatten(1).sum(1).mean()


def noise_sigma(sigma0: float, step: int, total: int) -> float:
    """Instance noise annealed linearly from sigma0 at step 0 to 0 at the last step."""
    return sigma0 * max(0.0, 1.0 - step / max(1, total - 1))


def diversity(x: torch.Tensor, n: int = 128) -> torch.Tensor:
    """Mean pairwise L2 distance between the first n images (at 32x32), a cheap mode-collapse signal."""
    x = F.avg_pool2d(x[:n].float(), 2).flatten(1)
    d = torch.cdist(x, x)
    k = x.shape[0]
    return d.sum() / (k * (k - 1))


class GANTrainer(Base):
    family = "gan"
    cfg: GANConfig
    MODEL_KEYS = ("G", "D")  # the parts of state() that are model weights (what export takes)

    @staticmethod
    def build_models(cfg: GANConfig) -> dict[str, torch.nn.Module]:
        g, d = build_gan(cfg.model, cfg.width)
        return {"G": g, "D": d}

    # --- what a bundle makes (`gentune generate`, the report): see trainables.families
    DEFAULT_N = 32

    @staticmethod
    def sample_plan(cfg: GANConfig, models, n: int, options: dict, metrics: dict | None, device, estimate: bool) -> dict:
        return {"n": n, "nrow": 8, "size": (64, 64), "verb": "generating", "announce_from": 1000,
                "what": f"image(s) with GAN model {cfg.model}"}

    @staticmethod
    @torch.no_grad()
    def sample_images(cfg: GANConfig, models, plan: dict, seed: int, device, keep_at=(), progress=lambda done: None):
        """z ~ N(0, 1) of shape (n, 100, 1, 1) from a CPU generator seeded with `seed` (the same z on any device)."""
        z = torch.randn(plan["n"], NZ, 1, 1, generator=torch.Generator(device="cpu").manual_seed(seed)).to(device)
        G, xs = models["G"].eval(), []
        for c in z.split(256):
            xs.append(G(c).float().cpu())
            progress(256 * len(xs))
        return torch.cat(xs), {}

    def __init__(self, cfg: GANConfig, quiet: bool = False) -> None:
        super().__init__(cfg, quiet)
        from trainables.fid import fid_weights_for

        self.fid_weights = fid_weights_for(cfg)  # fid: on without weights fails here, before any training
        self.train_set = self.data(cfg.data, "train", 64, "faces")
        m = self.build_models(cfg)
        self.G, self.D = m["G"], m["D"]
        self.place(self.G, self.D)
        # the generator that samples: an exponential moving average of G's weights when g_ema > 0 (a GAN's last
        # iterate oscillates from one epoch to the next; the average does not), else G itself
        self.G_ema = copy.deepcopy(self.G).requires_grad_(False) if cfg.g_ema > 0 else None
        self.opt_g = self.adam(self.G.parameters(), cfg.lr_g, (cfg.beta1, cfg.beta2))
        if cfg.d_optimizer == "sgd":
            self.opt_d = self.sgd(self.D.parameters(), cfg.lr_d, cfg.d_momentum)
        else:
            self.opt_d = self.adam(self.D.parameters(), cfg.lr_d, (cfg.beta1, cfg.beta2))
        g = torch.Generator(device="cpu").manual_seed(cfg.seed + 1)
        self.fixed_noise = torch.randn(cfg.n_eval, NZ, 1, 1, generator=g).to(self.device)  # same noise every evaluation
        self.policy = augment_policy(cfg)
        self.steps_per_epoch = epoch_steps(len(self.train_set), cfg.batch_size, cfg.steps_per_epoch)
        self.strikes = {"d_wins": 0, "collapse": 0}
        self.real_div: float | None = None
        self._last_eval: torch.Tensor | None = None
        self.val_set = None

    def seen_by_d(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """What D is shown of a batch, real or fake: DiffAugment'ed, plus instance noise of sigma (both
        differentiable; with augment none and sigma 0, x itself and no random numbers drawn)."""
        x = diff_augment(x, self.policy)
        if sigma > 0:
            x = x + sigma * torch.randn_like(x)
        return self.prep(x)

    def step(self, real: torch.Tensor, step: int = 0) -> tuple[torch.Tensor, ...]:
        """One D step and one G step; `step` counts from 0 over the whole trial (instance noise, lazy R1)."""
        cfg, n = self.cfg, real.shape[0]
        sigma = noise_sigma(cfg.instance_noise, step, cfg.epochs * self.steps_per_epoch)
        real_t = soft_targets(n, cfg.real_label_lo, cfg.real_label_hi, self.device)
        fake_t = soft_targets(n, cfg.fake_label_lo, cfg.fake_label_hi, self.device)
        real_t, fake_t = flip(real_t, fake_t, cfg.label_flip)
        z = torch.randn(n, NZ, 1, 1, device=self.device)
        real_in = self.seen_by_d(real, sigma)
        with autocast(cfg, self.device):
            fake = self.G(self.prep(z))
            p_real = self.D(real_in)
            p_fake = self.D(self.seen_by_d(fake.detach(), sigma))
        loss_d = bce(p_real, real_t) + bce(p_fake, fake_t)  # what is reported: the penalty is not part of it
        total_d = loss_d
        if cfg.r1_gamma > 0 and step % cfg.r1_every == 0:  # lazy: a bigger penalty, less often (StyleGAN2)
            total_d = loss_d + cfg.r1_gamma / 2 * r1_penalty(self.D.logits, real_in) * cfg.r1_every
        self.opt_d.zero_grad(set_to_none=True)
        total_d.backward()
        self.opt_d.step()
        with autocast(cfg, self.device):
            p_gen = self.D(self.seen_by_d(fake, sigma))
        loss_g = bce(p_gen, torch.ones_like(p_gen, dtype=torch.float32))
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_g.step()
        if self.G_ema is not None:
            ema_update(self.G_ema, self.G, self.cfg.g_ema)
        return loss_d.detach(), loss_g.detach(), p_real.detach().float().mean(), p_fake.detach().float().mean()

    def train_epoch(self, epoch: int) -> dict[str, float]:
        self.G.train()
        self.D.train()
        sums = torch.zeros(4, device=self.device)
        steps = 0
        for i, idx in enumerate(batches(len(self.train_set), self.cfg.batch_size, self.cfg.steps_per_epoch, self.device)):
            loss_d, loss_g, d_real, d_fake = self.step(self.train_set.batch(idx), (epoch - 1) * self.steps_per_epoch + i)
            sums += torch.stack([loss_d, loss_g, d_real, d_fake])
            steps += 1
            if i % 10 == 0:  # NaN stops the trial within the epoch; checked every 10 steps to spare syncs
                check_finite(loss_d=loss_d, loss_g=loss_g)
        check_finite(loss_d=sums[0], loss_g=sums[1])
        m = (sums / steps).tolist()
        return {"loss_d": m[0], "loss_g": m[1], "d_real": m[2], "d_fake": m[3]}

    @property
    def sampler(self) -> torch.nn.Module:
        return self.G_ema if self.G_ema is not None else self.G

    @torch.no_grad()
    def generate(self, z: torch.Tensor) -> torch.Tensor:
        G = self.sampler
        G.eval()
        out = torch.cat([G(self.prep(c)).float() for c in z.split(256)])
        G.train()
        return out

    def fid_metric(self, fake_u8: torch.Tensor) -> dict[str, float]:
        """FID against the validation split, as the report's grader computed it (loaded only with FID on). The demo
        faces have one split, so on demo data this is FID against the training faces (the report says so)."""
        from trainables.fid import fid_for

        if self.fid_weights is None:
            return {}
        if self.val_set is None:
            self.val_set = self.data(self.cfg.data, "val", 64, "faces")
        return fid_for(self, self.val_set, fake_u8)

    def evaluate(self, epoch: int) -> dict[str, float]:
        from trainables.metrics.face import face_rate

        fake = self.generate(self.fixed_noise)
        self._last_eval = fake
        if self.real_div is None:
            self.real_div = float(diversity(self.train_set.batch(torch.arange(min(128, len(self.train_set)), device=self.device))))
        u8 = to_uint8(fake)
        m = {
            "face_rate": face_rate(u8.permute(0, 2, 3, 1).cpu().numpy()),
            "diversity": float(diversity(fake)) / max(self.real_div, 1e-8),
        }
        # the ranking without FID: faces that are also as varied as real ones (diversity relative to the
        # real images', capped at 1), so a collapsed G with 100% faces and diversity 0.05 scores 0.05
        m["face_score"] = m["face_rate"] * min(1.0, m["diversity"])
        m.update(self.fid_metric(u8))
        return m

    def stop_reason(self, m: dict[str, float]) -> str | None:
        """At each evaluation: "discriminator won" from the first one on (the failure seen on 100 faces: D
        tells every fake apart within a few hundred steps and G's samples stay noise), mode collapse after
        rules_after epochs (an untrained G's samples are all alike). Each must hold `patience` times in a row."""
        cfg = self.cfg
        won = m.get("d_fake", 1.0) < cfg.d_won_fake and m.get("loss_d", 1.0) < cfg.d_won_loss
        self.strikes["d_wins"] = self.strikes["d_wins"] + 1 if won else 0
        if self.strikes["d_wins"] >= cfg.patience:
            return (f"diverged: discriminator won (D(G(z)) {m['d_fake']:.3f} < {cfg.d_won_fake:g}, "
                    f"D loss {m['loss_d']:.3f} < {cfg.d_won_loss:g} at {cfg.patience} evaluations in a row)")
        if m["epoch"] > cfg.rules_after:
            self.strikes["collapse"] = self.strikes["collapse"] + 1 if m["diversity"] < cfg.collapse_diversity else 0
            if self.strikes["collapse"] >= cfg.patience:
                return "mode collapse"
        return None

    def sample_grid(self) -> torch.Tensor | None:
        if self._last_eval is None:
            return None
        import torchvision.utils as vutils  # here: torchvision's import costs seconds, and only grids need it

        return to_uint8(vutils.make_grid(self._last_eval[:32].cpu(), nrow=8, padding=2, normalize=False, pad_value=1))

    def state(self) -> dict:
        return {
            # "G" holds the weights that sample (what export takes); with g_ema the trained ones are "G_train"
            "G": self.sampler.state_dict(), "D": self.D.state_dict(), "opt_g": self.opt_g.state_dict(),
            **({"G_train": self.G.state_dict()} if self.G_ema is not None else {}),
            "opt_d": self.opt_d.state_dict(), "strikes": torch.tensor([self.strikes["d_wins"], self.strikes["collapse"]]),
        }

    def load_state(self, s: dict) -> None:
        self.G.load_state_dict(s.get("G_train", s["G"]))
        if self.G_ema is not None:
            self.G_ema.load_state_dict(s["G"])
        self.D.load_state_dict(s["D"])
        self.opt_g.load_state_dict(s["opt_g"])
        self.opt_d.load_state_dict(s["opt_d"])
        for opt, lr in ((self.opt_g, self.cfg.lr_g), (self.opt_d, self.cfg.lr_d)):  # this run's rates (PBT changes them)
            for group in opt.param_groups:
                group["lr"] = lr
        self.strikes = dict(zip(("d_wins", "collapse"), s["strikes"].tolist()))
