"""mdrnet_fast.evaluation and `mdrnet-fast eval`: FID (torchmetrics over our FID Inception) against a direct
NumPy/SciPy Fréchet distance of the same features, LPIPS against its formula, the weight files, the mask sets,
and the command's table, JSON, CSV and grids. Weights here are random: the command never runs without files."""
import csv
import json

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
from PIL import Image

from mdrnet_fast.cli import main
from mdrnet_fast.evaluation import (LPIPS, DrawnMasks, FIDInception, MaskFolder, EvalImages, evaluate,
                                    synthetic_images)
from mdrnet_fast.evaluation.runner import _fid_metric


def _frechet(real: np.ndarray, fake: np.ndarray) -> float:
    """The Fréchet distance of two Gaussians fitted to feature rows (Heusel et al. 2017), in NumPy/SciPy."""
    mu1, mu2 = real.mean(0), fake.mean(0)
    s1, s2 = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean).real)


class _Features(torch.nn.Module):
    """A small random feature extractor that records what it saw (FID's real/fake calls, in order)."""
    num_features = 12

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.weight = torch.nn.Parameter(torch.randn(12, 3, 5, 5, generator=g), requires_grad=False)
        self.seen = []

    def forward(self, images):
        f = F.conv2d(images.float(), self.weight, stride=2).relu().mean((2, 3))
        self.seen.append(f.double())
        return f


def test_fid_matches_scipy_frechet_distance():
    g = torch.Generator().manual_seed(1)
    real, fake = torch.rand(40, 3, 24, 24, generator=g), torch.rand(40, 3, 24, 24, generator=g) ** 2
    features = _Features()
    fid = _fid_metric(features)
    fid.update(real, real=True)
    fid.update(fake, real=False)
    ours = float(fid.compute())
    expected = _frechet(features.seen[0].numpy(), features.seen[1].numpy())
    assert ours > 0 and ours == pytest.approx(expected, rel=1e-6, abs=1e-9)


def _random_inception(seed=0):
    """FIDInception with random weights and batch-norm statistics that keep activations in range."""
    torch.manual_seed(seed)
    net = FIDInception()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 2)
    return net


def test_fid_inception_layout_and_file(tmp_path):
    net = _random_inception()
    state = net.state_dict()
    # torchvision's Inception3 names and shapes (the published FID weights use them)
    assert state["Conv2d_1a_3x3.conv.weight"].shape == (32, 3, 3, 3)
    assert state["Mixed_6e.branch7x7_2.conv.weight"].shape == (192, 192, 1, 7)
    assert state["Mixed_7c.branch3x3dbl_1.conv.weight"].shape == (448, 2048, 1, 1)
    assert sum(p.numel() for p in net.parameters()) == 21_785_568  # Inception v3 without fc and aux head
    images = torch.rand(2, 3, 61, 47)
    features = net(images)
    assert features.shape == (2, 2048) and features.dtype == torch.float32
    # a file as published: a classifier for 1008 classes, no num_batches_tracked
    published = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    published |= {"fc.weight": torch.randn(1008, 2048), "fc.bias": torch.randn(1008)}
    torch.save(published, tmp_path / "pt_inception.pth")
    loaded = FIDInception.from_file(tmp_path / "pt_inception.pth")
    torch.testing.assert_close(loaded(images), features)


@pytest.mark.parametrize("content, message", [
    (None, "is not a file"),
    (b"not a checkpoint", "is not a PyTorch weights file"),
    ({"Conv2d_1a_3x3.conv.weight": torch.zeros(32, 3, 3, 3)}, "does not fit (missing"),
    ({"a": 1}, "holds no state_dict"),
])
def test_bad_inception_file_is_one_error(tmp_path, content, message):
    path = tmp_path / "weights.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(ValueError, match="--inception-weights") as info:
        FIDInception.from_file(path)
    assert message in str(info.value) and "\n" not in str(info.value)


