"""SPADE modulation on CPU (csrc/cpu/spade_modulate.cpp), parallel over (b, c) planes: the forward is the
plane statistics (two passes, stable) and the modulation; the backward one pass for its two reductions and
one writing grad_x, grad_gamma and grad_beta."""
from .. import _C
from .._dispatch import register_kernel
from ..composite._common import no_autocast


@register_kernel("spade_modulate.forward", "cpu")
@no_autocast
def forward(x, gamma, beta, eps):
    out, mean, rstd = _C.spade_modulate_forward(x, gamma, beta, float(eps))
    return out, mean, rstd


@register_kernel("spade_modulate.backward", "cpu")
@no_autocast
def backward(grad_out, x, gamma, mean, rstd, need_x, need_gamma, need_beta):
    gx, ggamma, gbeta = _C.spade_modulate_backward(grad_out, x, gamma, mean, rstd, bool(need_x), bool(need_gamma),
                                                   bool(need_beta))
    return gx, ggamma, gbeta
