"""Launched by ``torchrun --nproc_per_node=2`` from test_train.py (never collected: no test_
prefix). Runs one ``bitflow.train.train`` step and records, per rank, what DDP must guarantee:
the sample indices and (augmented) images the rank trained on, the model it started from, the
gradients the optimizer saw and the parameters after the step. Only observes: every recorder
calls the trainer's own function and returns its result unchanged."""

from __future__ import annotations

import os
import sys

import torch
from torch import nn

import bitflow.train.trainer as T

out = sys.argv[1]
rank = int(os.environ["RANK"])
rec: dict = {"indices": [], "x": [], "y": [], "steps": []}

_loader, _augment, _clip, _ddp = (
    T._loader,
    T.augment_batch,
    T.clip_weights_,
    nn.parallel.DistributedDataParallel,
)


def loader(ds, batches, workers):  # type: ignore[no-untyped-def]
    rec["indices"] += [b.clone() for b in batches]
    for x, y in _loader(ds, batches, workers):
        rec["y"].append(y.clone())
        yield x, y


def augment(x, ops, gen):  # type: ignore[no-untyped-def]
    x = _augment(x, ops, gen)
    rec["x"].append(x.clone())
    return x


def clip(model):  # type: ignore[no-untyped-def]
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    r = _clip(model)
    rec["steps"].append(
        {"grads": grads, "params": {k: v.clone() for k, v in model.state_dict().items()}}
    )
    return r


class DDP(_ddp):  # type: ignore[misc, valid-type]
    def __init__(self, module, *a, **k):  # type: ignore[no-untyped-def]
        super().__init__(module, *a, **k)
        rec["initial"] = {
            k: v.clone() for k, v in module.state_dict().items()
        }  # after DDP's broadcast


T._loader, T.augment_batch, T.clip_weights_ = loader, augment, clip
nn.parallel.DistributedDataParallel = DDP
T.train(
    T.TrainConfig(
        model="bitflow_lenet",
        out=os.path.join(out, "run"),
        epochs=1,
        batch_size=64,
        limit_train=72,
        limit_test=16,
        device="cpu",
        progress=False,
        model_kwargs={"width": 4, "fc": 8},
    )
)
rec["world_size"] = int(os.environ["WORLD_SIZE"])
torch.save(rec, os.path.join(out, f"rank{rank}.pt"))
