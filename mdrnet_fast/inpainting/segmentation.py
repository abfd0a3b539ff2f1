"""Semantic maps a user gives to steer the fill, and the parser's map written for a user to edit.

A map has one label per pixel in our 14 classes (mdrnet_fast/data/labels.py), or CelebAMask-HQ's 19 mapped onto
them. `save_segmentation` writes a palette PNG: its palette indices are the labels and its colours the classes'
(a legend image beside it names them); `read_segmentation` reads it back whether an editor kept the palette
(indices) or saved RGB (each pixel the class of the nearest colour), and plain label PNGs (L or I: values).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Tuple

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..data.labels import CLASSES, NUM_CLASSES, PALETTE, remap_celebamask_hq
from .images import read_image

FORMATS = ("14", "celebamask-hq")


def _pil_labels(image: Image.Image) -> np.ndarray:
    if image.mode in ("P", "L", "I", "I;16", "I;16B", "I;16L", "1"):  # indices or values are the labels
        return np.asarray(image).astype(np.int64)
    # colours: the class whose colour is nearest (an editor's anti-aliased strokes land on a class too)
    rgb = np.asarray(image.convert("RGB")).astype(np.int32)
    distance = ((rgb[..., None, :] - PALETTE.astype(np.int32)) ** 2).sum(-1)  # (H, W, 14)
    return distance.argmin(-1)


def read_segmentation(seg, size: Tuple[int, int], fmt: str = "14") -> np.ndarray:
    """(H,W) int64 labels in [0, 14) from a path, PIL image, NumPy array or tensor of labels; `fmt`
    "celebamask-hq" maps CelebAMask-HQ's 19 labels onto ours. `size` is the image's (H, W): a map of another size
    is an error, never stretched."""
    if fmt not in FORMATS:
        raise ValueError(f"segmentation format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if isinstance(seg, (str, os.PathLike)):
        seg = read_image(seg)
    if isinstance(seg, Image.Image):
        labels = _pil_labels(seg)
    elif isinstance(seg, (np.ndarray, torch.Tensor)):
        labels = seg.detach().cpu().numpy() if isinstance(seg, torch.Tensor) else np.asarray(seg)
        while labels.ndim > 2 and labels.shape[0] == 1:
            labels = labels[0]
        if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"segmentation must be an (H,W) integer label map, got {labels.dtype} {labels.shape}")
        labels = labels.astype(np.int64)
    else:
        raise TypeError(f"segmentation must be a path, PIL image, NumPy array or tensor, got {type(seg).__name__}")
    if labels.shape != tuple(size):
        (h, w), (sh, sw) = size, labels.shape
        raise ValueError(f"the segmentation is {sw}x{sh} but the image is {w}x{h} (width x height): a segmentation "
                         "must have its image's size")
    if fmt == "celebamask-hq":
        return remap_celebamask_hq(labels)
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise ValueError(f"segmentation labels must lie in [0, {NUM_CLASSES}) (our 14 classes; "
                         f"--segmentation-format celebamask-hq for CelebAMask-HQ's 19), got values in "
                         f"[{labels.min()}, {labels.max()}]")
    return labels


def legend() -> Image.Image:
    """The classes' colours and names, one row each."""
    row, width = 18, 150
    image = Image.new("RGB", (width, row * NUM_CLASSES + 4), "white")
    draw = ImageDraw.Draw(image)
    for i, (name, colour) in enumerate(zip(CLASSES, PALETTE)):
        y = 2 + i * row
        draw.rectangle([4, y + 2, 26, y + row - 3], fill=tuple(int(c) for c in colour), outline="black")
        draw.text((34, y + 3), f"{i:2d} {name}", fill="black")
    return image


def save_segmentation(labels, path) -> Path:
    """Writes (H,W) labels as a palette PNG (indices = labels, colours = the classes') and its legend beside it
    as <stem>-legend.png; returns the legend's path."""
    labels = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"--save-segmentation {path} must be a .png file (a palette PNG keeps the labels)")
    h, w = labels.shape
    image = Image.frombytes("P", (w, h), np.ascontiguousarray(labels, dtype=np.uint8).tobytes())
    image.putpalette(PALETTE.flatten().tolist())
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    legend_path = path.with_name(f"{path.stem}-legend.png")
    legend().save(legend_path)
    return legend_path
