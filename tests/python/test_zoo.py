"""The zoo contract, for every model that ``bitflow.models.list_models()`` returns (a newly
registered model is tested without editing this file): it builds small, carries the metadata
that checkpoints and the CLI read, runs forward to ``[N, num_classes]``, converts, and the
converted graph agrees with PyTorch (:func:`bitflow.convert.verify`: no real sign mismatch) and
with the native engine (predictions identical to the reference executor)."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

from bitflow import models
from bitflow.convert import UnsupportedLayerError, convert, verify
from bitflow.engine import Engine
from bitflow.ir import run
from bitflow.models._factory import _MODELS

# models that the converter refuses (each raising UnsupportedLayerError naming the layer); the
# test fails once one converts, so the list can only shrink. Empty: the full-precision twins
# convert since their hidden float FC layers do (tests/python/test_fp_twins.py).
NOT_CONVERTIBLE: set[str] = set()


@pytest.fixture(autouse=True, scope="module")
def _one_thread():  # type: ignore[no-untyped-def]
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def small_kwargs(name: str) -> dict[str, object]:
    """The smallest sensible build of ``name``, from the parameters its constructor declares."""
    params = inspect.signature(_MODELS.get(name)).parameters
    kw: dict[str, object] = {"num_classes": 3}
    if "width" in params:
        kw["width"] = 4
    if "fc" in params:
        kw["fc"] = 16
    default_size = params["image_size"].default if "image_size" in params else None
    if isinstance(default_size, int) and default_size > 32:
        # ResNet-18s at 32 take the small-input stem; the AlexNets need 64 (64 -> 15 -> 7 -> 3 -> 1)
        kw["image_size"] = 32 if "width" in params else 64
    return kw


def _cost(name: str) -> list[pytest.MarkDecorator]:
    """Models that cannot be narrowed (no ``width``: the AlexNets' 4096-wide classifier) convert
    in ~25 s each: run them with the slow tests."""
    return [] if "width" in inspect.signature(_MODELS.get(name)).parameters else [pytest.mark.slow]


def test_the_zoo_is_what_the_registry_lists() -> None:
    names = models.list_models()
    assert len(names) >= 17 and names == sorted(names)
    assert NOT_CONVERTIBLE <= set(names)


@pytest.mark.parametrize("name", [pytest.param(n, marks=_cost(n)) for n in models.list_models()])
def test_every_registered_model_builds_runs_converts_and_matches(name: str) -> None:
    kw = small_kwargs(name)
    torch.manual_seed(0)
    m = models.create(name, **kw).eval()
    assert m.bitflow_config == {"name": name, "kwargs": kw}
    assert m.num_classes == 3 and m.in_channels >= 1 and m.image_size >= 1
    assert m.inference in ("bitflow", "xnor", "mbbn", "float")
    x = torch.rand(
        6, m.in_channels, m.image_size, m.image_size, generator=torch.Generator().manual_seed(1)
    )
    with torch.no_grad():
        y = m(x)
    assert y.shape == (6, 3) and torch.isfinite(y).all()
    if name in NOT_CONVERTIBLE:
        with pytest.raises(UnsupportedLayerError):
            convert(m)
        return
    g = convert(m)
    g.validate()
    xn = x.numpy()
    r = verify(m, g, xn)
    assert r["sign_mismatches"] == 0, r
    assert r["prediction_mismatches"] <= r["near_threshold"]["samples"], r
    ref = run(g, xn)
    np.testing.assert_array_equal(Engine(g, threads=1).predict(xn), ref.argmax(1))
