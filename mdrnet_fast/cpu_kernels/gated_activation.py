"""Gated activation on CPU: act(feature half) * sigmoid(gate half), forward and backward each one fused
C++ pass over y (csrc/cpu/gated_activation.cpp), NCHW and channels_last natively."""
from .. import _C
from .._dispatch import register_kernel
from ..composite._common import no_autocast


@register_kernel("gated_activation.forward", "cpu")
@no_autocast
def forward(y, activation_name, negative_slope):
    return _C.gated_activation_forward(y, activation_name, float(negative_slope))


@register_kernel("gated_activation.backward", "cpu")
@no_autocast
def backward(grad_out, y, activation_name, negative_slope):
    return _C.gated_activation_backward(grad_out, y, activation_name, float(negative_slope))
