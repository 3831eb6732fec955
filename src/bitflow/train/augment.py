"""Batch-level augmentations for in-memory image tensors (deterministic given a generator)."""

from __future__ import annotations

import torch
from torch import Tensor


def augment_batch(x: Tensor, ops: tuple[str, ...], gen: torch.Generator) -> Tensor:
    """Apply ``ops`` to a batch ``[N, C, H, W]``: ``hflip`` (each image flipped with p=1/2),
    ``crop2``/``crop4`` (zero-pad by 2/4 pixels, then a random crop of the original size per
    image). All randomness comes from ``gen`` (CPU generator), so runs are reproducible."""
    if not ops or x.shape[0] == 0:
        return x
    n, _, h, w = x.shape
    if "hflip" in ops:
        flip = torch.rand(n, generator=gen) < 0.5
        if flip.any():
            x = x.clone()
            x[flip.to(x.device)] = x[flip.to(x.device)].flip(-1)
    for op in ops:
        if op.startswith("crop"):
            p = int(op[4:])
            padded = torch.nn.functional.pad(x, (p, p, p, p))
            dy = torch.randint(0, 2 * p + 1, (n,), generator=gen).to(x.device)
            dx = torch.randint(0, 2 * p + 1, (n,), generator=gen).to(x.device)
            rows = dy.view(n, 1) + torch.arange(h, device=x.device).view(1, h)  # [n, h]
            cols = dx.view(n, 1) + torch.arange(w, device=x.device).view(1, w)  # [n, w]
            b = torch.arange(n, device=x.device).view(n, 1, 1)
            # gather [n, C, h, w]: index padded[b, :, rows[b, i], cols[b, j]]
            x = (
                padded.permute(0, 2, 3, 1)[b, rows.view(n, h, 1), cols.view(n, 1, w)]
                .permute(0, 3, 1, 2)
                .contiguous()
            )
    return x
