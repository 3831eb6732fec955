"""BinaryConnect (stochastic): test accuracy of a checkpoint under the test-time rules of
Courbariaux et al. 2015, Sec. 2.6, and how far its latent weights are from +-1.

    .venv/bin/python benchmarks/bc_stochastic_test_rules.py runs/bcs/best.pt

Rules: (1) ``sign(w)`` with the checkpoint's BatchNorm statistics (what ``bitflow`` evaluates and
deploys; the method's recipe already re-estimates them under ``sign(w)``); (2) the real-valued
latent weights ``clip(w, -H, H) / H`` (the paper's rule for the stochastic form; no binary
network; ``H``: the layer's range, Glorot's or 1), with the BatchNorm statistics re-estimated under
them (precise BN, 10,000 training images). Per binary layer: the share of latent weights with
``|w| / H < 0.1``, i.e. sampled as ``+1`` with a probability within 0.05 of 1/2. Fashion-MNIST test set (10,000 images). Not collected by pytest.
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from bitflow.data import get_data
from bitflow.nn import BinaryConv2d, BinaryLinear
from bitflow.nn import survey as S
from bitflow.train import model_from_checkpoint
from bitflow.train.trainer import precise_bn_


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(x[i : i + 1000]).argmax(1) for i in range(0, len(x), 1000)])
    return float((pred == y).float().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    a = ap.parse_args()
    torch.set_num_threads(1)
    data = get_data("fashion-mnist", seed=0)
    x, y = data.test.tensors
    model, _ = model_from_checkpoint(a.checkpoint)
    for name, m in model.named_modules():
        if isinstance(m, (BinaryConv2d, BinaryLinear)):
            h = float(getattr(m.weight_quantizer, "h", 1.0))
            small = float((m.weight.detach().abs() < 0.1 * h).float().mean())
            print(
                f"layer {name} (H = {h:.4g}): |w| / H < 0.1 for {100 * small:.1f} % of the weights"
            )
    print(f"sign(w), checkpoint BatchNorm: {100 * _accuracy(model, x, y):.2f} %")
    decompose = S.StochasticBinaryConnect.decompose
    try:  # the real-valued rule: every layer's weight quantizer returns clip(w, -H, H) / H
        S.StochasticBinaryConnect.decompose = lambda self, w: (  # type: ignore[method-assign]
            w.clamp(-self.h, self.h) / self.h,
            None,
        )
        real, _ = model_from_checkpoint(a.checkpoint)
        precise_bn_(real, data.train, torch.device("cpu"), 10_000, seed=0)
        print(f"real-valued clip(w), precise BatchNorm: {100 * _accuracy(real, x, y):.2f} %")
    finally:
        S.StochasticBinaryConnect.decompose = decompose  # type: ignore[method-assign]


if __name__ == "__main__":
    main()
