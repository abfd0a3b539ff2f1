"""The `cpu` backend: fused C++ kernels from csrc/cpu (extension mdrnet_fast._C), registered on import."""
from . import gated_activation, partial_conv, spade  # noqa: F401 (registers their kernels)
