"""Region pooling and broadcast on CPU (csrc/cpu/region_pool.cpp). Each op's backward is the other op, so
these two forward kernels serve both directions. Labels (and exactly one-hot float seg) take a segmented-sum /
table-lookup path with no one-hot tensor; soft seg is a batched GEMM plus fused area sums and normalisation."""
from .. import _C
from .._dispatch import register_kernel
from ..composite._common import no_autocast


@register_kernel("region_pool.forward", "cpu")
@no_autocast
def pool(feat, seg, num_classes, normalize):
    codes, area = _C.region_pool_forward(feat, seg, num_classes, normalize)
    return codes, area


@register_kernel("region_broadcast.forward", "cpu")
@no_autocast
def broadcast(codes, seg, num_classes):
    return _C.region_broadcast_forward(codes, seg, num_classes)
