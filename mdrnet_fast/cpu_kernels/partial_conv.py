"""Partial conv on CPU: the convolution stays in PyTorch's (oneDNN) conv; the mask window sums, ratio,
bias and new mask are one fused C++ pass (csrc/cpu/partial_conv_epilogue.cpp), and so is the backward
epilogue (grad * ratio, bias gradient) that feeds the conv backward."""
from .. import _C
from .._dispatch import register_kernel
from ..composite.partial_conv import around_library_conv

forward, backward = around_library_conv(_C)
register_kernel("partial_conv2d.forward", "cpu")(forward)
register_kernel("partial_conv2d.backward", "cpu")(backward)
