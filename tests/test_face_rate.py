"""Face rate (dlib HOG frontal detector, exactly one face) on real faces and on noise."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.data import lfw_subset

from trainables.errors import GentuneError
from trainables.metrics import face


def _lfw_faces_64() -> list[np.ndarray]:
    """The 100 face images of scikit-image's lfw_subset (25x25 grey floats) as 64x64x3 uint8."""
    out = []
    for a in lfw_subset()[:100]:
        u8 = np.clip(np.round(a * 255), 0, 255).astype(np.uint8)
        out.append(np.asarray(Image.fromarray(u8).convert("RGB").resize((64, 64), Image.BICUBIC)))
    return out


@pytest.fixture(scope="module")
def lfw64() -> list[np.ndarray]:
    return _lfw_faces_64()


def test_face_rate_on_real_faces(lfw64):
    rate = face.face_rate(lfw64)
    # Measured 0.92 (92 of 100 with exactly one face, 8 with none) at 64x64.
    assert rate >= 0.8
    assert face.face_count(lfw64[0]) in (0, 1)


def test_face_rate_on_noise_is_zero():
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, size=(50, 64, 64, 3), dtype=np.uint8)
    assert face.face_rate(list(noise)) == 0.0


def test_face_rate_accepts_nchw_uint8_tensor(lfw64):
    t = torch.from_numpy(np.stack(lfw64[:10])).permute(0, 3, 1, 2).contiguous()
    assert face.face_rate(t) == face.face_rate(lfw64[:10])


def test_face_rate_input_errors():
    with pytest.raises(ValueError, match="uint8"):
        face.face_count(np.zeros((64, 64, 3), dtype=np.float32))
    with pytest.raises(ValueError):
        face.face_rate([])


def test_cli_face_rate_on_png_folder(tmp_path, lfw64, capsys):
    from search.cli import main

    for i, img in enumerate(lfw64[:20]):
        Image.fromarray(img).save(tmp_path / f"face_{i:02d}.png")
    rng = np.random.default_rng(1)
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / f"noise_{i}.png")
    expected_single = sum(face.face_count(img) == 1 for img in lfw64[:20])

    assert main(["face-rate", str(tmp_path)]) == 0
    out = capsys.readouterr().out.strip()
    assert out == f"face rate: {expected_single / 25:.3f} ({expected_single}/25 images with exactly one face)"
    rate, single, total = face.face_rate_folder(tmp_path)
    assert (single, total) == (expected_single, 25) and rate == single / total


def test_cli_face_rate_missing_folder(tmp_path, capsys):
    from search.cli import main

    assert main(["face-rate", str(tmp_path / "nope")]) == 2
    assert "nope" in capsys.readouterr().err
    with pytest.raises(GentuneError):
        face.face_rate_folder(tmp_path / "nope")
