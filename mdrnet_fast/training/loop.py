"""The training loop of the coarse, reconstruction (InCo² encoder) and full MDRNet stages.

Data order is a function of (seed, global sample number) only, so a resumed run continues exactly where a run
stopped; checkpoints are written atomically. Under `torchrun` every rank takes its share of each global batch,
gradients are averaged across ranks, and the memory update uses the gathered batch.

    from mdrnet_fast.training import TrainConfig, train
    train(TrainConfig(stage="coarse", steps=1000, out="runs/coarse"))
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.distributed as dist

from ..commands.common import (CHECKPOINT_KEYS, PRESETS, CommandError, default_memory_format, default_preset,
                               load_checkpoint, rng_state, sample_grid, save_atomic, set_rng_state)
from ..inpainting.precision import autocast, precision_name
from . import data as _data
from .models import build as _build
from .models import load_module, set_checkpoint_activations
from .precision import resolve_training_precision

RESUME_KEYS = CHECKPOINT_KEYS + ("step", "optimizer", "critic", "critic_optimizer", "scaler", "rng")


@dataclasses.dataclass
class TrainConfig:
    """One training run; the fields and defaults are `mdrnet-fast train`'s arguments."""

    stage: str = "full"                      # coarse, recon or full
    preset: Optional[str] = None             # model sizes (commands.common.PRESETS); None: by device
    image_size: Optional[int] = None         # overrides the preset's
    steps: int = 200                         # optimizer steps in all (a resumed run continues to it)
    batch_size: int = 4                      # global batch, split across ranks
    lr: float = 2e-4
    data: Optional[str] = None               # folder of face images; None: synthetic faces
    parsing: Optional[str] = None            # folder of parsing maps matching `data` by file stem
    parsing_format: str = "celebamask-hq"
    synthetic_size: int = 10000
    mask_ratio: str = "mixed"
    out: str = "runs/mdrnet"                 # last.ckpt, samples/, losses.jsonl
    ckpt_every: int = 100
    sample_every: int = 100
    resume: Optional[str] = None             # a checkpoint, or "auto" for OUT/last.ckpt
    coarse_checkpoint: Optional[str] = None
    recon_checkpoint: Optional[str] = None
    vgg_weights: Optional[str] = None
    precision: str = "fp32"                  # auto, fp32, bf16 or fp16 (training.precision)
    channels_last: Optional[bool] = None     # None: the device's default layout
    backend: Optional[str] = None            # mdrnet_fast kernel backend; None: leave the setting as it is
    workers: int = 0
    threads: Optional[int] = None
    seed: int = 0
    no_progress: bool = False
    compile: bool = False                    # torch.compile the generator's and the critic's loss functions
    checkpoint_activations: bool = False     # recompute the coarse and refinement networks' activations
    cuda_graphs: bool = False                # replay each step from a CUDA graph (models.GraphedTrainStep)


def train(config: TrainConfig, build: Callable = _build) -> int:
    """Runs (or resumes) the training run `config` describes; returns the step it reached. `build(stage, model
    config) -> (module, critic)` makes the networks (training.models.build)."""
    trainer = Trainer(config, build)
    try:
        if not trainer.done:
            trainer.fit()
        return trainer.step
    finally:
        trainer.close()


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


