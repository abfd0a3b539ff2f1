"""Faces from a folder of images (e.g. CelebA-HQ), with optional parsing maps (e.g. CelebAMask-HQ)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .labels import CELEBAMASK_HQ_TO_14, NUM_CLASSES, remap_celebamask_hq

PARSING_FORMATS = ("celebamask-hq", "14")
_PARSING_EXTENSIONS = (".png", ".bmp", ".tif", ".tiff")  # lossless only: labels must survive


def _list_files(root: Path, extensions: Sequence[str]):
    exts = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in exts), exts


def _load_image(path: Path, size: int) -> torch.Tensor:
    with Image.open(path) as im:
        im = im.convert("RGB")
        if im.size != (size, size):
            im = im.resize((size, size), Image.BICUBIC)
        x = np.ascontiguousarray(np.asarray(im).transpose(2, 0, 1), dtype=np.float32)
    # numpy, not torch: no intra-op thread start-up for one small image in a loader worker
    x *= np.float32(1 / 127.5)
    x -= np.float32(1)
    return torch.from_numpy(x)


class ImageFolderDataset(Dataset):
    """Images under `root` (searched recursively, sorted by path), as the dict SyntheticFaces returns.

    ``ImageFolderDataset(root, size=256, parsing_root=None, parsing_format="celebamask-hq",
    extensions=(".png", ".jpg", ".jpeg"))``; item i is
    ``{"image": float32 (3,size,size) in [-1,1], "labels": int64 (size,size) in [0,14)}``.
    Images are read as RGB and resized with bicubic interpolation.

    Parsing maps: single-channel (grey or palette) lossless images of class indices under
    `parsing_root`, matched to an image by file stem (``0.jpg`` <-> ``0.png``; CelebAMask-HQ's
    combined ``anno`` maps, values 0..18, remapped to our 14 classes when
    ``parsing_format="celebamask-hq"``; ``"14"`` means already in our classes). Resized with nearest
    neighbour. Without `parsing_root` items have no "labels" key (the model then uses its parser).
    Every image must have a map when `parsing_root` is given; this is checked up front.
    """

    def __init__(self, root, size: int = 256, parsing_root=None, parsing_format: str = "celebamask-hq",
                 extensions: Sequence[str] = (".png", ".jpg", ".jpeg")):
        self.root, self.size = Path(root), int(size)
        if self.size < 1:
            raise ValueError(f"size must be positive, got {size}")
        if parsing_format not in PARSING_FORMATS:
            raise ValueError(f"parsing_format must be one of {PARSING_FORMATS}, got {parsing_format!r}")
        self.parsing_format = parsing_format
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder not found: {self.root}")
        self.images, exts = _list_files(self.root, extensions)
        if not self.images:
            raise FileNotFoundError(f"no images with extensions {', '.join(exts)} found under {self.root}")

        self.parsing_root: Optional[Path] = None
        self.parsings: Optional[list] = None
        if parsing_root is not None:
            self.parsing_root = Path(parsing_root)
            if not self.parsing_root.is_dir():
                raise FileNotFoundError(f"parsing folder not found: {self.parsing_root}")
            maps, _ = _list_files(self.parsing_root, _PARSING_EXTENSIONS)
            # Maps kept inside the image folder (root/anno/...) are not images.
            inside = self.parsing_root.resolve()
            self.images = [p for p in self.images if inside not in p.resolve().parents]
            if not self.images:
                raise FileNotFoundError(f"no images found under {self.root} outside {self.parsing_root}")
            by_stem = {}
            for p in maps:
                by_stem.setdefault(p.stem, []).append(p)
            missing = [p for p in self.images if p.stem not in by_stem]
            if missing:
                shown = ", ".join(str(p.relative_to(self.root)) for p in missing[:5])
                raise FileNotFoundError(
                    f"{len(missing)} of {len(self.images)} images have no parsing map (same file stem, "
                    f"{'/'.join(_PARSING_EXTENSIONS)}) under {self.parsing_root}: {shown}"
                    + (", ..." if len(missing) > 5 else ""))
            ambiguous = [s for s in {p.stem for p in self.images} if len(by_stem[s]) > 1]
            if ambiguous:
                raise ValueError(f"several parsing maps share the stem {sorted(ambiguous)[0]!r} under "
                                 f"{self.parsing_root}: {[str(p) for p in by_stem[sorted(ambiguous)[0]]]}")
            self.parsings = [by_stem[p.stem][0] for p in self.images]

    def __len__(self):
        return len(self.images)

    def _load_labels(self, path: Path) -> torch.Tensor:
        with Image.open(path) as im:
            if im.mode not in ("L", "P", "I", "I;16"):
                raise ValueError(f"parsing map {path} has mode {im.mode}; expected a single-channel map of "
                                 "class indices (grey or palette), not a colourised one")
            if im.size != (self.size, self.size):
                im = im.resize((self.size, self.size), Image.NEAREST)
            arr = np.array(im).astype(np.int64)
        n = len(CELEBAMASK_HQ_TO_14) if self.parsing_format == "celebamask-hq" else NUM_CLASSES
        if arr.size and (arr.min() < 0 or arr.max() >= n):
            raise ValueError(f"parsing map {path} has labels in [{arr.min()}, {arr.max()}], outside [0, {n}) "
                             f"for parsing_format={self.parsing_format!r}")
        if self.parsing_format == "celebamask-hq":
            arr = remap_celebamask_hq(arr)
        return torch.from_numpy(arr)

    def __getitem__(self, index):
        index = int(index)
        item = {"image": _load_image(self.images[index], self.size)}
        if self.parsings is not None:
            item["labels"] = self._load_labels(self.parsings[index])
        return item

    def __repr__(self):
        extra = f", parsing_root={str(self.parsing_root)!r}" if self.parsing_root is not None else ""
        return f"ImageFolderDataset({str(self.root)!r}, size={self.size}, {len(self)} images{extra})"
