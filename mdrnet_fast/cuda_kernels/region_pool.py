"""Region pooling and broadcast on CUDA (csrc/cuda/region_pool.cu), with the cpu kernels' contract. Each op's
backward is the other op, so these two forward kernels serve both directions. Pooling is a deterministic
two-stage segmented reduction (per-block shared-memory sums, then a fixed-order sum over pixel splits), with
no atomics; broadcast is a gather. feat is read in place when NCHW- or channels_last-contiguous (any other
layout is copied to NCHW); outputs are contiguous."""
from .. import _C_cuda
from .._dispatch import register_kernel
from ..composite._common import no_autocast


@register_kernel("region_pool.forward", "cuda")
@no_autocast
def pool(feat, seg, num_classes, normalize):
    codes, area = _C_cuda.region_pool_forward(feat, seg, num_classes, normalize)
    return codes, area


@register_kernel("region_broadcast.forward", "cuda")
@no_autocast
def broadcast(codes, seg, num_classes):
    return _C_cuda.region_broadcast_forward(codes, seg, num_classes)
