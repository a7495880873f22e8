"""Tests of trainables.formats: real files from ../shared/datasets where they exist, and small
files written here in the exact on-disk format where no real copy is stored."""
from __future__ import annotations

import bz2
import gzip
import os
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from trainables.errors import DataError
from trainables import formats
from trainables.formats import (
    build_mnistm,
    read_celeba,
    read_image_folder,
    read_mnist,
    read_mnistm,
    read_photos,
    read_report_digits,
    read_report_faces,
    read_svhn,
    read_usps,
)

# MNIST t10k and USPS test class counts, digits 0..9 (published figures of the real files).
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
USPS_TEST_COUNTS = [359, 264, 198, 166, 200, 160, 170, 147, 166, 177]


def _shared_datasets() -> Path:
    here = Path(__file__).resolve().parents[2] / "shared" / "datasets"
    if here.is_dir():
        return here
    env = os.environ.get("GENTUNE_SHARED_DATASETS")
    if env and Path(env).is_dir():
        return Path(env)
    pytest.skip(f"real dataset files absent: neither {here} nor $GENTUNE_SHARED_DATASETS exists")


@pytest.fixture(scope="module")
def shared() -> Path:
    return _shared_datasets()


@pytest.fixture(scope="module")
def mnist_test(shared: Path) -> tuple[np.ndarray, np.ndarray]:
    return read_mnist(shared / "mnist", "test")


