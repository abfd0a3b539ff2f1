"""Backend selection and the kernel registry.

Every op has a pure-PyTorch reference (plain autograd) and a custom-op path whose forward and
backward call *kernels* looked up here by (kernel name, backend). A backend folder registers the
kernels it has when it is imported (`register_kernel`). A backend asked for a kernel it lacks runs
the explicit-gradient PyTorch version in `mdrnet_fast/composite/` and says so once in the log:
slowness is never silent.
"""
from __future__ import annotations

import contextlib
import importlib
import logging
import os
from typing import Callable, Dict, Iterator, Optional, Tuple

import torch

log = logging.getLogger("mdrnet_fast")

BACKENDS = ("auto", "reference", "cpu", "triton", "cuda")
FAST_BACKENDS = ("cpu", "triton", "cuda")
# module that registers each fast backend's kernels on import
_BACKEND_MODULES = {
    "cpu": "mdrnet_fast.cpu_kernels",
    "triton": "mdrnet_fast.triton_kernels",
    "cuda": "mdrnet_fast.cuda_kernels",
    "composite": "mdrnet_fast.composite",
}
# `auto` tries these fast backends in order, per device type.
_AUTO_ORDER = {"cpu": ("cpu",), "cuda": ("cuda", "triton")}
# On CUDA tensors, per kernel family, the order measured fastest on a GPU (fp32, forward and forward+backward
# rows of bench/results/nvidia-h100-80gb-hbm3-ops-20261124.json; README "Measured (GPU)"). The CUDA C++
# kernels beat the Triton ones in every row but one (multi-channel partial conv forward, where the fused
# backward loses more). An empty order means the reference: for masked patch attention, cuBLAS's batched
# matmuls and softmax beat the Triton flash kernel at every measured size (32^2 and 64^2 maps). The flash
# kernel's gain is memory (the N x N scores are never stored): force it with MDRNET_FAST_BACKEND=triton.
# `mdrnet-fast bench-report TABLE.json` prints this order for a table (bench_report.measured_order), and
# tests/test_bench_report.py holds this dict to the newest committed GPU table.
_CUDA_ORDER = {
    "partial_conv2d": ("cuda", "triton"),
    "gated_activation": ("cuda", "triton"),
    "region_pool": ("cuda", "triton"),
    "region_broadcast": ("cuda", "triton"),
    "memory_read": ("cuda", "triton"),
    "memory_update": ("cuda", "triton"),
    "spade_modulate": ("cuda", "triton"),
    "patch_attention": (),
}

_KERNELS: Dict[Tuple[str, str], Callable] = {}
_WARNED: set = set()
_AVAILABILITY: Dict[str, Tuple[bool, str]] = {}


def _check_name(name: str) -> str:
    if not isinstance(name, str) or name.lower() not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {name!r}")
    return name.lower()


def _initial_backend() -> str:
    """MDRNET_FAST_BACKEND, or auto; a bad value is logged, not raised: it must not break `import mdrnet_fast`
    (nor `mdrnet-fast --help`, which would tell how to fix it)."""
    name = os.environ.get("MDRNET_FAST_BACKEND", "auto") or "auto"
    if name.lower() in BACKENDS:
        return name.lower()
    log.warning("mdrnet_fast: MDRNET_FAST_BACKEND=%r is not a backend (one of %s); using 'auto'",
                name, ", ".join(BACKENDS))
    return "auto"


_current = _initial_backend()


def get_backend() -> str:
    """The backend setting now in force ("auto" unless set)."""
    return _current


def set_backend(name: str) -> None:
    """Set the backend for this process: one of "auto", "reference", "cpu", "triton", "cuda"."""
    global _current
    _current = _check_name(name)


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Context manager: run the enclosed ops with backend `name` (process-wide, restored on exit)."""
    global _current
    previous, _current = _current, _check_name(name)
    try:
        yield
    finally:
        _current = previous


# ---------------------------------------------------------------- kernel registry

def register_kernel(kernel: str, backend: str) -> Callable[[Callable], Callable]:
    """Decorator: `fn` implements `kernel` (e.g. "partial_conv2d.forward") for `backend`."""

    def wrap(fn: Callable) -> Callable:
        _KERNELS[(kernel, backend)] = fn
        return fn

    return wrap


def has_kernel(kernel: str, backend: str) -> bool:
    return backend_available(backend)[0] and (kernel, backend) in _KERNELS


def get_kernel(kernel: str, backend: str) -> Callable:
    """The kernel of `backend`, or the composite PyTorch one (logged once) where it has none."""
    _load("composite")
    if backend != "composite" and has_kernel(kernel, backend):
        return _KERNELS[(kernel, backend)]
    if backend != "composite":
        warn_once((kernel, backend), "mdrnet_fast: backend %r has no kernel for %s yet; running the "
                  "explicit-gradient PyTorch version (mdrnet_fast/composite), not a fused kernel", backend, kernel)
    return _KERNELS[(kernel, "composite")]


def warn_once(key, msg: str, *args) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        log.warning(msg, *args)


def _load(backend: str) -> None:
    """Import the backend's kernel module once; remember why not if it fails."""
    if backend in _AVAILABILITY:
        return
    try:
        reason = _prerequisites(backend)
        if reason is None:
            importlib.import_module(_BACKEND_MODULES[backend])
            _AVAILABILITY[backend] = (True, "")
        else:
            _AVAILABILITY[backend] = (False, reason)
    except Exception as exc:  # a broken backend must never break `import mdrnet_fast`
        _AVAILABILITY[backend] = (False, f"{type(exc).__name__}: {exc}")


