"""`mdrnet-fast eval`: L1 (%), FID, PSNR and SSIM per hole-ratio bin, as ShowFace's Table 1, and LPIPS; printed,
and written as JSON, CSV and a sample grid per bin. The work is in mdrnet_fast.evaluation."""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..evaluation import (FIDInception, LPIPS, evaluate, folder_images, format_table, mask_source, save_grid,
                          synthetic_images, write_csv, write_json)
from ..evaluation.fid_inception import FILE_NAME as INCEPTION_FILE
from ..evaluation.lpips import FILE_NAMES as LPIPS_FILES
from ..inpainting import load_model
from ..inpainting.precision import PRECISIONS, precision_name, resolve_precision
from ..paper import DATASETS, compare
from .common import CommandError, add_backend_argument, check_minimum

PAPER_IMAGES = 2000  # ShowFace's test sets (2,000 images each); FID from fewer is biased upward


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint: L1 (%%), FID, PSNR, SSIM (and LPIPS) per mask-ratio bin",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", help="folder of test images, each evaluated at its own size (default: synthetic faces "
                                  "not used in training, at the model's size)")
    p.add_argument("--image-size", type=int, help="resize every image to N x N first (the paper's protocol: 256)")
    p.add_argument("--limit", type=int, default=64, help="images (at most); every bin sees the same images")
    p.add_argument("--batch-size", type=int, default=8, help="images of one size per model pass")
    p.add_argument("--masks", metavar="DIR", help="mask set, sorted into the bins by hole ratio (white = valid; "
                                                  "see --invert-masks); default: free-form masks drawn per image")
    p.add_argument("--invert-masks", action="store_true", help="the --masks files are white where the holes are")
    p.add_argument("--mask-seed", type=int, default=1234, help="seed of the drawn masks")
    p.add_argument("--seed", type=int, default=1234, help="seed of the synthetic faces")
    p.add_argument("--inception-weights", metavar="FILE",
                   help=f"the FID Inception's state_dict ({INCEPTION_FILE}): turns FID on")
    p.add_argument("--lpips-weights", metavar="FILE", nargs="+",
                   help=f"torchvision's AlexNet ({LPIPS_FILES['alex']}) or VGG-16 ({LPIPS_FILES['vgg']}), optionally "
                        "followed by LPIPS's layer weights (default: torchmetrics' copy): turns LPIPS on")
    p.add_argument("--out", help="folder for eval.json, eval.csv and the sample grids (default: CHECKPOINT's "
                                 "folder/eval)")
    p.add_argument("--json", help="also write the JSON table here")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="auto: bf16 autocast on a CPU with native bf16 (AVX-512 BF16 or AMX) and on a bf16 GPU, "
                        "else fp32 (the metrics always run in fp32)")
    p.add_argument("--compare-paper", choices=sorted(DATASETS), metavar="DATASET",
                   help=f"also print ShowFace's Table 1 for that dataset ({', '.join(sorted(DATASETS))}) with this "
                        "checkpoint's row beside the paper's methods")
    p.add_argument("--threads", type=int, help="torch intra-op threads")
    p.add_argument("--compile", action="store_true", help="torch.compile the model: each image size compiles once "
                   "(minutes on a CPU), then the passes run compiled")
    p.add_argument("--no-progress", action="store_true")
    add_backend_argument(p)
    p.set_defaults(func=run)


def _networks(args):
    """(FIDInception or None, LPIPS or None, notes): the metric networks the given files make, and a line for
    each metric left off."""
    notes = []
    inception = FIDInception.from_file(args.inception_weights) if args.inception_weights else None
    if inception is None:
        notes.append(f"FID off: give --inception-weights {INCEPTION_FILE} (the FID Inception's weights, as "
                     "published by the pytorch-fid project)")
    lpips = LPIPS.from_files(args.lpips_weights) if args.lpips_weights else None
    if lpips is None:
        notes.append(f"LPIPS off: give --lpips-weights {LPIPS_FILES['alex']} (torchvision's AlexNet; LPIPS's layer "
                     "weights come with torchmetrics)")
    return inception, lpips, notes


def run(args) -> int:
    import mdrnet_fast

    check_minimum(args, 1, "limit", "batch_size", "image_size", "threads")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.backend:
        mdrnet_fast.set_backend(args.backend)
    inception, lpips, notes = _networks(args)  # bad weight files fail before the model loads
    masks = mask_source(args.masks, args.mask_seed, args.invert_masks)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = load_model(args.checkpoint, device, compile=args.compile)
    if args.image_size and args.image_size % model.size_multiple:
        raise CommandError(f"--image-size must be a multiple of {model.size_multiple}, got {args.image_size}")
    images = folder_images(args.data) if args.data else synthetic_images(args.image_size or model.image_size,
                                                                          args.limit, args.seed)
    n = min(args.limit, images.count)
    if inception is not None and n < 2:
        notes.append("FID off: it needs at least 2 images (--limit)")
        inception = None
    elif inception is not None and n < PAPER_IMAGES:
        notes.append(f"FID from {n} images is biased upward: the paper's come from {PAPER_IMAGES:,}")
    for bin_name in masks.empty_bins():
        notes.append(f"bin {bin_name} left out: no mask of --masks falls in it")
    dtype = resolve_precision(args.precision, device)
    print(f"{n} images, {masks.describe()}; precision {args.precision} -> {precision_name(dtype)}")
    for note in notes:
        print(note)
    results = evaluate(model, images, masks, limit=args.limit, batch_size=args.batch_size, precision=args.precision,
                       image_size=args.image_size, inception=inception, lpips=lpips, progress=not args.no_progress)
    on = {"l1_percent", "psnr", "ssim"} | ({"fid"} if inception is not None else set()) | (
        {"lpips"} if lpips is not None else set())
    table = {name: result.row(on) for name, result in results.items()}
    print(format_table(table))
    if args.compare_paper:
        print("\n" + compare(table, args.compare_paper, f"this checkpoint ({Path(args.checkpoint).name})"))
    out = Path(args.out) if args.out else Path(args.checkpoint).resolve().parent / "eval"
    meta = {"checkpoint": str(args.checkpoint), "data": args.data or "synthetic", "images": n,
            "image_size": args.image_size, "masks": masks.describe(), "precision": precision_name(dtype),
            "notes": notes}
    write_json(table, out / "eval.json", meta)
    write_csv(table, out / "eval.csv")
    for name, result in results.items():
        save_grid(result.samples, out / f"samples-{name.replace('%', 'pct')}.png")
    if args.json:
        write_json(table, Path(args.json), meta)
    print(f"wrote {out / 'eval.json'}, {out / 'eval.csv'} and a sample grid per bin in {out}")
    return 0
