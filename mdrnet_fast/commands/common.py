"""Pieces shared by the model commands: presets, checkpoints, image I/O, sample grids."""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch


class CommandError(Exception):
    """A usage or bad-input error of a command: `mdrnet-fast` prints its message in one line and exits 2."""


def check_minimum(args, minimum: int, *names: str) -> None:
    """CommandError for the first of the numeric arguments `names` (argparse dests) below `minimum`; unset
    (None) ones pass."""
    for name in names:
        value = getattr(args, name)
        if value is not None and value < minimum:
            raise CommandError(f"--{name.replace('_', '-')} must be >= {minimum}, got {value}")


def add_backend_argument(parser) -> None:
    from .._dispatch import BACKENDS

    parser.add_argument("--backend", type=str.lower, choices=BACKENDS, metavar="NAME",
                        help=f"mdrnet_fast kernel backend: {', '.join(BACKENDS)} "
                             "(unset: the MDRNET_FAST_BACKEND environment variable, else auto)")


# Model sizes. `paper` is ShowFace's (256², n=14, m=128); `cpu-demo` trains in minutes on 2 CPU cores.
PRESETS = {
    "paper": dict(image_size=256, base_channels=64, style_channels=256, memory_slots=128, parser_channels=32,
                  gated_blocks=4, spade_blocks=2, spade_hidden=128),
    "cpu-demo": dict(image_size=64, base_channels=16, style_channels=32, memory_slots=16, parser_channels=8,
                     gated_blocks=1, spade_blocks=1, spade_hidden=32),
}


def default_memory_format(device: torch.device) -> torch.memory_format:
    """channels_last on CPU, where it measured faster for every backend (oneDNN's convolutions, and no
    layout copies between layers); NCHW on GPU until measured there."""
    return torch.channels_last if device.type == "cpu" else torch.contiguous_format


def default_preset() -> str:
    return "paper" if torch.cuda.is_available() else "cpu-demo"


def save_atomic(obj, path: Path) -> None:
    """torch.save to a temporary file, then rename: a crash never leaves a half-written checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# what every command reads from a checkpoint; `train --resume` needs more (train.RESUME_KEYS)
CHECKPOINT_KEYS = ("stage", "config", "model")


def load_checkpoint(path, map_location="cpu", keys=CHECKPOINT_KEYS) -> dict:
    """torch.load of a checkpoint written by `mdrnet-fast train`; CommandError naming the path if it is not one."""
    path = Path(path)
    if not path.exists():
        raise CommandError(f"checkpoint {path} not found")
    if not path.is_file():
        raise CommandError(f"checkpoint {path} is a folder, not a file" if path.is_dir()
                           else f"checkpoint {path} is not a regular file")
    if path.stat().st_size == 0:
        raise CommandError(f"checkpoint {path} is empty (0 bytes)")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except (PermissionError, MemoryError):
        raise  # not the file's content
    except Exception as exc:  # a cut or garbled file fails in many ways: zip, pickle, EOF, even OSError (a seek)
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
        raise CommandError(f"checkpoint {path} is not a mdrnet-fast checkpoint (truncated or corrupt: "
                           f"{reason})") from exc
    if not isinstance(ckpt, dict):
        raise CommandError(f"checkpoint {path} is not a mdrnet-fast checkpoint (it holds a {type(ckpt).__name__})")
    missing = [k for k in keys if k not in ckpt]
    if missing:
        raise CommandError(f"checkpoint {path} is not a mdrnet-fast checkpoint (no {', '.join(map(repr, missing))})")
    return ckpt


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """(3,H,W) in [-1,1] -> (H,W,3) uint8."""
    return ((image.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()


def save_png(image: torch.Tensor, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(to_uint8(image)).save(path)


def sample_grid(rows, path: Path) -> None:
    """rows: list of (3,H,W) tensor lists, e.g. [input, coarse, output, truth] per sample -> one PNG."""
    from PIL import Image

    tiles = [np.concatenate([to_uint8(t) for t in row], axis=1) for row in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(tiles, axis=0)).save(path)
