"""VGG-19 features for the perceptual and style losses. Weights come from a file the user gives
(torchvision's `vgg19` state_dict, or just its `features`); never random features in silence."""
import torch
import torch.nn as nn

# torchvision's vgg19 "features" layout: channels per conv, "M" a 2x2 max-pool
_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"]
# indices (in `features`) of relu1_1, relu2_1, relu3_1, relu4_1, relu5_1
LAYERS = (1, 6, 11, 20, 29)


class VGG19Features(nn.Module):
    """forward(image in [-1,1]) -> list of the relu{1..5}_1 activations (ImageNet-normalised input)."""

    def __init__(self, layers=LAYERS):
        super().__init__()
        seq, c = [], 3
        for v in _CFG:
            if v == "M":
                seq.append(nn.MaxPool2d(2, 2))
            else:
                seq += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU(inplace=False)]
                c = v
        self.features = nn.Sequential(*seq[: max(layers) + 1])
        self.layers = set(layers)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
        self.requires_grad_(False)

    @classmethod
    def from_file(cls, path):
        """Loads torchvision-layout weights (keys `features.N.weight` with or without the classifier)."""
        state = torch.load(path, map_location="cpu", weights_only=True)
        if "state_dict" in state:
            state = state["state_dict"]
        model = cls()
        wanted = {k: v for k, v in state.items() if k.startswith("features.") and k in model.state_dict()}
        missing = [k for k in model.state_dict() if k.startswith("features.") and k not in wanted]
        if missing:
            raise ValueError(f"{path} is not a VGG-19 state_dict in torchvision layout: missing {missing[:3]}...")
        model.load_state_dict(wanted, strict=False)
        return model.eval()

    def forward(self, image):
        h = ((image + 1) / 2 - self.mean) / self.std
        out = []
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in self.layers:
                out.append(h)
        return out
