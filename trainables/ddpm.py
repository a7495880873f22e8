"""Conditional DDPM trainer (ContextUnet, classifier-free guidance) on 28x28 RGB digits.

Guidance w only changes sampling, so each evaluation samples the same checkpoint at every w of the
config and reports the digit evaluator's accuracy for each (`acc_w<w>`), plus the best (`acc`, `best_w`).
"""
from __future__ import annotations

import copy
import math
import time

import torch
import torch.nn.functional as F

from models.ddpm import DDPM, GuidedSampler, NoiseSchedule
from trainables.common import Base, ema_update, to_uint8
from trainables.config import DDPMConfig
from trainables.data import batches
from trainables.device import autocast
from trainables.loop import check_finite


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

    # --- what a bundle makes (`gentune generate`, the report): see trainables.families
    DEFAULT_N = 100
    SAMPLE_OPTIONS = ("digit", "guidance")  # `gentune generate --digit D --guidance W`
    CHUNK = 500  # images sampled together (a chunk's activations must fit in memory)

    @staticmethod
    def sample_plan(cfg: DDPMConfig, models, n: int, options: dict, metrics: dict | None, device, estimate: bool) -> dict:
        """Labels (one digit repeated, or rows of digits 0-9 whose columns are different noise), w (the trial's
        best when it reported one, else the config's first) and, with `estimate`, the seconds it will take."""
        from trainables.errors import GentuneError

        digit, w = options.get("digit"), options.get("guidance")
        if digit is not None and not 0 <= digit <= 9:
            raise GentuneError(f"--digit must be 0-9, got {digit}")
        if w is not None and not (math.isfinite(w) and w >= 0):
            raise GentuneError(f"--guidance must be a finite number >= 0, got {w}")
        if w is None:
            best = (metrics or {}).get("best_w")
            w = float(best) if best is not None and math.isfinite(best) else float(cfg.guidance[0])
        if digit is not None:
            labels, nrow = [int(digit)] * n, min(n, 10)
        else:
            nrow = max(1, math.ceil(n / 10))
            labels = [d for d in range(10) for _ in range(nrow)][:n]
        plan = {"n": n, "w": float(w), "labels": labels, "nrow": nrow, "size": (28, 28), "verb": "sampling",
                "what": f"digit(s) with the DDPM (T={cfg.T}, w={w:g})"}
        if estimate:  # one network evaluation of a chunk, times T steps, times the chunks (x2 for w > 0: cond + uncond)
            rows = min(n, DDPMTrainer.CHUNK) * (1 if w == 0 else 2)
            args = (torch.zeros(rows, 3, 28, 28, device=device), torch.zeros(rows, dtype=torch.long, device=device),
                    torch.full((rows, 1), 0.5, device=device), torch.zeros(rows, device=device))
            t0 = time.perf_counter()
            with torch.no_grad():
                models["model"].eval()(*args)
            if torch.device(device).type == "cuda":
                torch.cuda.synchronize(device)
            plan["seconds"] = (time.perf_counter() - t0) * cfg.T * math.ceil(n / DDPMTrainer.CHUNK)
        return plan

    @staticmethod
    @torch.no_grad()
    def sample_images(cfg: DDPMConfig, models, plan: dict, seed: int, device, keep_at=(), progress=lambda done: None):
        """Classifier-free guided sampling from noise drawn by a generator on `device` seeded with `seed`, in
        chunks of CHUNK images (up to CHUNK images it is one batch); also the x_t kept at `keep_at`."""
        labels = torch.tensor(plan["labels"], dtype=torch.long, device=device)
        gen = torch.Generator(device=device).manual_seed(seed)
        sampler = GuidedSampler(models["model"].eval(), noise_schedule(cfg, device))
        xs: list[torch.Tensor] = []
        kept: dict[int, list[torch.Tensor]] = {}
        for lab in labels.split(DDPMTrainer.CHUNK):
            x, k = sampler.sample(lab, plan["w"], generator=gen, keep_at=keep_at)
            xs.append(x.float().cpu())
            for step, v in k.items():
                kept.setdefault(step, []).append(v.float().cpu())
            progress(sum(len(c) for c in xs))
        return torch.cat(xs), {k: torch.cat(v) for k, v in kept.items()}

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
                ema_update(self.ema, self.model, self.cfg.ema_decay)
            total += loss.detach()
            steps += 1
            if i % 10 == 0:
                check_finite(loss=loss)
        check_finite(loss=total)
        return {"loss": float(total) / steps, "lr": self.opt.param_groups[0]["lr"]}

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
        import torchvision.utils as vutils  # here: torchvision's import costs seconds, and only grids need it

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
