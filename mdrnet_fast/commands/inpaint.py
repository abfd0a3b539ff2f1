"""`mdrnet-fast inpaint`: fill the holes of images with a trained MDRNet (files or folders)."""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from .common import default_memory_format, load_checkpoint, save_png

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def add_parser(sub) -> None:
    p = sub.add_parser("inpaint", help="inpaint images with a trained checkpoint (files or folders)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a full-stage checkpoint (runs/.../last.ckpt)")
    p.add_argument("--image", required=True, help="an image file, or a folder of them")
    p.add_argument("--mask", required=True, help="a mask file (white = valid, black = hole), or a folder "
                   "of masks with the images' file stems")
    p.add_argument("--out", required=True, help="output PNG file, or folder when --image is a folder")
    p.add_argument("--invert-mask", action="store_true", help="masks are white where the holes are")
    p.add_argument("--backend", help="mdrnet_fast backend (auto, reference, cpu, triton, cuda)")
    p.set_defaults(func=run)


def load_model(path, device):
    """The MDRNet of a full-stage checkpoint, in eval mode."""
    from ..models import MDRNet

    ckpt = load_checkpoint(path)
    if ckpt.get("stage") != "full":
        raise SystemExit(f"mdrnet-fast: {path} is a {ckpt.get('stage')!r} checkpoint; inpainting needs a 'full' one")
    model = MDRNet(**ckpt["config"])
    model.load_state_dict(ckpt["model"])
    return model.to(device, memory_format=default_memory_format(device)).eval(), ckpt["config"]["image_size"]


def load_image(path, size):
    """RGB file -> (3, size, size) float tensor in [-1, 1]."""
    import numpy as np
    from PIL import Image

    img = Image.open(path).convert("RGB").resize((size, size), Image.BICUBIC)
    return torch.from_numpy(np.asarray(img)).permute(2, 0, 1).float() / 127.5 - 1


def _pairs(args):
    image, mask, out = Path(args.image), Path(args.mask), Path(args.out)
    if not image.exists():
        raise SystemExit(f"mdrnet-fast: --image {image} does not exist")
    if not mask.exists():
        raise SystemExit(f"mdrnet-fast: --mask {mask} does not exist")
    if image.is_file():
        return [(image, mask if mask.is_file() else _match(mask, image.stem), out)]
    files = sorted(p for p in image.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise SystemExit(f"mdrnet-fast: no images ({', '.join(IMAGE_EXTENSIONS)}) in {image}")
    return [(f, mask if mask.is_file() else _match(mask, f.stem), out / f"{f.stem}.png") for f in files]


def _match(folder, stem):
    found = [p for p in folder.iterdir() if p.stem == stem and p.suffix.lower() in IMAGE_EXTENSIONS]
    if not found:
        raise SystemExit(f"mdrnet-fast: no mask for {stem!r} in {folder}")
    return found[0]


@torch.no_grad()
def run(args) -> int:
    import mdrnet_fast
    from ..data import load_mask

    if args.backend:
        mdrnet_fast.set_backend(args.backend)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, size = load_model(args.checkpoint, device)
    for image_path, mask_path, out_path in _pairs(args):
        fmt = default_memory_format(device)
        image = load_image(image_path, size)[None].to(device, memory_format=fmt)
        mask = load_mask(mask_path, size, invert=args.invert_mask)[None].to(device, memory_format=fmt)
        save_png(model(image, mask).output[0], out_path)
        print(f"{image_path} + {mask_path} -> {out_path}")
    return 0
