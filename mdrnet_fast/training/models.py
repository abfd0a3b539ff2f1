"""The networks each training stage trains, built from a model config (a preset's dict, as checkpoints store)."""
from __future__ import annotations

STAGES = ("coarse", "recon", "full")


def build(stage: str, config: dict):
    """(the trained module, the critic or None) of a stage: the critic is the full stage's PatchGAN."""
    from ..losses import ReconstructionNet
    from ..models import MDRNet, PartialConvUNet, PatchGAN
    from ..models.coarse import default_depth

    if stage == "coarse":
        return PartialConvUNet(3, 3, config["base_channels"], default_depth(config["image_size"])), None
    if stage == "recon":
        return ReconstructionNet(config["base_channels"], 3, config["style_channels"]), None
    if stage == "full":
        return MDRNet(**config), PatchGAN(base_channels=config["base_channels"])
    raise ValueError(f"stage must be one of {', '.join(STAGES)}, got {stage!r}")


def load_module(path, stage: str, build=build):
    """The trained network of a `stage` checkpoint (e.g. a coarse U-Net to start the full stage from)."""
    from ..commands.common import CommandError, load_checkpoint

    ckpt = load_checkpoint(path)
    if ckpt["stage"] != stage:
        raise CommandError(f"{path} is a {ckpt['stage']!r} checkpoint, not {stage!r}")
    module, _ = build(stage, ckpt["config"])
    module.load_state_dict(ckpt["model"])
    return module


def set_checkpoint_activations(module, enabled: bool) -> int:
    """Turn activation checkpointing on or off in every sub-network of `module` that supports it (the coarse
    U-Net, the refinement network); returns how many there were. A runtime switch, not part of any config."""
    found = 0
    for m in module.modules():
        if hasattr(type(m), "checkpoint_activations"):
            m.checkpoint_activations = enabled
            found += 1
    return found
