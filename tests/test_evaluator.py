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


def test_gan_trial_reports_fid_when_weights_are_given(tmp_path, cache_dir, monkeypatch) -> None:
    """The in-loop FID path with a weights file (random values in pytorch-fid's layout: no real weights here): the
    reported FID is the Frechet distance between the generated samples' features and the real statistics cached
    in pytorch-fid's .npz layout, computed here with numpy and scipy's sqrtm; an untrained G makes no face."""
    from scipy.linalg import sqrtm

    from trainables.metrics import fid as F
    from trainables.metrics.fid import random_fid_state_dict
    from trainables.loop import fit

    w = tmp_path / "pt_inception-random.pth"
    torch.save(random_fid_state_dict(0), w)
    feats = []  # every batch of features the trial computed: the real set's (unless cached), then each epoch's fakes
    real_inception = F.inception_features
    monkeypatch.setattr(F, "inception_features", lambda *a, **kw: feats.append(real_inception(*a, **kw)) or feats[-1])
    seen = []
    cfg = {"epochs": 1, "steps_per_epoch": 2, "batch_size": 8, "n_eval": 16, "fid": "on", "fid_weights": str(w),
           "fid_dims": 64, "device": "cpu"}
    fit("gan", cfg, lambda e: seen.append(e.metrics), quiet=True)
    cached = list((cache_dir / "fid").glob(f"fid_stats_*_64_{F.weights_tag(str(w))}*.npz"))
    assert len(cached) == 1, cached  # real statistics cached for the next trial
    with np.load(cached[0]) as z:
        mu, sigma = z["mu"], z["sigma"]
    fake = np.asarray(feats[-1], dtype=np.float64)
    assert fake.shape == (16, 64)
    m2 = fake.mean(0)
    s2 = (fake - m2).T @ (fake - m2) / (len(fake) - 1)
    want = float(((m2 - mu) ** 2).sum() + np.trace(s2) + np.trace(sigma) - 2 * np.trace(sqrtm(s2 @ sigma).real))
    assert seen[-1]["fid"] == pytest.approx(want, rel=1e-4)
    assert seen[-1]["face_rate"] == 0.0 and seen[-1]["face_score"] == 0.0  # 2 steps of training: noise, no face


def test_in_loop_fid_is_the_frechet_distance_of_the_features(tmp_path, monkeypatch) -> None:
    """trainables.fid.fid_for (the GAN trial's FID: real statistics cached, generated ones fresh, Frechet distance)
    with Inception replaced by a fixed random projection of the pixels (tests/test_fid.py checks the network
    against pytorch-fid; this is about what FID is computed from): a set against itself is ~0, and against a
    brightened copy or other images the value equals the Frechet distance computed here from the projected
    features with numpy and scipy's sqrtm, not gentune's closed form."""
    from types import SimpleNamespace

    from scipy.linalg import sqrtm

    from trainables.fid import fid_for
    from trainables.metrics import fid as F

    proj = torch.randn(3 * 8 * 8, 64, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def features(images) -> np.ndarray:
        return (torch.as_tensor(images).double().flatten(1) / 255) @ proj

    monkeypatch.setattr(F, "build_inception", lambda dims, weights, device: "projection")
    monkeypatch.setattr(F, "inception_features", lambda model, images, **kw: features(images).numpy())
    (tmp_path / "weights.pth").write_bytes(b"any file: its hash names the cached statistics")
    g = torch.Generator().manual_seed(0)
    real_u8 = torch.randint(0, 256, (200, 3, 8, 8), generator=g, dtype=torch.uint8)  # 200 > 64 dims: full rank
    real = ImageSet(real_u8, None, content_fingerprint(real_u8, None), "fid-test")
    trainer = SimpleNamespace(cfg=SimpleNamespace(fid_dims=64, cache_dir=str(tmp_path / "cache")),
                              fid_weights=str(tmp_path / "weights.pth"), device=torch.device("cpu"), quiet=True)

    def frechet(a_u8, b_u8) -> float:
        fa, fb = features(a_u8).numpy(), features(b_u8).numpy()
        ma, mb = fa.mean(0), fb.mean(0)
        ca, cb = (fa - ma).T @ (fa - ma) / (len(fa) - 1), (fb - mb).T @ (fb - mb) / (len(fb) - 1)
        return float(((ma - mb) ** 2).sum() + np.trace(ca) + np.trace(cb) - 2 * np.trace(sqrtm(ca @ cb).real))

    brighter = (real_u8.int() + 60).clamp(0, 255).to(torch.uint8)
    other = torch.randint(0, 128, (150, 3, 8, 8), generator=g, dtype=torch.uint8)
    scale = float(np.trace(np.cov(features(real_u8).numpy(), rowvar=False)))
    assert abs(fid_for(trainer, real, real_u8)["fid"]) < 1e-9 * scale
    for fake in (brighter, other, real_u8[:100]):
        want = frechet(real_u8, fake)
        assert want > 1e-3 * scale and fid_for(trainer, real, fake)["fid"] == pytest.approx(want, rel=1e-6)
    assert len(list((tmp_path / "cache" / "fid").glob("fid_stats_*_64_*.npz"))) == 1  # the real statistics, cached


def test_fid_on_without_weights_fails_before_training(tmp_path, monkeypatch) -> None:
    from trainables.errors import GentuneError
    from trainables.loop import fit

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv("GENTUNE_FID_WEIGHTS", raising=False)
    with pytest.raises(GentuneError, match="pt_inception"):
        fit("gan", {"epochs": 1, "steps_per_epoch": 1, "batch_size": 4, "n_eval": 4, "fid": "on"}, lambda e: None, quiet=True)
