"""FID: gentune's features and distance against pytorch-fid's own functions.

The real FID weights are not available offline, so every network here is pytorch-fid's
InceptionV3 with seeded random weights: the numbers are not FIDs, but both sides compute
them with the same network, so they must agree.
"""
from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image
from pytorch_fid import fid_score

from trainables.errors import GentuneError
from trainables.metrics import fid

REPO = Path(__file__).resolve().parents[1]
_REAL_SQRTM = scipy.linalg.sqrtm


def _sqrtm_compat(a: np.ndarray, disp: bool = True, **kwargs: object) -> object:
    """scipy's sqrtm with pytorch-fid 0.3.0's `disp=False` call shape (scipy 1.17 removed disp)."""
    with warnings.catch_warnings():  # "Matrix is singular": expected with fewer samples than dims
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        root = _REAL_SQRTM(a, **kwargs)
    return root if disp else (root, 0.0)


def _images(n: int, size: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    """(n, 3, size, size) uint8 smooth random images (a blurred noise field, optionally brightened)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 4, 4, generator=g)
    x = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    x = x + 0.15 * torch.rand(n, 3, size, size, generator=g) + shift
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def _write_pngs(images: torch.Tensor, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i, img in enumerate(images):
        f = folder / f"{i:04d}.png"
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(f)
        files.append(f)
    return files


@pytest.fixture(scope="module")
def net2048() -> torch.nn.Module:
    torch.manual_seed(0)
    return fid.build_inception(2048, random_init=True, seed=0, device="cpu")


@pytest.fixture(scope="module")
def net64() -> torch.nn.Module:
    return fid.build_inception(64, random_init=True, seed=0, device="cpu")


# ---------------------------------------------------------------- (a) against pytorch-fid


def test_features_match_pytorch_fid_get_activations(net2048, net64, tmp_path):
    """2048-d pool3 features: in-memory uint8 vs pytorch-fid's PNG path; [0, 1] floats = uint8."""
    real = _images(6, 32, seed=1)
    files = _write_pngs(real, tmp_path / "real")
    ours = fid.inception_features(net2048, real, batch_size=3, quiet=True)
    theirs = fid_score.get_activations(files, net2048, batch_size=3, dims=2048, device="cpu", num_workers=0)
    assert ours.shape == (6, 2048) and ours.dtype == np.float64
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-7 * np.abs(theirs).max())
    assert ours.std(axis=0).mean() > 1e-3  # the random network does not collapse its features
    np.testing.assert_allclose(
        fid.inception_features(net64, real.float() / 255, batch_size=3, quiet=True),
        fid.inception_features(net64, real, batch_size=3, quiet=True),
        rtol=1e-6,
    )


@pytest.mark.parametrize("dims", [192, pytest.param(2048, marks=pytest.mark.slow)])
def test_features_and_fid_match_pytorch_fid(dims, tmp_path, monkeypatch):
    """Features on the same network, then the distance: ours vs pytorch-fid's math.

    dims 192 (block 1, pooled to 1x1 as pytorch-fid does) by default: scipy's sqrtm of a
    2048x2048 matrix alone takes 15-40 s on two cores, so the 2048-d run is marked slow.
    """
    net = fid.build_inception(dims, random_init=True, seed=3)
    a, b = _images(12, 24, seed=4), _images(12, 24, seed=5, shift=0.15)
    files = _write_pngs(a, tmp_path / "a")
    fa = fid.inception_features(net, a, batch_size=6, quiet=True)
    ref = fid_score.get_activations(files, net, batch_size=6, dims=dims, device="cpu", num_workers=0)
    np.testing.assert_allclose(fa, ref, rtol=1e-5, atol=1e-7 * np.abs(ref).max())
    mu1, s1 = fid.stats(fa)
    mu2, s2 = fid.stats(fid.inception_features(net, b, batch_size=6, quiet=True))
    np.testing.assert_array_equal(mu1, np.mean(fa, axis=0))
    np.testing.assert_array_equal(s1, np.cov(fa, rowvar=False))
    monkeypatch.setattr(fid_score.linalg, "sqrtm", _sqrtm_compat)
    reference = fid_score.calculate_frechet_distance(mu1, s1, mu2, s2)
    assert reference > 0
    assert fid.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(reference, rel=1e-6)


