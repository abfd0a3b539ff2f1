"""The `cuda` backend: CUDA C++ kernels from csrc/cuda (extension mdrnet_fast._C_cuda), registered on
import, one file per op. Ops without a kernel here run the composite version, logged once; `auto` takes a
cuda kernel over the triton one only where measured faster (see _dispatch._AUTO_ORDER)."""

from . import gated_activation, memory, partial_conv, region_pool, spade  # noqa: F401,E402  (each registers its kernels)
