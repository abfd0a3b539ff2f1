"""Pure-PyTorch reference implementations: the definition of every op (see SPEC.md).

Plain autograd, no custom kernels. Fast backends are tested against these.
"""
from .gated_conv import gated_activation, gated_conv2d
from .inco2 import inco2_loss
from .memory import memory_read, memory_update_
from .partial_conv import partial_conv2d
from .patch_attention import masked_patch_attention
from .region_pool import region_avg_pool, region_broadcast
from .spade import spade_modulate

__all__ = [
    "partial_conv2d", "gated_conv2d", "gated_activation", "region_avg_pool", "region_broadcast",
    "memory_read", "memory_update_", "masked_patch_attention", "spade_modulate", "inco2_loss",
]
