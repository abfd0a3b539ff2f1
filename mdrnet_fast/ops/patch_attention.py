"""masked_patch_attention (SPEC §5): custom op `mdrnet_fast::masked_patch_attention`, the core of MCM."""
from typing import Optional, Tuple

import torch
from torch import Tensor

from .. import reference
from .._dispatch import get_kernel, resolve
from ..composite._common import out_format
from ..reference.patch_attention import default_scale
from . import _checks
from ._register import call, register_autograd, register_plain


@torch.library.custom_op("mdrnet_fast::masked_patch_attention", mutates_args=())
def patch_attention_op(theta: Tensor, phi: Tensor, g: Tensor, mask: Tensor, patch_size: int, scale: float,
                       backend: str) -> Tuple[Tensor, Tensor]:
    """(out (B,Cv,H,W), lse (B,N) fp32 log-sum-exp of each query patch's scores)."""
    return get_kernel("patch_attention.forward", backend)(theta, phi, g, mask, patch_size, scale)


@patch_attention_op.register_fake
def _(theta, phi, g, mask, patch_size, scale, backend):
    h, w = theta.shape[-2:]
    n = -(-h // patch_size) * -(-w // patch_size)
    acc = torch.float64 if theta.dtype == torch.float64 else torch.float32
    return g.new_empty(g.shape), theta.new_empty((theta.shape[0], n), dtype=acc)


@torch.library.custom_op("mdrnet_fast::masked_patch_attention_backward", mutates_args=())
def patch_attention_backward_op(grad_out: Tensor, theta: Tensor, phi: Tensor, g: Tensor, mask: Tensor,
                                out: Tensor, lse: Tensor, patch_size: int, scale: float,
                                backend: str) -> Tuple[Tensor, Tensor, Tensor]:
    """`out` and `lse` are the forward's: kernels take D_i = rowsum(dO_i * O_i) from out (flash-attention-2)."""
    return get_kernel("patch_attention.backward", backend)(grad_out, theta, phi, g, mask, out, lse, patch_size,
                                                           scale)


@patch_attention_backward_op.register_fake
def _(grad_out, theta, phi, g, mask, out, lse, patch_size, scale, backend):
    return theta.new_empty(theta.shape), phi.new_empty(phi.shape), g.new_empty(g.shape)


register_plain(patch_attention_backward_op)


def _setup_context(ctx, inputs, output):
    theta, phi, g, mask, patch_size, scale, backend = inputs
    ctx.save_for_backward(theta, phi, g, mask, output[0], output[1])
    ctx.args = (patch_size, scale, backend)
    ctx.mark_non_differentiable(output[1])


def _backward(ctx, grad_out, _grad_lse):
    theta, phi, g, mask, out, lse = ctx.saved_tensors
    d_theta, d_phi, d_g = call(patch_attention_backward_op, grad_out.contiguous(), theta, phi, g, mask, out, lse,
                               *ctx.args)
    return d_theta, d_phi, d_g, None, None, None, None


register_autograd(patch_attention_op, _backward, _setup_context)


def masked_patch_attention(theta, phi, g, mask, patch_size, scale: Optional[float] = None):
    """fold(softmax(scale * Theta Phi^T) G) * (1 - mask) over non-overlapping p x p patches (SPEC §5).

    theta, phi (B,Ck,H,W); g (B,Cv,H,W); mask (B,1,H,W) 1 = valid (soft allowed); maps are zero-padded to
    a multiple of patch_size; scale defaults to 1/sqrt(Ck * p^2). Returns (B,Cv,H,W). No gradient to mask.
    """
    for name, t in (("theta", theta), ("phi", phi), ("g", g)):
        _checks.tensor(name, t, 4)
    _checks.same_device(theta=theta, phi=phi, g=g, mask=mask)
    p = _checks.positive_int("patch_size", patch_size)
    if phi.shape != theta.shape:
        raise ValueError(f"phi must have theta's shape {tuple(theta.shape)}, got {tuple(phi.shape)}")
    _checks.batch("g", g, theta.shape[0])
    _checks.spatial("g", g, theta.shape[-2:], "theta")
    _checks.tensor("mask", mask, 4)
    _checks.batch("mask", mask, theta.shape[0])
    if mask.shape[1] != 1:
        raise ValueError(f"mask must have 1 channel, got shape {tuple(mask.shape)}")
    _checks.spatial("mask", mask, theta.shape[-2:], "theta")
    scale = default_scale(theta.shape[1], p) if scale is None else float(scale)
    low = _checks.autocast_dtype(theta.device)
    dtype = low if low is not None else _checks.common_dtype(theta, phi, g)
    theta, phi, g = theta.to(dtype), phi.to(dtype), g.to(dtype)
    backend = resolve("patch_attention", theta.device)
    if backend == "reference":
        return reference.masked_patch_attention(theta, phi, g, mask, p, scale)
    fmt = out_format(g)  # the kernels gather from NCHW maps; the result goes back to g's layout
    out, _ = call(patch_attention_op, theta.contiguous(), phi.contiguous(), g.contiguous(),
                  mask.to(dtype).contiguous(), p, scale, backend)
    return out.contiguous(memory_format=fmt)
