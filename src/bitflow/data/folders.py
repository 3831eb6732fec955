"""Image-folder (ImageNet style) and 11K Hands indexes, numpy only (no torch, no PIL).

These functions only *list* samples (paths + labels + groups) and validate the layout;
decoding happens in :mod:`bitflow.data.images` (Pillow) when a sample is read.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ._errors import DatasetError, DatasetNotFoundError

__all__ = [
    "IMAGE_EXTENSIONS",
    "HANDS11K_CLASSES",
    "HANDS11K_CSV",
    "HANDS11K_REQUIRED_COLUMNS",
    "ImageIndex",
    "scan_image_folder",
    "image_folder_splits",
    "read_hands11k",
]

#: File suffixes (lower case) treated as images.
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)
#: 11K Hands label names in label order: female = 0, male = 1.
HANDS11K_CLASSES: tuple[str, ...] = ("female", "male")
#: Metadata file name of 11K Hands (Afifi 2019).
HANDS11K_CSV = "HandInfo.csv"
#: Columns of ``HandInfo.csv`` that bitflow needs (the others are kept in ``meta``).
HANDS11K_REQUIRED_COLUMNS: tuple[str, ...] = ("id", "gender", "imageName")


@dataclass(frozen=True)
class ImageIndex:
    """A list of image files with integer labels.

    Attributes:
        paths: one path per sample.
        labels: ``int64 [N]`` class index per sample.
        class_names: name of each class index.
        groups: optional group per sample (11K Hands: person id) for grouped splits.
        meta: optional extra per-sample columns (11K Hands: the other CSV columns).
        root: folder the index was built from.
    """

    paths: tuple[Path, ...]
    labels: np.ndarray
    class_names: tuple[str, ...]
    root: Path
    groups: tuple[str, ...] | None = None
    meta: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, idx: np.ndarray) -> ImageIndex:
        """The samples at positions ``idx`` (in that order)."""
        ii = [int(i) for i in idx]
        return ImageIndex(
            paths=tuple(self.paths[i] for i in ii),
            labels=self.labels[np.asarray(ii, dtype=np.int64)],
            class_names=self.class_names,
            root=self.root,
            groups=None if self.groups is None else tuple(self.groups[i] for i in ii),
            meta={k: tuple(v[i] for i in ii) for k, v in self.meta.items()},
        )


def _is_image(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


def scan_image_folder(
    root: str | os.PathLike[str], class_names: tuple[str, ...] | None = None
) -> ImageIndex:
    """Index ``root/<class>/<image>``; class index = position in sorted class-folder names.

    Hidden entries are skipped; images may sit in nested sub-folders of a class folder.
    ``class_names`` forces the class list (used so a ``val/`` folder gets the labels of
    ``train/``); a class folder not in it is an error, a class absent from ``root`` is allowed.

    Raises DatasetNotFoundError if ``root`` is missing and DatasetError if it has no class
    folders or a class folder holds no image.
    """
    base = Path(root)
    if not base.is_dir():
        raise DatasetNotFoundError(f"image folder not found: {base}")
    found = sorted(d.name for d in base.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not found:
        raise DatasetError(
            f"image folder {base} has no class sub-folders (expected root/<class>/<image>)"
        )
    names = tuple(found) if class_names is None else tuple(class_names)
    position = {n: i for i, n in enumerate(names)}
    unknown = [n for n in found if n not in position]
    if unknown:
        raise DatasetError(
            f"image folder {base} has class folders {unknown} that are not among the "
            f"training classes {list(names)}"
        )
    paths: list[Path] = []
    labels: list[int] = []
    for name in found:
        files = sorted(
            p
            for p in (base / name).rglob("*")
            if p.is_file()
            and _is_image(p)
            and not any(s.startswith(".") for s in p.relative_to(base).parts)
        )
        if not files:
            raise DatasetError(
                f"class folder {base / name} holds no image files "
                f"(suffixes {sorted(IMAGE_EXTENSIONS)})"
            )
        paths.extend(files)
        labels.extend([position[name]] * len(files))
    return ImageIndex(
        paths=tuple(paths), labels=np.asarray(labels, dtype=np.int64), class_names=names, root=base
    )


def image_folder_splits(root: str | os.PathLike[str]) -> tuple[ImageIndex, ImageIndex | None]:
    """``(train, test)`` for an ImageNet-style folder.

    If ``root/train`` exists it is the training split and ``root/val`` (or, failing that,
    ``root/test``) the test split, labelled with the training class list.  Otherwise the whole
    of ``root`` is returned as ``train`` and ``test`` is ``None`` (the caller carves it).
    """
    base = Path(root)
    if not base.is_dir():
        raise DatasetNotFoundError(f"image folder not found: {base}")
    if (base / "train").is_dir():
        train = scan_image_folder(base / "train")
        for name in ("val", "test"):
            if (base / name).is_dir():
                return train, scan_image_folder(base / name, class_names=train.class_names)
        raise DatasetNotFoundError(
            f"{base} has a train/ folder but neither val/ nor test/ for the test split"
        )
    return scan_image_folder(base), None


def _find_image_dir(root: Path, first: str) -> Path:
    candidates = [root, root / "Hands", root / "hands"]
    candidates += sorted(d for d in root.iterdir() if d.is_dir() and d not in candidates)
    for d in candidates:
        if (d / first).is_file():
            return d
    raise DatasetNotFoundError(
        f"11K Hands image {first!r} (first row of {root / HANDS11K_CSV}) not found in "
        f"{root} or any of its sub-folders (expected {root}/ or {root}/Hands/)"
    )


def read_hands11k(root: str | os.PathLike[str]) -> ImageIndex:
    """Index the 11K Hands data set (Afifi 2019) for gender recognition.

    ``root`` holds ``HandInfo.csv`` (columns include ``id, age, gender, skinColor,
    accessories, nailPolish, aspectOfHand, imageName, irregularities``) and the images, either
    in ``root`` itself or in ``root/Hands`` (or another sub-folder, found from the first row).
    Labels: **female = 0, male = 1** (``gender`` is case-insensitive, spaces stripped).
    ``groups`` holds the person ``id`` so that splits never share a person between sides;
    every other column is kept as strings in ``meta``.

    Raises DatasetNotFoundError for a missing folder, CSV or listed image, DatasetError for a
    CSV without the needed columns, an empty CSV, an unknown gender value or a duplicate image.
    """
    base = Path(root)
    if not base.is_dir():
        raise DatasetNotFoundError(f"11K Hands folder not found: {base}")
    csv_path = base / HANDS11K_CSV
    if not csv_path.is_file():
        raise DatasetNotFoundError(f"11K Hands metadata {HANDS11K_CSV} not found in {base}")
    with csv_path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise DatasetError(f"{csv_path} is empty (no header row)") from None
        missing = [c for c in HANDS11K_REQUIRED_COLUMNS if c not in header]
        if missing:
            raise DatasetError(
                f"{csv_path} lacks required column(s) {missing}; found columns {header}"
            )
        col = {h: i for i, h in enumerate(header)}
        rows = [r for r in reader if any(cell.strip() for cell in r)]
    if not rows:
        raise DatasetError(f"{csv_path} has a header but no data rows")
    gender_code = {name: i for i, name in enumerate(HANDS11K_CLASSES)}
    names: list[str] = []
    labels: list[int] = []
    ids: list[str] = []
    meta_cols = [h for h in header if h not in HANDS11K_REQUIRED_COLUMNS and h]
    meta: dict[str, list[str]] = {h: [] for h in meta_cols}
    seen: set[str] = set()
    for line, row in enumerate(rows, start=2):
        if len(row) < len(header):
            raise DatasetError(
                f"{csv_path} row {line} has {len(row)} fields, the header has {len(header)}"
            )
        gender = row[col["gender"]].strip().lower()
        if gender not in gender_code:
            raise DatasetError(
                f"{csv_path} row {line}: gender {row[col['gender']]!r} is not 'male' or 'female'"
            )
        name = row[col["imageName"]].strip()
        pid = row[col["id"]].strip()
        if not name or not pid:
            raise DatasetError(f"{csv_path} row {line}: empty imageName or id")
        if name in seen:
            raise DatasetError(f"{csv_path} row {line}: image {name!r} is listed twice")
        seen.add(name)
        names.append(name)
        labels.append(gender_code[gender])
        ids.append(pid)
        for h in meta_cols:
            meta[h].append(row[col[h]].strip())
    image_dir = _find_image_dir(base, names[0])
    present = set(os.listdir(image_dir))
    absent = [n for n in names if n not in present]
    if absent:
        shown = ", ".join(absent[:5]) + (", ..." if len(absent) > 5 else "")
        raise DatasetNotFoundError(
            f"{len(absent)} image(s) listed in {csv_path} are missing from {image_dir}: {shown}"
        )
    return ImageIndex(
        paths=tuple(image_dir / n for n in names),
        labels=np.asarray(labels, dtype=np.int64),
        class_names=HANDS11K_CLASSES,
        root=base,
        groups=tuple(ids),
        meta={h: tuple(v) for h, v in meta.items()},
    )
