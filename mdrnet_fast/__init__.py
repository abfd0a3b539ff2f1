"""mdrnet_fast: fused kernels and the MDRNet model of ShowFace: Coordinated Face Inpainting.

    import mdrnet_fast
    mdrnet_fast.backends()               # which backends this machine has, and why not
    with mdrnet_fast.use_backend("reference"):
        ...                              # plain PyTorch
    mdrnet_fast.inpaint(model, image, mask)   # a trained MDRNet on an image of any size
"""
from ._dispatch import BACKENDS, backends, get_backend, set_backend, use_backend
from . import nn, ops, reference  # noqa: E402
from .inpainting import inpaint  # noqa: E402

__version__ = "0.1.0"
__all__ = ["ops", "nn", "reference", "inpaint", "backends", "get_backend", "set_backend", "use_backend", "BACKENDS"]

backends()  # load the backends now, so backend choice inside torch.compile is plain dictionary look-ups
