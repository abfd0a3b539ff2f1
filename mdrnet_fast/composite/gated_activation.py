"""act(feature) * sigmoid(gate) with its explicit gradient (reference/gated_conv.py defines it)."""
import torch

from .._dispatch import register_kernel
from ..reference.gated_conv import activation
from ._common import acc_dtype, no_autocast, out_format


def activation_grad(f, name, negative_slope):
    """d act(f) / d f."""
    if name == "elu":
        return torch.where(f > 0, torch.ones_like(f), torch.exp(f))
    if name == "leaky_relu":
        return torch.where(f > 0, torch.ones_like(f), torch.full_like(f, negative_slope))
    if name == "relu":
        return (f > 0).to(f.dtype)
    return torch.ones_like(f)


@register_kernel("gated_activation.forward", "composite")
@no_autocast
def forward(y, activation_name, negative_slope):
    acc = acc_dtype(y.dtype)
    f, g = y.to(acc).chunk(2, dim=1)
    out = activation(f, activation_name, negative_slope) * torch.sigmoid(g)
    return out.to(y.dtype).contiguous(memory_format=out_format(y))


@register_kernel("gated_activation.backward", "composite")
@no_autocast
def backward(grad_out, y, activation_name, negative_slope):
    acc = acc_dtype(y.dtype)
    f, g = y.to(acc).chunk(2, dim=1)
    go = grad_out.to(acc)
    s = torch.sigmoid(g)
    grad_f = go * s * activation_grad(f, activation_name, negative_slope)
    grad_g = go * activation(f, activation_name, negative_slope) * s * (1 - s)
    return torch.cat([grad_f, grad_g], dim=1).to(y.dtype).contiguous(memory_format=out_format(y))


@register_kernel("gated_partial_conv2d.forward", "composite")
@no_autocast
def gated_partial_forward(x, mask, weight, bias, stride, padding, dilation, groups, activation_name, negative_slope):
    """Partial conv with 2*C_out outputs, then the gating: (out, new_mask, y, grad_scale), y kept for the backward."""
    from .partial_conv import forward as partial_forward

    y, new_mask, grad_scale = partial_forward(x, mask, weight, bias, stride, padding, dilation, groups, False)
    return forward(y, activation_name, negative_slope), new_mask, y, grad_scale


@register_kernel("gated_partial_conv2d.backward", "composite")
@no_autocast
def gated_partial_backward(grad_out, x, mask, weight, grad_scale, new_mask, y, stride, padding, dilation, groups,
                           activation_name, negative_slope, need_x, need_w, need_b):
    """The gating's gradient, then the partial conv's: (gx, gw, gb)."""
    from .partial_conv import backward as partial_backward

    grad_y = backward(grad_out, y, activation_name, negative_slope)
    return partial_backward(grad_y, x, mask, weight, grad_scale, new_mask, stride, padding, dilation, groups,
                            need_x, need_w, need_b)
