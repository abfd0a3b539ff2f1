"""The 14 semantic classes of the face parsing maps, and CelebAMask-HQ's 19 labels mapped onto them.

ShowFace follows CelebAMask-HQ, whose 19 labels are merged into n = 14 regions for the region-wise
style codes and the disentangled memory. Our merge (``CELEBAMASK_HQ_TO_14``):

    CelebAMask-HQ (19)                 ->  ours (14)
    0 background                       ->  0 background
    1 skin                             ->  1 skin
    2 nose                             ->  2 nose
    3 eye_g (eyeglasses)               ->  3 eye_glasses
    4 l_eye, 5 r_eye                   ->  4 eyes
    6 l_brow, 7 r_brow                 ->  5 brows
    8 l_ear, 9 r_ear, 15 ear_r         ->  6 ears        (ear_r = earring)
    10 mouth                           ->  7 mouth       (inner mouth, teeth)
    11 u_lip                           ->  8 upper_lip
    12 l_lip                           ->  9 lower_lip
    13 hair                            -> 10 hair
    14 hat                             -> 11 hat
    16 neck_l, 17 neck                 -> 12 neck        (neck_l = necklace)
    18 cloth                           -> 13 cloth

Why these merges: left and right eyes (brows, ears) share one appearance, so one style code serves
both and a horizontal flip keeps every label valid; earrings and necklaces are tiny, rare and sit
on the ear / neck they decorate. Eyeglasses and hats stay separate: they are large, frequent
occluders whose appearance has nothing in common with the face part below them.
"""
from __future__ import annotations

import numpy as np
import torch

CLASSES = (
    "background",   # 0
    "skin",         # 1
    "nose",         # 2
    "eye_glasses",  # 3
    "eyes",         # 4
    "brows",        # 5
    "ears",         # 6
    "mouth",        # 7
    "upper_lip",    # 8
    "lower_lip",    # 9
    "hair",         # 10
    "hat",          # 11
    "neck",         # 12
    "cloth",        # 13
)
NUM_CLASSES = len(CLASSES)
CLASS_INDEX = {name: i for i, name in enumerate(CLASSES)}

CELEBAMASK_HQ_CLASSES = (
    "background", "skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear", "r_ear",
    "mouth", "u_lip", "l_lip", "hair", "hat", "ear_r", "neck_l", "neck", "cloth",
)

# CELEBAMASK_HQ_TO_14[k] = our class of CelebAMask-HQ label k (see the module docstring).
CELEBAMASK_HQ_TO_14 = (0, 1, 2, 3, 4, 4, 5, 5, 6, 6, 7, 8, 9, 10, 11, 6, 12, 12, 13)
assert len(CELEBAMASK_HQ_TO_14) == len(CELEBAMASK_HQ_CLASSES)

_LUT = np.asarray(CELEBAMASK_HQ_TO_14, dtype=np.int64)
_LUT_T = torch.as_tensor(_LUT)

# One colour per class for sample grids: hair/hat/cloth dark, face parts saturated, skin light.
PALETTE = np.array([
    (0, 0, 0),        # background
    (230, 180, 150),  # skin
    (250, 120, 40),   # nose
    (60, 200, 230),   # eye_glasses
    (40, 80, 255),    # eyes
    (120, 60, 20),    # brows
    (200, 60, 200),   # ears
    (90, 0, 40),      # mouth
    (230, 30, 60),    # upper_lip
    (255, 110, 150),  # lower_lip
    (110, 70, 160),   # hair
    (30, 140, 60),    # hat
    (200, 200, 60),   # neck
    (70, 110, 130),   # cloth
], dtype=np.uint8)
assert len(PALETTE) == NUM_CLASSES


def _check_range(values_min, values_max, n, what):
    if values_min < 0 or values_max >= n:
        raise ValueError(f"{what} must lie in [0, {n}), got values in [{values_min}, {values_max}]")


def remap_celebamask_hq(label_map):
    """Map a CelebAMask-HQ label map (values 0..18) to our 14 classes, by a lookup table.

    Accepts a numpy array or a torch tensor of any shape and integer dtype and returns the same type,
    dtype and shape (on the same device for tensors). Values outside [0, 19) raise ValueError.
    """
    if isinstance(label_map, torch.Tensor):
        if label_map.is_floating_point() or label_map.is_complex():
            raise TypeError(f"label_map must have an integer dtype, got {label_map.dtype}")
        if label_map.numel():
            _check_range(int(label_map.min()), int(label_map.max()), len(_LUT), "CelebAMask-HQ labels")
        return _LUT_T.to(label_map.device)[label_map.long()].to(label_map.dtype)
    arr = np.asarray(label_map)
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"label_map must have an integer dtype, got {arr.dtype}")
    if arr.size:
        _check_range(int(arr.min()), int(arr.max()), len(_LUT), "CelebAMask-HQ labels")
    return _LUT[arr].astype(arr.dtype, copy=False)


def colorize(labels) -> np.ndarray:
    """Colour a label map with PALETTE: (..., H, W) integer labels -> (..., H, W, 3) uint8 RGB.

    Floating tensors/arrays are taken as per-class scores (..., 14, H, W) (e.g. parser logits) and
    coloured by their argmax over the class dimension.
    """
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu()
        if labels.is_floating_point():
            labels = labels.argmax(-3)
        labels = labels.numpy()
    labels = np.asarray(labels)
    if np.issubdtype(labels.dtype, np.floating):
        if labels.ndim < 3 or labels.shape[-3] != NUM_CLASSES:
            raise ValueError(f"float scores must be (..., {NUM_CLASSES}, H, W), got {labels.shape}")
        labels = labels.argmax(-3)
    if labels.size:
        _check_range(int(labels.min()), int(labels.max()), NUM_CLASSES, "labels")
    return PALETTE[labels]
