"""Which parts of an image the model sees, and at what size: full, crop, resize, or auto.

- full: the whole image at its own resolution (the fused patch attention never stores the N x N matrix, which is
  what makes this fit: 2560x1600 in about 2 GiB in bf16);
- crop: each group of holes with `crop_margin` pixels of context around it, at its own resolution, or scaled
  down to `max_side` when the crop is larger;
- resize: the image scaled so its long side is `max_side`; the upscaled fill goes into the original's holes;
- auto: full for images up to AUTO_FULL_SMALL pixels; above that, crop when the hole groups' crops cover at
  most half of the image; else full up to AUTO_FULL_MAX pixels; else resize.

Whatever the strategy, only hole pixels of the result change (pipeline.py composes).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import List, Tuple

import numpy as np

STRATEGIES = ("auto", "full", "crop", "resize")
AUTO_FULL_SMALL = 1 << 20      # ~1 MP: a full pass takes seconds, whatever the holes
AUTO_FULL_MAX = 4_500_000      # ~2560x1664: full measured at 2.1 GiB peak and ~55 s in bf16 on 2 cores
AUTO_CROP_MAX_FRACTION = 0.5   # crops covering more than this are slower than one full pass
_CELL = 16                     # hole groups are found on a grid of 16x16-pixel cells

Box = Tuple[int, int, int, int]  # top, left, bottom, right (bottom and right exclusive)


@dataclass
class Plan:
    strategy: str                 # full, crop or resize
    reason: str
    boxes: List[Box] = field(default_factory=list)  # crop: the regions, in the image's pixels

    def describe(self, requested: str) -> str:
        head = f"strategy {requested} -> {self.strategy}" if requested == "auto" else f"strategy {self.strategy}"
        return f"{head}: {self.reason}"


def _dilate(cells: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation by a (2r+1)^2 square, separably."""
    if radius <= 0:
        return cells
    out = cells
    for axis in (0, 1):
        padded = np.pad(out, [(radius, radius) if a == axis else (0, 0) for a in (0, 1)])
        windows = np.lib.stride_tricks.sliding_window_view(padded, 2 * radius + 1, axis=axis)
        out = windows.any(axis=-1)
    return out


def _components(cells: np.ndarray) -> List[np.ndarray]:
    """8-connected components of a small bool grid, as (K, 2) arrays of cell coordinates."""
    seen = np.zeros_like(cells)
    groups = []
    h, w = cells.shape
    for start in zip(*np.nonzero(cells)):
        if seen[start]:
            continue
        seen[start] = True
        queue, members = deque([start]), []
        while queue:
            y, x = queue.popleft()
            members.append((y, x))
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    ny, nx = y + dy, x + dx
                    if 0 <= ny < h and 0 <= nx < w and cells[ny, nx] and not seen[ny, nx]:
                        seen[ny, nx] = True
                        queue.append((ny, nx))
        groups.append(np.array(members))
    return groups


def _merge(boxes: List[Box]) -> List[Box]:
    """Unions of overlapping boxes, until none overlap (each pixel then belongs to at most one crop)."""
    boxes = list(boxes)
    merged = True
    while merged:
        merged = False
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                a, b = boxes[i], boxes[j]
                if a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]:
                    boxes[i] = (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))
                    del boxes[j]
                    merged = True
                    break
            if merged:
                break
    return sorted(boxes)


def hole_regions(holes: np.ndarray, margin: int) -> List[Box]:
    """Boxes around groups of holes, each with `margin` pixels of context, clipped to the image, not overlapping.

    Holes closer than about 2*margin share a group (and their context). Found on a grid of 16-pixel cells, so a
    24-megapixel mask takes milliseconds.
    """
    h, w = holes.shape
    gh, gw = -(-h // _CELL), -(-w // _CELL)
    padded = np.zeros((gh * _CELL, gw * _CELL), bool)
    padded[:h, :w] = holes
    cells = padded.reshape(gh, _CELL, gw, _CELL).any(axis=(1, 3))
    boxes = []
    for group in _components(_dilate(cells, -(-margin // _CELL))):
        inside = np.zeros_like(cells)
        inside[group[:, 0], group[:, 1]] = True
        ys, xs = np.nonzero(inside & cells)
        if not len(ys):
            continue
        # the hole pixels' own bounding box inside these cells, then the margin
        y0, y1, x0, x1 = ys.min() * _CELL, (ys.max() + 1) * _CELL, xs.min() * _CELL, (xs.max() + 1) * _CELL
        rows = np.nonzero(holes[y0:y1, x0:x1].any(axis=1))[0]
        cols = np.nonzero(holes[y0:y1, x0:x1].any(axis=0))[0]
        top, bottom = y0 + rows[0], y0 + rows[-1] + 1
        left, right = x0 + cols[0], x0 + cols[-1] + 1
        boxes.append((max(top - margin, 0), max(left - margin, 0), min(bottom + margin, h), min(right + margin, w)))
    return _merge(boxes)


def _megapixels(h: int, w: int) -> str:
    return f"{w}x{h} ({h * w / 1e6:.2g} MP)"


def plan(holes: np.ndarray, strategy: str, max_side: int, crop_margin: int) -> Plan:
    """The plan for an image whose holes are `holes` ((H,W) bool, at least one True)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if max_side < 1:
        raise ValueError(f"max_side must be >= 1, got {max_side}")
    if crop_margin < 0:
        raise ValueError(f"crop_margin must be >= 0, got {crop_margin}")
    h, w = holes.shape
    size = _megapixels(h, w)
    if strategy == "full":
        return Plan("full", f"{size} at its own resolution")
    if strategy == "resize":
        if max(h, w) <= max_side:
            return Plan("resize", f"{size} is within --max-side {max_side}: run at its own resolution")
        return Plan("resize", f"{size} scaled to a long side of {max_side}, the fill scaled back into the holes")
    if strategy == "crop" or h * w > AUTO_FULL_SMALL:
        boxes = hole_regions(holes, crop_margin)
        covered = sum((b - t) * (r - l) for t, l, b, r in boxes) / (h * w)
        crops = f"{len(boxes)} crop{'s' if len(boxes) != 1 else ''} covering {covered:.0%} of {size}"
        if strategy == "crop":
            return Plan("crop", f"{crops}, margin {crop_margin}", boxes)
        if covered <= AUTO_CROP_MAX_FRACTION:
            return Plan("crop", f"{crops} (at most {AUTO_CROP_MAX_FRACTION:.0%})", boxes)
        if h * w <= AUTO_FULL_MAX:
            return Plan("full", f"{crops}: more than {AUTO_CROP_MAX_FRACTION:.0%}, and the image fits a full pass")
        return Plan("resize", f"{crops}, and the image is over {AUTO_FULL_MAX / 1e6:.1f} MP: scaled to a long "
                              f"side of {max_side}")
    return Plan("full", f"{size} is small (at most {AUTO_FULL_SMALL / 1e6:.1f} MP): at its own resolution")
