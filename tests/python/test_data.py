"""Tests for bitflow.data: IDX, Fashion-MNIST, image folders, 11K Hands, splits, get_data.

Oracles: IDX headers are built by hand with ``struct`` (the format spec), expected pixels
come from the synthetic images we write, class counts of Fashion-MNIST are the published
ones (Xiao et al. 2017: 6000 train / 1000 test images per class), and split properties
(partition, no shared group) are checked by set arithmetic.
"""

from __future__ import annotations

import gzip
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import bitflow.data as bd
from bitflow.data import DatasetError, DatasetNotFoundError

FMNIST = Path(os.environ.get("BITFLOW_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))
needs_fmnist = pytest.mark.skipif(
    not (FMNIST / "train-images-idx3-ubyte.gz").is_file(),
    reason=f"Fashion-MNIST not installed in {FMNIST}",
)


# ----------------------------------------------------------------------------- helpers


def idx_bytes(code: int, dims: tuple[int, ...], payload: bytes) -> bytes:
    """IDX file content per the format spec: 0,0,code,ndim, big-endian u32 dims, payload."""
    return bytes([0, 0, code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + payload


def write_fake_fmnist(root: Path, n_train: int = 30, n_test: int = 20, gz: bool = True) -> None:
    """Tiny Fashion-MNIST look-alike: image i has every pixel = i % 256, label i % 10."""
    root.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        imgs = np.repeat(np.arange(n, dtype=np.uint8), 28 * 28).reshape(n, 28, 28)
        labels = (np.arange(n) % 10).astype(np.uint8)
        img_blob = idx_bytes(0x08, (n, 28, 28), imgs.tobytes())
        lbl_blob = idx_bytes(0x08, (n,), labels.tobytes())
        suffix = ".gz" if gz else ""
        for stem, blob in (
            (f"{prefix}-images-idx3-ubyte", img_blob),
            (f"{prefix}-labels-idx1-ubyte", lbl_blob),
        ):
            (root / (stem + suffix)).write_bytes(gzip.compress(blob) if gz else blob)


def solid_png(
    path: Path, rgb: tuple[int, int, int], size: tuple[int, int] = (7, 5), mode: str = "RGB"
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", size, rgb)
    (img.convert(mode) if mode != "RGB" else img).save(path)


def make_hands(
    root: Path, n_persons: int = 6, per_person: int = 4, subdir: str | None = "Hands"
) -> dict[str, tuple[str, int]]:
    """Synthetic 11K Hands: person p has `per_person` images; even persons female, odd male.

    Gender strings vary in case and spacing to test normalisation.  Returns
    imageName -> (person id, expected label) with female = 0, male = 1.
    """
    img_dir = root if subdir is None else root / subdir
    img_dir.mkdir(parents=True, exist_ok=True)
    header = "id,age,gender,skinColor,accessories,nailPolish,aspectOfHand,imageName,irregularities"
    lines = [header]
    expected: dict[str, tuple[str, int]] = {}
    spellings = {0: [" female", "Female", "FEMALE "], 1: ["male", " Male ", "MALE"]}
    k = 0
    for p in range(n_persons):
        pid = f"{p:07d}"
        label = p % 2
        for j in range(per_person):
            name = f"Hand_{k:07d}.jpg"
            gender = spellings[label][j % 3]
            lines.append(f"{pid},{20 + p},{gender},fair,0,0,dorsal right,{name},0")
            Image.new("RGB", (16, 12), (10 * p, 100, 200)).save(img_dir / name, quality=95)
            expected[name] = (pid, label)
            k += 1
    (root / "HandInfo.csv").write_text("\n".join(lines) + "\n")
    return expected


# ----------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize(
    "code,dtype",
    [(0x08, ">u1"), (0x09, ">i1"), (0x0B, ">i2"), (0x0C, ">i4"), (0x0D, ">f4"), (0x0E, ">f8")],
)
def test_read_idx_round_trip(tmp_path: Path, gz: bool, code: int, dtype: str) -> None:
    rng = np.random.default_rng(code)
    arr = (rng.standard_normal((3, 4, 5)) * 50).astype(dtype)
    blob = idx_bytes(code, arr.shape, arr.tobytes())
    path = tmp_path / ("a.idx.gz" if gz else "a.idx")
    path.write_bytes(gzip.compress(blob) if gz else blob)
    got = bd.read_idx(path)
    assert got.shape == (3, 4, 5)
    assert got.dtype == np.dtype(dtype).newbyteorder("=")
    np.testing.assert_array_equal(got, arr)
    # write_idx must produce the same bytes as the hand-built file
    out = tmp_path / ("b.idx.gz" if gz else "b.idx")
    bd.write_idx(out, got)
    raw = out.read_bytes()
    assert (gzip.decompress(raw) if gz else raw) == blob


def test_read_idx_gz_detected_by_content_not_name(tmp_path: Path) -> None:
    blob = idx_bytes(0x08, (2,), b"\x05\x07")
    path = tmp_path / "labels-without-suffix"
    path.write_bytes(gzip.compress(blob))
    np.testing.assert_array_equal(bd.read_idx(path), [5, 7])


@pytest.mark.parametrize(
    "blob,needle",
    [
        (b"\x00\x00", "too short"),
        (b"\x01\x00\x08\x01" + struct.pack(">I", 1) + b"\x00", "magic"),
        (b"\x00\x00\x07\x01" + struct.pack(">I", 1) + b"\x00", "dtype code"),
        (b"\x00\x00\x08\x00", "0 dimensions"),
        (b"\x00\x00\x08\x03" + struct.pack(">I", 2), "header"),
        (idx_bytes(0x08, (4, 3), bytes(11)), "truncated"),
        (idx_bytes(0x0C, (2,), bytes(7)), "truncated"),
        (idx_bytes(0x08, (2,), bytes(3)), "trailing"),
    ],
)
def test_read_idx_malformed(tmp_path: Path, blob: bytes, needle: str) -> None:
    path = tmp_path / "bad.idx"
    path.write_bytes(blob)
    with pytest.raises(DatasetError, match=needle) as info:
        bd.read_idx(path)
    assert str(path) in str(info.value)


def test_read_idx_truncated_gzip(tmp_path: Path) -> None:
    blob = gzip.compress(idx_bytes(0x08, (1000,), bytes(range(256)) * 3 + bytes(232)))
    path = tmp_path / "cut.gz"
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DatasetError, match="gzip") as info:
        bd.read_idx(path)
    assert str(path) in str(info.value)


def test_read_idx_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.idx"
    with pytest.raises(FileNotFoundError, match="nope.idx"):
        bd.read_idx(path)
    with pytest.raises(DatasetNotFoundError):
        bd.read_idx(path)


# ----------------------------------------------------------------------------- Fashion-MNIST


@pytest.fixture(scope="module")
def fmnist() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {s: bd.load_fashion_mnist(FMNIST, s) for s in ("train", "test")}


@needs_fmnist
def test_real_fashion_mnist(fmnist: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    for split, n in (("train", 60000), ("test", 10000)):
        x, y = fmnist[split]
        assert x.shape == (n, 28, 28) and x.dtype == np.uint8
        assert y.shape == (n,) and y.dtype == np.int64
        # Published balance: 6000 / 1000 images per class.
        np.testing.assert_array_equal(np.bincount(y, minlength=10), [n // 10] * 10)
        assert x.max() == 255 and x.min() == 0
    assert len(bd.FASHION_MNIST_CLASSES) == 10
    assert (
        bd.FASHION_MNIST_CLASSES[0] == "T-shirt/top" and bd.FASHION_MNIST_CLASSES[9] == "Ankle boot"
    )


def test_fashion_root_env_and_argument(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_root, arg_root = tmp_path / "env", tmp_path / "arg"
    write_fake_fmnist(env_root, n_train=30, gz=True)
    write_fake_fmnist(arg_root, n_train=12, gz=False)
    monkeypatch.setenv("BITFLOW_FASHION_MNIST", str(env_root))
    x, y = bd.load_fashion_mnist(split="train")
    assert x.shape == (30, 28, 28)
    np.testing.assert_array_equal(x[:, 3, 4], np.arange(30))
    np.testing.assert_array_equal(y, np.arange(30) % 10)
    x2, _ = bd.load_fashion_mnist(arg_root, "train")  # argument beats the environment
    assert x2.shape == (12, 28, 28)
    x3, y3 = bd.load_fashion_mnist(split="test")
    assert x3.shape == (20, 28, 28) and y3.dtype == np.int64


def test_fashion_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        bd.load_fashion_mnist(tmp_path / "absent")
    root = tmp_path / "fm"
    write_fake_fmnist(root, gz=False)
    (root / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DatasetNotFoundError, match="t10k-labels-idx1-ubyte"):
        bd.load_fashion_mnist(root, "test")
    with pytest.raises(ValueError, match="split"):
        bd.load_fashion_mnist(root, "validation")  # type: ignore[arg-type]
    # wrong count: 30 images but 29 labels
    (root / "train-labels-idx1-ubyte").write_bytes(idx_bytes(0x08, (29,), bytes(29)))
    with pytest.raises(DatasetError, match="30 images .* 29 labels"):
        bd.load_fashion_mnist(root, "train")
    # label out of range
    bad = bytes([1] * 29 + [10])
    (root / "train-labels-idx1-ubyte").write_bytes(idx_bytes(0x08, (30,), bad))
    with pytest.raises(DatasetError, match="label 10 at index 29"):
        bd.load_fashion_mnist(root, "train")
    # wrong image geometry
    (root / "train-images-idx3-ubyte").write_bytes(
        idx_bytes(0x08, (30, 28, 27), bytes(30 * 28 * 27))
    )
    with pytest.raises(DatasetError, match=r"train-images-idx3-ubyte.*\[N,28,28\]"):
        bd.load_fashion_mnist(root, "train")


@needs_fmnist
def test_binary_spec_relabels(fmnist: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    x_all, y_all = fmnist["test"]
    x, y = bd.load_arrays("fashion-mnist-binary:0,6", "test")
    keep = (y_all == 0) | (y_all == 6)
    assert x.shape == (2000, 1, 28, 28) and x.dtype == np.float32
    np.testing.assert_array_equal(y, (y_all[keep] == 6).astype(np.int64))
    np.testing.assert_array_equal(x[:, 0], x_all[keep].astype(np.float32) / np.float32(255))
    # names (any case) mean the same classes; order decides the label
    x2, y2 = bd.load_arrays("fashion-mnist-binary:t-shirt/top, SHIRT", "test", limit=50)
    np.testing.assert_array_equal(x2, x[:50])
    np.testing.assert_array_equal(y2, y[:50])
    _, y3 = bd.load_arrays("fashion-mnist-binary:6,0", "test", limit=50)
    np.testing.assert_array_equal(y3, 1 - y[:50])


def test_bad_binary_specs() -> None:
    for spec, needle in [
        ("fashion-mnist-binary:3,3", "must differ"),
        ("fashion-mnist-binary:0,10", "out of range"),
        ("fashion-mnist-binary:0,Sock", "unknown Fashion-MNIST class"),
        ("fashion-mnist-binary:0,1,2", "exactly two"),
        ("fashion-mnist-binary:", "exactly two"),
    ]:
        with pytest.raises(DatasetError, match=needle):
            bd.parse_spec(spec)


def test_unknown_spec_lists_forms() -> None:
    for spec in ["mnist", "cifar10:/x", "folder:", ""]:
        with pytest.raises(DatasetError) as info:
            bd.get_data(spec)
        if spec != "folder:":
            for form in ("fashion-mnist-binary:A,B", "folder:PATH", "hands11k:PATH"):
                assert form in str(info.value)
    with pytest.raises(DatasetError, match="Fashion-MNIST specs"):
        bd.load_arrays("folder:/tmp")


@needs_fmnist
def test_get_data_fashion(fmnist: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    b = bd.get_data("fashion-mnist", val_fraction=0.1, seed=3)
    assert (b.num_classes, b.in_channels, b.image_size) == (10, 1, 28)
    assert b.class_names == bd.FASHION_MNIST_CLASSES and b.fold is None
    assert (len(b.train), len(b.val), len(b.test)) == (54000, 6000, 10000)
    # val is carved from train: disjoint, together the whole training file, stratified 10%
    tr, va = b.train.indices, b.val.indices
    assert np.intersect1d(tr, va).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([tr, va])), np.arange(60000))
    np.testing.assert_array_equal(np.bincount(b.val.targets.numpy()), [600] * 10)
    # tensors: float32 CHW in [0,1] = raw / 255, the same values as the numpy-only loader
    x, y = b.test.tensors
    assert x.dtype == torch.float32 and x.shape == (10000, 1, 28, 28) and y.dtype == torch.int64
    x_np, y_np = bd.load_arrays("fashion-mnist", "test")
    assert np.array_equal(x.numpy(), x_np) and np.array_equal(y.numpy(), y_np)
    xi, yi = b.train[5]
    raw_x, raw_y = fmnist["train"]
    j = int(b.train.indices[5])
    assert xi.shape == (1, 28, 28) and yi == int(raw_y[j]) and isinstance(yi, int)
    assert torch.equal(xi[0], torch.from_numpy(raw_x[j]).float() / 255)
    assert np.array_equal(b.train.raw[5], raw_x[j])
    # deterministic in seed, different across seeds
    again = bd.get_data("fashion-mnist", val_fraction=0.1, seed=3, limit_test=1)
    assert np.array_equal(again.val.indices, va)
    other = bd.get_data("fashion-mnist", val_fraction=0.1, seed=4, limit_test=1)
    assert not np.array_equal(other.val.indices, va)


@needs_fmnist
def test_get_data_fashion_limits_and_binary() -> None:
    full = bd.get_data("fashion-mnist-binary:Coat,Bag", val_fraction=0.25)
    assert full.num_classes == 2 and full.class_names == ("Coat", "Bag")
    assert (len(full.train), len(full.val), len(full.test)) == (9000, 3000, 2000)
    b = bd.get_data("fashion-mnist-binary:4,8", val_fraction=0.25, limit_train=100, limit_test=7)
    assert (len(b.train), len(b.test), len(b.val)) == (100, 7, 3000)
    assert torch.equal(b.train.tensors[0], full.train.tensors[0][:100])
    assert torch.equal(b.test.tensors[1], full.test.tensors[1][:7])
    z = bd.get_data("fashion-mnist", val_fraction=0.0, limit_train=10, limit_test=10)
    assert len(z.val) == 0 and len(z.train) == 10


def test_get_data_argument_errors() -> None:
    with pytest.raises(ValueError, match="fold"):
        bd.get_data("fashion-mnist", fold=1)
    with pytest.raises(ValueError, match="image_size"):
        bd.get_data("fashion-mnist", image_size=32)
    with pytest.raises(ValueError, match="val_fraction"):
        bd.get_data("fashion-mnist", val_fraction=1.0)
    with pytest.raises(ValueError, match="limit_train"):
        bd.get_data("fashion-mnist", limit_train=0)
    with pytest.raises(ValueError, match="limit"):
        bd.load_arrays("fashion-mnist", limit=-3)


def test_data_package_imports_without_torch(tmp_path: Path) -> None:
    root = tmp_path / "fm"
    write_fake_fmnist(root)
    code = (
        "import sys; sys.modules['torch'] = None\n"  # any `import torch` now raises ImportError
        "import bitflow.data as d\n"
        "x, y = d.load_arrays('fashion-mnist-binary:0,1', 'train')\n"
        "assert x.shape == (6, 1, 28, 28) and x.dtype.name == 'float32', x.shape\n"
        "assert list(y) == [0, 1, 0, 1, 0, 1], y\n"
        "print('ok')\n"
    )
    env = dict(os.environ, BITFLOW_FASHION_MNIST=str(root))
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


# ----------------------------------------------------------------------------- image folders

COLOURS = {"cat": (255, 0, 0), "dog": (0, 128, 255), "emu": (17, 34, 51)}


def make_folder(root: Path, per_class: int = 5) -> None:
    for name, rgb in COLOURS.items():
        for i in range(per_class):
            solid_png(root / name / f"{i}.png", rgb, size=(7 + i, 5))


def test_folder_labels_and_pixels(tmp_path: Path) -> None:
    make_folder(tmp_path / "ds")
    (tmp_path / "ds" / "cat" / "notes.txt").write_text("not an image")
    solid_png(tmp_path / "ds" / "emu" / "grey.png", (40, 40, 40), mode="L")  # grey -> RGB
    b = bd.get_data(
        "folder:" + str(tmp_path / "ds"), image_size=9, val_fraction=0.2, test_fraction=0.2
    )
    assert b.class_names == ("cat", "dog", "emu") and b.num_classes == 3
    assert (b.in_channels, b.image_size) == (3, 9)
    parts = [b.train, b.val, b.test]
    assert sum(len(p) for p in parts) == 16
    paths = [set(s for s, _ in p.samples) for p in parts]
    assert not (paths[0] & paths[1]) and not (paths[0] & paths[2]) and not (paths[1] & paths[2])
    for ds in parts:
        for i in range(len(ds)):
            x, y = ds[i]
            path = Path(ds.samples[i][0])
            assert x.shape == (3, 9, 9) and x.dtype == torch.float32
            assert y == b.class_names.index(path.parent.name)
            rgb = (40, 40, 40) if path.name == "grey.png" else COLOURS[path.parent.name]
            # a solid image stays solid under bilinear resize
            expect = torch.tensor(rgb, dtype=torch.float32).div(255).view(3, 1, 1).expand(3, 9, 9)
            assert torch.equal(x, expect)


def test_folder_train_val_subfolders(tmp_path: Path) -> None:
    root = tmp_path / "imnet"
    make_folder(root / "train", per_class=4)
    solid_png(root / "val" / "dog" / "v0.png", COLOURS["dog"])
    solid_png(root / "val" / "emu" / "v1.jpeg", COLOURS["emu"])
    b = bd.get_data(
        f"folder:{root}", image_size=4, val_fraction=0.25, in_memory=False
    )  # files, decoded per access
    assert b.class_names == ("cat", "dog", "emu")
    assert sorted(y for _, y in b.test.samples) == [1, 2]  # labels follow train/ order
    assert len(b.train) + len(b.val) == 12 and len(b.val) == 3
    assert all("/train/" in s for s, _ in b.train.samples + b.val.samples)
    lim = bd.get_data(
        f"folder:{root}", image_size=4, val_fraction=0.25, limit_train=4, limit_test=1
    )
    assert [s for s, _ in lim.train.samples] == [s for s, _ in b.train.samples[:4]]
    assert len(lim.test) == 1
    mem = b.train.to_memory()
    x, y = mem.tensors
    assert x.shape == (9, 3, 4, 4) and torch.equal(y, b.train.targets)


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="absent"):
        bd.get_data(f"folder:{tmp_path / 'absent'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no class sub-folders") as info:
        bd.get_data(f"folder:{tmp_path / 'empty'}")
    assert "empty" in str(info.value)
    make_folder(tmp_path / "hole")
    (tmp_path / "hole" / "fox").mkdir()
    with pytest.raises(DatasetError, match=r"hole/fox holds no image"):
        bd.get_data(f"folder:{tmp_path / 'hole'}")
    make_folder(tmp_path / "tv" / "train")
    solid_png(tmp_path / "tv" / "val" / "yak" / "0.png", (1, 2, 3))
    with pytest.raises(DatasetError, match="yak"):
        bd.get_data(f"folder:{tmp_path / 'tv'}")
    solid_png(tmp_path / "one" / "cat" / "0.png", (1, 2, 3))
    with pytest.raises(DatasetError, match="at least 2"):
        bd.get_data(f"folder:{tmp_path / 'one'}")
    with pytest.raises(ValueError, match="fold"):
        bd.get_data(f"folder:{tmp_path / 'hole'}", fold=0)


def test_corrupt_image_names_file(tmp_path: Path) -> None:
    make_folder(tmp_path / "ds", per_class=2)
    bad = tmp_path / "ds" / "dog" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    idx = bd.scan_image_folder(tmp_path / "ds")
    ds = bd.ImageFileDataset(idx, 4)
    i = [str(p) for p in idx.paths].index(str(bad))
    with pytest.raises(DatasetError, match="broken.png"):
        ds[i]


def test_random_flip_only_when_augmenting(tmp_path: Path) -> None:
    # left half black, right half white: a flip is visible and exactly x.flip(-1)
    img = np.zeros((8, 8, 3), dtype=np.uint8)
    img[:, 4:] = 255
    for cls in ("a", "b"):
        (tmp_path / "f" / cls).mkdir(parents=True)
        Image.fromarray(img).save(tmp_path / "f" / cls / "x.png")
    idx = bd.scan_image_folder(tmp_path / "f")
    plain = bd.ImageFileDataset(idx, 8, augment=False)
    aug = bd.ImageFileDataset(idx, 8, augment=True)
    x0 = plain[0][0]
    torch.manual_seed(0)
    draws = [aug[0][0] for _ in range(40)]
    flipped = sum(torch.equal(d, x0.flip(-1)) for d in draws)
    same = sum(torch.equal(d, x0) for d in draws)
    assert flipped + same == 40
    # 40 fair coin flips: P(flipped < 5 or > 35) < 1e-6, so this bound is safe.
    assert 5 <= flipped <= 35
    assert all(torch.equal(plain[0][0], x0) for _ in range(10))


# ----------------------------------------------------------------------------- 11K Hands


def test_hands_index_labels(tmp_path: Path) -> None:
    expected = make_hands(tmp_path / "h", n_persons=4, per_person=3)
    idx = bd.read_hands11k(tmp_path / "h")
    assert idx.class_names == bd.HANDS11K_CLASSES == ("female", "male")
    assert len(idx) == 12
    for path, label, pid in zip(idx.paths, idx.labels, idx.groups or (), strict=True):
        assert (pid, int(label)) == expected[path.name]
        assert path.parent == tmp_path / "h" / "Hands"
    assert idx.meta["aspectOfHand"][0] == "dorsal right"


def test_hands_images_in_root(tmp_path: Path) -> None:
    make_hands(tmp_path / "h", n_persons=2, per_person=2, subdir=None)
    idx = bd.read_hands11k(tmp_path / "h")
    assert all(p.parent == tmp_path / "h" for p in idx.paths)


def test_hands_get_data_grouped(tmp_path: Path) -> None:
    expected = make_hands(tmp_path / "h", n_persons=12, per_person=3)
    spec = f"hands11k:{tmp_path / 'h'}"
    seen_test: list[str] = []
    for fold in range(4):
        b = bd.get_data(spec, fold=fold, folds=4, val_fraction=0.2, image_size=6, in_memory=False)
        assert (b.num_classes, b.in_channels, b.image_size, b.fold) == (2, 3, 6, fold)
        ids = [{expected[Path(s).name][0] for s, _ in d.samples} for d in (b.train, b.val, b.test)]
        assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
        assert len(b.val) > 0
        assert len(b.train) + len(b.val) + len(b.test) == 36
        for s, y in b.test.samples:
            assert y == expected[Path(s).name][1]
        x, y = b.train[0]
        assert x.shape == (3, 6, 6) and y in (0, 1)
        assert b.train.augment and not b.val.augment and not b.test.augment
        seen_test += [Path(s).name for s, _ in b.test.samples]
    assert sorted(seen_test) == sorted(expected)  # every sample tested exactly once
    d = bd.get_data(spec, folds=4)
    assert d.fold == 0 and d.image_size == 224
    assert not bd.get_data(spec, folds=4, augment=False, in_memory=False).train.augment
    with pytest.raises(ValueError, match="0-based"):
        bd.get_data(spec, fold=4, folds=4)
    with pytest.raises(ValueError, match="distinct groups"):
        bd.get_data(spec, fold=0, folds=13)


def test_hands_errors(tmp_path: Path) -> None:
    root = tmp_path / "h"
    make_hands(root, n_persons=2, per_person=2)
    (root / "Hands" / "Hand_0000003.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="Hand_0000003.jpg"):
        bd.read_hands11k(root)
    make_hands(root, n_persons=2, per_person=2)
    csv = root / "HandInfo.csv"
    text = csv.read_text()
    csv.write_text(text.replace("imageName", "image"))
    with pytest.raises(DatasetError, match=r"lacks required column.*imageName") as info:
        bd.read_hands11k(root)
    assert "HandInfo.csv" in str(info.value)
    # " Male " is person 1's second image, k = 3 -> CSV line 5 (line 1 is the header)
    csv.write_text(text.replace(" Male ", "unknown"))
    with pytest.raises(DatasetError, match="row 5: gender 'unknown'"):
        bd.read_hands11k(root)
    csv.write_text(text.splitlines()[0] + "\n")
    with pytest.raises(DatasetError, match="no data rows"):
        bd.read_hands11k(root)
    csv.unlink()
    with pytest.raises(FileNotFoundError, match="HandInfo.csv"):
        bd.get_data(f"hands11k:{root}")


# ----------------------------------------------------------------------------- splits


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 9), min_size=2, max_size=30),
    k=st.integers(2, 10),
    seed=st.integers(0, 2**31),
    data=st.data(),
)
def test_group_kfold_properties(sizes: list[int], k: int, seed: int, data: st.DataObject) -> None:
    if k > len(sizes):
        with pytest.raises(ValueError, match="distinct groups"):
            bd.group_kfold(np.repeat(np.arange(len(sizes)), sizes), k, 0)
        return
    groups = np.repeat(np.arange(len(sizes)) * 7 + 3, sizes)
    groups = data.draw(st.permutations(list(groups)))
    n = len(groups)
    tests = []
    fold_sizes = []
    for fold in range(k):
        tr, te = bd.group_kfold(groups, k, fold, seed)
        assert tr.dtype == np.int64 and te.dtype == np.int64
        assert np.array_equal(np.sort(np.concatenate([tr, te])), np.arange(n))
        assert not set(np.asarray(groups)[tr]) & set(np.asarray(groups)[te])
        tr2, te2 = bd.group_kfold(groups, k, fold, seed)
        assert np.array_equal(te, te2) and np.array_equal(tr, tr2)
        tests.append(te)
        fold_sizes.append(len(te))
    all_test = np.sort(np.concatenate(tests))
    assert np.array_equal(all_test, np.arange(n))  # each sample tested exactly once
    # greedy "largest first into lightest fold": spread <= largest group
    assert max(fold_sizes) - min(fold_sizes) <= max(sizes)
    assert min(fold_sizes) > 0


def test_group_kfold_argument_errors() -> None:
    g = list("aabbccdd")
    for bad_fold in (-1, 4, 1.0, True):
        with pytest.raises(ValueError, match="fold"):
            bd.group_kfold(g, 4, bad_fold)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="k"):
        bd.group_kfold(g, 1, 0)
    with pytest.raises(ValueError, match="seed"):
        bd.group_kfold(g, 2, 0, seed=-1)


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 6), min_size=2, max_size=25),
    fraction=st.floats(0.0, 0.9),
    seed=st.integers(0, 1000),
)
def test_group_holdout_properties(sizes: list[int], fraction: float, seed: int) -> None:
    groups = np.repeat(np.arange(len(sizes)), sizes)
    keep, held = bd.group_holdout(groups, fraction, seed)
    n = len(groups)
    assert np.array_equal(np.sort(np.concatenate([keep, held])), np.arange(n))
    assert not set(groups[keep]) & set(groups[held])
    assert len(keep) > 0
    target = round(fraction * n)
    if target == 0:
        assert len(held) == 0
    else:
        # stops at the first group reaching the target (or when one group is left)
        assert len(held) > 0
        assert len(held) < target + max(sizes)
