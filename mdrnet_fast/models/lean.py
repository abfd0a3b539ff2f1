"""Full-resolution layers without full-resolution temporaries.

At 2560x1600 one 64-channel bf16 map is half a gigabyte. Peak memory of an inference there was set by what the
decoders hold around a full-resolution conv: the upsampled copy of the layer below, the concatenation with the
skip, and a gated conv's 2*C_out conv output beside its C_out result (bench/memory_peak.py shows the live
tensors at the peak). These helpers compute the same values without those copies:

- `upsample_cat` writes the nearest-upsampled map and the skip straight into one buffer (always: same values,
  same autograd graph semantics, one copy fewer);
- `conv_in_row_bands` runs a conv-like layer on bands of output rows, each band reading only the input rows it
  needs (upsampling them on the fly), so the layer's temporaries are band-sized. Only without autograd (an
  inference) and outside torch.compile; elsewhere it is the plain call.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import ops
from ..composite._common import out_format
from ..nn import GatedConv2d, PartialConv2d

RowSource = Callable[[int, int], torch.Tensor]  # (start, stop) -> rows [start, stop) of a layer's input
Outputs = Union[torch.Tensor, Tuple[torch.Tensor, ...]]

# bytes of one band's largest temporary (a gated conv's 2*C_out output): large enough that each band's conv is
# still a big matrix product, small beside the layer's output
BAND_BYTES = 32 << 20


def upsample_cat(low: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    """torch.cat([F.interpolate(low, size=skip.shape[-2:], mode="nearest"), skip.to(low.dtype)], 1), built in
    place where the skip is twice low's size.

    The skip takes low's dtype: under autocast the conv that follows casts the concatenation to it anyway, so
    the values are the same, and an fp32 skip (the image) no longer promotes the whole concatenation to fp32.
    """
    b, c, h, w = low.shape
    if skip.shape[-2:] != (2 * h, 2 * w):  # not an exact 2x (an odd size below): nearest to the skip's size
        return torch.cat([F.interpolate(low, size=skip.shape[-2:], mode="nearest"), skip.to(low.dtype)], 1)
    out = torch.empty((b, c + skip.shape[1], 2 * h, 2 * w), dtype=low.dtype, device=low.device,
                      memory_format=out_format(skip))  # skip: a 1x1 low map is both layouts
    up = out[:, :c].unflatten(2, (h, 2)).unflatten(4, (w, 2))  # (b, c, h, 2, w, 2) view of the first c channels
    up.copy_(low[:, :, :, None, :, None].expand(b, c, h, 2, w, 2))
    out[:, c:].copy_(skip)
    return out


def upsampled_rows(x: torch.Tensor, upsample: int = 1) -> RowSource:
    """Rows of F.interpolate(x, scale_factor=upsample, mode="nearest"), upsampling only the rows asked for."""
    def rows(start: int, stop: int) -> torch.Tensor:
        if upsample == 1:
            return x[:, :, start:stop]
        lo, hi = start // upsample, -(-stop // upsample)
        band = F.interpolate(x[:, :, lo:hi], scale_factor=upsample, mode="nearest")
        return band[:, :, start - lo * upsample:stop - lo * upsample]

    return rows


def upsample_cat_rows(low: torch.Tensor, skip: torch.Tensor) -> RowSource:
    """Rows of upsample_cat(low, skip), building only the rows asked for."""
    def rows(start: int, stop: int) -> torch.Tensor:
        lo, hi = start // 2, -(-stop // 2)
        band = upsample_cat(low[:, :, lo:hi], skip[:, :, 2 * lo:2 * hi])
        return band[:, :, start - 2 * lo:stop - 2 * lo]

    return rows


def _pad_rows(x: torch.Tensor, top: int, bottom: int, fmt: torch.memory_format) -> torch.Tensor:
    """Zero rows above and below (the conv's own zero padding, for the bands at the map's edges)."""
    if not top and not bottom:
        return x
    b, c, h, w = x.shape
    out = torch.empty((b, c, h + top + bottom, w), dtype=x.dtype, device=x.device, memory_format=fmt).zero_()
    out[:, :, top:top + h].copy_(x)
    return out


def wants_bands(x: torch.Tensor) -> bool:
    """Bands only pay, and only keep the autograd graph's needs, in an eager inference."""
    return not torch.is_grad_enabled() and not torch.compiler.is_compiling() and x.device.type != "meta"


def _height_unpadded(conv: nn.Module) -> Callable[..., Outputs]:
    """conv's forward with its height padding set to 0 (the bands bring their own zero rows)."""
    if isinstance(conv, GatedConv2d):
        c = conv.conv
        return lambda x: ops.gated_conv2d(x, c.weight, c.bias, c.stride, (0, c.padding[1]), c.dilation, c.groups,
                                          conv.activation, conv.negative_slope)
    if isinstance(conv, PartialConv2d):
        return lambda x, mask: ops.partial_conv2d(x, mask, conv.weight, conv.bias, conv.stride, (0, conv.padding[1]),
                                                  conv.dilation, conv.groups, conv.multi_channel)
    raise TypeError(f"conv_in_row_bands takes a GatedConv2d or PartialConv2d, got {type(conv).__name__}")


def conv_in_row_bands(conv: nn.Module, sources: Sequence[RowSource], like: torch.Tensor, size: Tuple[int, int],
                      temp_channels: int, band_bytes: Optional[int] = None) -> Outputs:
    """conv(*inputs) computed on bands of output rows, where inputs[i] = sources[i](0, height).

    conv is a GatedConv2d (one input) or a PartialConv2d (input and mask; returns both outputs, as the op does).
    (height, width) = `size` is its input's size, `like` a tensor of its inputs' batch, dtype and layout;
    `temp_channels`, the channel count of its largest temporary (2*C_out for a gated conv), sets the band height
    from `band_bytes` (default BAND_BYTES).
    """
    fn = _height_unpadded(conv)
    layer = conv.conv if isinstance(conv, GatedConv2d) else conv
    kernel, stride, padding, dilation = (getattr(layer, a)[0] for a in ("kernel_size", "stride", "padding", "dilation"))
    height, width = size
    out_h = (height + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
    row_bytes = temp_channels * like.shape[0] * width * like.element_size()
    step = max(1, (band_bytes or BAND_BYTES) // max(row_bytes, 1))
    fmt, outs = out_format(like), None
    for r0 in range(0, out_h, step):
        r1 = min(r0 + step, out_h)
        first, last = r0 * stride - padding, (r1 - 1) * stride - padding + dilation * (kernel - 1) + 1
        start, stop = max(first, 0), min(last, height)
        bands = fn(*(_pad_rows(rows(start, stop), start - first, last - stop, fmt) for rows in sources))
        single = isinstance(bands, torch.Tensor)
        bands = (bands,) if single else tuple(bands)
        if outs is None:
            if r1 == out_h:  # one band: the plain call
                return bands[0] if single else bands
            outs = tuple(torch.empty((t.shape[0], t.shape[1], out_h, t.shape[3]), dtype=t.dtype, device=t.device,
                                     memory_format=out_format(t)) for t in bands)
        for out, band in zip(outs, bands):
            out[:, :, r0:r1].copy_(band)
        del bands
    return outs[0] if single else outs