def test_weights_file_path_equals_random_init_and_never_downloads(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))

    def no_download(*args, **kwargs):
        raise AssertionError("tried to download")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    w = tmp_path / "w.pth"
    torch.save(fid.random_fid_state_dict(seed=7), w)
    from_file = fid.build_inception(64, weights=w)
    random = fid.build_inception(64, random_init=True, seed=7)
    x = _images(3, 16, seed=0)
    np.testing.assert_array_equal(
        fid.inception_features(from_file, x, quiet=True), fid.inception_features(random, x, quiet=True)
    )
    bad = tmp_path / "bad.pth"
    torch.save({"foo": torch.zeros(1)}, bad)
    with pytest.raises(GentuneError, match="bad.pth"):
        fid.build_inception(64, weights=bad)


def test_image_input_checks(net64):
    net = net64
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fid.inception_features(net, torch.full((2, 3, 8, 8), -1.0), quiet=True)
    with pytest.raises(ValueError, match="shape"):
        fid.inception_features(net, torch.zeros(2, 8, 8, 3, dtype=torch.uint8), quiet=True)


def test_progress_goes_to_stderr(net64, capsys):
    net = net64
    fid.inception_features(net, _images(4, 8, seed=0), batch_size=2)
    out, err = capsys.readouterr()
    assert out == "" and "2/2" in err
    fid.inception_features(net, _images(4, 8, seed=0), batch_size=2, quiet=True)
    assert capsys.readouterr().err == ""


# ---------------------------------------------------------------- (b) closed forms


def test_frechet_diagonal_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=50), rng.normal(size=50)
    s1, s2 = rng.uniform(0.1, 3, 50), rng.uniform(0.1, 3, 50)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    assert fid.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-12)
    # scalars: (mu1 - mu2)^2 + (sqrt(s1) - sqrt(s2))^2
    assert fid.frechet_distance(1.0, 4.0, 3.0, 9.0) == pytest.approx(4.0 + 1.0, rel=1e-12)


def test_frechet_commuting_nondiagonal_closed_form():
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.normal(size=(40, 40)))
    a, b = rng.uniform(0.01, 5, 40), rng.uniform(0.01, 5, 40)
    s1, s2 = (q * a) @ q.T, (q * b) @ q.T  # same eigenvectors: sqrt(s1 s2) = Q diag(sqrt(ab)) Q^T
    mu1, mu2 = rng.normal(size=40), rng.normal(size=40)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(a + b - 2 * np.sqrt(a * b))
    assert fid.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-10)


def test_frechet_general_matches_scipy_and_identical_is_zero():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(200, 30)), rng.normal(size=(200, 30)) @ rng.normal(size=(30, 30))
    mu1, s1 = fid.stats(x)
    mu2, s2 = fid.stats(y)
    ref = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * _REAL_SQRTM(s1 @ s2).real)
    assert fid.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-10)
    assert abs(fid.frechet_distance(mu1, s1, mu1, s1)) < 1e-9 * np.trace(s1)
    # singular (rank 5 < 30 dims), identical: ~0, no NaN. Round-off eigenvalues ~1e-16 of the
    # null space enter as their square roots (~1e-8 each), hence the looser bound.
    z = rng.normal(size=(6, 30))
    mu, s = fid.stats(z)
    assert abs(fid.frechet_distance(mu, s, mu, s)) < 1e-6 * np.trace(s)
    with pytest.raises(ValueError):
        fid.frechet_distance(mu1, s1, mu1[:3], s1[:3, :3])


# ---------------------------------------------------------------- (c) stats files


