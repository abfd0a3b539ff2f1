"""Whole-model benchmarks of MDRNet: one training step and one inference forward, per implementation.

Implementations: `reference` (every mdrnet_fast op in plain PyTorch), each fast backend that runs on the
device, and `compile` (torch.compile(model) under the reference backend). Variants, joined with "+": `+cl`
(model and inputs in channels_last), `+compile` (torch.compile(model) under that backend: `auto+compile`),
`+graph` (CUDA only: inference replayed by models.GraphedInference, the training step by
models.graphed_train.GraphedTrainStep). Modes: `train` = the full-stage step of `mdrnet-fast train` (forward,
generator loss of MDRNetLoss without VGG and InCo² plus the PatchGAN term and the parser's supervision,
backward, Adam step, then the critic's update) and `infer` = eval mode, no_grad forward. Configurations: see
CONFIGS below and bench/README.md (env MDRNET_FAST_BENCH_MODEL; MDRNET_FAST_BENCH_DTYPE=bf16 runs the forward
and losses under bf16 autocast, as `mdrnet-fast train --amp bf16`).
"""
import contextlib
import copy
import logging
import os
import time
from dataclasses import dataclass

import numpy as np
import pytest
import torch

import mdrnet_fast
from mdrnet_fast import _dispatch
from mdrnet_fast.commands.common import PRESETS
from mdrnet_fast.data import FreeFormMasks
from mdrnet_fast.data.synthetic import make_batch
from mdrnet_fast.losses import LossWeights, MDRNetLoss, terms
from mdrnet_fast.models import GraphedInference, MDRNet, PatchGAN
from mdrnet_fast.models.graphed_train import GraphedTrainStep

QUICK = os.environ.get("MDRNET_FAST_BENCH_QUICK", "0") == "1"
# seconds of timed calls per benchmark, and the bounds on the round count it gives. A model step is
# 10-1000x an op call, so fewer rounds than the op benchmarks; the median still drops the odd stall.
BUDGET_S, MIN_ROUNDS, MAX_ROUNDS = (0.5, 2, 5) if QUICK else (2.0, 3, 20)
BACKENDS_FOR = {"cpu": ("cpu",), "cuda": ("cuda", "triton")}
LR, BETAS = 2e-4, (0.9, 0.99)  # as `mdrnet-fast train`
FOREACH = True  # as `mdrnet-fast train`: one multi-tensor Adam step instead of a Python loop over parameters
# autocast dtype of the model steps, by name: fp32 = no autocast (the default), bf16 = `mdrnet-fast train --amp bf16`
AMP_DTYPES = {"fp32": None, "bf16": torch.bfloat16}
VARIANTS = ("cl", "compile", "graph")


@dataclass(frozen=True)
class Config:
    preset: str
    size: int
    batch: int

    @property
    def tag(self):
        return f"{self.preset}-{self.size}-B{self.batch}"


# The sizes (paper preset) are for a GPU; on 2 CPU cores one paper step at 256² takes many
# seconds, so the CPU default is the cpu-demo preset at two sizes. Smallest first: quick takes the first.
DEFAULT_CONFIGS = {"cuda": [Config("paper", 256, 8), Config("paper", 512, 2)],
                   "cpu": [Config("cpu-demo", 64, 4), Config("cpu-demo", 128, 2)]}


def _parse_configs(spec):
    """'preset:size:batch,preset:size:batch' -> [Config]; a bad spec fails loudly at collection."""
    configs = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        try:
            preset, size, batch = item.split(":")
            config = Config(preset, int(size), int(batch))
        except ValueError:
            raise ValueError(f"MDRNET_FAST_BENCH_MODEL: {item!r} is not preset:size:batch") from None
        if preset not in PRESETS:
            raise ValueError(f"MDRNET_FAST_BENCH_MODEL: unknown preset {preset!r}; one of {sorted(PRESETS)}")
        configs.append(config)
    return configs


def _configs(device):
    spec = os.environ.get("MDRNET_FAST_BENCH_MODEL")
    configs = _parse_configs(spec) if spec else DEFAULT_CONFIGS[device]
    # --quick must stay about a minute: a cold torch.compile of a whole training step alone takes minutes
    # on 2 cores, so quick runs include model rows only when MDRNET_FAST_BENCH_MODEL asks for them
    if QUICK and not spec:
        return []
    return configs


def _devices():
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _amp_dtype():
    name = os.environ.get("MDRNET_FAST_BENCH_DTYPE", "fp32")
    if name not in AMP_DTYPES:
        raise ValueError(f"MDRNET_FAST_BENCH_DTYPE: {name!r} is not one of {sorted(AMP_DTYPES)}")
    return AMP_DTYPES[name]


def group_name(config, mode, device, amp=None):
    """The benchmark group: model/<mode>/<tag>[-bf16]@<device> (fp32 rows keep the names they always had)."""
    dtype = "" if amp is None else "-" + {v: k for k, v in AMP_DTYPES.items()}[amp]
    return f"model/{mode}/{config.tag}{dtype}@{device}"


