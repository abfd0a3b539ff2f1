"""The `cuda` backend: CUDA C++ kernels from csrc/cuda (extension mdrnet_fast._C_cuda), registered on
import, one file per op, and masked patch attention through PyTorch's fused attention (patch_attention.py,
pure PyTorch). Ops without a kernel here run the composite version, logged once; `auto` takes a cuda kernel
before the triton one where measured faster on a GPU (see _dispatch._CUDA_ORDER)."""

from . import patch_attention  # noqa: F401  (SDPA, needs no _C_cuda: importable, and tested, without a GPU)

try:
    from .. import _C_cuda  # noqa: F401
except ImportError:
    # Without the extension only the SDPA kernels register; _dispatch still reports the backend unavailable
    # (it checks _C_cuda before importing this package), as before.
    pass
else:
    from . import gated_activation, memory, partial_conv, region_pool, spade  # noqa: F401  (each registers its kernels)
