"""A trained MDRNet from a checkpoint of `mdrnet-fast train`, ready to inpaint."""
from __future__ import annotations

from typing import Optional

import torch


def load_model(path, device: Optional[torch.device] = None, compile: bool = False):
    """The MDRNet of a full-stage checkpoint, in eval mode, on `device` (default: the GPU if there is one, else
    the CPU, where it is put in channels_last, measured faster there). Bad files raise a one-line error naming
    the path (commands.common.CommandError).

    `compile`: torch.compile the model in place (nn.Module.compile; the custom ops compile with no graph break).
    Each new input size compiles once more (a first pass of minutes on a CPU), and the banded low-memory layers
    that large eager inferences take (models/lean.py) are not used under compile: it pays for many images of
    one size, not for one large photo."""
    from ..commands.common import CommandError, default_memory_format, load_checkpoint
    from ..models import MDRNet

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    ckpt = load_checkpoint(path)
    if ckpt["stage"] != "full":
        raise CommandError(f"{path} is a {ckpt['stage']!r} checkpoint; inpainting needs a 'full' one")
    model = MDRNet(**ckpt["config"])
    model.load_state_dict(ckpt["model"])
    model = model.to(device, memory_format=default_memory_format(device)).eval()
    if compile:
        model.compile()
    return model