def parse_impl(impl):
    """'auto+cl+compile' -> ('auto', {'cl', 'compile'}); `compile` alone is reference+compile. ValueError in one
    line for an unknown backend or variant, or graph with compile (torch.compile's own CUDA graphs are its
    mode="reduce-overhead", not measured here)."""
    base, *variants = impl.split("+")
    variants = set(variants)
    if base == "compile":
        base, variants = "reference", variants | {"compile"}
    if base not in _dispatch.BACKENDS or not variants <= set(VARIANTS):
        raise ValueError(f"unknown implementation {impl!r}: a backend of {_dispatch.BACKENDS} or compile, then "
                         f"any of +{', +'.join(VARIANTS)}")
    if {"compile", "graph"} <= variants:
        raise ValueError(f"{impl}: +graph and +compile do not combine here")
    return base, variants


def _impls(device):
    """Backends, each also with model and inputs in channels_last ("+cl"): the layout is a choice a user
    makes (`mdrnet-fast train --channels-last`), and both sides of every ratio can make it."""
    fast = [b for b in BACKENDS_FOR[device] if mdrnet_fast.backends()[b]["available"]]
    # on CUDA `auto` mixes backends per op (_dispatch._CUDA_ORDER): the row a user gets by default; "+graph":
    # the step replayed from a CUDA graph (models.GraphedInference, GraphedTrainStep), for the reference and for
    # auto alike; "auto+compile": torch.compile of the model under auto (the CPU list leaves it out: one more
    # cold compile of minutes on a small machine; bench/paired_ratios.py --impls takes it anywhere)
    auto = ["auto", "auto+graph", "reference+graph"] if device == "cuda" else []
    return ["reference", "reference+cl", *[v for b in fast for v in (b, b + "+cl")], *auto, "compile",
            *(["auto+compile"] if device == "cuda" else [])]


def pytest_generate_tests(metafunc):
    params, ids = [], []
    for device in _devices():
        for config in _configs(device):
            for mode in ("train", "infer"):
                for impl in _impls(device):
                    params.append((config, mode, device, impl))
                    ids.append(f"model-{mode}-{config.tag}-{device}-{impl}")
    metafunc.parametrize("config,mode,device,impl", params, ids=ids)


_PROTOS = {}


def _prototype(config):
    """(model, critic, inputs) built once per config from seed 0, on the CPU; callers deepcopy the modules,
    so every implementation starts from the same weights, memory and inputs."""
    if config not in _PROTOS:
        kwargs = dict(PRESETS[config.preset], image_size=config.size)
        torch.manual_seed(0)
        model, critic = MDRNet(**kwargs), PatchGAN(base_channels=kwargs["base_channels"])
        # a batch like training's: synthetic faces with their parsing maps, free-form masks of 20-40 % holes
        batch = make_batch(config.batch, config.size, seed=0)
        masks = FreeFormMasks(config.size, ratio=(0.2, 0.4))
        mask = torch.stack([masks.sample(np.random.default_rng([0, i])) for i in range(config.batch)])
        _PROTOS.clear()  # one config at a time: the tests run config by config, so this bounds memory
        _PROTOS[config] = (model, critic, dict(batch, mask=mask))
    return _PROTOS[config]


def _quiet_criterion():
    # vgg=None and recon=None are deliberate here: their "loss is off" warnings say nothing about the bench
    log = logging.getLogger("mdrnet_fast")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        return MDRNetLoss(LossWeights(), vgg=None, recon=None)
    finally:
        log.setLevel(level)