def test_stats_npz_round_trip_pytorch_fid_format(tmp_path):
    rng = np.random.default_rng(3)
    mu, sigma = fid.stats(rng.normal(size=(20, 8)))
    path = fid.save_stats(tmp_path / "s.npz", mu, sigma)
    assert sorted(os.listdir(tmp_path)) == ["s.npz"]  # no temp file left behind
    with np.load(path) as f:  # pytorch-fid's own reading convention
        np.testing.assert_array_equal(f["mu"], mu)
        np.testing.assert_array_equal(f["sigma"], sigma)
    m2, s2 = fid_score.compute_statistics_of_path(str(path), None, 1, 8, "cpu")
    np.testing.assert_array_equal(m2, mu)
    np.testing.assert_array_equal(s2, sigma)
    # a file written the way pytorch-fid's --save-stats does
    np.savez_compressed(tmp_path / "theirs.npz", mu=mu, sigma=sigma)
    m3, s3 = fid.load_stats(tmp_path / "theirs.npz")
    np.testing.assert_array_equal(m3, mu)
    np.testing.assert_array_equal(s3, sigma)
    np.savez(tmp_path / "broken.npz", mean=mu)
    with pytest.raises(GentuneError, match="broken.npz"):
        fid.load_stats(tmp_path / "broken.npz")


def test_cached_real_stats_computes_once(net64, tmp_path):
    net = net64
    imgs = _images(6, 16, seed=9)
    tag = fid.weights_tag(None, random_seed=0)
    mu, sigma = fid.cached_real_stats(imgs, "demo-faces_64", tmp_path, net, 64, tag, quiet=True)
    path = tmp_path / "fid_stats_demo-faces_64_64_random0.npz"
    assert path.is_file() and sorted(os.listdir(tmp_path)) == [path.name]

    def must_not_load():
        raise AssertionError("cache miss")

    mu2, sigma2 = fid.cached_real_stats(must_not_load, "demo-faces_64", tmp_path, net, 64, tag, quiet=True)
    np.testing.assert_array_equal(mu, mu2)
    np.testing.assert_array_equal(sigma, sigma2)
    with pytest.raises(ValueError):
        fid.cached_real_stats(imgs, "../escape", tmp_path, net, 64, tag, quiet=True)


# ---------------------------------------------------------------- (d) finding weights


