"""Masked patch attention on CPU: fused flash-style C++ kernels (csrc/cpu/patch_attention.cpp). Tiles of
query x key patches are gathered straight from the maps, scored with BLAS and soft-maxed online, so the N x N
matrix never exists; query patches without a hole pixel are skipped; the backward recomputes from lse
(and takes rowsum(dO * O) from the saved output)."""
from .. import _C
from .._dispatch import register_kernel
from ..composite._common import no_autocast


@register_kernel("patch_attention.forward", "cpu")
@no_autocast
def forward(theta, phi, g, mask, patch_size, scale):
    out, lse = _C.patch_attention_forward(theta, phi, g, mask, int(patch_size), float(scale))
    return out, lse


@register_kernel("patch_attention.backward", "cpu")
@no_autocast
def backward(grad_out, theta, phi, g, mask, out, lse, patch_size, scale):
    d_theta, d_phi, d_g = _C.patch_attention_backward(grad_out, theta, phi, g, mask, out, lse, int(patch_size),
                                                      float(scale))
    return d_theta, d_phi, d_g