def _lpips_direct(net: LPIPS, x, y):
    """LPIPS v0.1 written out: scaled inputs, trunk features at the taps, unit-normalised over channels, squared
    difference weighted by the 1x1 heads, averaged over space, summed over layers (float64)."""
    net = net.double()
    shift = torch.tensor([-0.030, -0.088, -0.188], dtype=torch.float64).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450], dtype=torch.float64).view(1, 3, 1, 1)
    total = torch.zeros(x.shape[0], dtype=torch.float64)
    feats = []
    for img in (x, y):
        h, out = (img.double() * 2 - 1 - shift) / scale, []
        for i, layer in enumerate(net.features):
            h = layer(h)
            if i in net.taps:
                out.append(h / (torch.sqrt((h * h).sum(1, keepdim=True)) + 1e-10))
        feats.append(out)
    for head, a, b in zip(net.heads, *feats):
        w = head.weight.view(-1)
        total += (((a - b) ** 2) * w.view(1, -1, 1, 1)).sum(1).mean((1, 2))
    return total


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_matches_its_formula(net):
    torch.manual_seed(2)
    metric = LPIPS(net)
    for head in metric.heads:
        head.weight.data.uniform_(0, 1)  # LPIPS's learned weights are non-negative
    x, y = torch.rand(2, 3, 70, 66), torch.rand(2, 3, 70, 66)
    ours = metric(x, y)
    torch.testing.assert_close(ours.double(), _lpips_direct(metric, x, y), rtol=1e-4, atol=1e-6)
    assert torch.all(metric.float()(x, x) == 0)


def _alexnet_file(tmp_path):
    """A file laid out as torchvision's alexnet-owt-7be5be79.pth (features.N.*, classifier.*)."""
    torch.manual_seed(3)
    state = {f"features.{k}": v for k, v in LPIPS("alex").features.state_dict().items()}
    state |= {"classifier.1.weight": torch.randn(10, 9216), "classifier.1.bias": torch.randn(10)}
    torch.save(state, tmp_path / "alexnet-owt-7be5be79.pth")
    return state, tmp_path / "alexnet-owt-7be5be79.pth"


def test_lpips_loads_torchvision_trunk_and_heads(tmp_path):
    state, trunk = _alexnet_file(tmp_path)
    metric = LPIPS.from_files([trunk])  # heads: torchmetrics' copy of LPIPS's alex.pth
    torch.testing.assert_close(metric.features[3].weight, state["features.3.weight"])
    assert all(float(h.weight.min()) >= 0 and float(h.weight.max()) > 0 for h in metric.heads)
    heads = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate((64, 192, 384, 256, 256))}
    torch.save(heads, tmp_path / "alex.pth")
    metric = LPIPS.from_files([tmp_path / "alex.pth", trunk])  # either order
    torch.testing.assert_close(metric.heads[2].weight, heads["lin2.model.1.weight"])
    with pytest.raises(ValueError, match="one torchvision AlexNet or VGG-16 file"):
        LPIPS.from_files([tmp_path / "alex.pth"])


def test_drawn_masks_are_reproducible_and_in_their_bins():
    from mdrnet_fast.data import RATIO_BINS

    masks = DrawnMasks(seed=7)
    for k, (lo, hi) in enumerate(RATIO_BINS.values()):
        a, b = masks.valid(k, 3, (40, 56)), masks.valid(k, 3, (40, 56))
        assert a.shape == (40, 56) and np.array_equal(a, b) and lo <= (~a).mean() <= hi
    assert not np.array_equal(masks.valid(0, 3, (40, 56)), DrawnMasks(seed=8).valid(0, 3, (40, 56)))


def _mask_png(path, ratio, size=(48, 48), hole_value=0):
    h, w = size
    rows = int(round(ratio * h))
    array = np.full(size, 255 - hole_value, np.uint8)
    array[:rows] = hole_value
    Image.fromarray(array).save(path)


def test_mask_folder_sorts_by_hole_ratio_and_resizes(tmp_path):
    for name, ratio in (("a", 0.1), ("b", 0.125), ("c", 0.5), ("d", 0.75)):
        _mask_png(tmp_path / f"{name}.png", ratio)
    masks = MaskFolder(tmp_path)
    assert [len(v) for v in masks.files.values()] == [2, 0, 1] and masks.unused == 1
    assert masks.empty_bins() == ["20-40%"] and "1 outside every bin" in masks.describe()
    valid = masks.valid(0, 1, (96, 80))  # mask b, resized
    assert valid.shape == (96, 80) and (~valid).mean() == pytest.approx(0.125, abs=0.02)
    inverted = MaskFolder(tmp_path, invert=True)  # the same files read white = hole
    assert [len(v) for v in inverted.files.values()] == [0, 1, 1]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert main(["train", "--steps", "1", "--batch-size", "2", "--out", str(out), "--no-progress"]) == 0
    return out / "last.ckpt"