def _prerequisites(backend: str) -> Optional[str]:
    """None when the backend's runtime is present, else why not."""
    if backend == "cpu":
        try:
            importlib.import_module("mdrnet_fast._C")
        except ImportError as exc:
            return f"C++ extension mdrnet_fast._C not built ({exc}); run `pip install --no-build-isolation -e .`"
    elif backend == "triton":
        if not (torch.cuda.is_available() or triton_interpreter()):
            return "no CUDA device (set TRITON_INTERPRET=1 to run Triton kernels on CPU tensors, slowly)"
        try:
            importlib.import_module("triton")
        except ImportError:
            return "triton is not installed (pip install triton)"
    elif backend == "cuda":
        if not torch.cuda.is_available():
            return "no CUDA device"
        try:
            importlib.import_module("mdrnet_fast._C_cuda")
        except ImportError as exc:
            return f"CUDA extension mdrnet_fast._C_cuda not built ({exc})"
    return None


def triton_interpreter() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def backend_available(backend: str) -> Tuple[bool, str]:
    """(available, reason if not) for one fast backend."""
    _load(backend)
    return _AVAILABILITY[backend]


def backends() -> Dict[str, dict]:
    """Each backend's availability, why not, and which kernels it has."""
    out = {"reference": {"available": True, "reason": "", "kernels": ["all (plain PyTorch)"]}}
    for name in FAST_BACKENDS:
        ok, reason = backend_available(name)
        kernels = sorted(k for (k, b) in _KERNELS if b == name)
        out[name] = {"available": ok, "reason": reason, "kernels": kernels}
    return out


def _runs_on(backend: str, device: torch.device) -> bool:
    if backend == "cpu":
        return device.type == "cpu"
    if backend == "triton":
        return device.type == "cuda" or (device.type == "cpu" and triton_interpreter())
    if backend == "cuda":
        return device.type == "cuda"
    return False


def resolve(op: str, device: torch.device) -> str:
    """The backend that runs `op` (a kernel family, e.g. "region_pool") on `device` under the current setting.

    A forced fast backend that is unavailable or cannot run on the device raises; `auto` takes the
    first fast backend with a forward kernel for `op`, else the reference (logged once). Meta tensors (a model
    built before it is materialised) take the reference, whatever the setting.
    """
    setting = _current
    if setting == "reference" or device.type == "meta":  # meta tensors have shapes only: the reference gives them
        return "reference"
    if setting != "auto":
        ok, reason = backend_available(setting)
        if not ok:
            raise RuntimeError(f"mdrnet_fast backend {setting!r} is not available: {reason}")
        if not _runs_on(setting, device):
            raise RuntimeError(f"mdrnet_fast backend {setting!r} cannot run {op} on {device.type} tensors")
        return setting
    order = _AUTO_ORDER.get(device.type, ())
    if device.type == "cuda":
        order = _CUDA_ORDER.get(op, order)
        if not order:
            if not torch.compiler.is_compiling():
                warn_once((op, device.type), "mdrnet_fast: auto runs %s on cuda with the PyTorch reference, measured "
                          "faster than the fast kernels (mdrnet_fast._dispatch._CUDA_ORDER); "
                          "MDRNET_FAST_BACKEND=triton forces the Triton kernel", op)
            return "reference"
    for candidate in order:
        if has_kernel(f"{op}.forward", candidate) and _runs_on(candidate, device):
            return candidate
    if not torch.compiler.is_compiling():
        warn_once((op, device.type), "mdrnet_fast: no fast kernel for %s on %s yet; using the PyTorch reference",
                  op, device.type)
    return "reference"
