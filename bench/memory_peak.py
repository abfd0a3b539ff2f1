"""What holds the memory at the peak of an MDRNet inference: the live tensors, by the op and module that made them.

    python bench/memory_peak.py --size 1280x768 --precision bf16          # paper preset, channels_last, CPU
    python bench/memory_peak.py --preset cpu-demo --size 512x768 --top 8

Every op's outputs are recorded under a TorchDispatchMode; a weakref finalizer per tensor takes its storage off
the live set when the last tensor viewing it dies. Tensors under --min-mib are left out, and so are the
temporaries inside a fused op (the profiler's allocation events count those: tests/test_inpaint.py). Prints the
peak with its live tensors, then the peak within each of the model's top-level stages.
"""
from __future__ import annotations

import argparse
import sys
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class LiveTensors(TorchDispatchMode):
    """The live set of op outputs (storages of at least `min_bytes`), its peak overall and per stage."""

    def __init__(self, min_bytes: int):
        super().__init__()
        self.min_bytes, self.module = min_bytes, ["(model)"]
        self.live, self.refs, self.bytes = {}, {}, 0
        self.peak, self.stages = (0, "", []), {}

    def _release(self, key):
        self.refs[key] -= 1
        if not self.refs[key]:
            del self.refs[key]
            self.bytes -= self.live.pop(key)[0]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                continue
            storage = t.untyped_storage()
            key, size = storage.data_ptr(), storage.nbytes()
            if size < self.min_bytes:
                continue
            if key not in self.live:
                op = str(func).removeprefix("aten.").removesuffix(".default")
                self.live[key] = (size, op, tuple(t.shape), str(t.dtype).removeprefix("torch."), self.module[-1])
                self.refs[key], self.bytes = 0, self.bytes + size
            self.refs[key] += 1
            weakref.finalize(t, self._release, key)
        snapshot = lambda: (self.bytes, self.module[-1], sorted(self.live.values(), key=lambda v: -v[0]))  # noqa: E731
        stage = self.module[-1].split(".")[0]
        if self.bytes > self.stages.get(stage, (0,))[0]:
            self.stages[stage] = snapshot()
        if self.bytes > self.peak[0]:
            self.peak = snapshot()
        return out

    def watch(self, model: torch.nn.Module):
        """Module names for the records: forward hooks on every submodule."""
        for name, module in model.named_modules():
            if name:
                module.register_forward_pre_hook(lambda _m, _a, name=name: self.module.append(name))
                module.register_forward_hook(lambda *_: self.module.pop() and None)  # a hook returns None


def _print(title, snapshot, top):
    total, where, tensors = snapshot
    print(f"{title}: {total / 2 ** 20:.0f} MiB live in {where}")
    for size, op, shape, dtype, module in tensors[:top]:
        print(f"  {size / 2 ** 20:9.1f} MiB  {op:32s} {str(shape):24s} {dtype:9s} {module}")


def main(argv=None) -> int:
    from mdrnet_fast.commands.common import PRESETS
    from mdrnet_fast.models import MDRNet

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="paper")
    parser.add_argument("--size", default="1280x768", help="WxH, multiples of the model's size multiple")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="bf16")
    parser.add_argument("--min-mib", type=float, default=1.0)
    parser.add_argument("--top", type=int, default=12, help="tensors listed per peak")
    args = parser.parse_args(argv)
    w, h = map(int, args.size.lower().split("x"))
    torch.manual_seed(0)
    model = MDRNet(**PRESETS[args.preset]).eval().to(memory_format=torch.channels_last)
    image = (torch.rand(1, 3, h, w) * 2 - 1).contiguous(memory_format=torch.channels_last)
    mask = torch.ones(1, 1, h, w)
    mask[..., h // 4:h // 2, w // 4:w // 2] = 0
    live = LiveTensors(int(args.min_mib * 2 ** 20))
    live.watch(model)
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=args.precision == "bf16"), live:
        model(image, mask)
    _print(f"peak ({args.preset}, {w}x{h}, {args.precision})", live.peak, args.top)
    for stage, snapshot in live.stages.items():
        _print(f"\nwithin {stage}", snapshot, min(args.top, 6))
    return 0


if __name__ == "__main__":
    sys.exit(main())
