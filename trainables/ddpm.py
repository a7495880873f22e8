"""Conditional DDPM trainer (ContextUnet, classifier-free guidance) on 28x28 RGB digits.

Guidance w only changes sampling, so each evaluation samples the same checkpoint at every w of the
config and reports the digit evaluator's accuracy for each (`acc_w<w>`), plus the best (`acc`, `best_w`).
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
import torchvision.utils as vutils

from models.ddpm import DDPM, GuidedSampler, NoiseSchedule
from trainables.common import Base, to_uint8
from trainables.config import DDPMConfig
from trainables.data import batches
from trainables.loop import autocast, check_finite


def noise_schedule(cfg: DDPMConfig, device: torch.device | str = "cpu") -> NoiseSchedule:
    return NoiseSchedule(cfg.T, cfg.beta_start, cfg.beta_end, cfg.schedule, device)


SELECT_SEED, TEST_SEED = 12345, 54321  # offsets from cfg.seed of the two sample sets of an evaluation


def w_key(w: float) -> str:
    return f"acc_w{w:g}"


class DDPMTrainer(Base):
    family = "ddpm"
    cfg: DDPMConfig
    MODEL_KEYS = ("model",)  # the sampling weights (the EMA ones where there are)

    @staticmethod
    def build_models(cfg: DDPMConfig) -> dict[str, torch.nn.Module]:
        return {"model": DDPM(cfg.n_feat)}

    @staticmethod
    def prepare(cfg: DDPMConfig, quiet: bool) -> None:
        """Once in the sweep's driver, after its data are decoded: train the digit evaluator."""
        from trainables.evaluator import ensure_evaluator

        ensure_evaluator(cfg.data, torch.device("cpu"), cfg.cache_dir, quiet)

    def __init__(self, cfg: DDPMConfig, quiet: bool = False) -> None:
        super().__init__(cfg, quiet)
        self.train_set = self.data(cfg.data, "train", 28, "digits")
        self.model = self.build_models(cfg)["model"]
        self.place(self.model)
        self.schedule = noise_schedule(cfg, self.device)
        self.opt = self.adam(self.model.parameters(), cfg.lr)
        # the weights that sample: an EMA copy when ema_decay > 0, else the trained model itself
        self.ema = copy.deepcopy(self.model).requires_grad_(False) if cfg.ema_decay > 0 else None
        self._evaluator = None
        self._grid: torch.Tensor | None = None

    def train_epoch(self, epoch: int) -> dict[str, float]:
        cfg = self.cfg
        if cfg.lr_decay:  # the reference's linear decay, set per epoch so a resumed run matches
            for group in self.opt.param_groups:
                group["lr"] = cfg.lr * (1 - (epoch - 1) / cfg.epochs)
        self.model.train()
        total, steps = torch.zeros((), device=self.device), 0
        for i, idx in enumerate(batches(len(self.train_set), cfg.batch_size, cfg.steps_per_epoch, self.device)):
            x0, c = self.prep(self.train_set.batch(idx)), self.train_set.labels[idx]
            x_t, eps, t = self.schedule.noise(x0)
            drop = torch.bernoulli(torch.full(c.shape, cfg.drop_prob, device=self.device))
            with autocast(cfg, self.device):
                pred = self.model(self.prep(x_t), c, (t / cfg.T)[:, None], drop)
            loss = F.mse_loss(pred.float(), eps)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            if self.ema is not None:
                self.update_ema()
            total += loss.detach()
            steps += 1
            if i % 10 == 0:
                check_finite(loss=loss)
        check_finite(loss=total)
        return {"loss": float(total) / steps, "lr": self.opt.param_groups[0]["lr"]}

    @torch.no_grad()
    def update_ema(self) -> None:
        d = self.cfg.ema_decay
        ema_p, p = list(self.ema.parameters()), list(self.model.parameters())
        torch._foreach_lerp_(ema_p, p, 1 - d)
        for eb, b in zip(self.ema.buffers(), self.model.buffers()):
            eb.copy_(b)

    @property
    def sampler_model(self):
        return self.ema if self.ema is not None else self.model

    def evaluator(self):
        if self._evaluator is None:
            from trainables.evaluator import ensure_evaluator

            self._evaluator = ensure_evaluator(self.cfg.data, self.device, self.cfg.cache_dir, self.quiet)
        return self._evaluator

    def sample(self, labels: torch.Tensor, w: float, seed: int, keep_at: tuple[int, ...] = (), sampler: GuidedSampler | None = None):
        """Guided samples in [-1, 1]; the same seed gives the same noise for every w. Pass one `sampler`
        for several calls to reuse its CUDA graphs (dropping it frees their memory)."""
        net = self.sampler_model.eval()
        g = torch.Generator(device=self.device).manual_seed(seed)
        with autocast(self.cfg, self.device):
            x, kept = (sampler or GuidedSampler(net, self.schedule)).sample(labels, w, generator=g, keep_at=keep_at)
        self.model.train()
        return x.float(), kept

    @torch.no_grad()
    def evaluate(self, epoch: int) -> dict[str, float]:
        """acc_w<w>: evaluator accuracy of one set of samples per w (the selection set); best_w: the w
        that scored best there; acc: accuracy at best_w on a fresh set drawn with another seed, so
        the number that ranks trials is not the one that chose w."""
        cfg = self.cfg
        clf, clf_acc = self.evaluator()
        labels = torch.arange(10, device=self.device).repeat_interleave(cfg.n_per_digit)  # rows = digits
        m: dict[str, float] = {"evaluator_val_acc": clf_acc}
        sampler = GuidedSampler(self.sampler_model, self.schedule)  # one per evaluation: its CUDA graphs serve every w
        best = (-1.0, 0.0)
        for w in cfg.guidance:
            x, _ = self.sample(labels, w, seed=cfg.seed + SELECT_SEED, sampler=sampler)
            acc = float((clf(x).argmax(1) == labels).float().mean())
            m[w_key(w)] = acc
            best = max(best, (acc, w), key=lambda a: a[0])
        x, _ = self.sample(labels, best[1], seed=cfg.seed + TEST_SEED, sampler=sampler)
        m["acc"], m["best_w"] = float((clf(x).argmax(1) == labels).float().mean()), best[1]
        self._grid = to_uint8(vutils.make_grid(x.cpu(), nrow=cfg.n_per_digit, padding=2, pad_value=1))
        return m

    def sample_grid(self) -> torch.Tensor | None:
        return self._grid

    def state(self) -> dict:
        """"model" holds the weights that sample (what export takes); with EMA the trained ones are "train_model"."""
        if self.ema is None:
            return {"model": self.model.state_dict(), "opt": self.opt.state_dict()}
        return {"model": self.ema.state_dict(), "train_model": self.model.state_dict(), "opt": self.opt.state_dict()}

    def load_state(self, s: dict) -> None:
        self.model.load_state_dict(s.get("train_model", s["model"]))
        if self.ema is not None:
            self.ema.load_state_dict(s["model"])
        self.opt.load_state_dict(s["opt"])
