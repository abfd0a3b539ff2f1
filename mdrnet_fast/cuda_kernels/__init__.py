"""The `cuda` backend: CUDA C++ kernels from csrc/cuda (extension mdrnet_fast._C_cuda), registered on
import, one file per op. Ops without a kernel here run the composite version, logged once; `auto` takes a
cuda kernel before the triton one where measured faster on a GPU (see _dispatch._CUDA_ORDER)."""

from . import gated_activation, memory, partial_conv, region_pool, spade  # noqa: F401,E402  (each registers its kernels)
