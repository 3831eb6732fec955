"""Training metrics: accuracy and the per-layer sign changing rate (flip ratio).

The *sign changing rate* (BitFlow-Net Sec. II.C, Fig. 2; Tang et al. [38]) of a binary layer
is the fraction of its binary weights ``sign(W)`` (sign(0)=+1) whose sign differs from the
previous check. ``FlipTracker`` keeps one packed snapshot per layer.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..nn import binary_layers


def _signs(w: Tensor) -> Tensor:
    return (w.detach() >= 0).flatten().cpu()


class FlipTracker:
    """Per-layer fraction of binary weights whose sign flipped since the last ``update``."""

    def __init__(self, model: nn.Module) -> None:
        self.layers = {name: m for name, m in binary_layers(model).items()}
        self.prev: dict[str, Tensor] = {n: _signs(m.weight) for n, m in self.layers.items()}

    def update(self) -> dict[str, float]:
        """Flip ratio of every binary layer since the previous call; takes a new snapshot."""
        out: dict[str, float] = {}
        for name, m in self.layers.items():
            cur = _signs(m.weight)
            out[name] = float((cur != self.prev[name]).float().mean())
            self.prev[name] = cur
        return out

    def state_dict(self) -> dict[str, Tensor]:
        return {n: t.clone() for n, t in self.prev.items()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        missing = set(self.prev) - set(state)
        if missing:
            raise ValueError(f"flip tracker state lacks layers {sorted(missing)}")
        self.prev = {n: state[n].clone().bool() for n in self.prev}


@torch.no_grad()
def accuracy(logits: Tensor, target: Tensor) -> float:
    """Top-1 accuracy in [0, 1]."""
    if logits.shape[0] == 0:
        raise ValueError("accuracy of an empty batch")
    return float((logits.argmax(dim=1) == target).float().mean())