def test_evaluate_fid_equals_scipy_on_the_same_images(checkpoint):
    """The whole path: FID per bin equals a SciPy Fréchet distance of the features the metric saw (the real
    images once, in the first bin; the composited outputs in every bin)."""
    from mdrnet_fast.inpainting import load_model

    model = load_model(checkpoint)
    features = _Features()
    results = evaluate(model, synthetic_images(64, 16, seed=5), DrawnMasks(1), limit=16, batch_size=16,
                       precision="fp32", inception=features, progress=False)
    seen = [f.numpy() for f in features.seen]
    assert len(seen) == 4  # real, then a fake batch per bin
    for (name, result), fake in zip(results.items(), seen[1:]):
        assert result.fid == pytest.approx(_frechet(seen[0], fake), rel=1e-6, abs=1e-9), name
        assert len(result.samples) == 4


def test_evaluate_keeps_known_pixels_and_own_sizes(checkpoint):
    """Images of two sizes (not squares) go through at their own size; known pixels of the output are the
    image's, so L1 counts only the holes."""
    from mdrnet_fast.inpainting import load_model

    model = load_model(checkpoint)
    g = torch.Generator().manual_seed(4)
    pictures = [torch.rand(3, 48, 80, generator=g), torch.rand(3, 48, 80, generator=g),
                torch.rand(3, 64, 40, generator=g)]
    results = evaluate(model, EvalImages(3, lambda i: pictures[i], ["a", "b", "c"]), DrawnMasks(2), limit=3,
                       batch_size=4, precision="fp32", progress=False)
    for name, result in results.items():
        assert [s[2].shape[-2:] for s in result.samples] == [(48, 80), (48, 80), (64, 40)]
        for shown, out, truth in result.samples:
            known = (shown == truth).all(0) & ~(shown == 1).all(0)
            assert torch.equal(out[:, known], truth[:, known])
        assert result.row({"l1_percent"})["l1_percent"] > 0 and result.row({"l1_percent"})["fid"] is None


def test_eval_command_without_weights_says_which_columns_are_off(checkpoint, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["eval", "--checkpoint", str(checkpoint), "--limit", "2", "--batch-size", "2", "--out", str(out),
                 "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "FID off: give --inception-weights pt_inception-2015-12-05-6726825d.pth" in text
    assert "LPIPS off: give --lpips-weights alexnet-owt-7be5be79.pth" in text
    table = json.loads((out / "eval.json").read_text())["bins"]
    assert list(table) == ["1-20%", "20-40%", "40-60%"]
    assert table["1-20%"]["fid"] is None and table["1-20%"]["lpips"] is None and table["1-20%"]["psnr"] > 0
    rows = list(csv.DictReader(open(out / "eval.csv")))
    assert [r["bin"] for r in rows] == list(table) and rows[0]["fid"] == "" and float(rows[0]["ssim"]) > 0
    for name in ("1-20pct", "20-40pct", "40-60pct"):
        assert Image.open(out / f"samples-{name}.png").size == (3 * 256, 2 * 256)


def test_eval_command_with_weight_files_and_mask_set(checkpoint, tmp_path, capsys):
    torch.save(_random_inception().state_dict(), tmp_path / "inception.pth")
    _, alexnet = _alexnet_file(tmp_path)
    masks = tmp_path / "masks"
    masks.mkdir()
    for i, ratio in enumerate((0.1, 0.3, 0.35)):
        _mask_png(masks / f"{i}.png", ratio, size=(128, 128))
    data = tmp_path / "data"
    data.mkdir()
    g = np.random.default_rng(0)
    for i, (h, w) in enumerate(((64, 96), (64, 96), (48, 64))):
        Image.fromarray(g.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(data / f"{i}.png")
    out = tmp_path / "eval"
    assert main(["eval", "--checkpoint", str(checkpoint), "--data", str(data), "--masks", str(masks),
                 "--inception-weights", str(tmp_path / "inception.pth"), "--lpips-weights", str(alexnet),
                 "--out", str(out), "--no-progress", "--precision", "fp32"]) == 0
    text = capsys.readouterr().out
    assert "bin 40-60% left out" in text and "FID from 3 images is biased upward" in text
    table = json.loads((out / "eval.json").read_text())["bins"]
    assert list(table) == ["1-20%", "20-40%"]
    for row in table.values():
        assert row["images"] == 3 and row["fid"] > 0 and row["lpips"] > 0


@pytest.mark.parametrize("argv, message", [
    (["--inception-weights", "missing.pth"], "--inception-weights: missing.pth is not a file"),
    (["--lpips-weights", "a.pth", "b.pth", "c.pth"], "--lpips-weights takes 1 or 2 files"),
    (["--masks", "nowhere"], "--masks: nowhere is not a folder"),
    (["--image-size", "30"], "--image-size must be a multiple of"),
])
def test_eval_bad_arguments_are_one_line(checkpoint, capsys, argv, message):
    assert main(["eval", "--checkpoint", str(checkpoint), "--no-progress", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
