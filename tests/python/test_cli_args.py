"""``--model-arg`` / ``--method-arg KEY=VALUE``: one parser (``bitflow.options.parse_kv``) for every command
that takes them (train, summary, bench), checked through the command-line parser down to the
model that is built. Oracle: the same model built from the Python API with the list given
directly (``create("mcn_wrn", widths=(4, 4, 8, 16))``), compared parameter by parameter shape."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import torch

import bitflow.bench
import bitflow.train
from bitflow.cli import build_parser, main
from bitflow.models import create
from bitflow.options import kv_value as _kv_value
from bitflow.options import parse_kv as _parse_kv


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("64", 64),
        ("0.5", 0.5),
        ("true", True),
        ("[4, 4, 8, 16]", [4, 4, 8, 16]),
        ("4,4,8,16", [4, 4, 8, 16]),  # comma-separated numbers: a list, as --bits-a takes them
        ("1,2.5,-3", [1, 2.5, -3]),
        ("int8", "int8"),
        ("runs/a,b/best.pt", "runs/a,b/best.pt"),  # not all numbers: the text itself
        ("true,1", "true,1"),  # a bool is not a number here
        ("4,", "4,"),
        ("4-4-8-16", "4-4-8-16"),  # the model reads this spelling of widths itself
    ],
)
def test_kv_value(text: str, want: Any) -> None:
    got = _kv_value(text)
    assert got == want and type(got) is type(want)


def test_parse_kv_names_the_option_it_parses() -> None:
    assert _parse_kv(["a=1", "b=x=y"]) == {"a": 1, "b": "x=y"}
    with pytest.raises(SystemExit, match="--method-arg expects KEY=VALUE, got 'lam'"):
        _parse_kv(["lam"], "--method-arg")


def _shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


WANT = (4, 4, 8, 16)
SPELLINGS = ["4,4,8,16", "4-4-8-16", "[4,4,8,16]", "4, 4, 8, 16"]


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_train_model_arg_builds_the_model(spelling: str, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Any] = []
    monkeypatch.setattr(bitflow.train, "train", lambda cfg: seen.append(cfg) or {})
    args = build_parser().parse_args(
        ["train", "--model", "mcn_wrn", "--model-arg", f"widths={spelling}"]
        + ["--model-arg", "depth=8", "--method-arg", "lam=1,2", "--out", "x"]
    )
    assert args.func(args) == 0
    (cfg,) = seen
    assert cfg.method_args == {"lam": [1, 2]}
    got = create(cfg.model, **cfg.model_kwargs)
    want = create("mcn_wrn", widths=WANT, depth=8)
    assert _shapes(got) == _shapes(want)
    # and not some other width: the stem's MCconv has s0 * K = 4 * 4 output maps
    assert _shapes(got) != _shapes(create("mcn_wrn", widths=(8, 4, 8, 16), depth=8))


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_bench_model_arg_gets_the_same_parsing(
    spelling: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[dict[str, Any]] = []

    def fake_bench_zoo(name: str, model_kwargs: dict[str, Any], **kw: Any) -> dict[str, Any]:
        seen.append(model_kwargs)
        return {}

    monkeypatch.setattr(bitflow.bench, "bench_zoo", fake_bench_zoo)
    monkeypatch.setattr(bitflow.bench, "format_report", lambda r: "")
    monkeypatch.setattr(bitflow.bench, "clean_blas_env", lambda argv=None: None)
    rc = main(["bench", "--model", "mcn1_xnor_wrn", "--model-arg", f"widths={spelling}"])
    assert rc == 0
    (kw,) = seen
    assert _shapes(create("mcn1_xnor_wrn", **kw)) == _shapes(create("mcn1_xnor_wrn", widths=WANT))


def test_summary_model_arg_every_spelling_the_same_model(
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = []
    for spelling in SPELLINGS:
        rc = main(
            ["summary", "--model", "mcn_mnist", "--model-arg", f"widths={spelling}", "--json"]
        )
        assert rc == 0
        out.append(json.loads(capsys.readouterr().out))
    assert all(o == out[0] for o in out)
    # the MCconv storage rows are those of the model built with the list itself
    from bitflow.analysis.mcn_summary import mcn_storage

    want = json.loads(json.dumps(mcn_storage(create("mcn_mnist", widths=WANT))))
    assert out[0]["mcn_storage"] == want


def test_widths_error_names_spellings_that_work(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["summary", "--model", "mcn_wrn", "--model-arg", "widths=4,4,8", "--json"])
    err = capsys.readouterr().err
    assert rc == 2 and "widths must be 4 positive integers" in err and "[4, 4, 8]" in err
    suggested = re.findall(r"widths=(\S+?)(?=[ )])", err)
    assert len(suggested) == 2, err
    shapes = []
    for s in suggested:  # every spelling the message suggests is accepted, and means one model
        assert main(["summary", "--model", "mcn_wrn", "--model-arg", f"widths={s}", "--json"]) == 0
        capsys.readouterr()
        shapes.append(_shapes(create("mcn_wrn", **_parse_kv([f"widths={s}"]))))
    assert shapes[0] == shapes[1] == _shapes(create("mcn_wrn", widths=(16, 16, 32, 64)))
    for bad in ("4,4,8,16.5", "0-4-8-16", "a-b-c-d"):
        with pytest.raises(ValueError, match="widths must be 4 positive integers"):
            create("mcn_wrn", **_parse_kv([f"widths={bad}"]))
