"""PyTorch ``Dataset`` classes (this module imports torch; the rest of the package does not).

Every dataset returns ``(x, label)`` with ``x`` a float32 tensor ``[C, H, W]`` holding
``pixel / 255`` in [0, 1] (no mean/std normalisation) and ``label`` a Python int.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch.utils.data import Dataset

from .folders import ImageIndex
from .images import load_image

__all__ = ["ArrayDataset", "DecodedImageDataset", "ImageFileDataset"]


class ArrayDataset(Dataset[tuple[torch.Tensor, int]]):
    """In-memory image data set: one float32 tensor ``[N, C, H, W]`` indexed per item.

    Built from uint8 pixels ``[N, H, W]`` (grey) or ``[N, H, W, C]`` (``channels_last``).
    ``.tensors`` is ``(x, y)`` so a trainer may batch by slicing (``x[i:j]``) instead of
    calling ``__getitem__`` per sample; ``.raw`` keeps the uint8 pixels (``[N, H, W]`` or
    ``[N, H, W, C]`` as given).  ``x = torch.from_numpy(raw).float() / 255`` exactly.
    ``.indices`` (int64 ``[N]``) records each sample's position in the full split it was
    taken from (for binary Fashion-MNIST specs: among the two kept classes; default ``0..N-1``), so splits can be traced and checked for overlap.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray | Sequence[int],
        class_names: Sequence[str],
        *,
        channels_last: bool = False,
        indices: np.ndarray | Sequence[int] | None = None,
    ) -> None:
        raw = np.ascontiguousarray(images)
        if raw.dtype != np.uint8:
            raise TypeError(f"ArrayDataset needs uint8 pixels, got {raw.dtype}")
        expected_ndim = 4 if channels_last else 3
        if raw.ndim != expected_ndim:
            layout = "[N,H,W,C]" if channels_last else "[N,H,W]"
            raise ValueError(f"ArrayDataset images must be {layout}, got shape {raw.shape}")
        y = np.asarray(labels, dtype=np.int64)
        if y.shape != (raw.shape[0],):
            raise ValueError(f"{raw.shape[0]} images but labels have shape {y.shape}")
        if y.size and (y.min() < 0 or y.max() >= len(class_names)):
            raise ValueError(f"labels must lie in 0..{len(class_names) - 1}")
        src = (
            np.arange(raw.shape[0], dtype=np.int64)
            if indices is None
            else np.asarray(indices, dtype=np.int64)
        )
        if src.shape != (raw.shape[0],):
            raise ValueError(f"{raw.shape[0]} images but indices have shape {src.shape}")
        t = torch.from_numpy(raw)
        t = t.permute(0, 3, 1, 2) if channels_last else t.unsqueeze(1)
        # plain NCHW strides: a permuted [N, H, W, 1] counts as "contiguous" already but keeps
        # channels-last strides, which send PyTorch's CPU convolutions down a slower path
        t = torch.empty(t.shape, dtype=torch.uint8).copy_(t)
        self.raw: np.ndarray = raw
        self.indices: np.ndarray = src
        self.x: torch.Tensor = t.contiguous().float().div_(255.0)
        self.y: torch.Tensor = torch.from_numpy(y.copy())
        self.classes: tuple[str, ...] = tuple(class_names)

    @property
    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x float32 [N,C,H,W], y int64 [N])``."""
        return self.x, self.y

    @property
    def targets(self) -> torch.Tensor:
        """Labels, ``int64 [N]``."""
        return self.y

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.x[i], int(self.y[i])


class ImageFileDataset(Dataset[tuple[torch.Tensor, int]]):
    """Images decoded from disk on access (ImageNet-style folders, 11K Hands).

    Each item: Pillow decode -> RGB (``channels=3``) or grey (``channels=1``) -> bilinear resize
    to ``image_size`` x ``image_size`` -> (``augment=True`` only) horizontal flip with
    probability 1/2, drawn from torch's global generator so ``torch.manual_seed`` and DataLoader
    worker seeding make it reproducible -> float32 ``[channels, H, W]`` = pixel / 255.
    """

    def __init__(
        self, index: ImageIndex, image_size: int = 224, *, augment: bool = False, channels: int = 3
    ) -> None:
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
            raise ValueError(f"image_size must be a positive int, got {image_size!r}")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels!r}")
        self.index = index
        self.image_size = image_size
        self.channels = channels
        self.augment = augment
        self.classes: tuple[str, ...] = index.class_names

    @property
    def targets(self) -> torch.Tensor:
        """Labels, ``int64 [N]``."""
        return torch.from_numpy(self.index.labels.copy())

    @property
    def samples(self) -> list[tuple[str, int]]:
        """``(path, label)`` per sample."""
        return [(str(p), int(y)) for p, y in zip(self.index.paths, self.index.labels, strict=True)]

    def __len__(self) -> int:
        return len(self.index)

    def raw(self, i: int) -> np.ndarray:
        """Resized uint8 pixels ``[H, W, channels]`` of sample ``i`` (no augmentation)."""
        return load_image(self.index.paths[i], self.image_size, self.channels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        pixels = self.raw(i)
        x = torch.from_numpy(pixels).permute(2, 0, 1)
        if self.augment and bool(torch.rand(()) < 0.5):
            x = x.flip(-1)
        return x.contiguous().float().div_(255.0), int(self.index.labels[i])

    def memory_bytes(self) -> int:
        """Bytes :meth:`to_memory` needs: uint8 pixels plus their float32 copy."""
        return len(self) * self.channels * self.image_size**2 * 5

    def to_memory(self, workers: int | None = None) -> ArrayDataset:
        """Decode every image once into an :class:`ArrayDataset` (no augmentation: the trainer
        augments in-memory batches from the recipe instead).

        Memory: :meth:`memory_bytes` (``N * channels * image_size**2 * 5``), so use it for small
        folders or small ``image_size`` only. Decoding runs on ``workers`` threads (default: up
        to 4; Pillow releases the GIL while it decodes); the order of samples is kept.
        """
        size = self.image_size
        pixels = np.empty((len(self), size, size, self.channels), dtype=np.uint8)
        n_workers = min(4, os.cpu_count() or 1) if workers is None else max(1, int(workers))

        def fill(i: int) -> None:
            pixels[i] = self.raw(i)

        if n_workers == 1 or len(self) < 64:
            for i in range(len(self)):
                fill(i)
        else:
            with ThreadPoolExecutor(n_workers) as pool:
                list(pool.map(fill, range(len(self))))  # list(): re-raise the first error here
        return DecodedImageDataset(self, pixels)


class DecodedImageDataset(ArrayDataset):
    """An :class:`ImageFileDataset` decoded once into memory (:meth:`ImageFileDataset.to_memory`):
    an :class:`ArrayDataset` that still knows its files (``index``, ``samples``) and geometry."""

    def __init__(self, files: ImageFileDataset, pixels: np.ndarray) -> None:
        super().__init__(pixels, files.index.labels, files.classes, channels_last=True)
        self.index = files.index
        self.image_size = files.image_size
        self.channels = files.channels

    @property
    def samples(self) -> list[tuple[str, int]]:
        """``(path, label)`` per sample."""
        return [(str(p), int(y)) for p, y in zip(self.index.paths, self.index.labels, strict=True)]