def _rand_rgb(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _write_png(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def _write_idx(path: Path, magic: int, data: np.ndarray) -> Path:
    header = np.array([magic, *data.shape], dtype=">i4").tobytes()
    path.write_bytes(header + data.astype(np.uint8).tobytes())
    return path


def _digits_layout(root: Path, rows: list[str], n_images: int = 3, header: str = "image_name,label") -> Path:
    """root/digits/usps/data/{00000..}.png (16x16 grey) plus a train.csv with the given rows."""
    rng = np.random.default_rng(1)
    for i in range(n_images):
        _write_png(root / "digits" / "usps" / "data" / f"{i:05d}.png",
                   rng.integers(0, 256, (16, 16), dtype=np.uint8))
    (root / "digits" / "usps" / "train.csv").write_text("\n".join([header, *rows]) + "\n")
    return root


# ------------------------------------------------------------------------------- real files

def test_read_mnist_real_test_split(mnist_test):
    images, labels = mnist_test
    assert images.shape == (10000, 28, 28, 3) and images.dtype == np.uint8
    assert labels.dtype == np.int64
    assert np.bincount(labels, minlength=10).tolist() == MNIST_TEST_COUNTS
    assert labels[:5].tolist() == [7, 2, 1, 0, 4]
    assert (images[..., 0] == images[..., 1]).all() and (images[..., 0] == images[..., 2]).all()
    assert images.min() == 0 and images.max() == 255


def test_read_mnist_uncompressed_in_torchvision_raw_folder(shared, mnist_test, tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        with gzip.open(shared / "mnist" / f"{name}.gz", "rb") as f:
            (raw / name).write_bytes(f.read())
    images, labels = read_mnist(tmp_path, "test")
    np.testing.assert_array_equal(images, mnist_test[0])
    np.testing.assert_array_equal(labels, mnist_test[1])


def test_read_mnist_train_without_images_names_missing_file(shared):
    with pytest.raises(DataError, match=r"cannot find train-images-idx3-ubyte .*mnist"):
        read_mnist(shared / "mnist", "train")


def test_read_mnistm_real_test_labels_match_mnist(shared, mnist_test):
    images, labels = read_mnistm(shared / "mnist_m", "test")
    assert images.shape == (3000, 32, 32, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(labels, mnist_test[1][:3000])
    # colour images: the channels differ, unlike the grey MNIST source
    assert (images[..., 0] != images[..., 1]).mean() > 0.5


def test_read_usps_real_test_split(shared):
    images, labels = read_usps(shared / "usps", "test")
    assert images.shape == (2007, 16, 16, 3) and images.dtype == np.uint8
    assert labels.dtype == np.int64
    assert np.bincount(labels, minlength=10).tolist() == USPS_TEST_COUNTS
    assert images.min() == 0 and images.max() == 255
    assert (images[..., 0] == images[..., 2]).all()


# ----------------------------------------------------------------- round trips of written formats

def test_read_image_folder_sorted_names_and_grey(tmp_path):
    rng = np.random.default_rng(0)
    b, a = _rand_rgb(rng, 6, 8), _rand_rgb(rng, 6, 8)
    grey = rng.integers(0, 256, (6, 8), dtype=np.uint8)
    _write_png(tmp_path / "b.png", b)
    _write_png(tmp_path / "a.png", a)
    _write_png(tmp_path / "c.png", grey)
    (tmp_path / "notes.txt").write_text("not an image")
    images = read_image_folder(tmp_path)
    np.testing.assert_array_equal(images, np.stack([a, b, np.repeat(grey[..., None], 3, -1)]))
    np.testing.assert_array_equal(read_image_folder(tmp_path, ["c.png", "a.png"])[1], a)


def test_read_report_faces_both_roots(tmp_path):
    rng = np.random.default_rng(0)
    train = [_rand_rgb(rng, 8, 6) for _ in range(3)]
    val = [_rand_rgb(rng, 8, 6) for _ in range(2)]
    for i, arr in enumerate(train):
        _write_png(tmp_path / "face" / "train" / f"{i:04d}.png", arr)
    for i, arr in enumerate(val):
        _write_png(tmp_path / "face" / "val" / f"{i:04d}.png", arr)
    images, labels = read_report_faces(tmp_path, "train")
    assert labels is None
    np.testing.assert_array_equal(images, np.stack(train))
    images, _ = read_report_faces(tmp_path / "face", "val")
    np.testing.assert_array_equal(images, np.stack(val))


def test_read_report_digits_csv_order(tmp_path):
    root = _digits_layout(tmp_path, ["00002.png,9", "00000.png,0", "00001.png,4"])
    images, labels = read_report_digits(root, "usps", "train")
    assert labels.dtype == np.int64 and labels.tolist() == [9, 0, 4]
    expected = np.asarray(Image.open(root / "digits" / "usps" / "data" / "00002.png"))
    assert images.shape == (3, 16, 16, 3)
    np.testing.assert_array_equal(images[0], np.repeat(expected[..., None], 3, -1))


def test_read_svhn_mat_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (32, 32, 3, 5), dtype=np.uint8)
    y = np.array([[10], [1], [5], [9], [10]], dtype=np.uint8)
    scipy.io.savemat(tmp_path / "test_32x32.mat", {"X": x, "y": y})
    images, labels = read_svhn(tmp_path, "test")
    assert images.shape == (5, 32, 32, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(images[3], x[:, :, :, 3])
    assert labels.dtype == np.int64 and labels.tolist() == [0, 1, 5, 9, 0]


def test_read_usps_train_libsvm_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (3, 256), dtype=np.uint8)
    grey[0, :2] = [0, 255]
    lines = []
    for label, row in zip([10, 1, 7], grey):
        values = (row + 0.5) / 255.0 * 2.0 - 1.0  # torchvision truncates (v + 1) / 2 * 255 to uint8
        lines.append(f"{label} " + " ".join(f"{i + 1}:{v:.6f}" for i, v in enumerate(values)))
    with bz2.open(tmp_path / "usps.bz2", "wt") as f:
        f.write("\n".join(lines) + "\n")
    images, labels = read_usps(tmp_path, "train")
    assert labels.tolist() == [9, 0, 6]
    assert images.shape == (3, 16, 16, 3)
    np.testing.assert_array_equal(images[..., 1], grey.reshape(3, 16, 16))


def test_read_usps_damaged_files_are_one_line_errors(tmp_path):
    (tmp_path / "usps.bz2").write_bytes(b"not bzip2 at all")
    with pytest.raises(DataError, match=r"cannot read USPS file .*usps\.bz2 .*bzip2"):
        read_usps(tmp_path, "train")
    with bz2.open(tmp_path / "usps.t.bz2", "wt") as f:
        f.write("3 " + " ".join(f"{i}:x" for i in range(1, 257)) + "\n")
    with pytest.raises(DataError, match=r"cannot read USPS file .*usps\.t\.bz2"):
        read_usps(tmp_path, "test")
    with bz2.open(tmp_path / "usps.t.bz2", "wt") as f:
        f.write("12 " + " ".join(f"{i}:0.5" for i in range(1, 257)) + "\n")
    with pytest.raises(DataError, match=r"label 12 on line 1 of .*outside 1-10"):
        read_usps(tmp_path, "test")


def test_read_celeba_partition_and_limit(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "celeba" / "img_align_celeba"
    folder.mkdir(parents=True)
    parts = [0, 0, 1, 0, 2, 0]
    for i in range(len(parts)):
        Image.fromarray(_rand_rgb(rng, 12, 10)).save(folder / f"{i + 1:06d}.jpg", quality=95)
    (tmp_path / "celeba" / "list_eval_partition.txt").write_text(
        "".join(f"{i + 1:06d}.jpg {p}\n" for i, p in enumerate(parts)))
    decoded = {n: np.asarray(Image.open(folder / n).convert("RGB")) for n in os.listdir(folder)}
    images, labels = read_celeba(tmp_path, "train")  # via root/celeba
    assert labels is None and images.shape == (4, 12, 10, 3)
    np.testing.assert_array_equal(images[2], decoded["000004.jpg"])
    images, _ = read_celeba(tmp_path / "celeba", "train", limit=2)
    np.testing.assert_array_equal(images, np.stack([decoded["000001.jpg"], decoded["000002.jpg"]]))
    images, _ = read_celeba(tmp_path, "test")
    np.testing.assert_array_equal(images, decoded["000005.jpg"][None])


def test_read_photos_keeps_sizes(tmp_path):
    rng = np.random.default_rng(0)
    small, big = _rand_rgb(rng, 30, 40), _rand_rgb(rng, 50, 29)
    _write_png(tmp_path / "1.png", small)
    _write_png(tmp_path / "2.png", big)
    photos = read_photos(tmp_path)
    assert [p.shape for p in photos] == [(30, 40, 3), (50, 29, 3)]
    np.testing.assert_array_equal(photos[1], big)


# ----------------------------------------------------------------------------------- MNIST-M build

def test_build_mnistm_recipe_and_read_back(mnist_test, tmp_path):
    digits, digit_labels = mnist_test[0][:6, :, :, 0], mnist_test[1][:6]
    rng = np.random.default_rng(0)
    photo = _rand_rgb(rng, 28, 28)  # exactly digit-sized: the only possible crop is the whole photo
    out = build_mnistm(digits, digit_labels, [photo], tmp_path / "mm", "train", seed=3)
    assert sorted(os.listdir(out)) == ["mnist_m_train", "mnist_m_train_labels.txt"]
    images, labels = read_mnistm(out, "train")
    np.testing.assert_array_equal(labels, digit_labels)
    assert images.shape == (6, 28, 28, 3)
    # one pixel by hand: a stroke pixel of digit 0 (7) against the photo's colour there
    y, x = np.argwhere(digits[0] == digits[0].max())[0]
    assert images[0, y, x].tolist() == [abs(int(c) - int(digits[0, y, x])) for c in photo[y, x]]
    expected = np.abs(photo[None].astype(np.int16) - digits[..., None].astype(np.int16))
    np.testing.assert_array_equal(images, expected.astype(np.uint8))


def test_build_mnistm_random_crops_come_from_photos(mnist_test, tmp_path):
    digits, digit_labels = mnist_test[0][:4], mnist_test[1][:4]  # the (N, 28, 28, 3) grey form
    rng = np.random.default_rng(1)
    photos = [_rand_rgb(rng, 33, 40), _rand_rgb(rng, 45, 30)]
    build_mnistm(digits, digit_labels, photos, tmp_path, "test", seed=0)
    images, labels = read_mnistm(tmp_path, "test")
    np.testing.assert_array_equal(labels, digit_labels)
    d = digits[..., :1].astype(np.int16)
    for k, img in enumerate(images):
        matches = [(p, y, x) for p, ph in enumerate(photos)
                   for y in range(ph.shape[0] - 27) for x in range(ph.shape[1] - 27)
                   if np.array_equal(img, np.abs(ph[y:y + 28, x:x + 28].astype(np.int16) - d[k]))]
        assert len(matches) == 1, f"image {k}: {len(matches)} crops reproduce it"
    # same seed, same data; a rebuild replaces the split in place
    build_mnistm(digits, digit_labels, photos, tmp_path, "test", seed=0)
    np.testing.assert_array_equal(read_mnistm(tmp_path, "test")[0], images)
    build_mnistm(digits[:2], digit_labels[:2], photos, tmp_path, "test", seed=5)
    assert len(read_mnistm(tmp_path, "test")[1]) == 2
    assert sorted(os.listdir(tmp_path)) == ["mnist_m_test", "mnist_m_test_labels.txt"]


def test_build_mnistm_failure_leaves_nothing(mnist_test, tmp_path, monkeypatch):
    calls = []

    def failing_save(arr, path):
        calls.append(path)
        if len(calls) == 3:
            raise OSError("No space left on device")
        Image.fromarray(arr).save(path)

    monkeypatch.setattr(formats, "_save_png", failing_save)
    photo = np.full((28, 28, 3), 200, dtype=np.uint8)
    with pytest.raises(DataError, match=r"cannot write MNIST-M train split .*No space left"):
        build_mnistm(mnist_test[0][:5], mnist_test[1][:5], [photo], tmp_path, "train")
    assert len(calls) == 3 and os.listdir(tmp_path) == []


def test_build_mnistm_small_photo(mnist_test, tmp_path):
    photos = [np.zeros((40, 40, 3), np.uint8), np.zeros((27, 50, 3), np.uint8)]
    with pytest.raises(DataError, match=r"photo 1 is 27x50, smaller than the 28x28"):
        build_mnistm(mnist_test[0][:2], mnist_test[1][:2], photos, tmp_path / "mm", "train")
    assert not (tmp_path / "mm" / "mnist_m_train").exists()


def test_gentune_mnistm_builds_a_split_the_mnistm_source_reads(shared, mnist_test, tmp_path):
    """`gentune mnistm` as a user runs it: MNIST's test files + a photo folder -> MNIST-M's format with
    MNIST's labels, progress on stderr; a second run that fails (MNIST train files absent here) leaves it."""
    from tests.conftest import gentune

    rng = np.random.default_rng(0)
    for i in range(3):
        _write_png(tmp_path / "photos" / f"{i}.png", _rand_rgb(rng, 40 + i, 50))
    out = tmp_path / "mm"
    r = gentune("mnistm", str(shared / "mnist"), str(tmp_path / "photos"), "--out", str(out), "--split", "test", "--limit", "40")
    assert "test 40/40" in r.stderr and f"root: {out}" in r.stdout
    images, labels = read_mnistm(out, "test")
    assert images.shape == (40, 28, 28, 3) and (labels == mnist_test[1][:40]).all()
    before = (out / "mnist_m_test_labels.txt").read_text()
    r = gentune("mnistm", str(shared / "mnist"), str(tmp_path / "photos"), "--out", str(out), check=False)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "train-images-idx3-ubyte" in r.stderr, r.stderr
    assert (out / "mnist_m_test_labels.txt").read_text() == before and not (out / "mnist_m_train").exists()


# ------------------------------------------------------------------------------------ bad input

def test_missing_folders(tmp_path):
    with pytest.raises(DataError, match=r"image folder .*nowhere does not exist"):
        read_image_folder(tmp_path / "nowhere")
    (tmp_path / "face" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match=r"face split folder .*face.val does not exist"):
        read_report_faces(tmp_path, "val")
    with pytest.raises(DataError, match=r"digit domain folder \('svhn'\) .*digits.svhn does not exist"):
        read_report_digits(_digits_layout(tmp_path, ["00000.png,1"]), "svhn", "train")
    with pytest.raises(DataError, match=r"MNIST-M image folder .*mnist_m_train does not exist"):
        read_mnistm(tmp_path, "train")
    with pytest.raises(DataError, match=r"USPS file .*usps\.t\.bz2 does not exist"):
        read_usps(tmp_path, "test")
    with pytest.raises(DataError, match=r"CelebA image folder .*img_align_celeba does not exist"):
        read_celeba(tmp_path, "train")


def test_csv_row_naming_missing_image(tmp_path):
    root = _digits_layout(tmp_path, ["00000.png,1", "00017.png,3"])
    with pytest.raises(DataError, match=r"train\.csv line 3 names 00017\.png, which does not exist in .*data"):
        read_report_digits(root, "usps", "train")


def test_mnistm_labels_line_naming_missing_image(tmp_path):
    _write_png(tmp_path / "mnist_m_test" / "00000000.png", np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "mnist_m_test_labels.txt").write_text("00000000.png 3\n00000001.png 5\n")
    with pytest.raises(DataError, match=r"labels\.txt line 2 names 00000001\.png, which does not exist"):
        read_mnistm(tmp_path, "test")


def test_truncated_png(tmp_path):
    path = _write_png(tmp_path / "face" / "train" / "0001.png",
                      _rand_rgb(np.random.default_rng(0), 32, 32))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cannot decode PNG .*0001\.png: truncated"):
        read_report_faces(tmp_path, "train")


def test_not_an_image(tmp_path):
    (tmp_path / "x.jpg").write_bytes(b"this is text, not a JPEG")
    with pytest.raises(DataError, match=r"cannot decode JPEG .*x\.jpg"):
        read_photos(tmp_path)


@pytest.mark.parametrize("label, message", [
    ("12", r"label 12 in .*train\.csv line 3 is outside 0-9"),
    ("-1", r"label -1 in .*train\.csv line 3 is outside 0-9"),
    ("seven", r"label 'seven' in .*train\.csv line 3 is not an integer"),
    ("3.5", r"label '3\.5' in .*train\.csv line 3 is not an integer"),
])
def test_bad_csv_labels(tmp_path, label, message):
    root = _digits_layout(tmp_path, ["00000.png,1", f"00001.png,{label}"])
    with pytest.raises(DataError, match=message):
        read_report_digits(root, "usps", "train")


def test_bad_label_in_other_formats(tmp_path):
    _write_png(tmp_path / "mnist_m_train" / "00000000.png", np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "mnist_m_train_labels.txt").write_text("00000000.png 10\n")
    with pytest.raises(DataError, match=r"label 10 in .*mnist_m_train_labels\.txt line 1 is outside 0-9"):
        read_mnistm(tmp_path, "train")
    scipy.io.savemat(tmp_path / "train_32x32.mat",
                     {"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.array([[3], [11]])})
    with pytest.raises(DataError, match=r"label 11 at index 1 of y in .*train_32x32\.mat is outside 1-10"):
        read_svhn(tmp_path, "train")
    with bz2.open(tmp_path / "usps.bz2", "wt") as f:
        f.write("".join(f"{label} " + " ".join(f"{i}:0.5" for i in range(1, 257)) + "\n" for label in (3, 11)))
    with pytest.raises(DataError, match=r"label 11 on line 2 of .*usps\.bz2 is outside 1-10"):
        read_usps(tmp_path, "train")
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", 2051, np.zeros((2, 28, 28)))
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", 2049, np.array([4, 10]))
    with pytest.raises(DataError, match=r"label 10 at index 1 in .*t10k-labels-idx1-ubyte is outside 0-9"):
        read_mnist(tmp_path, "test")


def test_mismatched_image_sizes(tmp_path):
    rng = np.random.default_rng(0)
    _write_png(tmp_path / "a.png", _rand_rgb(rng, 8, 8))
    _write_png(tmp_path / "b.png", _rand_rgb(rng, 8, 9))
    with pytest.raises(DataError, match=r"image .*b\.png is 8x9 \(HxW\) but .*a\.png is 8x8"):
        read_image_folder(tmp_path)


def test_empty_splits(tmp_path):
    (tmp_path / "face" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match=r"image folder .*face.train has no image files \(\.png, \.jpg, \.\.\.\)"):
        read_report_faces(tmp_path, "train")
    root = _digits_layout(tmp_path / "r", [])
    with pytest.raises(DataError, match=r"train\.csv lists no images: the train split of usps is empty"):
        read_report_digits(root, "usps", "train")
    celeba = tmp_path / "c"
    _write_png(celeba / "img_align_celeba" / "000001.jpg", np.zeros((4, 4, 3), np.uint8))
    (celeba / "list_eval_partition.txt").write_text("000001.jpg 0\n")
    with pytest.raises(DataError, match=r"partition\.txt lists no images with partition 1: the CelebA val split is empty"):
        read_celeba(celeba, "val")


def test_bad_csv_header(tmp_path):
    root = _digits_layout(tmp_path, ["00000.png,1"], header="file,label")
    with pytest.raises(DataError, match=r"train\.csv must start with the header image_name,label, got 'file,label'"):
        read_report_digits(root, "usps", "train")


def test_bad_idx_magic_and_counts(tmp_path):
    # labels file where the images file should be: magic 2049, expected 2051
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", 2049, np.zeros(3))
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", 2049, np.zeros(3))
    with pytest.raises(DataError, match=r"IDX file .*t10k-images-idx3-ubyte has magic 2049, expected 2051"):
        read_mnist(tmp_path, "test")
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", 2051, np.zeros((4, 28, 28)))
    with pytest.raises(DataError, match=r"has 4 images but .*t10k-labels-idx1-ubyte has 3 labels"):
        read_mnist(tmp_path, "test")
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError, match=r"holds 3126 data bytes, its header 4x28x28 says 3136"):
        read_mnist(tmp_path, "test")


def test_bad_svhn_file(tmp_path):
    (tmp_path / "test_32x32.mat").write_bytes(b"MATLAB 5.0 garbage" * 3)
    with pytest.raises(DataError, match=r"cannot read SVHN \.mat file .*test_32x32\.mat"):
        read_svhn(tmp_path, "test")
    scipy.io.savemat(tmp_path / "test_32x32.mat", {"X": np.zeros((32, 32, 3, 1), np.uint8)})
    with pytest.raises(DataError, match=r"SVHN file .*test_32x32\.mat has no variable 'y'"):
        read_svhn(tmp_path, "test")


def test_bad_split_name(tmp_path):
    with pytest.raises(DataError, match=r"MNIST split must be one of train, test, got 'val'"):
        read_mnist(tmp_path, "val")
