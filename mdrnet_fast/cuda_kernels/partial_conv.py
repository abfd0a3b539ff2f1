"""Partial conv on CUDA: the convolution stays in PyTorch (cuDNN); the mask window sums, ratio, bias and
new mask are one CUDA pass after it (csrc/cuda/partial_conv_epilogue.cu), and the backward epilogue
(grad * grad_scale, the deterministic bias gradient) feeds the cuDNN conv backward."""
from .. import _C_cuda
from .._dispatch import register_kernel
from ..composite.partial_conv import around_library_conv

forward, backward = around_library_conv(_C_cuda)
register_kernel("partial_conv2d.forward", "cuda")(forward)
register_kernel("partial_conv2d.backward", "cuda")(backward)
