"""An evaluation's table: printed as rows of bins, written as JSON and CSV, and a sample grid PNG per bin."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import torch
from PIL import Image

from .runner import METRICS

HEADERS = {"l1_percent": "L1 (%)", "fid": "FID", "psnr": "PSNR", "ssim": "SSIM", "lpips": "LPIPS"}
DIGITS = {"l1_percent": 3, "fid": 3, "psnr": 3, "ssim": 4, "lpips": 4}
TILE = 256


def format_table(table: Dict[str, Dict[str, Optional[float]]]) -> str:
    """Bins as rows, Table 1's metrics then LPIPS as columns; "off" for a metric not computed."""
    lines = [f"{'mask ratio':<12}" + "".join(f"{HEADERS[m]:>10}" for m in METRICS) + f"{'images':>8}"]
    for name, row in table.items():
        cells = "".join(f"{'off':>10}" if row[m] is None else f"{row[m]:>10.{DIGITS[m]}f}" for m in METRICS)
        lines.append(f"{name:<12}{cells}{row['images']:>8}")
    return "\n".join(lines)


def write_json(table, path: Path, meta: Optional[dict] = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump({"bins": table, **(meta or {})}, f, indent=2)


def write_csv(table, path: Path) -> None:
    """One row per bin: bin, images, then the metrics (empty where off)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["bin", "images", *METRICS])
        for name, row in table.items():
            writer.writerow([name, row["images"], *("" if row[m] is None else f"{row[m]:.6g}" for m in METRICS)])


def _tile(image: torch.Tensor) -> np.ndarray:
    """(3,H,W) in [0, 1] -> a TILE x TILE uint8 tile, the image fitted inside on white (aspect kept)."""
    array = (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    pil = Image.fromarray(array)
    scale = TILE / max(pil.size)
    pil = pil.resize((max(1, round(pil.width * scale)), max(1, round(pil.height * scale))), Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (TILE, TILE), "white")
    canvas.paste(pil, ((TILE - pil.width) // 2, (TILE - pil.height) // 2))
    return np.asarray(canvas)


def save_grid(samples, path: Path) -> None:
    """A PNG of rows (input with its holes white, output, ground truth)."""
    rows = [np.concatenate([_tile(t) for t in row], axis=1) for row in samples]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)
