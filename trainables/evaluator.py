"""The digit evaluator that judges generated digits: a DigitClassifier trained on the real training split
of a digit domain, cached per dataset fingerprint with its own validation accuracy beside it."""
from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

from models.classifier import DigitClassifier
from trainables.files import atomic_open
from trainables.common import accuracy
from trainables.config import DataConfig
from trainables.data import ImageSet, batches, cache_root, load_split
from trainables.errors import DataError

EPOCHS = 12


def train_classifier(train: ImageSet, val: ImageSet, device: torch.device, epochs: int = EPOCHS, seed: int = 0) -> tuple[DigitClassifier, float]:
    """Train a DigitClassifier on 28x28 digits; returns it (eval mode) and its validation accuracy."""
    g = torch.Generator().manual_seed(seed)
    torch_state = torch.get_rng_state()
    torch.manual_seed(seed)
    model = DigitClassifier().to(device)
    tr, va = train.to(device), val.to(device)
    with torch.enable_grad():  # callers may be inside no_grad (a DDPM evaluation's first use)
        _fit(model, tr, epochs, g, device)
    val_acc = accuracy(model, va)
    torch.set_rng_state(torch_state)
    return model.eval(), val_acc


def _fit(model: DigitClassifier, tr: ImageSet, epochs: int, g: torch.Generator, device: torch.device) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=epochs * max(1, len(tr) // 64))
    for _ in range(epochs):
        for idx in batches(len(tr), 64, 0, "cpu", g):
            idx = idx.to(device)
            # small random shifts: generated digits are not perfectly centred
            dx, dy = torch.randint(-2, 3, (2,), generator=g).tolist()
            x = torch.roll(tr.batch(idx), shifts=(dy, dx), dims=(2, 3))
            loss = F.cross_entropy(model(x), tr.labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()


def ensure_evaluator(dc: DataConfig, device: torch.device, cache_dir: str = "", quiet: bool = False) -> tuple[DigitClassifier, float]:
    """(classifier in eval mode on `device`, its validation accuracy); trained once per dataset."""
    train = load_split(dc, "train", 28, "digits", cache_dir, quiet)
    val = load_split(dc, "val", 28, "digits", cache_dir, quiet)
    path = cache_root(cache_dir) / "evaluators" / f"digits-{train.fingerprint}-{val.fingerprint}.pt"
    if path.is_dir():
        raise DataError(f"digit evaluator cache entry {path} is a folder, expected a cache file; remove it to rebuild it")
    if path.exists():
        model = DigitClassifier()
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(blob, dict) or set(blob) != {"state", "val_acc"} or not 0 <= float(blob["val_acc"]) <= 1:
                raise ValueError("expected the keys state and val_acc (0-1)")
            model.load_state_dict(blob["state"])
            return model.to(device).eval(), float(blob["val_acc"])
        except Exception as e:  # noqa: BLE001 - any undecodable or misfit cache file is retrained, with a line saying why
            why = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
            print(f"gentune: rebuilding the digit evaluator cache entry {path}: {why}", file=sys.stderr)
    if not quiet:
        print(f"gentune: training the digit evaluator on {train.name} ({len(train)} images) ...", file=sys.stderr)
    model, val_acc = train_classifier(train, val, device)
    with atomic_open(path) as f:
        torch.save({"state": {k: v.cpu() for k, v in model.state_dict().items()}, "val_acc": val_acc}, f)
    if not quiet:
        print(f"gentune: digit evaluator validation accuracy {val_acc:.4f}", file=sys.stderr)
    return model, val_acc
