"""Image-quality metrics of ShowFace's Table 1: L1 (%), PSNR and SSIM, on images in [-1, 1]."""
import torch
import torch.nn.functional as F


def _unit(x):
    return (x.double().clamp(-1, 1) + 1) / 2


def l1_percent(pred, target):
    """Mean absolute error on [0, 1] images, in percent; one value per image."""
    return (_unit(pred) - _unit(target)).abs().flatten(1).mean(1) * 100


def psnr(pred, target):
    """Peak signal-to-noise ratio (dB) on [0, 1] images; one value per image (inf for identical)."""
    mse = (_unit(pred) - _unit(target)).square().flatten(1).mean(1)
    return 10 * torch.log10(1 / mse)


def ssim(pred, target, window=11, sigma=1.5):
    """Structural similarity (Wang et al. 2004): Gaussian window, per channel, averaged; one value per image."""
    x, y = _unit(pred), _unit(target)
    c = x.shape[1]
    g = torch.exp(-((torch.arange(window, dtype=x.dtype) - window // 2) ** 2) / (2 * sigma ** 2))
    g = (g / g.sum()).to(x.device)
    kernel = (g[:, None] * g[None, :]).expand(c, 1, window, window)

    def blur(t):
        return F.conv2d(t, kernel, groups=c)

    mx, my = blur(x), blur(y)
    vx, vy, cov = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1)