def _make_step(config, mode, device, impl, amp=None):
    """The function timed per round, and the backend it runs under. amp: autocast dtype of the forward and the
    losses (None: fp32), as `mdrnet-fast train --amp`."""
    backend, variants = parse_impl(impl)
    if "graph" in variants and device != "cuda":
        raise ValueError(f"{impl}: CUDA graphs need a CUDA device (--device cuda)")
    proto_model, proto_critic, inputs = _prototype(config)
    fmt = torch.channels_last if "cl" in variants else torch.contiguous_format
    model = copy.deepcopy(proto_model).to(device, memory_format=fmt)
    image, mask = (inputs[k].to(device).contiguous(memory_format=fmt) for k in ("image", "mask"))
    labels = inputs["labels"].to(device)

    def autocast(cache_enabled=True):  # a graph capture needs the weight-cast cache off
        return (torch.autocast(device, amp, cache_enabled=cache_enabled) if amp is not None
                else contextlib.nullcontext())

    if "compile" in variants:
        torch._dynamo.reset()  # a fresh compile per benchmark: no recompile limits or guards carried over
        # compiled is an OptimizedModule sharing model's parameters; criterion below uses model.parser
        # eagerly, as `mdrnet-fast train` would with a compiled model
        forward = torch.compile(model)
    else:
        forward = model

    if mode == "infer" and "graph" in variants:
        # the graph replays the kernels of the backend (and the autocast) it was captured under
        with mdrnet_fast.use_backend(backend), autocast(cache_enabled=False):
            graphed = GraphedInference(model, image, mask, clone=False)

        def step():
            graphed(image, mask)
            _sync(device)

        return step, backend
    if mode == "infer":
        model.eval()

        def step():
            with torch.no_grad(), autocast():
                forward(image, mask)
            _sync(device)

        return step, backend

    model.train()
    critic = copy.deepcopy(proto_critic).to(device, memory_format=fmt).train()
    # a graph needs Adam's step count on the GPU (capturable); the eager rows keep `mdrnet-fast train`'s Adam
    capturable = "graph" in variants
    opt = torch.optim.Adam(model.parameters(), lr=LR, betas=BETAS, foreach=FOREACH, capturable=capturable)
    critic_opt = torch.optim.Adam(critic.parameters(), lr=LR, betas=BETAS, foreach=FOREACH, capturable=capturable)
    criterion = _quiet_criterion()
    keep = {}

    # the full stage of commands/train.py with ground-truth parsing maps (as its synthetic default has)
    def generator_loss(b):
        out = keep["out"] = forward(b["image"], b["mask"])
        loss, _ = criterion.generator(out, b["image"], b["mask"], b["labels"], model.parser, critic)
        return loss + terms.semantic(model.parser(b["image"]), b["labels"])

    def critic_loss(b):
        return criterion.critic(critic, b["image"], keep["out"].output)

    batch = {"image": image, "mask": mask, "labels": labels}
    stages = [(generator_loss, opt), (critic_loss, critic_opt)]
    if "graph" in variants:
        with mdrnet_fast.use_backend(backend):
            graphed = GraphedTrainStep((model, critic), generator_loss, opt, batch, then=stages[1:], amp_dtype=amp,
                                       clone=False)

        def step():
            graphed(batch)
            _sync(device)

        return step, backend

    def step():
        for loss_fn, optimizer in stages:  # generator, then critic: forward and loss under autocast, as train.py
            with autocast():
                loss = loss_fn(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        keep.clear()  # the output is not held into the next step's forward (it would count in its peak)
        _sync(device)

    return step, backend


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def _record_kernels(monkeypatch, backend):
    """Names of the kernels the ops ask `backend` for: get_kernel looks each one up with has_kernel."""
    asked, has_kernel = set(), _dispatch.has_kernel

    def recording(kernel, name):
        if name == backend:
            asked.add(kernel)
        return has_kernel(kernel, name)

    monkeypatch.setattr(_dispatch, "has_kernel", recording)
    return asked


def test_model(benchmark, monkeypatch, config, mode, device, impl):
    amp = _amp_dtype()
    step, backend = _make_step(config, mode, device, impl, amp)

    def run():
        with mdrnet_fast.use_backend(backend):
            step()

    backend_name = impl.partition("+")[0]
    asked = _record_kernels(monkeypatch, backend_name) if backend_name in _dispatch.FAST_BACKENDS else None
    try:
        run()  # torch.compile compiles here (forward and, in train, backward); Adam creates its state
    except Exception as exc:
        if "compile" in impl:
            pytest.skip(f"torch.compile failed: {type(exc).__name__}: {exc}")
        raise
    monkeypatch.undo()
    # warm-up, timed to pick the round count: Adam's state exists now, compile's first-call costs are paid
    t0 = time.perf_counter()
    run()
    rounds = int(min(MAX_ROUNDS, max(MIN_ROUNDS, BUDGET_S / max(time.perf_counter() - t0, 1e-6))))

    if device == "cuda":
        # the peak of the timed rounds alone (parameters, optimizer state and activations), not of compiling
        torch.cuda.reset_peak_memory_stats()
    benchmark.group = group_name(config, mode, device, amp)
    benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=0)
    # peak memory is measured on CUDA only: the CPU allocator keeps no peak statistic (None = not measured)
    peak = torch.cuda.max_memory_allocated() / 2 ** 20 if device == "cuda" else None
    mean = benchmark.stats.stats.mean
    info = dict(impl=impl, backend=backend_name, layout="channels_last" if "cl" in parse_impl(impl)[1] else "nchw",
                model="MDRNet", mode=mode, preset=config.preset, image_size=config.size,
                batch=config.batch, shape=config.tag, device=device,
                dtype="float32" if amp is None else str(amp).replace("torch.", ""),
                threads=torch.get_num_threads(), images_per_s=config.batch / mean if mean else None,
                peak_mem_mib=peak, quick=QUICK)
    if asked is not None:  # fast backends: which kernels of the step are its own, which the composite path
        own = sorted(k for k in asked if _dispatch.has_kernel(k, backend_name))
        info.update(kernels=own, missing_kernels=sorted(asked - set(own)), real_kernel=len(own) == len(asked))
    benchmark.extra_info.update(info)
