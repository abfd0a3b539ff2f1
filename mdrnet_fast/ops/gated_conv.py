"""gated_conv2d (SPEC §2): a conv (or partial conv) with 2*C_out outputs, then the custom op
`mdrnet_fast::gated_activation` = act(feature half) * sigmoid(gate half)."""
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import reference
from .._dispatch import get_kernel, has_kernel, resolve
from ..composite._common import out_format
from ..reference.gated_conv import ACTIVATIONS
from ._register import call, conv_out_size, empty_like_format, register_autograd, register_plain
from .partial_conv import (check_conv_args, check_mask, conv_dtypes, conv_grads, fake_conv_grads,
                           partial_conv2d_op)


@torch.library.custom_op("mdrnet_fast::gated_activation", mutates_args=())
def gated_activation_op(y: Tensor, activation: str, negative_slope: float, backend: str) -> Tensor:
    return get_kernel("gated_activation.forward", backend)(y, activation, negative_slope)


@gated_activation_op.register_fake
def _(y, activation, negative_slope, backend):
    return empty_like_format(y, (y.shape[0], y.shape[1] // 2, *y.shape[2:]))


@torch.library.custom_op("mdrnet_fast::gated_activation_backward", mutates_args=())
def gated_activation_backward_op(grad_out: Tensor, y: Tensor, activation: str, negative_slope: float,
                                 backend: str) -> Tensor:
    return get_kernel("gated_activation.backward", backend)(grad_out, y, activation, negative_slope)


@gated_activation_backward_op.register_fake
def _(grad_out, y, activation, negative_slope, backend):
    return empty_like_format(y, y.shape)


register_plain(gated_activation_backward_op)


def _setup_context(ctx, inputs, output):
    y, activation, negative_slope, backend = inputs
    ctx.save_for_backward(y)
    ctx.args = (activation, negative_slope, backend)


def _backward(ctx, grad_out):
    (y,) = ctx.saved_tensors
    return call(gated_activation_backward_op, grad_out, y, *ctx.args), None, None, None


register_autograd(gated_activation_op, _backward, _setup_context)


@torch.library.custom_op("mdrnet_fast::gated_partial_conv2d", mutates_args=())
def gated_partial_conv2d_op(x: Tensor, mask: Tensor, weight: Tensor, bias: Optional[Tensor], stride: List[int],
                            padding: List[int], dilation: List[int], groups: int, activation: str,
                            negative_slope: float, backend: str) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Partial conv (1-channel mask) with 2*C_out outputs and the gating fused in its epilogue where the backend
    has that kernel. Returns (out, new_mask, y, grad_scale): y is the partial conv output, kept for the backward."""
    return get_kernel("gated_partial_conv2d.forward", backend)(x, mask, weight, bias, stride, padding, dilation,
                                                               groups, activation, negative_slope)


@gated_partial_conv2d_op.register_fake
def _(x, mask, weight, bias, stride, padding, dilation, groups, activation, negative_slope, backend):
    b, c2 = x.shape[0], weight.shape[0]
    ho = conv_out_size(x.shape[2], weight.shape[2], stride[0], padding[0], dilation[0])
    wo = conv_out_size(x.shape[3], weight.shape[3], stride[1], padding[1], dilation[1])
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    return (empty_like_format(x, (b, c2 // 2, ho, wo)), x.new_empty((b, 1, ho, wo)),
            empty_like_format(x, (b, c2, ho, wo)), x.new_empty((b, 1, ho, wo), dtype=acc))


@torch.library.custom_op("mdrnet_fast::gated_partial_conv2d_backward", mutates_args=())
def gated_partial_conv2d_backward_op(grad_out: Tensor, x: Tensor, mask: Tensor, weight: Tensor, grad_scale: Tensor,
                                     new_mask: Tensor, y: Tensor, stride: List[int], padding: List[int],
                                     dilation: List[int], groups: int, activation: str, negative_slope: float,
                                     need_x: bool, need_w: bool, need_b: bool,
                                     backend: str) -> Tuple[Tensor, Tensor, Tensor]:
    """(gx, gw, gb) of the gated partial conv; backends may form the gating's gradient inside their loads."""
    gx, gw, gb = get_kernel("gated_partial_conv2d.backward", backend)(
        grad_out, x, mask, weight, grad_scale, new_mask, y, stride, padding, dilation, groups, activation,
        negative_slope, need_x, need_w, need_b)
    return conv_grads(gx, gw, gb, x, weight, need_x, need_w, need_b)


@gated_partial_conv2d_backward_op.register_fake
def _(grad_out, x, mask, weight, grad_scale, new_mask, y, stride, padding, dilation, groups, activation,
      negative_slope, need_x, need_w, need_b, backend):
    return fake_conv_grads(x, weight, need_x, need_w, need_b)


register_plain(gated_partial_conv2d_backward_op)


def _gpc_setup_context(ctx, inputs, output):
    x, mask, weight, bias, stride, padding, dilation, groups, activation, negative_slope, backend = inputs
    _, new_mask, y, grad_scale = output
    ctx.save_for_backward(x, mask, weight, grad_scale, new_mask, y)
    ctx.args = (stride, padding, dilation, groups, activation, negative_slope, backend)
    ctx.has_bias = bias is not None
    ctx.mark_non_differentiable(new_mask, y, grad_scale)


def _gpc_backward(ctx, grad_out, _grad_new_mask, _grad_y, _grad_scale):
    x, mask, weight, grad_scale, new_mask, y = ctx.saved_tensors
    stride, padding, dilation, groups, activation, negative_slope, backend = ctx.args
    need_x, need_w, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[2], ctx.has_bias and ctx.needs_input_grad[3]
    gx, gw, gb = call(gated_partial_conv2d_backward_op, grad_out.contiguous(memory_format=out_format(x)), x, mask,
                      weight, grad_scale, new_mask, y, stride, padding, dilation, groups, activation, negative_slope,
                      need_x, need_w, need_b, backend)
    return (gx if need_x else None, None, gw if need_w else None, gb if need_b else None,
            None, None, None, None, None, None, None)


register_autograd(gated_partial_conv2d_op, _gpc_backward, _gpc_setup_context)


def gated_conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, activation="elu",
                 negative_slope=0.2, mask=None):
    """Gated convolution (SPEC §2). weight (2*C_out, C_in/groups, kh, kw): first half feature, second gate.

    activation in {"elu", "leaky_relu", "relu", "none"}. Returns out (B,C_out,Ho,Wo), or (out, new_mask)
    when a (B,1,H,W) mask is given (then the conv is the partial conv of SPEC §1).
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    stride, padding, dilation = check_conv_args(x, weight, bias, stride, padding, dilation, groups)
    if weight.shape[0] % 2:
        raise ValueError(f"weight must have 2*C_out output channels (feature and gate), got {weight.shape[0]}")
    x, weight, bias = conv_dtypes(x, weight, bias)
    if mask is not None:
        mask = check_mask(mask, x, (1,), "1")
    backend = resolve("gated_activation", x.device)
    if backend == "reference":
        return reference.gated_conv2d(x, weight, bias, stride, padding, dilation, groups, activation,
                                      float(negative_slope), mask)
    if mask is None:
        y = F.conv2d(x, weight, bias, stride, padding, dilation, groups)
        return call(gated_activation_op, y, activation, float(negative_slope), backend)
    if has_kernel("gated_partial_conv2d.forward", backend):  # the gating fused into the conv's epilogue
        out, new_mask, _, _ = call(gated_partial_conv2d_op, x, mask.contiguous(), weight, bias, stride, padding,
                                   dilation, groups, activation, float(negative_slope), backend)
        return out, new_mask
    y, new_mask, _ = call(partial_conv2d_op, x, mask.contiguous(), weight, bias, stride, padding, dilation, groups,
                          False, backend)
    return call(gated_activation_op, y, activation, float(negative_slope), backend), new_mask
