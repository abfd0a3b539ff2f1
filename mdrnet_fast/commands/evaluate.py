"""`mdrnet-fast eval`: L1 (%), PSNR and SSIM per hole-ratio bin, as ShowFace's Table 1."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from ..inpainting import load_model
from ..inpainting.precision import PRECISIONS, autocast, precision_name, resolve_precision
from ..paper import DATASETS, compare
from .common import add_backend_argument, check_minimum, default_memory_format


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint: L1 (%%), PSNR, SSIM per mask-ratio bin",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", help="folder of test images (default: synthetic faces not used in training)")
    p.add_argument("--limit", type=int, default=64, help="images per bin (at most)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=1234, help="seed of the masks (and of the synthetic faces)")
    p.add_argument("--json", help="also write the table as JSON here")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="auto: bf16 autocast on a CPU with native bf16 (AVX-512 BF16 or AMX) and on a bf16 GPU, "
                        "else fp32")
    p.add_argument("--compare-paper", choices=sorted(DATASETS), metavar="DATASET",
                   help=f"also print ShowFace's Table 1 for that dataset ({', '.join(sorted(DATASETS))}) with this "
                        "checkpoint's row beside the paper's methods")
    add_backend_argument(p)
    p.set_defaults(func=run)


@torch.no_grad()
def evaluate(model, dataset, size, limit, batch_size, seed, device, precision="fp32"):
    """{bin: {"l1_percent", "psnr", "ssim", "images"}} with the same images in every bin; the model runs under
    `precision` (PRECISIONS), the metrics in fp32."""
    from ..data import RATIO_BINS, FreeFormMasks
    from ..metrics import l1_percent, psnr, ssim

    n = min(limit, len(dataset))
    dtype = resolve_precision(precision, device)
    table = {}
    for k, (name, ratio) in enumerate(RATIO_BINS.items()):
        masks = FreeFormMasks(size, ratio=ratio)
        scores = {"l1_percent": [], "psnr": [], "ssim": []}
        for start in range(0, n, batch_size):
            idx = range(start, min(start + batch_size, n))
            fmt = default_memory_format(device)
            image = torch.stack([dataset[i]["image"] for i in idx]).to(device, memory_format=fmt)
            mask = torch.stack([masks.sample(np.random.default_rng([seed, k, i])) for i in idx])
            mask = mask.to(device, memory_format=fmt)
            with autocast(device, dtype):
                out = model(image, mask).output.float()
            scores["l1_percent"].append(l1_percent(out, image))
            scores["psnr"].append(psnr(out, image))
            scores["ssim"].append(ssim(out, image))
        table[name] = {key: float(torch.cat(v).mean()) for key, v in scores.items()} | {"images": n}
    return table


def format_table(table) -> str:
    lines = [f"{'mask ratio':<12}{'L1 (%)':>10}{'PSNR':>10}{'SSIM':>10}{'images':>8}"]
    for name, row in table.items():
        lines.append(f"{name:<12}{row['l1_percent']:>10.3f}{row['psnr']:>10.3f}{row['ssim']:>10.4f}{row['images']:>8}")
    return "\n".join(lines)


def run(args) -> int:
    import mdrnet_fast
    from ..data import ImageFolderDataset, SyntheticFaces

    check_minimum(args, 1, "limit", "batch_size")
    if args.backend:
        mdrnet_fast.set_backend(args.backend)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = load_model(args.checkpoint, device)
    size = model.image_size
    dataset = (ImageFolderDataset(args.data, size=size) if args.data
               else SyntheticFaces(size=size, length=args.limit, seed=args.seed))
    dtype = resolve_precision(args.precision, device)
    print(f"precision {args.precision} -> {precision_name(dtype)}")
    table = evaluate(model, dataset, size, args.limit, args.batch_size, args.seed, device, args.precision)
    print(format_table(table))
    if args.compare_paper:
        print("\n" + compare(table, args.compare_paper, f"this checkpoint ({Path(args.checkpoint).name})"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(table, f, indent=2)
    return 0
