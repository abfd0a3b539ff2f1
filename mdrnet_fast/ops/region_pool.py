"""region_avg_pool / region_broadcast (SPEC §3): custom ops `mdrnet_fast::region_pool` (sum or average)
and `mdrnet_fast::region_broadcast`, each the other's backward."""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import reference
from .._dispatch import get_kernel, resolve
from ..composite._common import out_format
from . import _checks
from ._register import call, register_autograd


def check_labels(seg: Tensor, num_classes: int) -> None:
    """Refuses integer labels outside [0, num_classes) with a ValueError.

    Reading the range is one host sync on a GPU. It is skipped where there are no values to read or where a
    sync is not allowed: under torch.compile, in a dispatch mode such as FakeTensorMode, and while a CUDA
    graph is being captured; on meta tensors, which have no values. (The fast kernels ignore such pixels rather
    than read out of bounds.)"""
    if (not seg.is_floating_point() and seg.numel() and seg.device.type != "meta" and not torch.compiler.is_compiling()
            and not torch._C._len_torch_dispatch_stack()
            and not (seg.is_cuda and torch.cuda.is_current_stream_capturing())):
        lo, hi = torch.stack(torch.aminmax(seg)).tolist()  # one reduction, one sync for both ends
        if lo < 0 or hi >= num_classes:
            raise ValueError(f"seg labels must lie in [0, num_classes={num_classes}), got values in [{lo}, {hi}]")


@torch.library.custom_op("mdrnet_fast::region_pool", mutates_args=())
def region_pool_op(feat: Tensor, seg: Tensor, num_classes: int, normalize: bool,
                   backend: str) -> Tuple[Tensor, Tensor]:
    """(codes (B,n,C), area (B,n) fp32). seg: (B,n,H,W) float weights or (B,H,W) int64 labels at feat's size.

    The public functions check the label range (ValueError); the kernels refuse bad labels themselves."""
    return get_kernel("region_pool.forward", backend)(feat, seg, num_classes, normalize)


@region_pool_op.register_fake
def _(feat, seg, num_classes, normalize, backend):
    b, c = feat.shape[:2]
    acc = torch.float64 if feat.dtype == torch.float64 else torch.float32
    return feat.new_empty((b, num_classes, c)), feat.new_empty((b, num_classes), dtype=acc)


def _pool_setup(ctx, inputs, output):
    feat, seg, num_classes, normalize, backend = inputs
    ctx.save_for_backward(seg, output[1])
    ctx.args = (num_classes, normalize, backend, feat.dtype)


def _pool_backward(ctx, grad_codes, _grad_area):
    seg, area = ctx.saved_tensors
    num_classes, normalize, backend, dtype = ctx.args
    g = grad_codes
    if normalize:
        inv = torch.where(area > 0, 1.0 / torch.where(area > 0, area, torch.ones_like(area)), torch.zeros_like(area))
        g = (g.to(inv.dtype) * inv.unsqueeze(-1)).to(dtype)
    return call(region_broadcast_op, g.contiguous(), seg, num_classes, backend), None, None, None, None


register_autograd(region_pool_op, _pool_backward, _pool_setup)


@torch.library.custom_op("mdrnet_fast::region_broadcast", mutates_args=())
def region_broadcast_op(codes: Tensor, seg: Tensor, num_classes: int, backend: str) -> Tensor:
    return get_kernel("region_broadcast.forward", backend)(codes, seg, num_classes)


@region_broadcast_op.register_fake
def _(codes, seg, num_classes, backend):
    return codes.new_empty((codes.shape[0], codes.shape[2], *seg.shape[-2:]))


def _broadcast_setup(ctx, inputs, output):
    codes, seg, num_classes, backend = inputs
    ctx.save_for_backward(seg)
    ctx.args = (num_classes, backend)


