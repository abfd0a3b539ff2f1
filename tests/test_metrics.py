"""L1 (%), PSNR and SSIM (torchmetrics) against independent computations on the same images."""
import math

import torch
import torch.nn.functional as F

from mdrnet_fast.metrics import l1_percent, psnr, ssim


def _pair(seed=0, shape=(3, 3, 37, 45)):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1
    y = (x + 0.2 * torch.randn(shape, generator=g, dtype=torch.float64)).clamp(-1, 1)
    return x, y


def _psnr_direct(pred, target):
    mse = (((pred + 1) / 2 - (target + 1) / 2) ** 2).flatten(1).mean(1)
    return 10 * torch.log10(1 / mse)


def _ssim_direct(pred, target, window=11, sigma=1.5):
    """Wang et al. (2004) with a Gaussian window; borders reflect-padded and kept in the mean (torchmetrics'
    convention), variances clamped at 0."""
    x, y = (pred + 1) / 2, (target + 1) / 2
    c = x.shape[1]
    g = torch.exp(-((torch.arange(window, dtype=x.dtype) - window // 2) ** 2) / (2 * sigma ** 2))
    g = g / g.sum()
    kernel = (g[:, None] * g[None, :]).expand(c, 1, window, window)
    pad = window // 2

    def blur(t):
        return F.conv2d(F.pad(t, (pad,) * 4, mode="reflect"), kernel, groups=c)

    mx, my = blur(x), blur(y)
    vx = (blur(x * x) - mx ** 2).clamp(min=0)
    vy = (blur(y * y) - my ** 2).clamp(min=0)
    cov = blur(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1)


def test_psnr_and_ssim_match_direct_formulas():
    for seed in range(3):
        x, y = _pair(seed)
        torch.testing.assert_close(psnr(y, x), _psnr_direct(y, x))
        torch.testing.assert_close(ssim(y, x), _ssim_direct(y, x), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(l1_percent(y, x), ((y - x).abs() / 2).flatten(1).mean(1) * 100)


def test_float32_inputs_give_float64_scores():
    x, y = _pair(3)
    torch.testing.assert_close(psnr(y.float(), x.float()), _psnr_direct(y, x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ssim(y.float(), x.float()), _ssim_direct(y, x), rtol=1e-4, atol=1e-4)


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
