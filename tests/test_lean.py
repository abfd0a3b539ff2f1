"""models/lean.py: full-resolution layers without full-resolution temporaries compute what the plain layers do."""
import pytest
import torch
import torch.nn.functional as F

from mdrnet_fast.commands.common import PRESETS
from mdrnet_fast.models import MDRNet, lean
from mdrnet_fast.nn import GatedConv2d, PartialConv2d

FORMATS = [torch.contiguous_format, torch.channels_last]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("size", [(5, 6), (1, 1)])
def test_upsample_cat_is_cat_of_interpolate(fmt, size):
    torch.manual_seed(0)
    h, w = size
    low = torch.randn(2, 5, h, w, dtype=torch.float64).contiguous(memory_format=fmt).requires_grad_()
    skip = torch.randn(2, 3, 2 * h, 2 * w, dtype=torch.float64).contiguous(memory_format=fmt).requires_grad_()
    out = lean.upsample_cat(low, skip)
    ref = torch.cat([F.interpolate(low, scale_factor=2, mode="nearest"), skip], 1)
    assert torch.equal(out, ref) and out.is_contiguous(memory_format=fmt)
    grad = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(out, (low, skip), grad), torch.autograd.grad(ref, (low, skip), grad)):
        torch.testing.assert_close(a, b)


def test_upsample_cat_takes_the_low_dtype_and_odd_sizes():
    low = torch.randn(1, 4, 3, 3, dtype=torch.bfloat16)
    image = torch.randn(1, 3, 6, 6)  # an fp32 skip must not promote the concatenation
    assert lean.upsample_cat(low, image).dtype == torch.bfloat16
    odd = torch.randn(1, 3, 5, 7)  # not 2x: nearest to the skip's size, as F.interpolate(size=...)
    ref = torch.cat([F.interpolate(low, size=(5, 7), mode="nearest"), odd.to(low.dtype)], 1)
    assert torch.equal(lean.upsample_cat(low, odd), ref)


GATED = [  # in, out, kernel, stride, padding, dilation, upsample
    (4, 6, 5, 1, 2, 1, 1),
    (6, 8, 3, 2, 1, 1, 1),
    (8, 4, 3, 1, 1, 1, 2),
    (5, 5, 3, 1, 2, 2, 1),
]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("case", GATED, ids=str)
@pytest.mark.parametrize("height", [17, 32])
def test_gated_conv_in_row_bands(case, fmt, height):
    torch.manual_seed(1)
    cin, cout, k, s, p, d, up = case
    conv = GatedConv2d(cin, cout, k, stride=s, padding=p, dilation=d).double()
    x = torch.randn(2, cin, height, 13, dtype=torch.float64).contiguous(memory_format=fmt)
    ref = conv(F.interpolate(x, scale_factor=up, mode="nearest") if up > 1 else x)
    size = (height * up, 13 * up)
    for band_bytes in (1, 2 * cout * 2 * 13 * up * 8 * 3, 1 << 30):  # one row per band, ~3 rows, one band
        out = lean.conv_in_row_bands(conv, [lean.upsampled_rows(x, up)], x, size, 2 * cout, band_bytes)
        torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("fmt", FORMATS)
def test_partial_conv_in_row_bands_with_multichannel_masks(fmt):
    torch.manual_seed(2)
    conv = PartialConv2d(7, 3, 3, padding=1, multi_channel=True, return_mask=True).double()
    low, skip = torch.randn(1, 4, 9, 8, dtype=torch.float64), torch.randn(1, 3, 18, 16, dtype=torch.float64)
    low_mask = (torch.rand(1, 4, 9, 8) > 0.3).double()
    skip_mask = (torch.rand(1, 3, 18, 16) > 0.3).double()
    low, skip, low_mask, skip_mask = (t.contiguous(memory_format=fmt) for t in (low, skip, low_mask, skip_mask))
    ref_out, ref_mask = conv(lean.upsample_cat(low, skip), lean.upsample_cat(low_mask, skip_mask))
    sources = [lean.upsample_cat_rows(low, skip), lean.upsample_cat_rows(low_mask, skip_mask)]
    out, mask = lean.conv_in_row_bands(conv, sources, low, (18, 16), 21, band_bytes=1)
    torch.testing.assert_close(out, ref_out, rtol=1e-12, atol=1e-12)
    assert torch.equal(mask, ref_mask)


def test_bands_only_in_an_eager_inference():
    x = torch.randn(1, 2, 4, 4)
    with torch.no_grad():
        assert lean.wants_bands(x)
    with torch.inference_mode():
        assert lean.wants_bands(x)
    assert not lean.wants_bands(x)  # autograd on: the plain layers


@pytest.mark.parametrize("fmt", FORMATS)
def test_mdrnet_inference_in_bands_equals_the_plain_forward(fmt, monkeypatch):
    """The whole model with one-row bands (every banded layer in many bands) equals its autograd forward."""
    torch.manual_seed(3)
    model = MDRNet(**PRESETS["cpu-demo"]).eval().double().to(memory_format=fmt)
    image = (torch.rand(1, 3, 64, 96, dtype=torch.float64) * 2 - 1).contiguous(memory_format=fmt)
    mask = torch.ones(1, 1, 64, 96, dtype=torch.float64)
    mask[..., 10:40, 20:70] = 0
    plain = model(image, mask)  # grad mode: no bands
    monkeypatch.setattr(lean, "BAND_BYTES", 1)
    with torch.no_grad():
        banded = model(image, mask)
    for name in ("output", "coarse", "refined"):
        torch.testing.assert_close(getattr(banded, name), getattr(plain, name).detach(), rtol=1e-10, atol=1e-10)


def test_mdrnet_names_its_size_multiple():
    model = MDRNet(**PRESETS["cpu-demo"]).eval()
    assert model.size_multiple == 32
    with pytest.raises(ValueError, match="multiples of 32"):
        model(torch.zeros(1, 3, 64, 80), torch.ones(1, 1, 64, 80))
