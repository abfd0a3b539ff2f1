"""Image-quality metrics of ShowFace's Table 1, per image, on images in [-1, 1]: L1 (%) here, PSNR and SSIM
from torchmetrics (tested there against the reference implementations). FID and LPIPS, which need network
weights, are in mdrnet_fast.evaluation."""
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure


def _unit(x):
    return (x.double().clamp(-1, 1) + 1) / 2


def l1_percent(pred, target):
    """Mean absolute error on [0, 1] images, in percent; one value per image."""
    return (_unit(pred) - _unit(target)).abs().flatten(1).mean(1) * 100


def psnr(pred, target):
    """Peak signal-to-noise ratio (dB) on [0, 1] images; one value per image (inf for identical)."""
    return peak_signal_noise_ratio(_unit(pred), _unit(target), data_range=1.0, reduction="none", dim=(1, 2, 3))


def ssim(pred, target):
    """Structural similarity (Wang et al. 2004) as torchmetrics computes it: 11x11 Gaussian window of sigma 1.5,
    borders reflect-padded and included in the mean, channels averaged; one value per image."""
    return structural_similarity_index_measure(_unit(pred), _unit(target), data_range=1.0, reduction="none")
