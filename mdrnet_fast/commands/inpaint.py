"""`mdrnet-fast inpaint`: fill the holes of images with a trained MDRNet (files or folders), at their own size.

The work is mdrnet_fast.inpaint (mdrnet_fast/inpainting/); this parses arguments, pairs images with masks and
writes the results.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..inpainting import PRECISIONS, STRATEGIES, load_model, read_image, read_mask, save_image
from ..inpainting.images import check_output_path
from .common import CommandError, add_backend_argument

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def add_parser(sub) -> None:
    p = sub.add_parser("inpaint", help="inpaint images with a trained checkpoint (files or folders), at their own size",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       description="Writes each image with its holes filled, at the image's own width and height; "
                                   "every known pixel is the input's.")
    p.add_argument("--checkpoint", required=True, help="a full-stage checkpoint (runs/.../last.ckpt)")
    p.add_argument("--image", required=True, help="an image file, or a folder of them")
    p.add_argument("--mask", help="a mask file (white = valid, black = hole; 0/1 masks too; an RGBA mask's varying "
                   "alpha: transparent = hole), or a folder of masks named by the images' file stems; "
                   "default: each image's own transparent pixels are the holes")
    p.add_argument("--out", required=True, help="output image file (.png, .webp and .tif are lossless), or folder "
                   "when --image is a folder")
    p.add_argument("--strategy", choices=STRATEGIES, default="auto",
                   help="full: the whole image at its own resolution; crop: each group of holes with --crop-margin "
                        "pixels of context; resize: the image scaled to --max-side; auto: picks by image size "
                        "and hole layout, and says which")
    p.add_argument("--max-side", type=int, default=2048,
                   help="long side for the resize strategy, and above which a crop is scaled down")
    p.add_argument("--crop-margin", type=int, default=128, help="pixels of context around each group of holes")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="auto: bf16 autocast on a CPU with native bf16 (AVX-512 BF16 or AMX) and on a bf16 GPU, "
                        "else fp32")
    p.add_argument("--invert-mask", action="store_true", help="masks are white where the holes are")
    add_backend_argument(p)
    p.add_argument("--threads", type=int, help="torch intra-op threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def _pairs(args):
    """[(image, mask or None, out)] for a file or a folder, checked before any model runs."""
    image, out = Path(args.image), Path(args.out)
    mask = Path(args.mask) if args.mask else None
    if not image.exists():
        raise CommandError(f"--image {image} does not exist")
    if mask is not None and not mask.exists():
        raise CommandError(f"--mask {mask} does not exist")
    if image.is_file():
        if mask is not None and mask.is_dir():
            mask = _match(mask, image.stem)
        check_output_path(out)
        return [(image, mask, out)]
    if out.exists() and not out.is_dir():
        raise CommandError(f"--out {out} is a file; with a folder of images it must be a folder")
    if mask is not None and mask.is_file():
        raise CommandError(f"--mask {mask} is a file; with a folder of images give a folder of masks")
    files = sorted(p for p in image.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise CommandError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {image}")
    return [(f, _match(mask, f.stem, required=False) if mask else None, out / f"{f.stem}.png") for f in files]


def _match(folder, stem, required=True):
    found = [p for p in sorted(folder.iterdir()) if p.stem == stem and p.suffix.lower() in IMAGE_EXTENSIONS]
    if not found and required:
        raise CommandError(f"no mask for {stem!r} in {folder}")
    return found[0] if found else None


def run(args) -> int:
    import mdrnet_fast
    from tqdm import tqdm

    for name in ("max_side", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise CommandError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.crop_margin < 0:
        raise CommandError(f"--crop-margin must be >= 0, got {args.crop_margin}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.backend:
        mdrnet_fast.set_backend(args.backend)
    pairs = _pairs(args)
    if any(out.suffix.lower() in (".jpg", ".jpeg") for _, _, out in pairs):
        print("note: JPEG is lossy, so the known pixels of the output are not the input's bit for bit; "
              ".png, .webp and .tif keep them")
    model = load_model(args.checkpoint)
    folder = len(pairs) > 1 or Path(args.image).is_dir()
    failed = 0
    bar = tqdm(pairs, desc="images", unit="image", disable=args.no_progress or not folder)
    for image_path, mask_path, out_path in bar:
        def report(line, name=image_path.name):
            tqdm.write(f"{name}: {line}")

        try:
            image = read_image(image_path)
            mask = read_mask(mask_path) if mask_path is not None else None
            result = mdrnet_fast.inpaint(model, image, mask, args.strategy, args.precision, max_side=args.max_side,
                                         crop_margin=args.crop_margin, invert_mask=args.invert_mask,
                                         progress=not args.no_progress, report=report)
            save_image(result, out_path)
        except (ValueError, OSError) as exc:
            if not folder:
                raise
            failed += 1  # one bad file in a folder: say so in one line and go on with the others
            tqdm.write(f"mdrnet-fast inpaint: error: {image_path}: {str(exc).splitlines()[0]}")
            continue
        print(f"{image_path} + {mask_path or 'its transparent pixels'} -> {out_path}")
    if failed:
        raise CommandError(f"{failed} of {len(pairs)} images failed (see above)")
    return 0
