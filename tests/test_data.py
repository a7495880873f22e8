"""The dataset cache: decoded once, keyed by the source, rebuilt when the source changes."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from trainables.config import DataConfig
from trainables.data import batches, load_split


def test_cache_follows_label_edits_and_new_images(tmp_path) -> None:
    root = tmp_path / "hw"
    d = root / "digits" / "usps" / "data"
    d.mkdir(parents=True)
    for i in range(4):
        Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(d / f"{i}.png")
    csv = root / "digits" / "usps" / "train.csv"
    csv.write_text("image_name,label\n" + "".join(f"{i}.png,{i}\n" for i in range(4)))
    dc = DataConfig(source="report", root=str(root), domain="usps")
    a = load_split(dc, "train", 32, "digits", str(tmp_path / "cache"), quiet=True)
    assert a.labels.tolist() == [0, 1, 2, 3] and a.images.shape == (4, 3, 32, 32)
    csv.write_text("image_name,label\n" + "".join(f"{i}.png,{9 - i}\n" for i in range(4)))
    b = load_split(dc, "train", 32, "digits", str(tmp_path / "cache"), quiet=True)
    assert b.labels.tolist() == [9, 8, 7, 6] and b.fingerprint != a.fingerprint
    again = load_split(dc, "train", 32, "digits", str(tmp_path / "cache"), quiet=True)
    assert again.fingerprint == b.fingerprint and len(list((tmp_path / "cache" / "datasets").glob("*.pt"))) == 2


def test_demo_domains_and_batches(tmp_path) -> None:
    sets = {dom: load_split(DataConfig(domain=dom), "val", 32, "digits", str(tmp_path), quiet=True) for dom in ("mnistm", "usps", "svhn")}
    assert len({s.fingerprint for s in sets.values()}) == 3
    grey = sets["usps"].images.float()
    assert torch.equal(grey[:, 0], grey[:, 1])  # USPS-like is grey, the others are coloured
    assert not torch.equal(sets["svhn"].images[:, 0], sets["svhn"].images[:, 1])
    x = sets["mnistm"].batch(torch.arange(4))
    assert x.min() >= -1 and x.max() <= 1 and x.dtype == torch.float32
    idx = list(batches(10, 4, 0, "cpu"))
    assert len(idx) == 2 and len(torch.cat(idx).unique()) == 8
    assert len(list(batches(10, 4, 5, "cpu"))) == 5
