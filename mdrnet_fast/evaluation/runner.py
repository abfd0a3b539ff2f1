"""evaluate(): a trained MDRNet on a test set, per hole-ratio bin, with ShowFace's Table 1 metrics (L1 (%), FID,
PSNR, SSIM) and LPIPS. Images are evaluated at their own size (or resized to `image_size`), in batches of
consecutive images of one size; the metrics compare the composited output (known pixels are the image's) with
the image."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..data import RATIO_BINS
from ..inpainting.pipeline import run_batch
from ..inpainting.precision import resolve_precision
from ..metrics import l1_percent, psnr, ssim

METRICS = ("l1_percent", "fid", "psnr", "ssim", "lpips")
SAMPLES_PER_GRID = 4


@dataclass
class EvalImages:
    """`count` images, image i loaded by `load(i)` as (3,H,W) float32 in [0, 1]; `names[i]` for messages."""
    count: int
    load: Callable[[int], torch.Tensor]
    names: Sequence[str]


@dataclass
class BinResult:
    """One bin's per-image scores, FID of the bin, and the first images for its sample grid."""
    # per-image metrics; FID is of the whole bin
    scores: Dict[str, List[float]] = field(default_factory=lambda: {m: [] for m in METRICS if m != "fid"})
    fid: Optional[float] = None
    samples: List[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = field(default_factory=list)

    def row(self, metrics_on: Iterable[str]) -> Dict[str, Optional[float]]:
        on = set(metrics_on)
        row = {m: (float(np.mean(v)) if v and m in on else None) for m, v in self.scores.items()}
        row["fid"] = self.fid if "fid" in on else None
        return {m: row[m] for m in METRICS} | {"images": len(self.scores["l1_percent"])}


def _batches(images: EvalImages, limit: int, batch_size: int, image_size: Optional[int]):
    """Lists of (index, image) of one size, at most batch_size long, in order."""
    def loaded():
        for i in range(min(limit, images.count)):
            x = images.load(i)
            if image_size is not None and tuple(x.shape[-2:]) != (image_size, image_size):
                x = F.interpolate(x[None], size=(image_size, image_size), mode="bicubic", antialias=True,
                                  align_corners=False)[0].clamp_(0, 1)
            yield i, x

    batch: List[Tuple[int, torch.Tensor]] = []
    for item in loaded():
        if batch and (len(batch) == batch_size or item[1].shape != batch[0][1].shape):
            yield batch
            batch = []
        batch.append(item)
    if batch:
        yield batch


def _fid_metric(inception):
    from torchmetrics.image.fid import FrechetInceptionDistance

    # the real images' statistics are gathered once and kept across bins (reset() clears the fakes only)
    return FrechetInceptionDistance(feature=inception, reset_real_features=False)


@torch.no_grad()
def evaluate(model, images: EvalImages, masks, *, limit: int, batch_size: int = 8, precision: str = "auto",
             image_size: Optional[int] = None, inception=None, lpips=None,
             progress: bool = True) -> Dict[str, BinResult]:
    """{bin: BinResult} for every bin of `masks` (DrawnMasks / MaskFolder; a MaskFolder's empty bins are left
    out). `inception` (FIDInception) and `lpips` (LPIPS) switch those metrics on; they run in fp32 on the model's
    device, the model under `precision`."""
    from tqdm import tqdm

    device = next(model.parameters()).device
    dtype = resolve_precision(precision, device)
    empty = set(masks.empty_bins())
    fid = _fid_metric(inception).to(device) if inception is not None else None
    if lpips is not None:
        lpips = lpips.to(device)
    n = min(limit, images.count)
    first = next((b for b in RATIO_BINS if b not in empty), None)  # the bin whose pass feeds FID's real images
    results: Dict[str, BinResult] = {}
    was_training = model.training
    model.eval()
    try:
        for k, name in enumerate(RATIO_BINS):
            if name in empty:
                continue
            result = results[name] = BinResult()
            bar = tqdm(total=n, desc=f"eval {name}", unit="img", disable=not progress, dynamic_ncols=True)
            for batch in _batches(images, limit, batch_size, image_size):
                index = [i for i, _ in batch]
                rgb = torch.stack([x for _, x in batch])
                size = tuple(rgb.shape[-2:])
                valid = torch.from_numpy(np.stack([masks.valid(k, i, size) for i in index]))
                fill = run_batch(model, rgb, valid, dtype)
                out = torch.where(valid[:, None], rgb, fill)
                pred, truth = out * 2 - 1, rgb * 2 - 1
                result.scores["l1_percent"] += l1_percent(pred, truth).tolist()
                result.scores["psnr"] += psnr(pred, truth).tolist()
                result.scores["ssim"] += ssim(pred, truth).tolist()
                if lpips is not None:
                    result.scores["lpips"] += lpips(out.to(device), rgb.to(device)).double().cpu().tolist()
                if fid is not None:
                    if name == first:
                        fid.update(rgb.to(device), real=True)
                    fid.update(out.to(device), real=False)
                for i in range(min(len(batch), SAMPLES_PER_GRID - len(result.samples))):
                    shown = torch.where(valid[i], rgb[i], torch.ones_like(rgb[i]))  # holes white
                    result.samples.append((shown, out[i], rgb[i]))
                bar.update(len(batch))
            bar.close()
            if fid is not None:
                result.fid = float(fid.compute()) if n >= 2 else None  # a covariance needs two images
                fid.reset()
    finally:
        model.train(was_training)
    return results