class Trainer:
    """The state of a run: networks, optimizers, scalers, data position. `done` when a resumed run had already
    reached `config.steps` (a one-line note was printed and nothing will be written)."""

    def __init__(self, config: TrainConfig, build: Callable = _build):
        import mdrnet_fast
        from ..losses import LossWeights, MDRNetLoss, VGG19Features

        self.cfg = cfg = config
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if cfg.backend:
            mdrnet_fast.set_backend(cfg.backend)
        self.rank, self.world = _distributed()
        if cfg.batch_size % self.world:
            raise CommandError(f"--batch-size {cfg.batch_size} must be divisible by the {self.world} ranks")
        self.device = device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
                                            if torch.cuda.is_available() else "cpu")
        self.out_dir = Path(cfg.out)
        resume = (self.out_dir / "last.ckpt") if cfg.resume == "auto" else (Path(cfg.resume) if cfg.resume else None)
        ckpt = load_checkpoint(resume, keys=RESUME_KEYS) if resume else None
        self.step, self.done = 0, False

        model_config = dict(PRESETS[cfg.preset or default_preset()])
        if cfg.image_size:
            model_config["image_size"] = cfg.image_size
        if ckpt:
            if ckpt["stage"] != cfg.stage:
                raise CommandError(f"{resume} is a {ckpt['stage']!r} checkpoint; pass --stage {ckpt['stage']}")
            if ckpt["step"] >= cfg.steps:  # nothing to train: write nothing, and say how to go on
                if self.rank == 0:
                    print(f"mdrnet-fast train: the run in {resume.parent} already reached step {ckpt['step']} of "
                          f"--steps {cfg.steps}; nothing written (`--resume --steps K` with K > {ckpt['step']} "
                          "continues it)")
                self.step, self.done = ckpt["step"], True
                return
            model_config = ckpt["config"]
        self.model_config = model_config
        # before anything draws random numbers: a run's initial weights are a function of its seed alone
        self.autocast_dtype, why = resolve_training_precision(cfg.precision, device)
        torch.manual_seed(cfg.seed)
        self.model, self.critic = model, critic = build(cfg.stage, model_config)
        if cfg.stage == "full" and cfg.coarse_checkpoint and not ckpt:
            model.coarse.load_state_dict(load_module(cfg.coarse_checkpoint, "coarse", build).state_dict())
        if cfg.checkpoint_activations and not set_checkpoint_activations(model, True) and self.rank == 0:
            print(f"mdrnet-fast train: the {cfg.stage} stage has no activation checkpointing; "
                  "--checkpoint-activations changes nothing")
        if cfg.channels_last is None:
            self.fmt = default_memory_format(device)
        else:
            self.fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
        model.to(device, memory_format=self.fmt)
        self.params = list(model.parameters())
        # foreach: one multi-tensor Adam step (torch picks the per-parameter loop on CPU; measured ~5 % of a step);
        # capturable: a CUDA graph replays the step, so Adam counts its steps on the GPU
        adam = dict(lr=cfg.lr, betas=(0.9, 0.99), foreach=True, capturable=cfg.cuda_graphs)
        self.opt = torch.optim.Adam(self.params, **adam)
        self.critic_opt = None
        if critic is not None:
            critic.to(device, memory_format=self.fmt)
            self.critic_opt = torch.optim.Adam(critic.parameters(), **adam)
        self.criterion = None
        if cfg.stage == "full":
            vgg = VGG19Features.from_file(cfg.vgg_weights).to(device) if cfg.vgg_weights else None
            recon = load_module(cfg.recon_checkpoint, "recon", build).to(device) if cfg.recon_checkpoint else None
            self.criterion = MDRNetLoss(LossWeights(), vgg, recon, model_config.get("num_classes", 14))
        # fp16 only: its 5-bit exponent flushes small gradients to 0 unless the loss is scaled up; one scaler per
        # optimizer, since the critic's loss has its own range
        fp16 = self.autocast_dtype == torch.float16
        self.scaler = torch.amp.GradScaler(device.type, enabled=fp16)
        self.critic_scaler = torch.amp.GradScaler(device.type, enabled=fp16 and critic is not None)
        if ckpt:
            model.load_state_dict(ckpt["model"])
            self.opt.load_state_dict(ckpt["optimizer"])
            if critic is not None:
                critic.load_state_dict(ckpt["critic"])
                self.critic_opt.load_state_dict(ckpt["critic_optimizer"])
            # a run trained in another precision saved a disabled (empty) scaler: an enabled one starts afresh
            for scaler, key in ((self.scaler, "scaler"), (self.critic_scaler, "critic_scaler")):
                if scaler.is_enabled() and ckpt.get(key):
                    scaler.load_state_dict(ckpt[key])
            set_rng_state(ckpt["rng"])
            self.step = ckpt["step"]
        if self.rank == 0:
            print(f"mdrnet-fast train: precision {precision_name(self.autocast_dtype)} ({why})")

        self._generator_loss, self._critic_loss = self._generator_loss_eager, self._critic_loss_eager
        # --cuda-graphs: GraphedTrainStep runs the losses under its own autocast (weight-cast cache off, as a
        # capture needs), so the loss functions leave it to it; the graph is captured at the first step
        self._own_autocast, self._graphed, self._graph_out = not cfg.cuda_graphs, None, {}
        if cfg.compile:
            # the loss functions, forward and backward (AOT autograd); the optimizer steps stay eager. Not
            # fullgraph: a distributed memory update (all_gather) or a backend's eager-only check may break it
            self._generator_loss = torch.compile(self._generator_loss_eager)
            self._critic_loss = torch.compile(self._critic_loss_eager)

        size = model_config["image_size"]
        base = _data.base_dataset(size, cfg.data, cfg.parsing, cfg.parsing_format, cfg.synthetic_size, cfg.seed)
        self.batches = _data.batches(base, size, cfg.mask_ratio, cfg.seed, self.step * cfg.batch_size,
                                     cfg.batch_size // self.world, self.rank, self.world, cfg.workers)

    # ------------------------------------------------------------------------------------- one step

    def _generator_loss_eager(self, image, mask, labels):
        """(loss, {term: detached loss}, the result shown in samples, the coarse face) of the trained network."""
        from ..losses import terms

        model, stage = self.model, self.cfg.stage
        with autocast(self.device, self.autocast_dtype if self._own_autocast else None):
            if stage == "coarse":
                pred = model(image * mask, mask)
                loss = terms.l1(pred, image) + 5 * ((pred - image).abs() * (1 - mask)).mean()
                return loss, {}, pred * (1 - mask) + image * mask, pred
            if stage == "recon":
                return model.loss(image), {}, None, None
            out = model(image, mask)
            target = labels if labels is not None else model.parser(image).argmax(1).detach()
            loss, parts = self.criterion.generator(out, image, mask, target, model.parser, self.critic)
            if labels is not None:  # ground-truth maps also supervise the parser on the real face
                parser_loss = terms.semantic(model.parser(image), labels)
                loss = loss + parser_loss
                parts["parser"] = parser_loss.detach()
            return loss, parts, out.output, out.coarse

    def _critic_loss_eager(self, image, fake):
        with autocast(self.device, self.autocast_dtype if self._own_autocast else None):
            return self.criterion.critic(self.critic, image, fake)

    def train_step(self, batch) -> dict:
        """One optimizer step of the network (and of the critic) on `batch`; returns its losses (detached tensors)
        and the images for a sample grid."""
        fmt, device = self.fmt, self.device
        image = batch["image"].to(device, memory_format=fmt)
        mask = batch["mask"].to(device, memory_format=fmt)
        labels = batch["labels"].to(device) if "labels" in batch else None
        if self.cfg.cuda_graphs:
            return self._graphed_step({"image": image, "mask": mask} | ({"labels": labels} if labels is not None
                                                                       else {}))
        loss, parts, shown, coarse = self._generator_loss(image, mask, labels)
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.world > 1:  # the scaled gradients: every rank then finds the same inf/NaN and skips alike
            _average_gradients(self.params, self.world)
        self.scaler.step(self.opt)
        self.scaler.update()
        losses = {"loss": loss.detach(), **parts}
        if self.critic is not None:
            d_loss = self._critic_loss(image, shown)
            self.critic_opt.zero_grad(set_to_none=True)
            self.critic_scaler.scale(d_loss).backward()
            if self.world > 1:
                _average_gradients(list(self.critic.parameters()), self.world)
            self.critic_scaler.step(self.critic_opt)
            self.critic_scaler.update()
            losses["critic"] = d_loss.detach()
        self.step += 1
        return {"losses": losses, "image": image, "mask": mask, "shown": shown, "coarse": coarse}

    def _graphed_step(self, batch) -> dict:
        """train_step replayed from a CUDA graph (captured at the first call); the outputs are the graph's own
        tensors, rewritten by the next step."""
        from ..models.graphed_train import GraphedTrainStep

        out = self._graph_out
        if self._graphed is None:
            def generator(b):
                out["loss"], out["parts"], out["shown"], out["coarse"] = self._generator_loss(
                    b["image"], b["mask"], b.get("labels"))
                return out["loss"]

            def critic(b):
                out["critic"] = self._critic_loss(b["image"], out["shown"])
                return out["critic"]

            then = [(critic, self.critic_opt)] if self.critic is not None else []
            modules = (self.model,) + ((self.critic,) if self.critic is not None else ())
            self._graphed = GraphedTrainStep(modules, generator, self.opt, batch, then=then,
                                             amp_dtype=self.autocast_dtype, clone=False)
        self._graphed(batch)
        losses = {"loss": out["loss"].detach(), **out["parts"]}
        if "critic" in out:
            losses["critic"] = out["critic"].detach()
        self.step += 1
        return {"losses": losses, "image": batch["image"], "mask": batch["mask"], "shown": out["shown"],
                "coarse": out["coarse"]}

    # ------------------------------------------------------------------------------------- the run

    def fit(self) -> None:
        from tqdm import tqdm

        cfg, out_dir = self.cfg, self.out_dir
        log = self._open_loss_log() if self.rank == 0 else None
        bar = tqdm(total=cfg.steps, initial=self.step, disable=self.rank != 0 or cfg.no_progress,
                   desc=f"train {cfg.stage}", unit="step", dynamic_ncols=True)
        self.model.train()
        try:
            while self.step < cfg.steps:
                t0 = time.perf_counter()
                result = self.train_step(next(self.batches))
                # one host sync for every term (a float() per term would be one each on a GPU)
                names = list(result["losses"])
                values = torch.stack([v.float() for v in result["losses"].values()]).tolist()
                seconds = time.perf_counter() - t0
                bar.update(1)
                bar.set_postfix(loss=f"{values[0]:.4f}", img_s=f"{cfg.batch_size / seconds:.1f}")
                if log:
                    log.write(json.dumps({"step": self.step, **dict(zip(names, values)),
                                          "seconds": round(seconds, 4)}) + "\n")
                if self.step % cfg.sample_every == 0 or self.step == cfg.steps:
                    self._sample(result)
                if self.step % cfg.ckpt_every == 0 or self.step == cfg.steps:
                    self.save(out_dir / "last.ckpt")
        finally:
            bar.close()
            if log:
                log.close()
        if self.rank == 0:
            print(f"mdrnet-fast: {cfg.stage} stage at step {self.step}; checkpoint {out_dir / 'last.ckpt'}, "
                  f"samples in {out_dir / 'samples'}")

    def _open_loss_log(self):
        """OUT/losses.jsonl, a line per step (step, loss, each term, critic, seconds), line-buffered. A resumed
        run keeps the lines up to its checkpoint's step: later ones were of steps it trains again."""
        path = self.out_dir / "losses.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if self.step and path.exists():
            for line in path.read_text().splitlines():
                try:
                    if json.loads(line)["step"] <= self.step:
                        kept.append(line + "\n")
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut by a crash
        log = open(path, "w", buffering=1)
        log.writelines(kept)
        return log

    def _sample(self, result) -> None:
        if self.rank != 0 or result["shown"] is None:
            return
        image, mask, shown, coarse = (result[k] for k in ("image", "mask", "shown", "coarse"))
        rows = [[image[i] * mask[i] + (1 - mask[i]), coarse[i], shown[i], image[i]] for i in range(min(4, len(image)))]
        sample_grid(rows, self.out_dir / "samples" / f"step{self.step:07d}.png")

    def save(self, path) -> None:
        """An atomic checkpoint of everything a resume needs (rank 0 writes it)."""
        if self.rank != 0:
            return
        args = dataclasses.asdict(self.cfg) | {"precision": precision_name(self.autocast_dtype),
                                               "precision_asked": self.cfg.precision}
        save_atomic({"stage": self.cfg.stage, "step": self.step, "config": self.model_config,
                     "model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                     "critic": self.critic.state_dict() if self.critic else None,
                     "critic_optimizer": self.critic_opt.state_dict() if self.critic_opt else None,
                     "scaler": self.scaler.state_dict(), "critic_scaler": self.critic_scaler.state_dict(),
                     "rng": rng_state(), "args": args}, path)

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()
