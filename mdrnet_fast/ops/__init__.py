"""Public functional API. Each op checks its arguments, picks a backend (`mdrnet_fast.use_backend`,
MDRNET_FAST_BACKEND) and runs the reference or the `mdrnet_fast::*` custom op of that backend."""
from .gated_conv import gated_conv2d
from .memory import memory_read, memory_update_
from .partial_conv import partial_conv2d
from .patch_attention import masked_patch_attention
from .region_pool import check_labels, region_avg_pool, region_broadcast
from .spade import spade_modulate

__all__ = ["partial_conv2d", "gated_conv2d", "region_avg_pool", "region_broadcast", "memory_read",
           "memory_update_", "masked_patch_attention", "spade_modulate",
           "check_labels"]
