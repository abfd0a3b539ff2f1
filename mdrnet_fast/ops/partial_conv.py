"""partial_conv2d: public function and custom op `mdrnet_fast::partial_conv2d` (SPEC §1)."""
from typing import List, Optional, Tuple

import torch
from torch import Tensor

from .. import reference
from .._dispatch import get_kernel, resolve
from . import _checks
from ..composite._common import out_format
from ._register import call, conv_out_size, empty_like_format, register_autograd, register_plain


@torch.library.custom_op("mdrnet_fast::partial_conv2d", mutates_args=())
def partial_conv2d_op(x: Tensor, mask: Tensor, weight: Tensor, bias: Optional[Tensor], stride: List[int],
                      padding: List[int], dilation: List[int], groups: int, multi_channel: bool,
                      backend: str) -> Tuple[Tensor, Tensor, Tensor]:
    """Returns (out, new_mask, grad_scale); grad_scale (B,1,Ho,Wo) is d out / d raw for the backward."""
    return get_kernel("partial_conv2d.forward", backend)(x, mask, weight, bias, stride, padding, dilation,
                                                         groups, multi_channel)


@partial_conv2d_op.register_fake
def _(x, mask, weight, bias, stride, padding, dilation, groups, multi_channel, backend):
    b, c_out = x.shape[0], weight.shape[0]
    ho = conv_out_size(x.shape[2], weight.shape[2], stride[0], padding[0], dilation[0])
    wo = conv_out_size(x.shape[3], weight.shape[3], stride[1], padding[1], dilation[1])
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    return (empty_like_format(x, (b, c_out, ho, wo)),
            # a multi-channel new mask keeps x's layout (the next layer concatenates it with features)
            empty_like_format(x, (b, c_out, ho, wo)) if multi_channel else x.new_empty((b, 1, ho, wo)),
            x.new_empty((b, 1, ho, wo), dtype=acc))


def conv_grads(gx, gw, gb, x, weight, need_x, need_w, need_b):
    """(gx, gw, gb) as the conv backward ops return them. A custom op returns tensors, never aliases of each
    other: unneeded gradients come back as distinct empty tensors (None again in the autograd backward). The
    weight gradient takes the weight's layout, as autograd's conv gives it: a channels_last parameter's
    gradient then accumulates without a layout copy."""
    return ((gx if need_x else x.new_empty(0)),
            (gw.contiguous(memory_format=out_format(weight)) if need_w else weight.new_empty(0)),
            (gb if need_b else x.new_empty(0)))


def fake_conv_grads(x, weight, need_x, need_w, need_b):
    """conv_grads' shapes, dtypes and layouts, for the ops' fake implementations."""
    return (empty_like_format(x, x.shape) if need_x else x.new_empty(0),
            empty_like_format(weight, weight.shape) if need_w else weight.new_empty(0),
            x.new_empty(weight.shape[0]) if need_b else x.new_empty(0))


@torch.library.custom_op("mdrnet_fast::partial_conv2d_backward", mutates_args=())
def partial_conv2d_backward_op(grad_out: Tensor, x: Tensor, mask: Tensor, weight: Tensor, grad_scale: Tensor,
                               new_mask: Tensor, stride: List[int], padding: List[int], dilation: List[int],
                               groups: int, need_x: bool, need_w: bool, need_b: bool,
                               backend: str) -> Tuple[Tensor, Tensor, Tensor]:
    gx, gw, gb = get_kernel("partial_conv2d.backward", backend)(
        grad_out, x, mask, weight, grad_scale, new_mask, stride, padding, dilation, groups, need_x, need_w, need_b)
    return conv_grads(gx, gw, gb, x, weight, need_x, need_w, need_b)


@partial_conv2d_backward_op.register_fake
def _(grad_out, x, mask, weight, grad_scale, new_mask, stride, padding, dilation, groups, need_x, need_w,
      need_b, backend):
    return fake_conv_grads(x, weight, need_x, need_w, need_b)


register_plain(partial_conv2d_backward_op)


def _setup_context(ctx, inputs, output):
    x, mask, weight, bias, stride, padding, dilation, groups, multi_channel, backend = inputs
    _, new_mask, grad_scale = output
    ctx.save_for_backward(x, mask, weight, grad_scale, new_mask)
    ctx.args = (stride, padding, dilation, groups, backend)
    ctx.has_bias = bias is not None
    ctx.mark_non_differentiable(new_mask, grad_scale)