@pytest.fixture
def hub(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    monkeypatch.delenv(fid.WEIGHTS_ENV, raising=False)
    if Path(torch.hub.get_dir()) != tmp_path / "th" / "hub":
        pytest.skip("torch.hub.set_dir was called in this process; TORCH_HOME is ignored")
    return tmp_path / "th" / "hub" / "checkpoints" / "pt_inception-2015-12-05-6726825d.pth"


def test_find_weights_order(hub, tmp_path, monkeypatch):
    assert fid.hub_weights_path() == hub
    assert fid.find_weights() is None
    hub.parent.mkdir(parents=True)
    hub.write_bytes(b"dummy")
    assert fid.find_weights() == hub
    env_file = tmp_path / "env.pth"
    env_file.write_bytes(b"dummy")
    monkeypatch.setenv(fid.WEIGHTS_ENV, str(env_file))
    assert fid.find_weights() == env_file
    explicit = tmp_path / "explicit.pth"
    explicit.write_bytes(b"dummy")
    assert fid.find_weights(explicit) == explicit
    assert fid.find_weights(str(explicit)) == explicit
    assert fid.find_weights(tmp_path / "missing.pth") == env_file  # first existing file
    assert fid.require_weights(explicit) == explicit


def test_require_weights_messages(hub, tmp_path, monkeypatch):
    with pytest.raises(GentuneError) as e:
        fid.require_weights()
    msg = str(e.value)
    assert "\n" not in msg
    assert str(hub) in msg and fid.WEIGHTS_ENV in msg and fid.FID_WEIGHTS_URL in msg
    assert fid.require_weights(allow_download=True) is None
    with pytest.raises(GentuneError, match="nope.pth"):
        fid.require_weights(tmp_path / "nope.pth")
    monkeypatch.setenv(fid.WEIGHTS_ENV, str(tmp_path / "env_missing.pth"))
    with pytest.raises(GentuneError, match="env_missing.pth"):
        fid.require_weights()


# ---------------------------------------------------------------- (e) CLI against python -m pytorch_fid

_PYTORCH_FID_MAIN = (
    "import sys, scipy.linalg as L\n"
    "_s = L.sqrtm\n"
    "L.sqrtm = lambda a, disp=True, **k: _s(a, **k) if disp else (_s(a, **k), 0.0)\n"
    "import runpy\n"
    "sys.argv = ['pytorch_fid'] + sys.argv[1:]\n"
    "runpy.run_module('pytorch_fid', run_name='__main__', alter_sys=True)\n"
)


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow  # 12 s and 70 s on 2 cores; the in-process FID checks stay in the default run
@pytest.mark.parametrize("dims", [192, 2048])
def test_cli_fid_matches_python_m_pytorch_fid(tmp_path, dims):
    torch_home = tmp_path / "torch_home"
    weights = torch_home / "hub" / "checkpoints" / "pt_inception-2015-12-05-6726825d.pth"
    weights.parent.mkdir(parents=True)
    torch.save(fid.random_fid_state_dict(seed=11), weights)
    _write_pngs(_images(8, 32, seed=21), tmp_path / "d1")
    _write_pngs(_images(8, 32, seed=22, shift=0.15), tmp_path / "d2")
    env = {**os.environ, "TORCH_HOME": str(torch_home), "PYTHONPATH": str(REPO)}
    env.pop(fid.WEIGHTS_ENV, None)
    common = [str(tmp_path / "d1"), str(tmp_path / "d2"), "--dims", str(dims), "--device", "cpu", "--batch-size", "4"]

    ref = _run([sys.executable, "-c", _PYTORCH_FID_MAIN, *common, "--num-workers", "0"], env)
    assert ref.returncode == 0, ref.stderr
    assert "Downloading" not in ref.stdout  # it read our file from the hub cache
    ref_value = float(ref.stdout.strip().splitlines()[-1].split(":")[1])

    ours = _run([sys.executable, "-m", "search.cli", "fid", *common, "--weights", str(weights), "--quiet"], env)
    assert ours.returncode == 0, ours.stderr
    assert ours.stderr == ""
    line = ours.stdout.strip().splitlines()[-1]
    assert line.startswith("FID: ")
    assert float(line.split(":")[1]) == pytest.approx(ref_value, rel=1e-6)
    assert ref_value > 0


def test_cli_fid_errors_are_one_line(tmp_path, monkeypatch, capsys):
    from search.cli import main

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_home"))
    monkeypatch.delenv(fid.WEIGHTS_ENV, raising=False)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert main(["fid", str(tmp_path / "a"), str(tmp_path / "b"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pt_inception-2015-12-05-6726825d.pth" in err
    assert main(["fid", str(tmp_path / "missing"), str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing" in err


def test_cli_fid_between_npz_files(tmp_path, capsys):
    """Two stats files need no network (and so no weights)."""
    from search.cli import main

    rng = np.random.default_rng(5)
    mu1, s1 = fid.stats(rng.normal(size=(40, 6)))
    mu2, s2 = fid.stats(rng.normal(size=(40, 6)) + 1)
    fid.save_stats(tmp_path / "1.npz", mu1, s1)
    fid.save_stats(tmp_path / "2.npz", mu2, s2)
    assert main(["fid", str(tmp_path / "1.npz"), str(tmp_path / "2.npz"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert float(out.split(":")[1]) == pytest.approx(fid.frechet_distance(mu1, s1, mu2, s2), rel=1e-12)


def test_folder_listing_matches_pytorch_fids_extensions():
    from pytorch_fid.fid_score import IMAGE_EXTENSIONS as THEIRS

    from trainables.metrics.fid import IMAGE_EXTENSIONS

    assert set(IMAGE_EXTENSIONS) == set(THEIRS)


def test_folder_of_mixed_sizes_or_a_broken_image_is_one_clear_error(net64, tmp_path):
    from trainables.errors import DataError

    rng = np.random.default_rng(0)
    for i, s in enumerate([8, 16, 8]):
        Image.fromarray(rng.integers(0, 255, (s, s, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    with pytest.raises(DataError, match=r"differ in size; .* --batch-size 1"):
        fid.stats_of_path(tmp_path, net64, batch_size=50, quiet=True)
    mu, sigma = fid.stats_of_path(tmp_path, net64, batch_size=1, quiet=True)  # one at a time: pytorch-fid copes
    assert mu.shape == (64,) and np.isfinite(sigma).all()
    (tmp_path / "3.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"cannot read an image in .*3\.png"):
        fid.stats_of_path(tmp_path, net64, batch_size=1, quiet=True)
