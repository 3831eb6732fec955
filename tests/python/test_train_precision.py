"""Training arithmetic options: ``precision = "bf16"`` (torch.autocast) and ``--compile``.

Oracles: the eager float32 model itself (a compiled model must compute what the eager one
computes, in real mode and binarized, across the switch that Bi-Real's warm-up makes mid-run),
and the dtypes PyTorch reports (bf16 must reach the convolutions and nothing that is stored:
weights, checkpoints and evaluation stay float32)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_real_warmup import _cfg
from torch import nn

from bitflow.data import get_data
from bitflow.models import create
from bitflow.nn import BinaryConv2d, set_real_mode
from bitflow.train import load_checkpoint, train
from bitflow.train.recipes import Recipe
from bitflow.train.trainer import evaluate, native_bf16, resolve_precision


def test_recipe_rejects_an_unknown_precision() -> None:
    with pytest.raises(ValueError, match="precision must be one of"):
        Recipe(name="t", precision="fp16")
    assert Recipe(name="t").precision == "fp32"
    assert Recipe(name="t").override(precision="bf16").precision == "bf16"


def test_bf16_reaches_the_convolutions_and_nothing_that_is_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[torch.dtype] = []
    conv2d = F.conv2d

    def spy(*args: object, **kw: object) -> torch.Tensor:
        out = conv2d(*args, **kw)  # type: ignore[arg-type]
        if torch.is_grad_enabled():  # training steps (evaluation runs under no_grad)
            seen.append(out.dtype)
        return out

    monkeypatch.setattr(F, "conv2d", spy)
    res = train(_cfg(tmp_path / "bf", precision="bf16", epochs=2))
    assert seen and set(seen) == {torch.bfloat16}
    ck = load_checkpoint(tmp_path / "bf" / "best.pt")
    assert ck["recipe"]["precision"] == "bf16" and ck["precision"] == res["precision"] == "bf16"
    assert all(v.dtype != torch.bfloat16 for v in ck["model"].values())
    # the reported accuracy is the float32 evaluation of the stored weights
    model = create("bireal_resnet20", width=4)
    model.load_state_dict(ck["model"])
    data = get_data("fashion-mnist", limit_train=256, limit_test=128, seed=5)
    _, acc = evaluate(model, data.test, torch.device("cpu"))
    assert acc == res["test_accuracy"]
    seen.clear()
    train(_cfg(tmp_path / "fp", epochs=2, precision="fp32"))
    assert seen and set(seen) == {torch.float32}


def test_a_compiled_model_follows_the_switch_out_of_real_mode() -> None:
    """torch.compile guards on the layers' ``real`` flag: after ``set_real_mode`` the compiled
    forward must recompute (sign instead of clip), not replay the real-mode graph."""
    torch.manual_seed(0)
    model = nn.Sequential(
        BinaryConv2d(2, 4, 3, padding=1, input_quantizer="approx_sign"),
        nn.BatchNorm2d(4),
        nn.Flatten(),
        nn.Linear(4 * 5 * 5, 3),
    ).eval()
    compiled = torch.compile(model)
    x = torch.randn(2, 2, 5, 5)
    outs = {}
    for real in (True, False, True):
        set_real_mode(model, real)
        eager = model(x)
        got = compiled(x)
        torch.testing.assert_close(got, eager, rtol=1e-5, atol=1e-5)
        outs[real] = eager
    assert not torch.allclose(outs[True], outs[False])  # the two modes differ: the test can fail


def test_auto_precision_follows_the_cpus_bfloat16_support() -> None:
    """Oracle: the kernel's CPU flags (independent of PyTorch's probes): ``auto`` is bf16 iff the
    CPU has AVX512-BF16 or AMX."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        pytest.skip("no /proc/cpuinfo")
    native = bool(flags & {"avx512_bf16", "amx_bf16", "amx_tile"})
    cpu = torch.device("cpu")
    assert native_bf16(cpu) == native
    assert resolve_precision("auto", cpu) == ("bf16" if native else "fp32")
    assert resolve_precision("fp32", cpu) == "fp32" and resolve_precision("bf16", cpu) == "bf16"
    assert not native_bf16(torch.device("meta"))


def test_the_integer_residual_stream_stays_float32_under_bf16(tmp_path: Path) -> None:
    """Under bf16 autocast the convolutions feeding a FixedPointBN are bf16; the BatchNorm, the
    rounding to the ``2^-f`` grid and the stream are float32 (in bf16 a grid value ``|r| < 2^15``
    would keep 8 significant bits). Oracle: the same module on the float32 copy of the input,
    outside autocast. A residual=int model trains in bf16 (it used to be refused: that measurement
    was an artifact of the real-mode evaluation fixed in ``set_real_mode``)."""
    from bitflow.nn import FixedPointBN

    bn = FixedPointBN(8, frac=8).train()
    g = torch.Generator().manual_seed(0)
    u = (torch.randn(4, 8, 5, 5, generator=g) * 300).round().to(torch.bfloat16)
    want = FixedPointBN(8, frac=8).train()(u.float())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = bn(u)
    assert got.dtype == torch.float32
    assert torch.equal(got, want)
    kw = {"width": 4, "residual": "int"}
    res = train(_cfg(tmp_path / "a", precision="bf16", epochs=1, real_epochs=0, model_kwargs=kw))
    assert res["precision"] == "bf16"
