"""The masks of an evaluation, per hole-ratio bin: ours drawn from a seed, or a user's mask set sorted into bins
by hole ratio (as the irregular-mask test set of Liu et al. 2018 is), the same mask for an image in every run."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..data import RATIO_BINS, FreeFormMasks
from ..inpainting.images import IMAGE_EXTENSIONS, read_mask, valid_map

MASK_EXTENSIONS = IMAGE_EXTENSIONS + (".gif",)  # mask sets are often GIFs


class DrawnMasks:
    """Free-form stroke masks drawn at each image's own size: mask i of bin k comes from (seed, k, i) alone."""

    def __init__(self, seed: int):
        self.seed = seed
        self.bins = list(RATIO_BINS)

    def describe(self) -> str:
        return f"free-form masks drawn at each image's size, --mask-seed {self.seed}"

    def empty_bins(self) -> List[str]:
        return []  # every bin draws its own

    def valid(self, k: int, index: int, size: Tuple[int, int]) -> np.ndarray:
        """(H,W) bool, True = valid."""
        array = FreeFormMasks(size, ratio=RATIO_BINS[self.bins[k]]).sample_array(
            np.random.default_rng([self.seed, k, index]))
        return array == 0


def _resize_valid(valid: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    if valid.shape == tuple(size):
        return valid
    holes = torch.from_numpy(~valid)[None, None].float()
    return ~(F.interpolate(holes, size=size, mode="nearest")[0, 0] > 0.5).numpy()


class MaskFolder:
    """A user's masks (white = valid, or `invert` for white holes), sorted into the bins by their hole ratio;
    image i of bin k takes the bin's masks in file-name order, cycling, resized (nearest) to the image's size.
    Masks outside every bin are not used (counted in describe())."""

    def __init__(self, root, invert: bool = False):
        root = Path(root)
        if not root.is_dir():
            raise ValueError(f"--masks: {root} is not a folder")
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in MASK_EXTENSIONS)
        if not files:
            raise ValueError(f"--masks: no mask images ({', '.join(MASK_EXTENSIONS)}) in {root}")
        self.root, self.bins = root, list(RATIO_BINS)
        self.files: Dict[str, List[Tuple[Path, float]]] = {b: [] for b in self.bins}
        self.unused = 0
        for path in files:
            image = read_mask(path)
            ratio = float((~valid_map(image, (image.height, image.width), invert)).mean())
            top = max(hi for _, hi in RATIO_BINS.values())
            name = next((b for b, (lo, hi) in RATIO_BINS.items() if lo <= ratio < hi or ratio == hi == top), None)
            if name is None:
                self.unused += 1
            else:
                self.files[name].append((path, ratio))
        self.invert = invert

    def describe(self) -> str:
        counts = ", ".join(f"{b}: {len(v)}" for b, v in self.files.items())
        note = f"; {self.unused} outside every bin, unused" if self.unused else ""
        return f"masks from {self.root} by hole ratio ({counts}{note}), resized (nearest) to each image's size"

    def empty_bins(self) -> List[str]:
        return [b for b, v in self.files.items() if not v]

    def valid(self, k: int, index: int, size: Tuple[int, int]) -> np.ndarray:
        files = self.files[self.bins[k]]
        path = files[index % len(files)][0]
        image = read_mask(path)
        return _resize_valid(valid_map(image, (image.height, image.width), self.invert), size)


def mask_source(masks_dir, seed: int, invert: bool = False):
    """MaskFolder for a folder, else DrawnMasks(seed)."""
    return MaskFolder(masks_dir, invert) if masks_dir is not None else DrawnMasks(seed)