def _backward(ctx, grad_out, _grad_new_mask, _grad_scale):
    x, mask, weight, grad_scale, new_mask = ctx.saved_tensors
    stride, padding, dilation, groups, backend = ctx.args
    need_x, need_w, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[2], ctx.has_bias and ctx.needs_input_grad[3]
    # dense in x's layout (a channels_last gradient stays channels_last: the conv backward runs in it)
    grad_out = grad_out.contiguous(memory_format=out_format(x))
    gx, gw, gb = call(partial_conv2d_backward_op, grad_out, x, mask, weight, grad_scale, new_mask, stride, padding,
                      dilation, groups, need_x, need_w, need_b, backend)
    return (gx if need_x else None, None, gw if need_w else None, gb if need_b else None,
            None, None, None, None, None, None)


register_autograd(partial_conv2d_op, _backward, _setup_context)


def check_conv_args(x, weight, bias, stride, padding, dilation, groups):
    """Shared checks of the conv ops; returns (stride, padding, dilation) as lists."""
    _checks.tensor("x", x, 4)
    _checks.tensor("weight", weight, 4)
    if bias is not None:
        _checks.tensor("bias", bias, 1)
    groups = _checks.positive_int("groups", groups)
    stride = _checks.int_pair("stride", stride, 1)
    padding = _checks.int_pair("padding", padding, 0)
    dilation = _checks.int_pair("dilation", dilation, 1)
    c_in, c_out = x.shape[1], weight.shape[0]
    if c_in != weight.shape[1] * groups:
        raise ValueError(f"weight must have shape (C_out, C_in/groups={c_in // groups}, kh, kw) for x with "
                         f"{c_in} channels and groups={groups}, got {tuple(weight.shape)}")
    if c_out % groups != 0:
        raise ValueError(f"weight's C_out={c_out} must be divisible by groups={groups}")
    if bias is not None and tuple(bias.shape) != (c_out,):
        raise ValueError(f"bias must have shape ({c_out},), got {tuple(bias.shape)}")
    for dim, name in ((0, "height"), (1, "width")):
        if conv_out_size(x.shape[2 + dim], weight.shape[2 + dim], stride[dim], padding[dim], dilation[dim]) < 1:
            raise ValueError(f"x's {name} {x.shape[2 + dim]} is too small for a kernel of {weight.shape[2 + dim]} "
                             f"with padding {padding[dim]} and dilation {dilation[dim]}")
    return stride, padding, dilation


def conv_dtypes(x, weight, bias):
    """Autocast casts the conv operands to its dtype; otherwise they must already agree."""
    low = _checks.autocast_dtype(x.device)
    if low is not None:
        return x.to(low), weight.to(low), (bias.to(low) if bias is not None else None)
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.dtype != x.dtype:
            raise TypeError(f"{name} must have x's dtype {x.dtype}, got {t.dtype}")
    return x, weight, bias


def check_mask(mask, x, channels_ok, what):
    """A float/bool (B or 1, C, H, W) mask with an allowed channel count, as x's dtype and batch."""
    _checks.tensor("mask", mask, 4, floating=False)
    if not (mask.is_floating_point() or mask.dtype == torch.bool):
        raise TypeError(f"mask must be a floating or bool tensor, got {mask.dtype}")
    _checks.batch("mask", mask, x.shape[0], allow_one=True)
    if mask.shape[1] not in channels_ok:
        raise ValueError(f"mask must have {what} channels, got shape {tuple(mask.shape)}")
    _checks.spatial("mask", mask, x.shape[2:], "x")
    return mask.to(x.dtype).expand(x.shape[0], -1, -1, -1)


def partial_conv2d(x, mask, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, multi_channel=False):
    """Partial convolution (SPEC §1). Returns (out, new_mask).

    x (B,C_in,H,W); mask (B,1,H,W), or (B,C_in,H,W) when multi_channel, 1 = valid, soft allowed, None = all
    ones; weight (C_out, C_in/groups, kh, kw). new_mask is (B,1,Ho,Wo), or (B,C_out,Ho,Wo) when multi_channel.
    """
    stride, padding, dilation = check_conv_args(x, weight, bias, stride, padding, dilation, groups)
    _checks.same_device(x=x, mask=mask, weight=weight, bias=bias)
    x, weight, bias = conv_dtypes(x, weight, bias)
    c_in = x.shape[1]
    if mask is None:
        mask = x.new_ones(x.shape[0], c_in if multi_channel else 1, *x.shape[2:])
    allowed = (c_in,) if multi_channel else (1,)
    mask = check_mask(mask, x, allowed, f"{c_in} (multi_channel)" if multi_channel else "1 (multi_channel=False)")
    backend = resolve("partial_conv2d", x.device)
    if backend == "reference":
        return reference.partial_conv2d(x, mask, weight, bias, stride, padding, dilation, groups, multi_channel)
    out, new_mask, _ = call(partial_conv2d_op, x, mask.contiguous(memory_format=out_format(x)), weight, bias, stride,
                            padding, dilation, groups, bool(multi_channel), backend)
    return out, new_mask
