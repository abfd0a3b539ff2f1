"""Inpainting images as users have them: any size, any mode, known pixels untouched (`inpaint`).

images.py reads images and masks (files, PIL, NumPy, tensors) and writes the fill back into the holes only;
strategies.py chooses what the model sees (full, crop, resize, auto); precision.py the autocast dtype;
segmentation.py reads and writes the semantic maps that steer the fill;
pipeline.py runs it all; checkpoint.py loads a trained model.
"""
from .checkpoint import load_model
from .images import read_image, read_mask, save_image, to_pixels, valid_map
from .pipeline import inpaint, run_batch, run_model, segment
from .precision import PRECISIONS, cpu_has_native_bf16, resolve_precision
from .segmentation import read_segmentation, save_segmentation
from .strategies import STRATEGIES, hole_regions, plan

__all__ = ["inpaint", "segment", "load_model", "run_model", "run_batch", "read_image", "read_mask", "save_image", "to_pixels",
           "valid_map", "read_segmentation", "save_segmentation", "PRECISIONS", "STRATEGIES", "cpu_has_native_bf16",
           "resolve_precision", "hole_regions", "plan"]
