"""`mdrnet-fast inpaint`: fill the holes of images with a trained MDRNet (files or folders), at their own size.

The work is mdrnet_fast.inpaint (mdrnet_fast/inpainting/); this parses arguments, pairs images with masks and
writes the results.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import torch

from ..inpainting import (PRECISIONS, STRATEGIES, load_model, read_image, read_mask, read_segmentation, save_image,
                          save_segmentation, segment)
from ..inpainting.images import IMAGE_EXTENSIONS, check_output_path
from ..inpainting.segmentation import FORMATS as SEGMENTATION_FORMATS
from .common import CommandError, add_backend_argument, check_minimum



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
    p.add_argument("--segmentation", help="a semantic map that steers the fill instead of the parser's: a label PNG "
                   "of the image's size (our 14 classes: palette indices or L values, or the class colours that "
                   "--save-segmentation writes), or a folder of them named by the images' file stems")
    p.add_argument("--segmentation-format", choices=SEGMENTATION_FORMATS, default="14",
                   help="the labels of --segmentation: ours, or CelebAMask-HQ's 19 (mapped onto ours)")
    p.add_argument("--save-segmentation", metavar="PNG", help="write the parser's map (or the --segmentation "
                   "used) as a palette PNG with a legend beside it, to edit and give back as --segmentation; a "
                   "folder when --image is a folder")
    add_backend_argument(p)
    p.add_argument("--threads", type=int, help="torch intra-op threads")
    p.add_argument("--compile", action="store_true", help="torch.compile the model: each image size compiles once "
                   "(minutes on a CPU); for many images of one size, not one large photo (no low-memory bands)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


@dataclass
class _Job:
    image: Path
    mask: Optional[Path]
    out: Path
    segmentation: Optional[Path] = None
    save_segmentation: Optional[Path] = None


def _existing(path: Optional[str], flag: str) -> Optional[Path]:
    if path is not None and not Path(path).exists():
        raise CommandError(f"{flag} {path} does not exist")
    return Path(path) if path is not None else None


def _jobs(args) -> List[_Job]:
    """One job per image of a file or a folder, every path checked before any model runs."""
    image, out = _existing(args.image, "--image"), Path(args.out)
    mask, seg = _existing(args.mask, "--mask"), _existing(args.segmentation, "--segmentation")
    save = Path(args.save_segmentation) if args.save_segmentation else None
    if image.is_file():
        check_output_path(out)
        if save is not None and save.suffix.lower() != ".png":
            raise CommandError(f"--save-segmentation {save} must be a .png file")
        return [_Job(image, _match(mask, image.stem, "mask") if mask and mask.is_dir() else mask, out,
                     _match(seg, image.stem, "segmentation") if seg and seg.is_dir() else seg, save)]
    for flag, path in (("--out", out), ("--save-segmentation", save)):
        if path is not None and path.exists() and not path.is_dir():
            raise CommandError(f"{flag} {path} is a file; with a folder of images it must be a folder")
    for flag, path in (("--mask", mask), ("--segmentation", seg)):
        if path is not None and path.is_file():
            raise CommandError(f"{flag} {path} is a file; with a folder of images give a folder of them")
    files = sorted(p for p in image.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise CommandError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {image}")
    return [_Job(f, _match(mask, f.stem, "mask", required=False) if mask else None, out / f"{f.stem}.png",
                 _match(seg, f.stem, "segmentation", required=False) if seg else None,
                 save / f"{f.stem}.png" if save else None) for f in files]


def _match(folder, stem, what, required=True):
    found = [p for p in sorted(folder.iterdir()) if p.stem == stem and p.suffix.lower() in IMAGE_EXTENSIONS]
    if not found and required:
        raise CommandError(f"no {what} for {stem!r} in {folder}")
    return found[0] if found else None


def run(args) -> int:
    import mdrnet_fast
    from tqdm import tqdm

    check_minimum(args, 1, "max_side", "threads")
    check_minimum(args, 0, "crop_margin")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.backend:
        mdrnet_fast.set_backend(args.backend)
    jobs = _jobs(args)
    if any(job.out.suffix.lower() in (".jpg", ".jpeg") for job in jobs):
        print("note: JPEG is lossy, so the known pixels of the output are not the input's bit for bit; "
              ".png, .webp and .tif keep them")
    model = load_model(args.checkpoint, compile=args.compile)
    folder = len(jobs) > 1 or Path(args.image).is_dir()
    failed = 0
    for job in tqdm(jobs, desc="images", unit="image", disable=args.no_progress or not folder):
        def report(line, name=job.image.name):
            tqdm.write(f"{name}: {line}")

        try:
            _run_job(model, job, args, report)
        except (ValueError, OSError) as exc:
            if not folder:
                raise
            failed += 1  # one bad file in a folder: say so in one line and go on with the others
            tqdm.write(f"mdrnet-fast inpaint: error: {job.image}: {str(exc).splitlines()[0]}")
            continue
        print(f"{job.image} + {job.mask or 'its transparent pixels'} -> {job.out}")
    if failed:
        raise CommandError(f"{failed} of {len(jobs)} images failed (see above)")
    return 0


def _run_job(model, job: _Job, args, report) -> None:
    import mdrnet_fast

    image = read_image(job.image)
    mask = read_mask(job.mask) if job.mask is not None else None
    given = None
    if job.segmentation is not None:
        given = read_segmentation(job.segmentation, image.size[::-1], args.segmentation_format)
        report(f"segmentation from {job.segmentation}")
    if job.save_segmentation is not None:  # the map given, or the parser's (which inpaint then makes itself)
        shown = given if given is not None else segment(model, image, mask, args.precision,
                                                        invert_mask=args.invert_mask, max_side=args.max_side)
        legend = save_segmentation(shown, job.save_segmentation)
        report(f"segmentation written to {job.save_segmentation} (legend: {legend})")
    result = mdrnet_fast.inpaint(model, image, mask, args.strategy, args.precision, max_side=args.max_side,
                                 crop_margin=args.crop_margin, invert_mask=args.invert_mask, segmentation=given,
                                 progress=not args.no_progress, report=report)
    save_image(result, job.out)
