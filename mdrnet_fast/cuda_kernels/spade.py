"""SPADE modulation on CUDA (csrc/cuda/spade_modulate.cu): one block per (sample, channel tile) makes the
plane statistics (two passes, stable, deterministic block reductions) and the modulation; the backward
one reduction pass (only when grad_x is wanted) and one pass writing grad_x and grad_gamma."""
from .. import _C_cuda
from .._dispatch import register_kernel
from ..composite._common import no_autocast


@register_kernel("spade_modulate.forward", "cuda")
@no_autocast
def forward(x, gamma, beta, eps):
    out, mean, rstd = _C_cuda.spade_modulate_forward(x, gamma, beta, float(eps))
    return out, mean, rstd


@register_kernel("spade_modulate.backward", "cuda")
@no_autocast
def backward(grad_out, x, gamma, mean, rstd, need_x, need_gamma, need_beta):
    gx, ggamma, gbeta = _C_cuda.spade_modulate_backward(grad_out, x, gamma, mean, rstd, bool(need_x),
                                                        bool(need_gamma), bool(need_beta))
    return gx, ggamma, gbeta
