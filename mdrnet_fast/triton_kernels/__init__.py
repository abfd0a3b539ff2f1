"""The `triton` backend (GPU; CPU tensors under TRITON_INTERPRET=1), registered on import. One file per op;
ops without a Triton kernel here run the composite version, logged once."""
from . import gated_activation, memory, partial_conv, patch_attention, region_pool, spade  # noqa: F401 (registers their kernels)
