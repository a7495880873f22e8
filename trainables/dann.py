"""DANN trainer: source-only, DANN (gradient reversal) and target-only modes, 32x32 digits."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from trainables.errors import DataError
from models.dann import DANN, grad_reverse, lambda_at
from trainables.common import Base, accuracy
from trainables.config import DANNConfig
from trainables.data import ImageSet, batches
from trainables.device import autocast
from trainables.loop import check_finite

SPLIT_SEED = 20240601  # fixed: every trial of every sweep sees the same selection / test halves


def selection_and_test(images: ImageSet) -> tuple[ImageSet, ImageSet]:
    """The labelled target split in two halves, the same for every trial and seed: trials are ranked on the
    first (target_acc), the second (target_test_acc) is only reported, so a sweep's best is not chosen on
    the number that describes it."""
    if len(images) < 2:
        raise DataError(f"{images.name}: {len(images)} labelled target validation image(s); DANN needs at least 2 "
                        "(one half ranks trials, the other is the reported test accuracy)")
    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(SPLIT_SEED))
    half = len(images) // 2
    return images.subset(perm[:half].sort().values, "select"), images.subset(perm[half:].sort().values, "test")


DEV_FIT = 1000  # training features per domain for DEV's domain classifier


def dev_estimate(feat_src, feat_tgt, feat_val, loss_val, c: float = 0.1) -> float:
    """DEV's risk estimate from features (tensors or arrays): density ratios of the source validation samples
    from an L2-regularised logistic-regression domain classifier (source 0 / target 1; C = `c` as in
    scikit-learn, fit with L-BFGS in torch so that a GPU node needs nothing more), the weighted loss, and
    the control variate eta = -Cov(L, w) / Var(w)."""
    fs, ft, fv, lv = (torch.as_tensor(a).detach().double().cpu() for a in (feat_src, feat_tgt, feat_val, loss_val))
    x = torch.cat([fs, ft])
    mu, sd = x.mean(0), x.std(0).clamp_min(1e-8)
    z, zv = (x - mu) / sd, (fv - mu) / sd
    y = torch.cat([torch.zeros(len(fs)), torch.ones(len(ft))]).double()
    coef = torch.zeros(z.shape[1] + 1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([coef], max_iter=300, tolerance_grad=1e-9, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(z @ coef[:-1] + coef[-1], y, reduction="sum")
        loss = loss + (coef[:-1] ** 2).sum() / (2 * c)
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        p = torch.sigmoid(zv @ coef[:-1] + coef[-1]).clamp(1e-6, 1 - 1e-6)
        w = p / (1 - p) * len(fs) / len(ft)
        weighted = w * lv
        var = float(w.var()) if len(w) > 1 else 0.0
        cov = float(((weighted - weighted.mean()) * (w - w.mean())).sum() / max(len(w) - 1, 1))
        eta = -cov / var if var > 0 else 0.0
        return float(weighted.mean() + eta * w.mean() - eta)


class DANNTrainer(Base):
    family = "dann"
    cfg: DANNConfig
    MODEL_KEYS = ("model",)

    @staticmethod
    def build_models(cfg: DANNConfig) -> dict[str, torch.nn.Module]:
        return {"model": DANN()}

    @staticmethod
    @torch.no_grad()
    def classify_images(cfg: DANNConfig, models, images_u8: torch.Tensor, device, batch: int = 512) -> torch.Tensor:
        """Labels (N,) of uint8 (N, 3, 32, 32) images (`gentune predict`): the label predictor on the features."""
        model = models["model"].eval()
        preds = []
        for i in range(0, len(images_u8), batch):
            x = images_u8[i : i + batch].to(device).float().div_(127.5).sub_(1.0)
            preds.append(model(x).argmax(1).cpu())
        return torch.cat(preds)

    def __init__(self, cfg: DANNConfig, quiet: bool = False) -> None:
        super().__init__(cfg, quiet)
        self.src = self.data(cfg.source, "train", 32, "digits")
        self.tgt = self.data(cfg.target, "train", 32, "digits")
        self.src_val = self.data(cfg.source, "val", 32, "digits")
        self.tgt_val = self.data(cfg.target, "val", 32, "digits")
        self.tgt_select, self.tgt_test = selection_and_test(self.tgt_val)
        self.model = self.build_models(cfg)["model"]
        self.place(self.model)
        m = self.model
        # the report: Adam 1e-3 for extractor + label predictor, a second Adam 1e-3 for the domain classifier
        self.opt = self.adam([*m.feature.parameters(), *m.label.parameters()], cfg.lr)
        self.opt_dom = self.adam(m.domain.parameters(), cfg.lr)

    def steps(self) -> int:
        n = len(self.tgt) if self.cfg.mode == "target-only" else len(self.src)
        return self.cfg.steps_per_epoch or max(1, n // min(self.cfg.batch_size, n))

    def train_epoch(self, epoch: int) -> dict[str, float]:
        cfg, m = self.cfg, self.model
        m.train()
        n_steps = self.steps()
        labelled = self.tgt if cfg.mode == "target-only" else self.src
        sums = torch.zeros(2, device=self.device)
        tgt_iter = batches(len(self.tgt), cfg.batch_size, n_steps, self.device)
        lamb = cfg.lamb
        for i, idx in enumerate(batches(len(labelled), cfg.batch_size, n_steps, self.device)):
            x, y = self.prep(labelled.batch(idx)), labelled.labels[idx]
            tidx = next(tgt_iter)
            with autocast(cfg, self.device):
                if cfg.mode == "dann":
                    xt = self.prep(self.tgt.batch(tidx))
                    h = m.feature(torch.cat([x, xt]))
                    logits = m.label(h[: len(x)])
                    progress = ((epoch - 1) * n_steps + i) / (cfg.epochs * n_steps)
                    lamb = lambda_at(progress, cfg.lamb, cfg.lambda_schedule)
                    dom = m.domain(grad_reverse(h, lamb))
                else:
                    logits = m.label(m.feature(x))
            loss_cls = F.cross_entropy(logits.float(), y)
            if cfg.mode == "dann":
                dom_t = torch.cat([torch.ones(len(x), device=self.device), torch.zeros(len(xt), device=self.device)])
                loss_dom = F.binary_cross_entropy_with_logits(dom.float(), dom_t)
            else:
                loss_dom = torch.zeros((), device=self.device)
            loss = loss_cls + loss_dom  # the reversal layer already scales the domain gradient by lambda
            self.opt.zero_grad(set_to_none=True)
            self.opt_dom.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            if cfg.mode == "dann":
                self.opt_dom.step()
            sums += torch.stack([loss_cls.detach(), loss_dom.detach()])
            if i % 10 == 0:
                check_finite(loss_cls=loss_cls, loss_dom=loss_dom)
        check_finite(loss_cls=sums[0], loss_dom=sums[1])
        s = (sums / n_steps).tolist()
        return {"loss_cls": s[0], "loss_dom": s[1], "lambda": lamb}

    @torch.no_grad()
    def features(self, images) -> torch.Tensor:
        """512-d features of every image in an ImageSet (eval mode), for t-SNE and the domain accuracy."""
        self.model.eval()
        out = [self.model.feature(self.prep(images.batch(torch.arange(i, min(i + 512, len(images)), device=self.device))))
               for i in range(0, len(images), 512)]
        self.model.train()
        return torch.cat(out).float()

    @torch.no_grad()
    def dev_risk(self, hs_val: torch.Tensor) -> float:
        """Deep embedded validation (You et al., ICML 2019): the source validation loss weighted by the
        density ratio p(target | feature) / p(source | feature) of a logistic-regression domain classifier
        fit on training features of both domains, with the paper's control variate. Needs no target label."""
        m = self.model
        gen = torch.Generator().manual_seed(SPLIT_SEED)
        take = [torch.randperm(len(d), generator=gen)[:DEV_FIT].sort().values for d in (self.src, self.tgt)]
        fs, ft = (self.features(d.subset(i)) for d, i in zip((self.src, self.tgt), take))
        m.eval()
        logits = torch.cat([m.label(hs_val[i:i + 512]) for i in range(0, len(hs_val), 512)]).float()
        m.train()
        return dev_estimate(fs, ft, hs_val, F.cross_entropy(logits, self.src_val.labels, reduction="none"))

    @torch.no_grad()
    def evaluate(self, epoch: int) -> dict[str, float]:
        m = self.model
        hs, ht = self.features(self.src_val), self.features(self.tgt_val)
        m.eval()
        dom_correct = int((m.domain(hs) > 0).sum()) + int((m.domain(ht) <= 0).sum())
        m.train()
        return {
            "dev_risk": self.dev_risk(hs),  # label-free: lower is better
            "target_acc": accuracy(m, self.tgt_select, prep=self.prep),  # ranks trials
            "target_test_acc": accuracy(m, self.tgt_test, prep=self.prep),  # reported, never ranks
            "source_acc": accuracy(m, self.src_val, prep=self.prep),
            "domain_acc": dom_correct / (len(hs) + len(ht)),
        }

    def state(self) -> dict:
        return {"model": self.model.state_dict(), "opt": self.opt.state_dict(), "opt_dom": self.opt_dom.state_dict()}

    def load_state(self, s: dict) -> None:
        self.model.load_state_dict(s["model"])
        self.opt.load_state_dict(s["opt"])
        self.opt_dom.load_state_dict(s["opt_dom"])
