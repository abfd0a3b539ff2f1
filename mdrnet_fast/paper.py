"""ShowFace's Table 1 (ACM MM 2022, §4.2), to set an evaluation beside the paper's numbers.

Per dataset and method, per hole-ratio bin (1-20 %, 20-40 %, 40-60 %, irregular masks of Liu et al. 2018): L1 (%),
FID, PSNR and SSIM, as printed in the paper (../shared/seeds/000: CelebA-HQ 28,000 / 2,000 split of Yu et al.
2019; FFHQ last 2,000 images for test). "ShowFace" is the paper's own row ("Ours" there).
"""
from __future__ import annotations

from typing import Dict, List, Optional

BINS = ("1-20%", "20-40%", "40-60%")
METRICS = ("l1_percent", "fid", "psnr", "ssim")
HEADERS = {"l1_percent": "L1 (%)", "fid": "FID", "psnr": "PSNR", "ssim": "SSIM"}
DATASETS = {"celeba-hq": "CelebA-HQ", "ffhq": "FFHQ"}

# method: 12 numbers, L1 (%) x 3 bins, FID x 3, PSNR x 3, SSIM x 3
_TABLE1 = {
    "celeba-hq": {
        "PConv": (1.131, 2.311, 4.363, 12.716, 27.957, 42.594, 32.240, 26.085, 21.900, 0.941, 0.862, 0.762),
        "DeepFillv2": (0.788, 2.066, 3.968, 9.766, 22.793, 29.243, 32.700, 25.998, 21.943, 0.944, 0.848, 0.736),
        "PIC": (0.780, 2.036, 4.311, 4.190, 11.035, 21.360, 33.006, 25.961, 21.263, 0.951, 0.859, 0.730),
        "CTSDG": (1.350, 2.213, 3.900, 9.171, 14.324, 22.889, 32.198, 26.823, 22.490, 0.927, 0.856, 0.747),
        "DSI": (0.820, 2.077, 4.149, 9.037, 20.327, 29.040, 32.699, 26.107, 21.708, 0.938, 0.831, 0.704),
        "ICT": (0.949, 2.004, 3.901, 3.136, 8.715, 16.747, 33.416, 26.639, 22.013, 0.959, 0.879, 0.765),
        "ShowFace": (0.585, 1.451, 2.937, 2.369, 6.410, 12.086, 35.772, 28.669, 24.177, 0.968, 0.900, 0.800),
    },
    "ffhq": {
        "PConv": (0.720, 2.178, 4.411, 12.208, 30.403, 45.709, 32.592, 25.422, 21.237, 0.955, 0.867, 0.761),
        "DeepFillv2": (0.715, 2.104, 4.250, 12.062, 29.276, 40.295, 32.428, 25.470, 21.301, 0.946, 0.845, 0.725),
        "PIC": (0.709, 2.099, 4.573, 5.411, 14.344, 27.334, 32.640, 25.490, 20.819, 0.952, 0.854, 0.719),
        "CTSDG": (0.419, 1.532, 3.569, 3.916, 13.477, 28.495, 34.946, 27.044, 22.272, 0.968, 0.888, 0.765),
        "DSI": (0.746, 2.067, 4.340, 10.483, 25.772, 39.127, 32.659, 25.780, 21.241, 0.941, 0.834, 0.702),
        "ICT": (0.982, 2.085, 4.036, 3.244, 8.360, 14.149, 33.172, 26.373, 21.809, 0.959, 0.877, 0.762),
        "ShowFace": (0.470, 1.395, 3.068, 2.473, 7.170, 13.748, 36.046, 28.333, 23.575, 0.972, 0.903, 0.797),
    },
}


def table1(dataset: str) -> Dict[str, Dict[str, Dict[str, float]]]:
    """{method: {bin: {metric: value}}} of Table 1 for "celeba-hq" or "ffhq"."""
    if dataset not in _TABLE1:
        raise ValueError(f"dataset must be one of {', '.join(DATASETS)}, got {dataset!r}")
    return {method: {b: {m: row[3 * i + j] for i, m in enumerate(METRICS)} for j, b in enumerate(BINS)}
            for method, row in _TABLE1[dataset].items()}


def _cell(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.3f}"  # the paper's three decimals


def compare(ours: Dict[str, Dict[str, float]], dataset: str, name: str = "this checkpoint") -> str:
    """Table 1 of `dataset` with a row for `ours` ({bin: {metric: value}}, as `mdrnet-fast eval` gives; a metric
    it lacks shows n/a), laid out as the paper's: a column per metric and bin."""
    rows: List[List[str]] = [["method"] + [f"{HEADERS[m]} {b}" for m in METRICS for b in BINS]]
    paper = table1(dataset)
    for method, bins in paper.items():
        rows.append([method] + [_cell(bins[b][m]) for m in METRICS for b in BINS])
    rows.append([name] + [_cell(ours.get(b, {}).get(m)) for m in METRICS for b in BINS])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [f"ShowFace Table 1, {DATASETS[dataset]} (lower L1 and FID, higher PSNR and SSIM are better):"]
    lines += ["  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(r, widths)))
              for r in rows]
    return "\n".join(lines)
