"""mdrnet_fast.inpaint: a trained MDRNet on an image of any size, only its holes changed."""
from __future__ import annotations

import contextlib
import time
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..commands.common import default_memory_format
from .images import Pixels, to_pixels, valid_map
from .precision import autocast, precision_name, resolve_precision
from .segmentation import read_segmentation
from .strategies import AUTO_FULL_MAX, Box, plan

Report = Callable[[str], None]


def _pad(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pads bottom and right to a multiple: reflect (the image continues as a mirror, so the model sees no edge),
    replicate where the image is too small to mirror that far."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if not ph and not pw:
        return x
    return F.pad(x, (0, pw, 0, ph), mode="reflect" if ph < h and pw < w else "replicate")


@contextlib.contextmanager
def _stage_bar(model: torch.nn.Module, desc: str, enabled: bool):
    """A progress bar over the model's top-level stages (coarse U-Net, parser, ..., refinement) of one pass."""
    if not enabled:
        yield
        return
    from tqdm import tqdm

    stages = list(model.named_children())
    bar = tqdm(total=len(stages), desc=desc, unit="stage", leave=False, dynamic_ncols=True)
    def started(module, _args):
        bar.set_postfix_str(names[module], refresh=True)

    def finished(_module, _args, _output):
        bar.update(1)  # a hook must return None, or it replaces the stage's output

    names = {module: name for name, module in stages}
    hooks = [hook for _, module in stages
             for hook in (module.register_forward_pre_hook(started), module.register_forward_hook(finished))]
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()
        bar.close()


def _prepared(model: torch.nn.Module, rgb: torch.Tensor, valid: torch.Tensor, labels: Optional[torch.Tensor]):
    """(image in [-1, 1], mask, labels or None) of a batch (B,3,H,W), (B,H,W), (B,H,W), on the model's device and
    in its layout, padded to its size multiple."""
    device = next(model.parameters()).device
    fmt = default_memory_format(device)
    multiple = getattr(model, "size_multiple", 1)
    image = _pad(rgb.to(device) * 2 - 1, multiple).contiguous(memory_format=fmt)
    mask = _pad(valid[:, None].to(device, torch.float32), multiple).contiguous(memory_format=fmt)
    if labels is not None:
        labels = _pad(labels[:, None].to(device, torch.float32), multiple)[:, 0].long()
    return image, mask, labels


def run_batch(model: torch.nn.Module, rgb: torch.Tensor, valid: torch.Tensor, dtype: Optional[torch.dtype],
              progress: bool = False, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
    """One pass over images of one size: rgb (B,3,H,W) in [0, 1], valid (B,H,W) bool, labels (B,H,W) int or None
    (the parser's) -> the model's faces (B,3,H,W) in [0, 1] (float32, on the CPU). Padded to the model's size
    multiple, cropped back; `progress` shows the model's stages for a large image."""
    h, w = rgb.shape[-2:]
    image, mask, labels = _prepared(model, rgb, valid, labels)
    big = progress and h * w >= 1 << 20
    with torch.inference_mode(), autocast(image.device, dtype), _stage_bar(model, f"{w}x{h}", big):
        refined = model(image, mask, segmentation=labels).refined
    return ((refined[:, :, :h, :w].float() + 1) / 2).clamp_(0, 1).cpu()


def run_model(model: torch.nn.Module, rgb: torch.Tensor, valid: torch.Tensor, dtype: Optional[torch.dtype],
              progress: bool = False, labels: Optional[torch.Tensor] = None) -> torch.Tensor:
    """run_batch of one image: rgb (3,H,W), valid (H,W), labels (H,W) or None -> (3,H,W)."""
    return run_batch(model, rgb[None], valid[None], dtype, progress, labels[None] if labels is not None else None)[0]


def _resized(rgb, valid, labels, size):
    """rgb, valid and labels at `size`: the image antialiased, a pixel a hole if any pixel under it is one, the
    labels nearest."""
    small = F.interpolate(rgb[None], size=size, mode="bicubic", antialias=True, align_corners=False)[0].clamp_(0, 1)
    holes = F.interpolate((~valid)[None, None].float(), size=size, mode="area")[0, 0] > 0
    if labels is not None:
        labels = F.interpolate(labels[None, None].float(), size=size, mode="nearest")[0, 0].long()
    return small, ~holes, labels


def _long_side(h: int, w: int, side: int):
    """(H, W) scaled so the long side is `side`."""
    scale = side / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def _run_resized(model, rgb, valid, dtype, max_side, progress, labels=None) -> torch.Tensor:
    """The fill of `rgb` computed at a long side of `max_side` (if larger) and scaled back to its size."""
    h, w = rgb.shape[-2:]
    if max(h, w) <= max_side:
        return run_model(model, rgb, valid, dtype, progress, labels)
    small = _resized(rgb, valid, labels, _long_side(h, w, max_side))
    fill = run_model(model, *small[:2], dtype, progress, small[2])
    return F.interpolate(fill[None], size=(h, w), mode="bicubic", align_corners=False)[0].clamp_(0, 1)


def _paint(px: Pixels, out: np.ndarray, fill: torch.Tensor, holes: np.ndarray, box: Box) -> None:
    top, left, bottom, right = box
    px.paint(out[top:bottom, left:right], fill, holes[top:bottom, left:right])


def inpaint_pixels(model, px: Pixels, valid: np.ndarray, strategy: str = "auto", precision: str = "auto", *,
                   max_side: int = 2048, crop_margin: int = 128, progress: bool = False,
                   report: Optional[Report] = None, labels: Optional[np.ndarray] = None):
    """inpaint() once the image is Pixels, the mask a (H,W) bool valid map and the segmentation (H,W) labels or
    None; returns what px.back gives."""
    holes = ~valid
    report = report or (lambda line: None)
    if not holes.any():
        report("the mask has no hole: the image is returned unchanged")
        return px.back(px.array.copy())
    device = next(model.parameters()).device
    dtype = resolve_precision(precision, device)
    chosen = plan(holes, strategy, max_side, crop_margin)
    report(f"{chosen.describe(strategy)}; precision {precision} -> {precision_name(dtype)}")
    rgb, valid_t = px.rgb(), torch.from_numpy(valid)
    labels_t = torch.from_numpy(labels) if labels is not None else None
    out, whole = px.array.copy(), (0, 0, *holes.shape)
    was_training = model.training
    model.eval()
    try:
        if chosen.strategy == "crop":
            from tqdm import tqdm

            for box in tqdm(chosen.boxes, desc="crops", unit="crop", leave=False,
                            disable=not progress or len(chosen.boxes) < 2):
                top, left, bottom, right = box
                crop = labels_t[top:bottom, left:right] if labels_t is not None else None
                fill = _run_resized(model, rgb[:, top:bottom, left:right], valid_t[top:bottom, left:right], dtype,
                                    max_side, progress, crop)
                _paint(px, out, fill, holes, box)
        else:
            side = max_side if chosen.strategy == "resize" else max(holes.shape)
            _paint(px, out, _run_resized(model, rgb, valid_t, dtype, side, progress, labels_t), holes, whole)
    finally:
        model.train(was_training)
    return px.back(out)


def _valid(px: Pixels, mask, invert_mask: bool) -> np.ndarray:
    """The (H,W) valid map of a mask, or of the image's own transparency when there is no mask."""
    if mask is not None:
        return valid_map(mask, px.size, invert_mask)
    if px.has_alpha and px.transparent().any():
        return ~px.transparent()
    raise ValueError("no mask given and the image has no transparent pixels: give a mask (white = valid, "
                     "black = hole) or an RGBA image whose transparent pixels are the holes")


def inpaint(model, image, mask=None, strategy: str = "auto", precision: str = "auto", *, max_side: int = 2048,
            crop_margin: int = 128, invert_mask: bool = False, segmentation=None, segmentation_format: str = "14",
            progress: bool = False, report: Optional[Report] = None):
    """Fills the holes of `image` with a trained MDRNet; every known pixel of the result is the input's.

    image: a PIL image (any mode: grey, 16-bit, palette, RGB, RGBA), a NumPy array ((H,W) or (H,W,C), uint8,
        uint16 or float in [0, 1]), a tensor ((C,H,W) or (B,C,H,W), uint8 or float in [0, 1]) or a file path.
        The result is of the same kind, mode, shape and dtype (a path gives a PIL image).
    mask: white (or 1, or True) = valid, black = hole; 0/1 and 0/255 masks alike; an RGBA mask whose alpha varies
        is read from its alpha (transparent = hole). It must have the image's size. None: the image's own
        transparent pixels are the holes. `invert_mask` for masks that are white where the holes are.
    strategy: "full" (the whole image at its own resolution), "crop" (each group of holes with `crop_margin`
        pixels of context, scaled down to `max_side` if larger), "resize" (the image scaled to a long side of
        `max_side`, the fill scaled back), or "auto" (see mdrnet_fast.inpainting.strategies).
    precision: "auto" (bf16 autocast on a CPU with native bf16 and on a bf16 GPU, else fp32), "fp32" or "bf16".
    segmentation: a semantic map of the image's size that steers the fill, instead of the parser's (a label
        PNG, or one written by `segment` + `save_segmentation` and edited; an (H,W) integer array or tensor);
        `segmentation_format` "celebamask-hq" for CelebAMask-HQ's 19 labels.
    progress: tqdm bars (crops; the model's stages on a large image). report: called with one line saying which
        strategy and precision were taken.

    The model runs where its parameters are, on the image padded to its size multiple; an all-valid mask returns
    the image unchanged without running it.
    """
    options = dict(max_side=max_side, crop_margin=crop_margin, invert_mask=invert_mask,
                   segmentation_format=segmentation_format, progress=progress, report=report)
    if isinstance(image, torch.Tensor) and image.dim() == 4 and image.shape[0] > 1:
        n = image.shape[0]
        masks = [None] * n if mask is None else list(mask if mask.dim() == 4 else mask[:, None])
        maps = [None] * n if segmentation is None else list(segmentation)
        return torch.stack([inpaint(model, im, m, strategy, precision, segmentation=seg, **options)
                            for im, m, seg in zip(image, masks, maps)])
    px = to_pixels(image)
    valid = _valid(px, mask, invert_mask)
    labels = None if segmentation is None else read_segmentation(segmentation, px.size, segmentation_format)
    start = time.perf_counter()
    result = inpaint_pixels(model, px, valid, strategy, precision, max_side=max_side, crop_margin=crop_margin,
                            progress=progress, report=report, labels=labels)
    if report is not None and (~valid).any():
        report(f"inpainted in {time.perf_counter() - start:.1f} s")
    return result


def segment(model, image, mask=None, precision: str = "auto", *, invert_mask: bool = False,
            max_side: int = 2048) -> np.ndarray:
    """The parser's (H,W) int64 labels for `image` (same kinds and mask rules as inpaint): what the model sees
    in its coarse face. At the image's own resolution up to AUTO_FULL_MAX pixels, else at a long side of
    `max_side`, scaled back (nearest). Write it with save_segmentation, edit it, and give it to inpaint."""
    px = to_pixels(image)
    valid = torch.from_numpy(_valid(px, mask, invert_mask))
    rgb = px.rgb()
    h, w = rgb.shape[-2:]
    if h * w > AUTO_FULL_MAX and max(h, w) > max_side:
        rgb, valid, _ = _resized(rgb, valid, None, _long_side(h, w, max_side))
    hs, ws = rgb.shape[-2:]
    image_t, mask_t, _ = _prepared(model, rgb[None], valid[None], None)
    device = image_t.device
    with torch.inference_mode(), autocast(device, resolve_precision(precision, device)):
        labels = model.segment(image_t, mask_t)[:, :hs, :ws]
    labels = F.interpolate(labels[None].float(), size=(h, w), mode="nearest")[0, 0].long()
    return labels.cpu().numpy()
