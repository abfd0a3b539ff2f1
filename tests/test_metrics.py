"""L1 (%), PSNR and SSIM on known cases."""
import math

import torch

from mdrnet_fast.metrics import l1_percent, psnr, ssim


def test_identical_images():
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.all(l1_percent(x, x) == 0) and torch.all(torch.isinf(psnr(x, x)))
    torch.testing.assert_close(ssim(x, x), torch.ones(2, dtype=torch.float64))


def test_known_values():
    x = torch.zeros(1, 3, 16, 16)
    y = x + 0.2  # 0.1 apart on the [0, 1] scale
    torch.testing.assert_close(l1_percent(y, x), torch.tensor([10.0], dtype=torch.float64))
    torch.testing.assert_close(psnr(y, x), torch.tensor([20.0], dtype=torch.float64))
    noisy = (x + 0.5 * torch.randn_like(x)).clamp(-1, 1)
    assert ssim(noisy, x).item() < ssim(y, x).item() <= 1
    assert not math.isnan(ssim(noisy, x).item())
