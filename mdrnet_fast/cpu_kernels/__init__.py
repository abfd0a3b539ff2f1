"""The `cpu` backend: fused C++ kernels from csrc/cpu (extension mdrnet_fast._C), registered on import."""
from . import partial_conv  # noqa: F401 (registers its kernels)
from . import memory  # noqa: F401 (registers its kernels)
from . import region_pool  # noqa: F401 (registers its kernels)
from . import patch_attention  # noqa: F401 (registers its kernels)
