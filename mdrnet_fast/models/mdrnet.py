"""MDRNet: the Memory-Disentangled Refinement Network of ShowFace (ACM MM 2022, §3)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..composite._common import out_format
from .. import ops
from ..ops._checks import autocast_dtype
from ..nn import DisentangledMemory, MaskedCorrelationMining
from .coarse import PartialConvUNet, default_depth
from .parser import FaceParser
from .refinement import GuidedRefinementNetwork, StyleEncoder


def size_multiple(image_size: int, coarse_depth: Optional[int] = None, feature_down: int = 2) -> int:
    """What an MDRNet's input height and width must be multiples of: its coarse U-Net halves them `coarse_depth`
    (by default, from the training image size) times, the style encoder and refinement network `feature_down`."""
    return 2 ** max(coarse_depth or default_depth(image_size), feature_down)


@dataclass
class MDRNetOutput:
    output: torch.Tensor                  # composited result  refined*(1-M) + image*M
    coarse: torch.Tensor                  # P, the coarse network's face
    refined: torch.Tensor                 # I_hat, the refinement network's face
    segmentation: Optional[torch.Tensor]  # (B,n,H,W) parser logits (None when labels were given)
    labels: torch.Tensor                  # (B,H,W) semantic labels used by the memory and MREM
    q: torch.Tensor                       # (B,n,C) region codes of the coarse face
    v: torch.Tensor                       # (B,n,C) region codes of the valid area
    present: torch.Tensor                 # (B,n) region present in the valid area
    q_hat: torch.Tensor                   # (B,n,C) memory read


class MDRNet(nn.Module):
    """model(image, mask, segmentation=None) -> MDRNetOutput.

    image (B,3,H,W) in [-1,1]; mask (B,1,H,W), 1 = valid. `segmentation` may be given (ground-truth
    maps: (B,n,H,W) float or (B,H,W) labels); otherwise the parser segments the coarse face. Pass
    `parser=` to use your own parser module (it must return (B,n,H,W) logits). The memory is updated
    in training mode only. Every size is an argument; defaults follow the paper (256², n=14, m=128).
    """

    def __init__(self, image_size=256, num_classes=14, memory_slots=128, base_channels=64, style_channels=256,
                 patch_size=2, coarse_depth=None, feature_down=2, gated_blocks=4, spade_blocks=2, spade_hidden=128,
                 memory_alpha=0.9, memory_tau=1.0, parser: Optional[nn.Module] = None, parser_channels=32,
                 mcm_channels=None):
        super().__init__()
        depth = coarse_depth or default_depth(image_size)
        self.size_multiple = size_multiple(image_size, coarse_depth, feature_down)  # of an input's H and W
        if image_size % self.size_multiple:
            raise ValueError(f"image_size={image_size} must be a multiple of {self.size_multiple}")
        self.image_size, self.num_classes = image_size, num_classes
        self.coarse = PartialConvUNet(3, 3, base_channels, depth)
        self.parser = parser if parser is not None else FaceParser(num_classes, parser_channels)
        self.style = StyleEncoder(style_channels, base_channels, feature_down)
        self.memory = DisentangledMemory(style_channels, num_classes, memory_slots, memory_alpha, memory_tau)
        self.mcm = MaskedCorrelationMining(style_channels, mcm_channels, patch_size)
        self.refine = GuidedRefinementNetwork(base_channels, feature_down, gated_blocks, spade_blocks,
                                              style_channels, spade_hidden)

    @property
    def checkpoint_activations(self) -> bool:
        """Activation checkpointing of the coarse U-Net and the refinement network (their largest maps), set on
        both at once: less memory in training for a second forward of theirs in the backward. Off by default;
        not in the config or the state_dict, so it changes nothing a checkpoint holds."""
        return self.coarse.checkpoint_activations and self.refine.checkpoint_activations

    @checkpoint_activations.setter
    def checkpoint_activations(self, enabled: bool) -> None:
        self.coarse.checkpoint_activations = self.refine.checkpoint_activations = bool(enabled)

    def _coarse_face(self, image, mask):
        """(mask in image's dtype, the coarse network's face, P = that face with the known pixels kept)."""
        if image.dim() != 4 or image.shape[1] != 3:
            raise ValueError(f"image must be (B,3,H,W), got {tuple(image.shape)}")
        if mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[0] != image.shape[0] or mask.shape[-2:] != image.shape[-2:]:
            raise ValueError(f"mask must be (B,1,H,W) = ({image.shape[0]},1,{image.shape[2]},{image.shape[3]}), "
                             f"got {tuple(mask.shape)}")
        m = self.size_multiple
        if image.shape[2] % m or image.shape[3] % m:
            raise ValueError(f"image height and width must be multiples of {m} (the U-Net's {m}x downsampling), got "
                             f"{image.shape[2]}x{image.shape[3]}: pad the image (mdrnet_fast.inpaint pads and crops "
                             "back for you)")
        mask = mask.to(image.dtype)
        coarse = self.coarse(image * mask, mask)
        return mask, coarse, coarse * (1 - mask) + image * mask

    def _parse(self, p):
        logits = self.parser(p)
        if logits.dim() != 4 or logits.shape[1] != self.num_classes:
            raise ValueError(f"the parser must return (B,n={self.num_classes},H,W) logits, got {tuple(logits.shape)}")
        return logits

    def segment(self, image, mask) -> torch.Tensor:
        """(B,H,W) labels: what the parser sees in the coarse face, the map forward() uses when none is given."""
        return self._parse(self._coarse_face(image, mask)[2]).argmax(1)

    def forward(self, image, mask, segmentation=None) -> MDRNetOutput:
        mask, coarse, p = self._coarse_face(image, mask)

        # labels are in [0, n) from here on (an argmax over n channels, or checked once here): the region ops
        # below skip their own check, which is a host sync per call on a GPU
        n = self.num_classes
        logits = None
        if segmentation is None:
            logits = self._parse(p)
            labels = logits.argmax(1)
        elif segmentation.is_floating_point():
            if segmentation.dim() != 4 or segmentation.shape[1] != n:
                raise ValueError(f"segmentation maps must be (B,n={n},H,W), got {tuple(segmentation.shape)}")
            logits, labels = segmentation, segmentation.argmax(1)
        else:
            ops.check_labels(segmentation, n)
            labels = segmentation.long()

        f_s = self.style(p)
        size = f_s.shape[-2:]
        small = F.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].long()
        valid = F.interpolate(mask, size=size, mode="nearest")
        q = ops.region_avg_pool(f_s, small, n, labels_checked=True)  # Q: over all of S
        valid_seg = F.one_hot(small, n).permute(0, 3, 1, 2).to(f_s.dtype) * valid
        v = ops.region_avg_pool(f_s, valid_seg)                     # V: over S restricted to the valid area
        present = valid_seg.sum(dim=(2, 3)) > 0
        q_hat = self.memory(q, v, present)                          # DMM: update (training), then read

        # MREM: valid area from V, holes from the memory, then masked correlation mining
        fmt = out_format(f_s)
        del f_s  # from here on only the maps below are needed: at full resolution each one counts
        fused = (ops.region_broadcast(v, small, n, labels_checked=True) * valid
                 + ops.region_broadcast(q_hat, small, n, labels_checked=True) * (1 - valid))
        # broadcast maps are NCHW, keep f_s's layout; under autocast take its dtype: the convs that read these maps
        # would cast them anyway, and the residual of MCM then stays in it too
        fused = fused.to(dtype=autocast_dtype(image.device) or fused.dtype, memory_format=fmt)
        f_f = self.mcm(fused, valid)
        del fused

        refined = self.refine(p, mask, f_f)
        output = refined * (1 - mask) + image * mask
        return MDRNetOutput(output, coarse, refined, logits, labels, q, v, present, q_hat)
