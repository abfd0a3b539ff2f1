"""Data for MDRNet: a built-in synthetic face set, free-form masks, image folders, the 14 classes.

    from mdrnet_fast.data import SyntheticFaces, FreeFormMasks, InpaintingDataset
    ds = InpaintingDataset(SyntheticFaces(size=256, length=10000), FreeFormMasks(256, "20-40%"))
    ds.set_epoch(epoch)   # new masks every epoch, deterministic
    item = ds[0]          # {"image": (3,H,W) in [-1,1], "labels": (H,W) int64, "mask": (1,H,W), 1 = valid}

Items are dicts of tensors, so torch's default collate stacks them into batches.
"""
from .folder import ImageFolderDataset
from .labels import (CELEBAMASK_HQ_CLASSES, CELEBAMASK_HQ_TO_14, CLASS_INDEX, CLASSES, NUM_CLASSES, PALETTE,
                     colorize, remap_celebamask_hq)
from .masks import RATIO_BINS, FreeFormMasks, InpaintingDataset, hole_ratio, load_mask
from .synthetic import SyntheticFaces, make_batch, render_face

__all__ = [
    "CLASSES", "NUM_CLASSES", "CLASS_INDEX", "CELEBAMASK_HQ_CLASSES", "CELEBAMASK_HQ_TO_14", "PALETTE",
    "remap_celebamask_hq", "colorize",
    "SyntheticFaces", "make_batch", "render_face",
    "RATIO_BINS", "FreeFormMasks", "InpaintingDataset", "hole_ratio", "load_mask",
    "ImageFolderDataset",
]
