"""Users' own image folders (issue 14, section 2): size and channels inferred from the images,
overrides, in-memory decoding, the default recipe, and verify/run taking the input shape from
the model. Every folder is generated here; the pixels written are the oracle."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bitflow.cli import main as cli_main
from bitflow.data import DatasetError, eval_arrays, get_data
from bitflow.data.datasets import ArrayDataset, ImageFileDataset
from bitflow.data.images import folder_geometry, probe_image
from bitflow.train.recipes import default_recipe_for


def _write(
    root: Path, classes: dict[str, list[np.ndarray]], ext: str = ".png"
) -> dict[Path, np.ndarray]:
    """Write ``root/<class>/<i>.png``; returns path -> the uint8 pixels written."""
    written = {}
    for name, images in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i, px in enumerate(images):
            p = root / name / f"{i:03d}{ext}"
            Image.fromarray(px).save(p)
            written[p] = px
    return written


def _grey(n: int, size: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size), dtype=np.uint8) for _ in range(n)]


def _rgb(n: int, h: int, w: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]


def _all_pixels(ds: ArrayDataset) -> set[bytes]:
    return {bytes(r) for r in ds.raw.reshape(len(ds), -1)}


def test_grey_folder_keeps_its_size_and_one_channel_in_memory(tmp_path: Path) -> None:
    written = _write(tmp_path, {"a": _grey(20, 28, 0), "b": _grey(20, 28, 1)})
    g = folder_geometry(tmp_path)
    assert g.uniform and g.channels == 1 and g.image_size() == 28 and g.count == 40
    b = get_data(f"folder:{tmp_path}", val_fraction=0.0)
    assert (b.in_channels, b.image_size, b.in_memory) == (1, 28, True)
    assert isinstance(b.train, ArrayDataset) and isinstance(b.test, ArrayDataset)
    assert b.train.x.shape[1:] == (1, 28, 28) and len(b.train) + len(b.test) == 40
    # every sample is exactly one of the images written (decoded once, no resampling)
    want = {bytes(px.reshape(-1)) for px in written.values()}
    assert _all_pixels(b.train) | _all_pixels(b.test) == want
    x, y = b.train.tensors
    assert np.array_equal(x.numpy(), b.train.raw.transpose(0, 3, 1, 2).astype(np.float32) / 255)


def test_rgb_folder_keeps_three_channels_and_its_size(tmp_path: Path) -> None:
    written = _write(tmp_path, {"cat": _rgb(6, 16, 16, 0), "dog": _rgb(6, 16, 16, 1)})
    b = get_data(f"folder:{tmp_path}", val_fraction=0.0)
    assert (b.in_channels, b.image_size) == (3, 16)
    assert _all_pixels(b.train) | _all_pixels(b.test) == {
        bytes(px.reshape(-1)) for px in written.values()
    }


def test_mixed_sizes_fall_back_to_224_and_overrides_win(tmp_path: Path) -> None:
    _write(tmp_path, {"a": _grey(3, 20, 0) + _grey(3, 24, 1), "b": _grey(6, 20, 2)})
    g = folder_geometry(tmp_path)
    assert not g.uniform and g.sizes == {(20, 20): 9, (24, 24): 3}
    b = get_data(f"folder:{tmp_path}", val_fraction=0.0, in_memory=False)
    assert (b.in_channels, b.image_size) == (1, 224)
    assert isinstance(b.train, ImageFileDataset) and b.train[0][0].shape == (1, 224, 224)
    b = get_data(f"folder:{tmp_path}", val_fraction=0.0, image_size=32, channels=3)
    assert (b.in_channels, b.image_size) == (3, 32) and b.train.x.shape[1:] == (3, 32, 32)
    raw = b.train.raw  # a grey image read as RGB: three equal planes
    assert np.array_equal(raw[..., 0], raw[..., 1]) and np.array_equal(raw[..., 0], raw[..., 2])
    assert get_data(f"folder:{tmp_path}", val_fraction=0.0, default_image_size=40).image_size == 40


def test_grey_and_colour_mixed_is_rgb_and_non_square_uses_the_larger_side(tmp_path: Path) -> None:
    _write(tmp_path, {"a": _grey(4, 12, 0), "b": [px for px in _rgb(4, 12, 12, 1)]})
    assert folder_geometry(tmp_path).channels == 3
    other = tmp_path / "ns"
    _write(other, {"a": _rgb(3, 10, 14, 0), "b": _rgb(3, 10, 14, 1)})
    b = get_data(f"folder:{other}", val_fraction=0.0)
    assert b.image_size == 14 and b.train.x.shape[1:] == (3, 14, 14)


def test_one_class_is_a_clear_error(tmp_path: Path) -> None:
    _write(tmp_path, {"only": _grey(5, 8, 0)})
    with pytest.raises(DatasetError, match="at least 2"):
        get_data(f"folder:{tmp_path}")


def test_a_corrupt_image_is_named(tmp_path: Path) -> None:
    _write(tmp_path, {"a": _grey(4, 8, 0), "b": _grey(4, 8, 1)})
    bad = tmp_path / "b" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(DatasetError, match="broken.png"):
        probe_image(bad)
    with pytest.raises(DatasetError, match=r"1 image file\(s\) cannot be read: .*broken.png"):
        get_data(f"folder:{tmp_path}")
    # with size and channels given the header probe is skipped: decoding names the file
    with pytest.raises(DatasetError, match="broken.png"):
        get_data(f"folder:{tmp_path}", image_size=8, channels=1)


def test_default_recipe_suits_the_folder() -> None:
    assert default_recipe_for("folder:/x", image_side=28, images=4000) == "folder-small"
    assert default_recipe_for("folder:/x", image_side=None, images=4000) == "folder-small"
    assert (
        default_recipe_for("folder:/x", image_side=224, images=1_200_000)
        == "bitflow-alexnet-imagenet"
    )
    assert default_recipe_for("folder:/x") == "bitflow-alexnet-imagenet"
    assert default_recipe_for("hands11k:/x", image_side=28, images=10) == "bitflow-alexnet-11khands"
    assert default_recipe_for("fashion-mnist") == "fashion-mnist"


def test_fashion_arrays_refuse_a_model_of_another_shape() -> None:
    with pytest.raises(DatasetError, match="3x32x32 input but 'fashion-mnist' images are 1x28x28"):
        eval_arrays("fashion-mnist", 4, channels=3, image_size=32)
    x, _ = eval_arrays("fashion-mnist", 4, channels=1, image_size=28)
    assert x.shape == (4, 1, 28, 28)


@pytest.mark.e2e
def test_train_convert_verify_run_on_a_small_grey_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # 28x28 grey images: trains at 28x28x1 (not 224x224 RGB) with the small-folder recipe;
    # verify and run read the input shape from the model (this crashed with "running_mean
    # should contain 100352 elements not 1152" when they used the 224 default)
    rng = np.random.default_rng(0)
    classes = {}
    for c, name in enumerate(("zero", "one", "two")):
        imgs = []
        for _ in range(40):
            px = rng.integers(0, 60, (28, 28), dtype=np.uint8)
            px[:, c * 9 : c * 9 + 9] += 180  # a class-dependent bright band
            imgs.append(px)
        classes[name] = imgs
    data = tmp_path / "digits"
    _write(data, classes)
    out = tmp_path / "run"
    assert (
        cli_main(
            [
                "train",
                "--model",
                "bitflow_lenet",
                "--data",
                f"folder:{data}",
                "--epochs",
                "1",
                "--out",
                str(out),
                "--json",
                "--model-arg",
                "width=4",
                "--model-arg",
                "fc=16",
            ]
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["recipe"] == "folder-small"
    assert (
        result["input"]["channels"] == 1
        and result["input"]["image_size"] == 28
        and result["input"]["in_memory"]
    )
    model_file = tmp_path / "m.bfn"
    assert cli_main(["convert", str(out / "best.pt"), "-o", str(model_file), "--json"]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert info["input"]["shape"] == [1, 28, 28]
    assert (
        cli_main(
            ["verify", str(out / "best.pt"), str(model_file), "--data", f"folder:{data}", "--json"]
        )
        == 0
    )
    rep = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rep["samples"] == result["test_samples"] and rep["prediction_mismatches"] == 0
    assert (
        cli_main(["run", str(model_file), "--data", f"folder:{data}", "--json", "--threads", "1"])
        == 0
    )
    run = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert run["samples"] == result["test_samples"]
    assert abs(run["accuracy"] - result["test_accuracy"]) < 1e-9  # same split, same predictions


def test_cli_range_checks_numbers(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (
        ["run", "m.bfn", "--threads", str(2**31)],
        ["run", "m.bfn", "--threads", "0"],
        ["run", "m.bfn", "--batch-size", "0"],
        ["train", "--model", "x", "--image-size", "-3"],
    ):
        with pytest.raises(SystemExit) as e:
            cli_main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert "must be" in err, err
