"""`mdrnet-fast train`: the coarse, reconstruction (InCo² encoder) and full MDRNet stages.

Data order is a function of (seed, global sample number) only, so `--resume` continues exactly where a
run stopped; checkpoints are written atomically. Under `torchrun` every rank takes its share of each
global batch, gradients are averaged across ranks, and the memory update uses the gathered batch.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from .common import (CHECKPOINT_KEYS, PRESETS, CommandError, add_backend_argument, check_minimum,
                     default_memory_format, default_preset, load_checkpoint, rng_state, sample_grid, save_atomic,
                     set_rng_state)

STAGES = ("coarse", "recon", "full")
RESUME_KEYS = CHECKPOINT_KEYS + ("step", "optimizer", "critic", "critic_optimizer", "scaler", "rng")


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
    p.add_argument("--amp", choices=["off", "bf16", "fp16"], default="off")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="model and batches in channels_last (default: on for CPU, where it measured faster for "
                        "every backend; off on GPU until measured there)")
    add_backend_argument(p)
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--threads", type=int, help="torch intra-op threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


# ------------------------------------------------------------------------------------------- data

class _Samples(torch.utils.data.Dataset):
    """Item g (a global sample number) -> image, labels and a mask, from (seed, g) alone."""

    def __init__(self, base, size, mask_ratio, seed):
        from ..data import RATIO_BINS, FreeFormMasks

        bins = list(RATIO_BINS.values()) if mask_ratio == "mixed" else [RATIO_BINS[mask_ratio]]
        self.masks = [FreeFormMasks(size, ratio=b) for b in bins]
        self.base, self.seed = base, seed

    def __len__(self):
        return 2 ** 62

    def __getitem__(self, g):
        n = len(self.base)
        epoch, pos = divmod(int(g), n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + epoch))
        item = dict(self.base[int(perm[pos])])
        rng = np.random.default_rng([self.seed, int(g)])
        item["mask"] = self.masks[int(rng.integers(len(self.masks)))].sample(rng)
        return item


class _RankSampler(torch.utils.data.Sampler):
    """Global sample numbers from `start` on, this rank's share of each global batch."""

    def __init__(self, start, rank, world):
        self.start, self.rank, self.world = start, rank, world

    def __iter__(self):
        g = self.start + self.rank
        while True:
            yield g
            g += self.world


def _dataset(args, size):
    from ..data import ImageFolderDataset, SyntheticFaces

    if args.data:
        return ImageFolderDataset(args.data, size=size, parsing_root=args.parsing, parsing_format=args.parsing_format)
    return SyntheticFaces(size=size, length=args.synthetic_size, seed=args.seed)


# ------------------------------------------------------------------------------------------- models

def build(stage, config):
    """The trained module (and the critic for the full stage) of a stage, from a model config."""
    from ..losses import ReconstructionNet
    from ..models import MDRNet, PartialConvUNet, PatchGAN
    from ..models.coarse import default_depth

    if stage == "coarse":
        return PartialConvUNet(3, 3, config["base_channels"], default_depth(config["image_size"])), None
    if stage == "recon":
        return ReconstructionNet(config["base_channels"], 3, config["style_channels"]), None
    return MDRNet(**config), PatchGAN(base_channels=config["base_channels"])


def _load_module(path, stage):
    ckpt = load_checkpoint(path)
    if ckpt["stage"] != stage:
        raise CommandError(f"{path} is a {ckpt['stage']!r} checkpoint, not {stage!r}")
    module, _ = build(stage, ckpt["config"])
    module.load_state_dict(ckpt["model"])
    return module


# ------------------------------------------------------------------------------------------- training

def _distributed():
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def _average_gradients(params, world):
    """Data parallelism: each rank's gradient of its share, averaged (deterministic all-reduce)."""
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= world


def _check_args(args) -> None:
    """The arguments argparse cannot check, before anything is loaded or written."""
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


