"""Free-form irregular masks (DeepFillv2-style brush strokes) made on the fly, and mask files.

Convention everywhere in mdrnet_fast: a mask is float32 (1,H,W) with 1 = valid (known) pixel and
0 = hole, as the model and the partial/gated convolutions expect.

A stroke is a random walk of 4-12 thick line segments with round joints and ends. Strokes are added
until the hole fraction reaches a target drawn uniformly inside the requested ratio bin; a stroke that
would push it past the bin's upper end is undone and retried smaller, so the final ratio always lies
inside the bin and all randomness comes from the given numpy Generator (deterministic).
"""
from __future__ import annotations

import math
import os
from typing import Optional, Tuple, Union

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

RATIO_BINS = {"1-20%": (0.01, 0.2), "20-40%": (0.2, 0.4), "40-60%": (0.4, 0.6)}

Size = Union[int, Tuple[int, int]]


def _hw(size: Size) -> Tuple[int, int]:
    h, w = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
    h, w = int(h), int(w)
    if h < 1 or w < 1:
        raise ValueError(f"mask size must be positive, got {size}")
    return h, w


def hole_ratio(mask) -> float:
    """Fraction of hole pixels (mask == 0 side) of a mask with 1 = valid: ``1 - mean(mask)``, over all
    its elements (pass one mask, not a batch, for a per-mask ratio)."""
    if isinstance(mask, torch.Tensor):
        return 1.0 - float(mask.detach().double().mean())
    return 1.0 - float(np.asarray(mask, dtype=np.float64).mean())


def _stroke(draw: ImageDraw.ImageDraw, rng: np.random.Generator, h: int, w: int, scale: float):
    """One brush stroke: a random walk whose heading wanders, drawn as thick segments plus discs at
    every vertex (round joints and caps, which Pillow's wide lines lack)."""
    side = min(h, w)
    n = int(rng.integers(4, 13))
    width = max(1.0, side * rng.uniform(0.03, 0.1) * scale)
    x, y = rng.uniform(0, w), rng.uniform(0, h)
    heading = rng.uniform(0, 2 * math.pi)
    pts = [(x, y)]
    for _ in range(n):
        heading += rng.uniform(-1.2, 1.2)
        length = side * rng.uniform(0.04, 0.18) * max(scale, 0.05)
        x = min(max(x + length * math.cos(heading), 0.0), w - 1.0)
        y = min(max(y + length * math.sin(heading), 0.0), h - 1.0)
        pts.append((x, y))
    draw.line(pts, fill=255, width=max(1, round(width)))
    r = width / 2
    for px, py in pts:
        draw.ellipse((px - r, py - r, px + r, py + r), fill=255)


