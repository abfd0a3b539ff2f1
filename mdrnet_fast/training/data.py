"""Training data whose order is a function of (seed, global sample number) alone, so a resumed run, or a run on
any number of ranks, sees exactly the batches a single uninterrupted run would."""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch


class Samples(torch.utils.data.Dataset):
    """Item g (a global sample number) -> image, labels and a mask, from (seed, g) alone.

    Each epoch of `base` is a fresh permutation seeded by (seed, epoch); the mask's hole-ratio bin and shape
    are drawn from (seed, g)."""

    def __init__(self, base, size: int, mask_ratio: str, seed: int):
        from ..data import RATIO_BINS, FreeFormMasks

        bins = list(RATIO_BINS.values()) if mask_ratio == "mixed" else [RATIO_BINS[mask_ratio]]
        self.masks = [FreeFormMasks(size, ratio=b) for b in bins]
        self.base, self.seed = base, seed

    def __len__(self):
        return 2 ** 62  # endless: the sampler decides where a run starts and stops

    def __getitem__(self, g):
        n = len(self.base)
        epoch, pos = divmod(int(g), n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + epoch))
        item = dict(self.base[int(perm[pos])])
        rng = np.random.default_rng([self.seed, int(g)])
        item["mask"] = self.masks[int(rng.integers(len(self.masks)))].sample(rng)
        return item


class RankSampler(torch.utils.data.Sampler):
    """Global sample numbers from `start` on, this rank's share of each global batch."""

    def __init__(self, start: int, rank: int, world: int):
        self.start, self.rank, self.world = start, rank, world

    def __iter__(self):
        g = self.start + self.rank
        while True:
            yield g
            g += self.world


def base_dataset(size: int, data: Optional[str] = None, parsing: Optional[str] = None,
                 parsing_format: str = "celebamask-hq", synthetic_size: int = 10000, seed: int = 0):
    """A folder of face images (with parsing maps if given), else the built-in synthetic face set."""
    from ..data import ImageFolderDataset, SyntheticFaces

    if data:
        return ImageFolderDataset(data, size=size, parsing_root=parsing, parsing_format=parsing_format)
    return SyntheticFaces(size=size, length=synthetic_size, seed=seed)


def batches(base, size: int, mask_ratio: str, seed: int, first_sample: int, per_rank: int, rank: int = 0,
            world: int = 1, workers: int = 0):
    """An endless iterator of this rank's batches, starting at global sample number `first_sample`."""
    loader = torch.utils.data.DataLoader(Samples(base, size, mask_ratio, seed), batch_size=per_rank,
                                         sampler=RankSampler(first_sample, rank, world), num_workers=workers,
                                         persistent_workers=workers > 0)
    return iter(loader)
