"""Gated activation on CUDA: act(feature half) * sigmoid(gate half), forward and backward each one
element-wise CUDA pass over y (csrc/cuda/gated_activation.cu), NCHW and channels_last natively (16-byte
vector accesses where aligned), any other strides read in place."""
from .. import _C_cuda
from .._dispatch import register_kernel
from ..composite._common import no_autocast


@register_kernel("gated_activation.forward", "cuda")
@no_autocast
def forward(y, activation_name, negative_slope):
    return _C_cuda.gated_activation_forward(y, activation_name, float(negative_slope))


@register_kernel("gated_activation.backward", "cuda")
@no_autocast
def backward(grad_out, y, activation_name, negative_slope):
    return _C_cuda.gated_activation_backward(grad_out, y, activation_name, float(negative_slope))