class FreeFormMasks:
    """Free-form masks whose hole ratio lies in a bin.

    ``FreeFormMasks(size=256, ratio=(0.2, 0.4), seed=0)``: `size` an int or (H, W); `ratio` a (lo, hi)
    pair or a RATIO_BINS name ("1-20%", "20-40%", "40-60%"). ``sample(rng)`` returns float32 (1,H,W),
    1 = valid, 0 = hole, with lo <= hole ratio <= hi; ``masks[i]`` is ``sample(default_rng([seed, i]))``.
    """

    def __init__(self, size: Size = 256, ratio=(0.2, 0.4), seed: int = 0, max_strokes: int = 2000):
        self.height, self.width = _hw(size)
        if isinstance(ratio, str):
            if ratio not in RATIO_BINS:
                raise ValueError(f"unknown ratio bin {ratio!r}; choose one of {list(RATIO_BINS)} or give (lo, hi)")
            ratio = RATIO_BINS[ratio]
        lo, hi = float(ratio[0]), float(ratio[1])
        if not 0.0 <= lo <= hi < 1.0:
            raise ValueError(f"ratio must satisfy 0 <= lo <= hi < 1, got ({lo}, {hi})")
        # The bin must hold at least one whole pixel count, or no mask can satisfy it.
        total = self.height * self.width
        if math.floor(hi * total) < math.ceil(lo * total):
            raise ValueError(f"ratio bin ({lo}, {hi}) holds no pixel count of a {self.height}x{self.width} mask")
        self.ratio, self.seed, self.max_strokes = (lo, hi), int(seed), int(max_strokes)

    @property
    def size(self) -> Tuple[int, int]:
        return self.height, self.width

    def sample_array(self, rng: np.random.Generator) -> np.ndarray:
        """The hole map as uint8 (H,W): 255 = hole, 0 = valid."""
        h, w = self.height, self.width
        total = h * w
        lo, hi = self.ratio
        floor = max(math.ceil(lo * total), 1 if lo > 0 else 0)
        target = max(math.ceil(rng.uniform(lo, hi) * total), floor)
        limit = math.floor(hi * total)
        canvas = Image.new("L", (w, h), 0)
        holes, scale = 0, 1.0
        for _ in range(self.max_strokes):
            # the target only says where to aim: once strokes have shrunk to a few pixels without
            # landing on it (near the top of the bin every stroke overshoots), anywhere in the bin will do
            if holes >= target or (scale < 0.05 and holes >= floor):
                break
            trial = canvas.copy()
            _stroke(ImageDraw.Draw(trial), rng, h, w, scale)
            n = total - trial.histogram()[0]
            if n > limit:  # overshoot: undo, and make later strokes smaller
                scale *= 0.7
                continue
            canvas, holes = trial, n
        if holes < floor:
            raise RuntimeError(f"could not reach hole ratio {lo:.3f} in {self.max_strokes} strokes")
        return np.asarray(canvas)

    def sample(self, rng: np.random.Generator) -> torch.Tensor:
        """One mask, float32 (1,H,W), 1 = valid, 0 = hole, hole ratio in the bin."""
        return torch.from_numpy((self.sample_array(rng) == 0).astype(np.float32)[None])

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.sample(np.random.default_rng([self.seed, int(index)]))

    def __repr__(self):
        return f"FreeFormMasks(size=({self.height}, {self.width}), ratio={self.ratio}, seed={self.seed})"


def load_mask(path: Union[str, os.PathLike], size: Optional[Size] = None, invert: bool = False,
              threshold: int = 128) -> torch.Tensor:
    """Read a mask image as float32 (1,H,W), 1 = valid, 0 = hole.

    By default white (grey level >= `threshold`) = valid and black = hole, our convention; many mask
    sets (e.g. NVIDIA's irregular masks, most inpainting demos) paint the hole white: pass
    ``invert=True`` for those. Colour images are converted to grey; `size` (int or (H, W)) resizes with
    nearest neighbour so the mask stays binary.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"mask file not found: {path}")
    with Image.open(path) as im:
        im = im.convert("L")
        if size is not None:
            h, w = _hw(size)
            if im.size != (w, h):
                im = im.resize((w, h), Image.NEAREST)
        valid = np.asarray(im) >= threshold
    if invert:
        valid = ~valid
    return torch.from_numpy(valid.astype(np.float32)[None])


class InpaintingDataset(Dataset):
    """Adds a free-form ``"mask"`` (1,H,W) to each item of `base` (a dataset of dicts with "image").

    The mask of item i at epoch e is ``masks.sample(default_rng([seed, e, i]))``: deterministic, and new
    every epoch once you call ``set_epoch(e)``. With DataLoader workers, call set_epoch before iterating
    (workers copy the dataset when an iterator starts; persistent_workers=True would keep a stale epoch).
    `seed` defaults to ``masks.seed``.
    """

    def __init__(self, base, masks: FreeFormMasks, seed: Optional[int] = None):
        self.base, self.masks = base, masks
        self.seed = masks.seed if seed is None else int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int):
        self.epoch = int(epoch)

    def __len__(self):
        return len(self.base)

    def __getitem__(self, index):
        index = int(index)
        item = dict(self.base[index])
        h, w = item["image"].shape[-2:]
        if (h, w) != self.masks.size:
            raise ValueError(f"mask size {self.masks.size} does not match image size {(h, w)}")
        if index < 0:
            index += len(self)
        item["mask"] = self.masks.sample(np.random.default_rng([self.seed, self.epoch, index]))
        return item
