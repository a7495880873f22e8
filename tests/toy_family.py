"""A small fourth family, registered from outside gentune's packages (GENTUNE_FAMILIES=tests.toy_family):
an MLP digit classifier on the USPS-like demo digits. tests/test_families.py runs it through the CLI."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from trainables.common import Base, accuracy
from trainables.config import DataConfig, TrainConfig
from trainables.data import batches
from trainables.families import Family, register


class MLP(nn.Module):
    def __init__(self, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, hidden), nn.ReLU(), nn.Linear(hidden, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@dataclass(frozen=True)
class ToyConfig(TrainConfig):
    epochs: int = 3
    batch_size: int = 64
    lr: float = 1e-3
    hidden: int = 64
    data: DataConfig = field(default_factory=lambda: DataConfig(domain="usps"))


class ToyTrainer(Base):
    family = "toy"
    MODEL_KEYS = ("model",)

    @staticmethod
    def build_models(cfg: ToyConfig) -> dict[str, nn.Module]:
        return {"model": MLP(cfg.hidden)}

    def __init__(self, cfg: ToyConfig, quiet: bool = False) -> None:
        super().__init__(cfg, quiet)
        self.train_set = self.data(cfg.data, "train", 16, "digits")
        self.val_set = self.data(cfg.data, "val", 16, "digits")
        self.model = self.build_models(cfg)["model"]
        self.place(self.model)
        self.opt = self.adam(self.model.parameters(), cfg.lr)
        self.gen = torch.Generator(device="cpu").manual_seed(cfg.seed)

    def train_epoch(self, epoch: int) -> dict[str, float]:
        total, n = 0.0, 0
        for idx in batches(len(self.train_set), self.cfg.batch_size, self.cfg.steps_per_epoch, self.device, self.gen):
            loss = F.cross_entropy(self.model(self.train_set.batch(idx)), self.train_set.labels[idx])
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            total, n = total + loss.item(), n + 1
        return {"loss": total / max(n, 1)}

    def evaluate(self, epoch: int) -> dict[str, float]:
        return {"val_acc": accuracy(self.model, self.val_set)}

    def state(self) -> dict:
        return {"model": self.model.state_dict(), "opt": self.opt.state_dict()}

    def load_state(self, s: dict) -> None:
        self.model.load_state_dict(s["model"])
        self.opt.load_state_dict(s["opt"])


def report(rep) -> list:
    """The family's own `gentune report` section: per-digit validation accuracy of its best trial."""
    from analysis.report import Section, pct
    from trainables.data import load_split

    s = Section("Toy: per-digit accuracy")
    best = rep.best_across("toy")
    if best is None:
        s.note("No toy trial to show.")
        return [s]
    _, cfg, mods = rep.models_for(best)
    val = load_split(cfg.data, "val", 16, "digits", cfg.cache_dir, quiet=True)
    model = mods["model"].eval()
    with torch.no_grad():
        right = (model(val.batch(torch.arange(len(val)))).argmax(1) == val.labels).cpu()
    labels = val.labels.cpu()
    rows = [[str(d), pct(float(right[labels == d].float().mean()))] for d in range(10) if (labels == d).any()]
    s.table(["digit", "accuracy"], rows + [["all", pct(float(right.float().mean()))]], f"trial {best.trial_id}")
    return [s]


register(Family("toy", ToyConfig, "tests.toy_family:ToyTrainer", {"val_acc": "max"}, "val_acc",
                data=(("data", "train", 16, "digits"), ("data", "val", 16, "digits")),
                smoke={"epochs": 1, "steps_per_epoch": 2}, report="tests.toy_family:report"))
