"""MDRNet inference replayed from a CUDA graph: the whole forward is one graph launch instead of hundreds of
kernel launches from Python, for serving many images of one size. Possible because no op of the forward waits
for the GPU (tests/test_gpu_async.py)."""
import dataclasses
from typing import Optional

import torch

from .mdrnet import MDRNetOutput


def check_as_captured(name: str, new, old: torch.Tensor, who: str = "") -> None:
    """ValueError unless `new` is a tensor of the captured input `old`'s shape, dtype and device: a graph replays
    on the buffers it captured."""
    if isinstance(new, torch.Tensor) and (new.shape, new.dtype, new.device) == (old.shape, old.dtype, old.device):
        return
    got = f"{tuple(new.shape)} {new.dtype} on {new.device}" if isinstance(new, torch.Tensor) else type(new).__name__
    raise ValueError(f"{who}{name} must be {tuple(old.shape)} {old.dtype} on {old.device} as at capture, got {got}")


class GraphedInference:
    """graphed = GraphedInference(model, image, mask[, segmentation]); out = graphed(image, mask[, segmentation])

    Captures model(image, mask, segmentation) in eval mode under no_grad, with example inputs of the shape, dtype
    and memory format every later call must have (ValueError otherwise). Each call copies its inputs into the
    graph's own, replays it and returns an MDRNetOutput of clones (`clone=False`: the graph's own output
    tensors, overwritten by the next call). The model's parameters and memory are read where they are: update
    them in place (optimizers do), never reassign them, or capture again. The backend in force at capture
    (mdrnet_fast.use_backend) is the one the graph replays.
    """

    def __init__(self, model: torch.nn.Module, image: torch.Tensor, mask: torch.Tensor,
                 segmentation: Optional[torch.Tensor] = None, warmup: int = 2, clone: bool = True):
        for name, t in (("image", image), ("mask", mask), ("segmentation", segmentation)):
            if t is not None and not (isinstance(t, torch.Tensor) and t.is_cuda):
                raise ValueError(f"GraphedInference needs CUDA tensors: {name} is "
                                 f"{t.device if isinstance(t, torch.Tensor) else type(t).__name__}")
        self.model, self.clone = model.eval(), clone
        self._inputs = [t.clone(memory_format=torch.preserve_format) if t is not None else None
                        for t in (image, mask, segmentation)]
        side = torch.cuda.Stream(device=image.device)
        side.wait_stream(torch.cuda.current_stream(image.device))
        with torch.no_grad():
            with torch.cuda.stream(side):  # warm up off the capture stream (lazy inits, cuDNN, Triton compiles)
                for _ in range(max(warmup, 1)):
                    model(*self._inputs)
            torch.cuda.current_stream(image.device).wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self._out = model(*self._inputs)

    def __call__(self, image: torch.Tensor, mask: torch.Tensor,
                 segmentation: Optional[torch.Tensor] = None) -> MDRNetOutput:
        for name, new, old in zip(("image", "mask", "segmentation"), (image, mask, segmentation), self._inputs):
            if (new is None) != (old is None):
                raise ValueError(f"{name} must be {'given' if old is not None else 'None'}, as at capture")
            if new is None:
                continue
            check_as_captured(name, new, old)
            old.copy_(new)
        self.graph.replay()
        if not self.clone:
            return self._out
        return dataclasses.replace(self._out, **{k: v.clone() for k, v in vars(self._out).items()
                                                 if isinstance(v, torch.Tensor)})
