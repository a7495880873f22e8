"""The digit evaluator that scores generated digits, and the in-loop metrics of each family."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import shared_datasets
from trainables.config import DataConfig
from trainables.data import ImageSet, _to_tensor, content_fingerprint
from trainables.evaluator import ensure_evaluator, train_classifier


def test_evaluator_on_demo_digits_is_accurate_and_cached(cache_dir) -> None:
    model, acc = ensure_evaluator(DataConfig(domain="mnistm"), torch.device("cpu"))
    assert acc >= 0.95, acc
    files = list((cache_dir / "evaluators").glob("digits-*.pt"))
    assert files
    again, acc2 = ensure_evaluator(DataConfig(domain="mnistm"), torch.device("cpu"))  # from the cache
    assert acc2 == acc
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


@pytest.mark.slow
def test_evaluator_on_real_mnistm_subset() -> None:
    """The real MNIST-M test subset in ../shared/datasets, split 80/20 on its own."""
    from trainables.formats import read_mnistm

    root = shared_datasets() / "mnist_m"
    if not root.exists():
        pytest.skip(f"{root} is absent")
    images, labels = read_mnistm(root, "test")
    x, y = _to_tensor(images, 28), torch.as_tensor(labels)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    cut = int(0.8 * len(x))
    tr = ImageSet(x[perm[:cut]], y[perm[:cut]], content_fingerprint(x[perm[:cut]], y[perm[:cut]]), "mnistm-real-80")
    va = ImageSet(x[perm[cut:]], y[perm[cut:]], content_fingerprint(x[perm[cut:]], y[perm[cut:]]), "mnistm-real-20")
    _, acc = train_classifier(tr, va, torch.device("cpu"))
    print(f"digit evaluator on real MNIST-M (2400 train / 600 val): {acc:.4f}")
    assert acc >= 0.85, acc


def test_gan_trial_reports_fid_when_weights_are_given(tmp_path, cache_dir) -> None:
    """The in-loop FID path with a weights file (random values in pytorch-fid's layout: no real weights here)."""
    from trainables.metrics.fid import random_fid_state_dict
    from trainables.loop import fit

    w = tmp_path / "pt_inception-random.pth"
    torch.save(random_fid_state_dict(0), w)
    seen = []
    cfg = {"epochs": 1, "steps_per_epoch": 2, "batch_size": 8, "n_eval": 16, "fid": "on", "fid_weights": str(w),
           "fid_dims": 64, "device": "cpu"}
    fit("gan", cfg, lambda e: seen.append(e.metrics), quiet=True)
    assert np.isfinite(seen[-1]["fid"]) and seen[-1]["fid"] > 0 and 0 <= seen[-1]["face_rate"] <= 1
    assert list((cache_dir / "fid").glob("fid_stats_*_64_*.npz"))  # real statistics cached for the next trial


def test_fid_on_without_weights_fails_before_training(tmp_path, monkeypatch) -> None:
    from trainables.errors import GentuneError
    from trainables.loop import fit

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv("GENTUNE_FID_WEIGHTS", raising=False)
    with pytest.raises(GentuneError, match="pt_inception"):
        fit("gan", {"epochs": 1, "steps_per_epoch": 1, "batch_size": 4, "n_eval": 4, "fid": "on"}, lambda e: None, quiet=True)
