"""Figures of the paper reproductions (PNG via matplotlib's Agg backend, written atomically)."""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _save(fig: Any, path: str | Path) -> None:
    from .._io import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_flips(path: str | Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``(iterations, {layer: flip ratios})`` from a ``flips.jsonl`` written by the trainer."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    if not rows:
        raise ValueError(f"{path}: no sign-changing-rate rows (train longer or lower --flip-every)")
    its = np.array([r["iteration"] for r in rows])
    layers = list(rows[0]["flip_ratio"])
    return its, {name: np.array([r["flip_ratio"][name] for r in rows]) for name in layers}


def plot_flip_rates(runs: Sequence[tuple[str, str | Path]], out: str | Path) -> None:
    """BitFlow-Net Fig. 2 analogue: per-layer sign changing rate (%) over iterations, one panel
    per run (e.g. without and with the scaling factor), same y axis."""
    plt = _plt()
    fig, axes = plt.subplots(
        1, len(runs), figsize=(5.5 * len(runs), 3.8), sharey=True, squeeze=False
    )
    for ax, (title, path) in zip(axes[0], runs, strict=True):
        its, layers = read_flips(path)
        for i, (name, vals) in enumerate(layers.items()):
            ax.plot(its, 100 * vals, lw=1.0, label=f"layer {i + 2} ({name})")
        ax.set_title(title)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("sign changing rate (%)")
    axes[0][-1].legend(fontsize=7, loc="upper right")
    _save(fig, out)
    plt.close(fig)


def plot_batchshift(
    bn_out: np.ndarray, bs_out: np.ndarray, out: str | Path, title: str = ""
) -> None:
    """BitFlow-Net Fig. 3 analogue: BatchNorm output vs BatchShift output (Eq. 16) for one
    channel over samples, sorted by the BatchNorm value: different magnitudes, same signs."""
    plt = _plt()
    if bn_out.size > 2000:  # a readable subsample (the agreement count below uses every point)
        pick = np.random.default_rng(0).choice(bn_out.size, 2000, replace=False)
        bn_plot, bs_plot = bn_out[pick], bs_out[pick]
    else:
        bn_plot, bs_plot = bn_out, bs_out
    order = np.argsort(bn_plot, kind="stable")
    fig, ax = plt.subplots(1, 2, figsize=(11, 3.8))
    ax[0].plot(bn_plot[order], lw=1.2, label="BatchNorm(alpha x)")
    ax[0].plot(bs_plot[order], lw=1.2, label="BatchShift (x - tau) sign(gamma)")
    ax[0].axhline(0, color="k", lw=0.6)
    ax[0].set_xlabel("sample (sorted by BN output)")
    ax[0].legend(fontsize=8)
    ax[0].set_title(title or "one channel")
    same = np.sign(bn_out + (bn_out == 0)) == np.sign(bs_out + (bs_out == 0))
    ax[1].scatter(bn_out, bs_out, s=4, c=np.where(same, "tab:blue", "tab:red"), rasterized=True)
    ax[1].axhline(0, color="k", lw=0.6)
    ax[1].axvline(0, color="k", lw=0.6)
    ax[1].set_xlabel("BatchNorm output")
    ax[1].set_ylabel("BatchShift output")
    ax[1].set_title(f"signs agree on {int(same.sum())}/{same.size}")
    _save(fig, out)
    plt.close(fig)
