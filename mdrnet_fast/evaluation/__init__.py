"""Evaluating a trained MDRNet as ShowFace's Table 1 does: L1 (%), FID, PSNR and SSIM per hole-ratio bin, and
LPIPS beside them.

runner.py runs the model over a test set per bin (`evaluate`); masks.py gives each image its mask per bin (drawn
from a seed, or a user's mask set); fid_inception.py and lpips.py are the networks FID and LPIPS need, loaded from
the published weight files (weights.py), never from random weights; report.py prints and writes the table and a
sample grid per bin. `mdrnet-fast eval` is a thin shell over these.
"""
from .fid_inception import FIDInception
from .lpips import LPIPS
from .masks import DrawnMasks, MaskFolder, mask_source
from .report import format_table, save_grid, write_csv, write_json
from .runner import METRICS, BinResult, EvalImages, evaluate
from .sets import folder_images, synthetic_images

__all__ = ["evaluate", "EvalImages", "BinResult", "METRICS", "FIDInception", "LPIPS", "DrawnMasks", "MaskFolder",
           "mask_source", "format_table", "write_json", "write_csv", "save_grid", "folder_images",
           "synthetic_images"]
