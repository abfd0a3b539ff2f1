"""LPIPS (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric", v0.1):
the distance between two images as the sum over five layers of a classification network of the spatial mean of
w_l · (f̂_l(x) − f̂_l(y))², f̂ the features unit-normalised over channels, w_l learned 1x1 weights.

torchmetrics' LearnedPerceptualImagePatchSimilarity builds the trunk through torchvision, which does not import
beside every torch build, so the trunk is written here with torchvision's layer names and loads torchvision's
published ImageNet files as they are: `alexnet-owt-7be5be79.pth` (LPIPS's default, "alex") or
`vgg16-397923af.pth` ("vgg"). The learned layer weights w_l come with torchmetrics (its lpips_models/*.pth), or
from the LPIPS project's own `alex.pth` / `vgg.pth` given as a second file.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional, Sequence

import torch
from torch import nn

from .weights import load_into, load_state_dict

# conv (cin, cout, kernel, stride, padding) per trunk, "M" a 3x3/2 max pool (AlexNet) or 2x2/2 (VGG); `taps`:
# torchvision `features` indices after whose ReLU LPIPS reads a layer
_ALEX = [(3, 64, 11, 4, 2), "M", (64, 192, 5, 1, 2), "M", (192, 384, 3, 1, 1), (384, 256, 3, 1, 1),
         (256, 256, 3, 1, 1)]
_VGG16 = [(3, 64), (64, 64), "M", (64, 128), (128, 128), "M", (128, 256), (256, 256), (256, 256), "M",
          (256, 512), (512, 512), (512, 512), "M", (512, 512), (512, 512), (512, 512)]
NETS = {"alex": (_ALEX, (1, 4, 7, 9, 11), 3), "vgg": (_VGG16, (3, 8, 15, 22, 29), 2)}
FILE_NAMES = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth"}
# the LPIPS input scaling: ImageNet statistics expressed on [-1, 1] images
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)


def _trunk(layout, pool: int) -> nn.Sequential:
    layers: List[nn.Module] = []
    for spec in layout:
        if spec == "M":
            layers.append(nn.MaxPool2d(pool, stride=2))
            continue
        cin, cout, k, s, p = spec if len(spec) == 5 else (*spec, 3, 1, 1)
        layers += [nn.Conv2d(cin, cout, k, stride=s, padding=p), nn.ReLU(inplace=False)]
    return nn.Sequential(*layers)


def _bundled_heads(net: str) -> Optional[Path]:
    """torchmetrics' copy of LPIPS's learned layer weights, if torchmetrics is installed."""
    try:
        import torchmetrics
    except ImportError:
        return None
    path = Path(torchmetrics.__file__).parent / "functional" / "image" / "lpips_models" / f"{net}.pth"
    return path if path.is_file() else None


class LPIPS(nn.Module):
    """lpips(x, y) -> (B,) distances of (B,3,H,W) images in [0, 1] (0 for identical images).

    Build it with `from_files` (published weights); a bare LPIPS(net) has random weights and is for tests only.
    """

    def __init__(self, net: str = "alex"):
        super().__init__()
        if net not in NETS:
            raise ValueError(f"net must be one of {', '.join(NETS)}, got {net!r}")
        layout, self.taps, pool = NETS[net]
        self.net = net
        self.features = _trunk(layout, pool)
        widths = [self.features[i - 1].out_channels for i in self.taps]
        self.heads = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in widths)
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)
        self.eval().requires_grad_(False)

    @classmethod
    def from_files(cls, paths: Sequence[os.PathLike]) -> "LPIPS":
        """The metric from torchvision's AlexNet or VGG-16 file (the trunk; which one is read from its first
        layer) and, optionally, LPIPS's learned layer weights as a second file (default: torchmetrics' copy)."""
        what = "--lpips-weights"
        if not 1 <= len(paths) <= 2:
            raise ValueError(f"{what} takes 1 or 2 files (the trunk, then optionally the LPIPS layer weights), "
                             f"got {len(paths)}")
        states = {p: load_state_dict(p, what) for p in paths}
        trunk = [p for p, s in states.items() if "features.0.weight" in s]
        heads = [p for p, s in states.items() if "lin0.model.1.weight" in s]
        if len(trunk) != 1:
            raise ValueError(f"{what}: expected one torchvision AlexNet or VGG-16 file ({FILE_NAMES['alex']} or "
                             f"{FILE_NAMES['vgg']}, keys features.N.weight), got {len(trunk)} among "
                             f"{', '.join(map(str, paths))}")
        first = states[trunk[0]]["features.0.weight"].shape[-1]
        net = {11: "alex", 3: "vgg"}.get(first)
        if net is None:
            raise ValueError(f"{what}: {trunk[0]} is neither AlexNet (11x11 first conv) nor VGG-16 (3x3)")
        head_path = heads[0] if heads else _bundled_heads(net)
        if head_path is None:
            raise ValueError(f"{what}: no LPIPS layer weights for {net!r}: install torchmetrics (it ships them) or "
                             f"give LPIPS's {net}.pth as a second file")
        model = cls(net)
        trunk_state = {k.removeprefix("features."): v for k, v in states[trunk[0]].items() if k.startswith("features.")}
        load_into(model.features, trunk_state, trunk[0], what)
        head_state = states[head_path] if head_path in states else load_state_dict(head_path, what)
        # LPIPS names them lin{l}.model.1.weight (a dropout sits at .0)
        load_into(model.heads, {f"{i}.weight": head_state.get(f"lin{i}.model.1.weight", torch.empty(0))
                                for i in range(len(model.heads))}, head_path, what)
        return model.eval().requires_grad_(False)

    def layers(self, images: torch.Tensor) -> List[torch.Tensor]:
        """The unit-normalised features of (B,3,H,W) images in [0, 1] at the five taps."""
        x = ((images.float() * 2 - 1) - self.shift) / self.scale
        out, last = [], max(self.taps)
        for i, layer in enumerate(self.features[:last + 1]):
            x = layer(x)
            if i in self.taps:
                out.append(x / (x.square().sum(1, keepdim=True).sqrt() + 1e-10))
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape != y.shape or x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"LPIPS takes two (B,3,H,W) images of one shape, got {tuple(x.shape)} and "
                             f"{tuple(y.shape)}")
        return sum(head((a - b).square()).mean((1, 2, 3))
                   for head, a, b in zip(self.heads, self.layers(x), self.layers(y)))
