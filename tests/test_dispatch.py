"""Backend availability, selection, forcing, and the once-only log of a slow path."""
import logging
import os
import subprocess
import sys

import pytest
import torch

import mdrnet_fast
from mdrnet_fast import ops
from mdrnet_fast._dispatch import _KERNELS, _WARNED, resolve


def test_backends_report_availability_and_reasons():
    info = mdrnet_fast.backends()
    assert set(info) == {"reference", "cpu", "triton", "cuda"}
    for name, entry in info.items():
        assert isinstance(entry["available"], bool)
        assert entry["available"] or entry["reason"], f"{name} unavailable without a reason"
    assert info["cpu"]["available"], info["cpu"]["reason"]  # CI builds the extension
    assert "partial_conv2d.forward" in info["cpu"]["kernels"]


def test_set_get_and_context_manager():
    assert mdrnet_fast.get_backend() == "auto"
    with mdrnet_fast.use_backend("reference"):
        assert mdrnet_fast.get_backend() == "reference"
        with mdrnet_fast.use_backend("cpu"):
            assert mdrnet_fast.get_backend() == "cpu"
        assert mdrnet_fast.get_backend() == "reference"
    mdrnet_fast.set_backend("CPU")
    assert mdrnet_fast.get_backend() == "cpu"


def test_auto_picks_cpu_kernel_and_reference_otherwise(monkeypatch):
    cpu = torch.device("cpu")
    assert resolve("partial_conv2d", cpu) == "cpu"
    monkeypatch.delitem(_KERNELS, ("spade_modulate.forward", "cpu"), raising=False)
    assert resolve("spade_modulate", cpu) == "reference"


def test_forcing_an_unavailable_backend_raises():
    with mdrnet_fast.use_backend("cuda"), pytest.raises(RuntimeError, match="cuda"):
        ops.spade_modulate(*(torch.randn(1, 2, 3, 3) for _ in range(3)))


def test_env_var_selects_backend():
    code = "import mdrnet_fast; print(mdrnet_fast.get_backend())"
    env = dict(os.environ, MDRNET_FAST_BACKEND="reference")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "reference"
    env["MDRNET_FAST_BACKEND"] = "nonsense"  # logged, not raised (tests/test_cli_errors.py)
    bad = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert bad.stdout.strip() == "auto" and "'nonsense' is not a backend" in bad.stderr


def test_missing_kernel_is_logged_once(caplog, monkeypatch):
    for direction in ("forward", "backward"):
        monkeypatch.delitem(_KERNELS, (f"spade_modulate.{direction}", "cpu"), raising=False)
    _WARNED.clear()
    x = torch.randn(1, 2, 3, 3)
    with caplog.at_level(logging.WARNING, logger="mdrnet_fast"), mdrnet_fast.use_backend("cpu"):
        ops.spade_modulate(x, x, x)
        ops.spade_modulate(x, x, x)
    msgs = [r.getMessage() for r in caplog.records if "spade_modulate" in r.getMessage()]
    assert len(msgs) == 1 and "no kernel" in msgs[0]


def test_cuda_order_covers_every_family_the_ops_resolve():
    """Every kernel family an op resolves has a measured order on CUDA tensors (no family falls back to the
    default order unnoticed when a new op is added)."""
    import re
    from pathlib import Path

    from mdrnet_fast import _dispatch

    ops_dir = Path(mdrnet_fast.__file__).parent / "ops"
    families = {m for f in ops_dir.glob("*.py") for m in re.findall(r'resolve\("(\w+)"', f.read_text())}
    assert families and families == set(_dispatch._CUDA_ORDER)
    for family, order in _dispatch._CUDA_ORDER.items():
        assert set(order) <= {"cuda", "triton"}, family


def test_auto_takes_the_reference_where_measured_faster_on_cuda(caplog):
    """Patch attention on CUDA tensors: the reference beat the Triton flash kernel on the GPU; auto says so
    once. Resolving needs no GPU (no tensor is made)."""
    _WARNED.clear()
    with caplog.at_level(logging.WARNING, logger="mdrnet_fast"):
        assert resolve("patch_attention", torch.device("cuda")) == "reference"
        assert resolve("patch_attention", torch.device("cuda")) == "reference"
    assert sum("measured faster" in r.getMessage() for r in caplog.records) == 1
    with mdrnet_fast.use_backend("reference"):
        assert resolve("patch_attention", torch.device("cuda")) == "reference"