def _broadcast_backward(ctx, grad_out):
    (seg,) = ctx.saved_tensors
    num_classes, backend = ctx.args
    grad_codes, _ = call(region_pool_op,
                         grad_out.contiguous(memory_format=out_format(grad_out)), seg, num_classes, False, backend)
    return grad_codes, None, None, None


register_autograd(region_broadcast_op, _broadcast_backward, _broadcast_setup)


def _prepare_seg(seg, num_classes: Optional[int], b: int, size, labels_checked: bool) -> Tuple[Tensor, int]:
    """Checks seg and returns it at `size` as float weights or int64 labels, with n."""
    if not isinstance(seg, Tensor):
        raise TypeError(f"seg must be a torch.Tensor, got {type(seg).__name__}")
    if seg.is_floating_point():
        _checks.tensor("seg", seg, 4)
        n = seg.shape[1]
        if num_classes is not None and num_classes != n:
            raise ValueError(f"num_classes={num_classes} does not match seg's {n} channels")
        if tuple(seg.shape[-2:]) != tuple(size):
            seg = F.interpolate(seg, size=tuple(size), mode="nearest")
    elif seg.dtype in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
        if seg.dim() != 3:
            raise ValueError(f"seg labels must be a (B,H,W) integer tensor, got shape {tuple(seg.shape)}")
        if num_classes is None:
            raise ValueError("num_classes must be given when seg holds integer labels")
        n = _checks.positive_int("num_classes", num_classes)
        if not labels_checked:
            check_labels(seg, n)
        seg = seg.long()
        if tuple(seg.shape[-2:]) != tuple(size):
            seg = F.interpolate(seg[:, None].float(), size=tuple(size), mode="nearest")[:, 0].long()
    else:
        raise TypeError(f"seg must be float (B,n,H,W) weights or integer (B,H,W) labels, got {seg.dtype}")
    _checks.batch("seg", seg, b)
    return seg.contiguous(), n


def region_avg_pool(feat, seg, num_classes=None, *, labels_checked=False):
    """Region-wise average pooling (SPEC §3): codes (B,n,C); zero for an absent region.

    feat (B,C,H,W) float; seg (B,n,h,w) one-hot/soft float or (B,h,w) integer labels with num_classes;
    seg at another size than feat is resized (nearest). No gradient to seg.
    Integer labels are checked to lie in [0, num_classes), which costs a host sync on a GPU; pass
    labels_checked=True for labels known to be in range (e.g. an argmax over n channels, or labels already
    checked with check_labels). Out-of-range labels are then the caller's bug: the fast kernels ignore such
    pixels, the reference raises an indexing error.
    """
    _checks.tensor("feat", feat, 4)
    _checks.same_device(feat=feat, seg=seg)
    seg, n = _prepare_seg(seg, num_classes, feat.shape[0], feat.shape[-2:], labels_checked)
    backend = resolve("region_pool", feat.device)
    if backend == "reference":
        return reference.region_avg_pool(feat, seg, n)
    codes, _ = call(region_pool_op, feat, seg, n, True, backend)
    return codes


def region_broadcast(codes, seg, num_classes=None, *, labels_checked=False):
    """out[b,:,h,w] = sum_i seg[b,i,h,w] * codes[b,i,:] (SPEC §3), at seg's resolution; (B,C,H,W).

    labels_checked: as in region_avg_pool (True skips the label range check and its host sync)."""
    _checks.tensor("codes", codes, 3)
    _checks.same_device(codes=codes, seg=seg)
    size = seg.shape[-2:] if isinstance(seg, Tensor) else None  # broadcast keeps seg's own size
    seg, n = _prepare_seg(seg, num_classes, codes.shape[0], size, labels_checked)
    if codes.shape[1] != n:
        raise ValueError(f"codes must have shape (B, n={n}, C) to match seg, got {tuple(codes.shape)}")
    backend = resolve("region_broadcast", codes.device)
    if backend == "reference":
        return reference.region_broadcast(codes, seg, n)
    return call(region_broadcast_op, codes.contiguous(), seg, n, backend)
