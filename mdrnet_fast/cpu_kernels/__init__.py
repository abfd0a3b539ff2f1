"""The `cpu` backend: fused C++ kernels from csrc/cpu (extension mdrnet_fast._C), registered on import."""
from . import gated_activation, memory, partial_conv, patch_attention, region_pool, spade  # noqa: F401 (registers)
