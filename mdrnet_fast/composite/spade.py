"""SPADE modulation with explicit gradient: instance_norm(x) * (1 + gamma) + beta."""
import torch

from .._dispatch import register_kernel
from ._common import acc_dtype, no_autocast, out_format


@register_kernel("spade_modulate.forward", "composite")
@no_autocast
def forward(x, gamma, beta, eps):
    """(out, mean (B,C), rstd (B,C)) with statistics in fp32."""
    acc = acc_dtype(x.dtype)
    x32 = x.to(acc)
    var, mean = torch.var_mean(x32, dim=(2, 3), unbiased=False, keepdim=True)
    rstd = torch.rsqrt(var + eps)
    out = (x32 - mean) * rstd * (1 + gamma.to(acc)) + beta.to(acc)
    return out.to(x.dtype).contiguous(memory_format=out_format(x)), mean.flatten(1), rstd.flatten(1)


@register_kernel("spade_modulate.backward", "composite")
@no_autocast
def backward(grad_out, x, gamma, mean, rstd, need_x, need_gamma, need_beta):
    acc = mean.dtype
    go = grad_out.to(acc)
    mean, rstd = mean[..., None, None], rstd[..., None, None]
    xhat = (x.to(acc) - mean) * rstd
    gx = ggamma = gbeta = None
    if need_x:
        dxhat = go * (1 + gamma.to(acc))
        gx = rstd * (dxhat - dxhat.mean(dim=(2, 3), keepdim=True)
                     - xhat * (dxhat * xhat).mean(dim=(2, 3), keepdim=True))
        gx = gx.to(x.dtype).contiguous(memory_format=out_format(x))
    if need_gamma:
        ggamma = (go * xhat).to(gamma.dtype).contiguous(memory_format=out_format(gamma))
    if need_beta:
        gbeta = grad_out.clone(memory_format=out_format(grad_out))
    return gx, ggamma, gbeta