def run(args) -> int:
    import mdrnet_fast
    from ..losses import LossWeights, MDRNetLoss, VGG19Features
    from ..losses import terms

    _check_args(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.backend:
        mdrnet_fast.set_backend(args.backend)
    rank, world = _distributed()
    if args.batch_size % world:
        raise CommandError(f"--batch-size {args.batch_size} must be divisible by the {world} ranks")
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu")
    out_dir = Path(args.out)
    resume = (out_dir / "last.ckpt") if args.resume == "auto" else (Path(args.resume) if args.resume else None)
    ckpt = load_checkpoint(resume, keys=RESUME_KEYS) if resume else None

    config = dict(PRESETS[args.preset or default_preset()])
    if args.image_size:
        config["image_size"] = args.image_size
    if ckpt:
        if ckpt["stage"] != args.stage:
            raise CommandError(f"{resume} is a {ckpt['stage']!r} checkpoint; pass --stage {ckpt['stage']}")
        if ckpt["step"] >= args.steps:  # nothing to train: write nothing, and say how to go on
            if rank == 0:
                print(f"mdrnet-fast train: the run in {resume.parent} already reached step {ckpt['step']} of "
                      f"--steps {args.steps}; nothing written (`--resume --steps K` with K > {ckpt['step']} "
                      "continues it)")
            if world > 1:
                dist.destroy_process_group()
            return 0
        config = ckpt["config"]
    torch.manual_seed(args.seed)
    model, critic = build(args.stage, config)
    if args.stage == "full" and args.coarse_checkpoint and not ckpt:
        model.coarse.load_state_dict(_load_module(args.coarse_checkpoint, "coarse").state_dict())
    if args.channels_last is None:
        fmt = default_memory_format(device)
    else:
        fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    model.to(device, memory_format=fmt)
    params = list(model.parameters())
    # foreach: one multi-tensor Adam step (torch picks the per-parameter loop on CPU; measured ~5 % of a step)
    opt = torch.optim.Adam(params, lr=args.lr, betas=(0.9, 0.99), foreach=True)
    critic_opt = None
    if critic is not None:
        critic.to(device, memory_format=fmt)
        critic_opt = torch.optim.Adam(critic.parameters(), lr=args.lr, betas=(0.9, 0.99), foreach=True)
    criterion = None
    if args.stage == "full":
        vgg = VGG19Features.from_file(args.vgg_weights).to(device) if args.vgg_weights else None
        recon = _load_module(args.recon_checkpoint, "recon").to(device) if args.recon_checkpoint else None
        criterion = MDRNetLoss(LossWeights(), vgg, recon, config.get("num_classes", 14))
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp == "fp16")
    step = 0
    if ckpt:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        if critic is not None:
            critic.load_state_dict(ckpt["critic"])
            critic_opt.load_state_dict(ckpt["critic_optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
        step = ckpt["step"]

    size = config["image_size"]
    per_rank = args.batch_size // world
    samples = _Samples(_dataset(args, size), size, args.mask_ratio, args.seed)
    loader = torch.utils.data.DataLoader(samples, batch_size=per_rank, sampler=_RankSampler(step * args.batch_size, rank, world),
                                         num_workers=args.workers, persistent_workers=args.workers > 0)
    amp = (torch.autocast(device.type, dtype=torch.bfloat16 if args.amp == "bf16" else torch.float16)
           if args.amp != "off" else contextlib.nullcontext())

    def checkpoint(path):
        if rank == 0:
            save_atomic({"stage": args.stage, "step": step, "config": config, "model": model.state_dict(),
                         "optimizer": opt.state_dict(), "critic": critic.state_dict() if critic else None,
                         "critic_optimizer": critic_opt.state_dict() if critic_opt else None,
                         "scaler": scaler.state_dict(), "rng": rng_state(), "args": vars(args) | {"func": None}}, path)

    from tqdm import tqdm

    bar = tqdm(total=args.steps, initial=step, disable=rank != 0 or args.no_progress, desc=f"train {args.stage}",
               unit="step", dynamic_ncols=True)
    batches = iter(loader)
    model.train()
    while step < args.steps:
        t0 = time.perf_counter()
        batch = next(batches)
        image = batch["image"].to(device, memory_format=fmt)
        mask = batch["mask"].to(device, memory_format=fmt)
        labels = batch["labels"].to(device) if "labels" in batch else None
        with amp:
            if args.stage == "coarse":
                pred = model(image * mask, mask)
                loss = terms.l1(pred, image) + 5 * ((pred - image).abs() * (1 - mask)).mean()
            elif args.stage == "recon":
                loss = model.loss(image)
            else:
                out = model(image, mask)
                target = labels if labels is not None else model.parser(image).argmax(1).detach()
                loss, parts = criterion.generator(out, image, mask, target, model.parser, critic)
                if labels is not None:  # ground-truth maps also supervise the parser on the real face
                    parser_loss = terms.semantic(model.parser(image), labels)
                    loss = loss + parser_loss
                    parts["parser"] = parser_loss.detach()
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if world > 1:
            scaler.unscale_(opt)
            _average_gradients(params, world)
        scaler.step(opt)
        scaler.update()
        if critic is not None:
            with amp:
                d_loss = criterion.critic(critic, image, out.output)
            critic_opt.zero_grad(set_to_none=True)
            d_loss.backward()
            if world > 1:
                _average_gradients(list(critic.parameters()), world)
            critic_opt.step()
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{float(loss.detach()):.4f}", img_s=f"{args.batch_size / (time.perf_counter() - t0):.1f}")
        if step % args.sample_every == 0 or step == args.steps:
            if rank == 0 and args.stage != "recon":
                shown = out.output if args.stage == "full" else pred * (1 - mask) + image * mask
                coarse = out.coarse if args.stage == "full" else pred
                rows = [[image[i] * mask[i] + (1 - mask[i]), coarse[i], shown[i], image[i]] for i in range(min(4, len(image)))]
                sample_grid(rows, out_dir / "samples" / f"step{step:07d}.png")
        if step % args.ckpt_every == 0 or step == args.steps:
            checkpoint(out_dir / "last.ckpt")
    bar.close()
    if rank == 0:
        print(f"mdrnet-fast: {args.stage} stage at step {step}; checkpoint {out_dir / 'last.ckpt'}, samples in {out_dir / 'samples'}")
    if world > 1:
        dist.destroy_process_group()
    return 0
