"""Test sets for evaluate(): a folder of images at their own size, or the built-in synthetic faces."""
from __future__ import annotations

from pathlib import Path

from ..inpainting.images import IMAGE_EXTENSIONS, read_image, to_pixels
from .runner import EvalImages


def folder_images(root) -> EvalImages:
    """The images under `root` (recursively, sorted by path), each read as it is: any mode and size, EXIF
    orientation applied (inpainting.images)."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"--data: {root} is not a folder")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise ValueError(f"--data: no images ({', '.join(IMAGE_EXTENSIONS)}) in {root}")
    return EvalImages(len(files), lambda i: to_pixels(read_image(files[i])).rgb(), [str(p) for p in files])


def synthetic_images(size: int, count: int, seed: int) -> EvalImages:
    """`count` synthetic faces of size x size (data.SyntheticFaces; a seed other than training's default 0 gives
    faces the model has not seen)."""
    from ..data import SyntheticFaces

    faces = SyntheticFaces(size=size, length=count, seed=seed)
    return EvalImages(count, lambda i: (faces[i]["image"] + 1) / 2, [f"synthetic face {i}" for i in range(count)])
