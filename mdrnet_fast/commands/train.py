"""`mdrnet-fast train`: the coarse, reconstruction (InCo² encoder) and full MDRNet stages.

The arguments and their checks; the run itself is the library's (mdrnet_fast.training): exact resume, torchrun
data parallelism, precision, torch.compile and activation checkpointing are described there.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from ..training.loop import RESUME_KEYS
from ..training.models import STAGES, build
from ..training.precision import TRAIN_PRECISIONS
from .common import PRESETS, CommandError, add_backend_argument, check_minimum

# build and RESUME_KEYS: their old home, where other code and tests still look them up
__all__ = ["add_parser", "run", "build", "STAGES", "RESUME_KEYS"]

_AMP_PRECISION = {"off": "fp32", "bf16": "bf16", "fp16": "fp16"}  # the deprecated --amp's values


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train MDRNet (stages coarse, recon, full); synthetic faces by default",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--stage", choices=STAGES, default="full")
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="model sizes (default: paper on a GPU, cpu-demo on a CPU)")
    p.add_argument("--image-size", type=int, help="override the preset's image size")
    p.add_argument("--steps", type=int, default=200, help="optimizer steps in all (a resumed run continues to it)")
    p.add_argument("--batch-size", type=int, default=4, help="global batch (split across ranks)")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--data", help="folder of face images (default: the built-in synthetic face set)")
    p.add_argument("--parsing", help="folder of parsing maps matching --data by file stem")
    p.add_argument("--parsing-format", choices=["celebamask-hq", "14"], default="celebamask-hq")
    p.add_argument("--synthetic-size", type=int, default=10000, help="number of synthetic faces")
    p.add_argument("--mask-ratio", default="mixed", help="hole ratio bin: 1-20%%, 20-40%%, 40-60%% or mixed")
    p.add_argument("--out", default="runs/mdrnet", help="run folder: checkpoints and samples")
    p.add_argument("--ckpt-every", type=int, default=100)
    p.add_argument("--sample-every", type=int, default=100)
    p.add_argument("--resume", nargs="?", const="auto", help="checkpoint to continue (default: OUT/last.ckpt); "
                   "one already at --steps is left as it is: a one-line note, nothing written, exit 0")
    p.add_argument("--coarse-checkpoint", help="start the full stage from a trained coarse network")
    p.add_argument("--recon-checkpoint", help="trained reconstruction network: enables the InCo² loss")
    p.add_argument("--vgg-weights", help="VGG-19 weights (torchvision layout): enables perceptual and style losses")
    p.add_argument("--precision", choices=TRAIN_PRECISIONS, default=None,
                   help="fp32 master weights; bf16 or fp16 autocast (fp16 with a gradient scaler, CUDA only); "
                        "auto = bf16 on a GPU with bf16 or a CPU with native bf16 (AVX-512 BF16, AMX), else fp32 "
                        "(default: fp32)")
    p.add_argument("--amp", choices=sorted(_AMP_PRECISION), default=None,
                   help="deprecated: --precision (off = fp32)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the generator's and the critic's loss functions (forward and backward): "
                        "minutes of compiling at the start")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="replay each training step (generator and critic: forward, losses, backward, Adam) from one "
                        "CUDA graph captured at the first step (models.GraphedTrainStep); one GPU, fp32 or bf16")
    p.add_argument("--checkpoint-activations", action="store_true",
                   help="recompute the coarse U-Net's and refinement network's activations in the backward instead "
                        "of keeping them: less memory, about a third more time per step")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="model and batches in channels_last (default: on for CPU, where it measured faster for "
                        "every backend; off on GPU until measured there)")
    add_backend_argument(p)
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--threads", type=int, help="torch intra-op threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def _check_args(args) -> None:
    """The arguments argparse cannot check, before anything is loaded or written."""
    import torch

    from ..data import RATIO_BINS

    check_minimum(args, 1, "steps", "batch_size", "ckpt_every", "sample_every", "synthetic_size", "threads",
                  "image_size")
    check_minimum(args, 0, "workers")
    if not args.lr > 0:  # also NaN
        raise CommandError(f"--lr must be > 0, got {args.lr}")
    if args.mask_ratio != "mixed" and args.mask_ratio not in RATIO_BINS:
        raise CommandError(f"--mask-ratio must be one of {', '.join(RATIO_BINS)} or mixed, got {args.mask_ratio!r}")
    if args.image_size:
        from ..models.mdrnet import size_multiple

        multiple = size_multiple(args.image_size)  # MDRNet's rule, checked here for every stage
        if args.image_size % multiple:
            raise CommandError(f"--image-size must be a multiple of {multiple} at that size, got {args.image_size}")
    precision = args.precision or "fp32"
    if args.amp is not None:  # the deprecated spelling, so that old scripts keep working
        precision = _AMP_PRECISION[args.amp]
        if args.precision not in (None, precision):
            raise CommandError(f"--amp {args.amp} (deprecated) and --precision {args.precision} disagree: "
                               "give --precision only")
    if precision == "fp16" and not torch.cuda.is_available():
        raise CommandError("--precision fp16 needs a CUDA GPU (a CPU has no fp16 arithmetic: autocast fp16 ran "
                           "several times slower than bf16 there); use --precision bf16 or auto")
    if args.cuda_graphs:
        why = ("needs a CUDA GPU" if not torch.cuda.is_available() else
               "does not combine with --compile (compile has its own CUDA graphs: mode reduce-overhead)" if args.compile
               else "does not take fp16 (its gradient scaler decides on the host)" if precision == "fp16"
               else "needs one process (not torchrun)" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None)
        if why:
            raise CommandError(f"--cuda-graphs {why}")
    if args.amp is not None:  # last: after any error, so that an error stays one line
        print(f"mdrnet-fast train: --amp is deprecated, use --precision {precision}", file=sys.stderr)
    args.precision = precision


def run(args) -> int:
    from ..training import TrainConfig, train

    _check_args(args)
    config = TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})
    train(config, build=build)  # build looked up here, at call time: tests wrap it
    return 0
