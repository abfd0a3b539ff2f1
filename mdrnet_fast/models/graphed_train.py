"""One whole training step replayed from a CUDA graph: forward, loss, backward and optimizer step as one graph
launch instead of thousands of kernel launches from Python. Possible because no op of the step waits for the GPU
(tests/test_gpu_async.py) and Adam can keep its step count on the device (`capturable=True`).

    opt = torch.optim.Adam(model.parameters(), lr=2e-4, capturable=True)
    step = GraphedTrainStep(model, lambda b: loss_of(model(b["image"], b["mask"]), b), opt, example_batch)
    for batch in loader:
        loss = step(batch)        # copies the batch in, replays; the parameters are updated in place

Generic over the model and the loss: the training loop (mdrnet_fast/training/) and bench/test_bench_model.py use it.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from .graphed import check_as_captured

Batch = Mapping[str, torch.Tensor]
LossFn = Callable[[Batch], torch.Tensor]


def _is_cuda(t: torch.Tensor) -> bool:  # one place to ask (tests fake CUDA graphs on the CPU through it)
    return t.is_cuda


def _optimizer_check(opt, where: str) -> None:
    if not isinstance(opt, torch.optim.Optimizer):
        raise ValueError(f"GraphedTrainStep: {where} must be a torch.optim.Optimizer, got {type(opt).__name__}")
    for group in opt.param_groups:
        # Adam, AdamW & co. count steps on the host unless capturable: a graph would replay step 1 forever
        if "capturable" in group and not group["capturable"]:
            raise ValueError(f"GraphedTrainStep: {where} ({type(opt).__name__}) must be created with capturable=True "
                             "(its step count then lives on the GPU, where a graph replay can advance it)")


def _batch_check(batch, what: str) -> Dict[str, torch.Tensor]:
    if not isinstance(batch, Mapping) or not batch:
        raise ValueError(f"GraphedTrainStep: {what} must be a non-empty dict of tensors, got {type(batch).__name__}")
    for name, t in batch.items():
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"GraphedTrainStep: {what}[{name!r}] must be a tensor, got {type(t).__name__}")
    for name, t in batch.items():
        if not _is_cuda(t):
            raise ValueError(f"GraphedTrainStep needs CUDA tensors: {what}[{name!r}] is on {t.device}")
    return dict(batch)


def match_batch(static: Mapping[str, torch.Tensor], batch) -> None:
    """ValueError unless `batch` has the keys, shapes, dtypes and devices of the captured batch `static`."""
    if not isinstance(batch, Mapping):
        raise ValueError(f"GraphedTrainStep: the batch must be a dict of tensors, got {type(batch).__name__}")
    if set(batch) != set(static):
        raise ValueError(f"GraphedTrainStep: the batch must have the keys {sorted(static)} as at capture, "
                         f"got {sorted(batch)}")
    for name, old in static.items():
        check_as_captured(name, batch[name], old, "GraphedTrainStep: ")


class GraphedTrainStep:
    """step = GraphedTrainStep(model, loss_fn, optimizer, batch); loss = step(batch)

    model: the module (or a sequence of modules, e.g. generator and critic) being trained; put in train mode.
    loss_fn(batch) -> scalar loss, computing the forward from the dict `batch`; optimizer steps on its gradients.
    then: more (loss_fn, optimizer) stages run after the first in the same graph, each zeroing its optimizer's
    gradients, backpropagating its own loss and stepping (a GAN's critic update after the generator's).
    Every step of the graph does, per stage: loss = loss_fn(batch); opt.zero_grad(set_to_none=True);
    loss.backward(); opt.step(), as an eager loop would.

    batch: example tensors (CUDA) of the shapes, dtypes and devices every later batch must have (ValueError
    otherwise); their values are copied into the graph's own inputs on each call. Optimizers with a
    `capturable` option (Adam, AdamW, ...) must be created with capturable=True (ValueError otherwise).
    amp_dtype: torch.bfloat16 runs every loss_fn under CUDA autocast (its weight-cast cache off, as graphs need);
    fp16 is refused (its GradScaler checks for infs on the host, a sync a graph cannot hold).

    Capture runs `warmup` eager steps on a side stream first (lazy inits, cuDNN and Triton choices, the
    optimizers' state) and then, with restore=True, puts the parameters, buffers and optimizer state back as
    they were (state the warm-up created is zeroed, which is a fresh Adam state): the first call is the first
    real step. Parameters, buffers and optimizer state are updated in place, never reassigned; replace them
    and capture again. Tensors a loss_fn keeps (e.g. the model's output in a dict) are the graph's own, rewritten
    by every call. Returns the first stage's loss (a clone; `clone=False`: the graph's own tensor); `losses`
    holds every stage's. The backend in force at capture (mdrnet_fast.use_backend) is the one the graph replays.
    """

    def __init__(self, model: Union[nn.Module, Sequence[nn.Module]], loss_fn: LossFn,
                 optimizer: torch.optim.Optimizer, batch: Batch, *,
                 then: Iterable[Tuple[LossFn, torch.optim.Optimizer]] = (), amp_dtype: Optional[torch.dtype] = None,
                 warmup: int = 3, restore: bool = True, clone: bool = True):
        modules = [model] if isinstance(model, nn.Module) else list(model)
        if not modules or not all(isinstance(m, nn.Module) for m in modules):
            raise ValueError("GraphedTrainStep: model must be an nn.Module or a sequence of them")
        stages: List[Tuple[LossFn, torch.optim.Optimizer]] = [(loss_fn, optimizer), *then]
        for i, (fn, opt) in enumerate(stages):
            if not callable(fn):
                raise ValueError(f"GraphedTrainStep: the loss_fn of stage {i} is not callable")
            _optimizer_check(opt, "optimizer" if i == 0 else f"the optimizer of stage {i}")
        if amp_dtype is not None and amp_dtype not in (torch.bfloat16, torch.float32):
            raise ValueError(f"GraphedTrainStep: amp_dtype must be torch.bfloat16 or None, got {amp_dtype} (fp16 "
                             "needs a GradScaler, whose inf check is a host sync a graph cannot capture)")
        batch = _batch_check(batch, "batch")
        for m in modules:
            for name, p in list(m.named_parameters()) + list(m.named_buffers()):
                if not _is_cuda(p):
                    raise ValueError(f"GraphedTrainStep needs the model on a CUDA device: {name} is on {p.device}")
        device = next(iter(batch.values())).device
        self.modules, self.stages, self.clone, self._device = modules, stages, clone, device
        self.amp_dtype = amp_dtype if amp_dtype is not torch.float32 else None
        self._inputs = {k: t.clone(memory_format=torch.preserve_format) for k, t in batch.items()}
        for m in modules:
            m.train()

        saved = self._snapshot() if restore else None
        side = torch.cuda.Stream(device=device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # warm up off the capture stream; the optimizers create their state here
            for _ in range(max(warmup, 1)):
                self._run()
        torch.cuda.current_stream(device).wait_stream(side)
        for _, opt in stages:  # backward allocates the gradients from the graph's pool
            opt.zero_grad(set_to_none=True)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.losses = self._run()
        if saved is not None:
            self._restore(saved)

    def _run(self) -> List[torch.Tensor]:
        losses = []
        for i, (fn, opt) in enumerate(self.stages):
            amp = (torch.autocast(self._device.type, self.amp_dtype, cache_enabled=False) if self.amp_dtype is not None
                   else contextlib.nullcontext())
            with amp:
                loss = fn(self._inputs)
            if not (isinstance(loss, torch.Tensor) and loss.numel() == 1 and loss.requires_grad):
                raise ValueError(f"GraphedTrainStep: the loss_fn of stage {i} must return a one-element tensor "
                                 f"with grad, got {type(loss).__name__}"
                                 + (f" {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else ""))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.detach())
        return losses

    def _tensors(self):
        """(parameters and buffers of the modules and optimizers, optimizer state owners): what a step changes."""
        seen, tensors = set(), []
        for t in [t for m in self.modules for t in (*m.parameters(), *m.buffers())] + \
                [p for _, opt in self.stages for g in opt.param_groups for p in g["params"]]:
            if id(t) not in seen:
                seen.add(id(t))
                tensors.append(t)
        return tensors

    def _snapshot(self):
        values = [t.detach().clone() for t in self._tensors()]
        state = [{id(p): {k: v.clone() for k, v in s.items() if isinstance(v, torch.Tensor)}
                  for p, s in opt.state.items()} for _, opt in self.stages]
        return values, state

    @torch.no_grad()
    def _restore(self, saved) -> None:
        values, state = saved
        for t, v in zip(self._tensors(), values):
            t.copy_(v)
        for (_, opt), before in zip(self.stages, state):
            for p, s in opt.state.items():
                old = before.get(id(p), {})
                for k, v in s.items():
                    if isinstance(v, torch.Tensor) and k in old:
                        v.copy_(old[k])
                    elif isinstance(v, torch.Tensor):
                        v.zero_()

    def __call__(self, batch: Batch) -> torch.Tensor:
        match_batch(self._inputs, batch)
        for k, t in self._inputs.items():
            t.copy_(batch[k])
        self.graph.replay()
        return self.losses[0].clone() if self.clone else self.losses[0]
