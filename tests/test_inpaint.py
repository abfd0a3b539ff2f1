"""mdrnet_fast.inpaint: native size, known pixels untouched, strategies, precision, bounded memory."""
import numpy as np
import pytest
import torch
from PIL import Image

import mdrnet_fast
from mdrnet_fast.cli import main
from mdrnet_fast.commands.common import PRESETS
from mdrnet_fast.inpainting import pipeline, strategies
from mdrnet_fast.inpainting.precision import cpu_has_native_bf16, resolve_precision
from mdrnet_fast.models import MDRNet, lean


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return MDRNet(**PRESETS["cpu-demo"]).eval().to(memory_format=torch.channels_last)


def photo(h, w, seed=0):
    """A smooth random picture (uint8 RGB), so resizing it means something."""
    rng = np.random.default_rng(seed)
    small = rng.random((max(h // 8, 2), max(w // 8, 2), 3)) * 255
    return np.array(Image.fromarray(small.astype(np.uint8)).resize((w, h), Image.BICUBIC))


def holes_of(h, w, seed=0):
    """A block and a few strokes, about 15-25 % of the image; at least one hole pixel."""
    rng = np.random.default_rng(seed)
    holes = np.zeros((h, w), bool)
    holes[h // 4:h // 4 + max(h // 3, 1), w // 3:w // 3 + max(w // 4, 1)] = True
    for _ in range(3):
        y, x = rng.integers(0, h), rng.integers(0, w)
        holes[y:y + 2, max(x - w // 5, 0):x + w // 5] = True
    return holes


SIZES = [(8, 8), (177, 301), (64, 96), (33, 250)]


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[1]}x{s[0]}")
@pytest.mark.parametrize("strategy", ["full", "crop", "resize", "auto"])
def test_native_size_and_known_pixels_untouched(model, strategy, size):
    h, w = size
    image, holes = photo(h, w), holes_of(h, w)
    mask = np.where(holes, 0, 255).astype(np.uint8)
    out = mdrnet_fast.inpaint(model, image, mask, strategy, "fp32", max_side=64, crop_margin=16)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert np.array_equal(out[~holes], image[~holes])
    assert (out[holes] != image[holes]).any()


def test_crop_runs_each_group_of_holes_at_its_own_size(model, monkeypatch):
    image = photo(200, 300)
    holes = np.zeros((200, 300), bool)
    holes[20:30, 20:40] = True    # one group ...
    holes[150:170, 250:280] = True  # ... and another, far away
    seen = []
    run = pipeline.run_model
    monkeypatch.setattr(pipeline, "run_model", lambda m, rgb, *a, **k: seen.append(rgb.shape[1:]) or run(m, rgb, *a, **k))
    lines = []
    out = mdrnet_fast.inpaint(model, image, ~holes, "crop", "fp32", crop_margin=8, report=lines.append)
    assert seen == [(26, 36), (36, 46)]  # each group's box plus 8 pixels of context
    assert np.array_equal(out[~holes], image[~holes]) and "2 crops" in lines[0]


def test_crop_larger_than_max_side_is_scaled_down(model, monkeypatch):
    image, holes = photo(160, 160), np.zeros((160, 160), bool)
    holes[40:120, 30:130] = True
    seen = []
    run = pipeline.run_model
    monkeypatch.setattr(pipeline, "run_model", lambda m, rgb, *a, **k: seen.append(rgb.shape[1:]) or run(m, rgb, *a, **k))
    out = mdrnet_fast.inpaint(model, image, ~holes, "crop", "fp32", crop_margin=10, max_side=50)
    assert seen == [(42, 50)]  # the 100x120 crop, long side 120 -> 50
    assert np.array_equal(out[~holes], image[~holes])


def test_resize_runs_at_max_side_and_fills_only_the_holes(model, monkeypatch):
    image, holes = photo(120, 200), holes_of(120, 200)
    seen = []
    run = pipeline.run_model
    monkeypatch.setattr(pipeline, "run_model", lambda m, rgb, *a, **k: seen.append(rgb.shape[1:]) or run(m, rgb, *a, **k))
    out = mdrnet_fast.inpaint(model, image, ~holes, "resize", "fp32", max_side=100)
    assert seen == [(60, 100)]
    assert np.array_equal(out[~holes], image[~holes])


def test_hole_regions_group_near_holes_and_cover_every_hole():
    holes = np.zeros((300, 400), bool)
    holes[50:60, 50:60] = True
    holes[50:60, 75:85] = True      # 15 px from the first: same group at margin 16
    holes[250:260, 350:360] = True  # far away: its own group
    boxes = strategies.hole_regions(holes, 16)
    assert boxes == [(34, 34, 76, 101), (234, 334, 276, 376)]
    covered = np.zeros_like(holes)
    for t, l, b, r in boxes:
        covered[t:b, l:r] = True
    assert covered[holes].all()
    edge = np.zeros((40, 40), bool)
    edge[0:3, 38:40] = True  # clipped to the image
    assert strategies.hole_regions(edge, 10) == [(0, 28, 13, 40)]


def test_overlapping_boxes_are_merged():
    holes = np.zeros((200, 200), bool)
    holes[10:20, 10:100] = True
    holes[30:150, 80:90] = True
    holes[140:150, 10:20] = True  # its box overlaps the second one's once margins are added
    boxes = strategies.hole_regions(holes, 40)
    assert len(boxes) == 1 and boxes[0] == (0, 0, 190, 140)


def test_auto_picks_by_size_and_hole_layout():
    small = np.zeros((600, 800), bool)
    small[100:400, 100:700] = True
    assert strategies.plan(small, "auto", 2048, 128).strategy == "full"
    one_hole = np.zeros((2160, 3840), bool)
    one_hole[800:1312, 1600:2112] = True
    chosen = strategies.plan(one_hole, "auto", 2048, 128)
    assert chosen.strategy == "crop" and chosen.boxes == [(672, 1472, 1440, 2240)]
    spread = np.zeros((1600, 2560), bool)
    spread[::200, :] = True  # strokes everywhere: crops would cover it all
    assert strategies.plan(spread, "auto", 2048, 128).strategy == "full"
    huge = np.zeros((4000, 6000), bool)
    huge[::300, :] = True
    assert strategies.plan(huge, "auto", 2048, 128).strategy == "resize"
    with pytest.raises(ValueError, match="strategy must be one of"):
        strategies.plan(small, "tiles", 2048, 128)


def test_precision_auto_follows_the_hardware(monkeypatch):
    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu) is None and resolve_precision("bf16", cpu) == torch.bfloat16
    assert resolve_precision("auto", cpu) == (torch.bfloat16 if cpu_has_native_bf16() else None)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert resolve_precision("auto", cpu) is None  # emulated bf16 is slower than fp32
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("fp16", cpu)


# bf16 autocast against fp32, on the [0, 1] output of the paper preset (random weights) at 256x256: measured
# max 0.0013 / mean 0.0002 here; the bound leaves room for other bf16 kernels, not for a wrong one.
BF16_MAX, BF16_MEAN = 0.02, 0.002


def test_bf16_within_bound_of_fp32():
    torch.manual_seed(0)
    paper = MDRNet(**PRESETS["paper"]).eval().to(memory_format=torch.channels_last)
    rgb = torch.from_numpy(photo(256, 256)).permute(2, 0, 1).float() / 255
    valid = torch.from_numpy(~holes_of(256, 256))
    fp32 = pipeline.run_model(paper, rgb, valid, None)
    bf16 = pipeline.run_model(paper, rgb, valid, torch.bfloat16)
    diff = (bf16 - fp32).abs()
    assert diff.max() < BF16_MAX and diff.mean() < BF16_MEAN, (diff.max(), diff.mean())


def _peak_bytes(fn) -> int:
    """Peak of live CPU allocations while fn runs (the profiler's allocation events, every thread)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU)
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


# Peak of an inference (cpu-demo preset, 512x768, fp32), in fp32 planes of the image's size (1.5 MiB each),
# with bands small enough to act as they do at 2560x1600. Measured 54.0 here (117.1 before models/lean.py); the
# largest full-resolution map of this preset has 16 to 19 channels, so an extra copy of one comes back as +16.
PEAK_PLANES = 62


@pytest.mark.slow
def test_inference_peak_memory_has_no_extra_full_resolution_copy(model, monkeypatch):
    monkeypatch.setattr(lean, "BAND_BYTES", 256 << 10)
    h, w = 512, 768
    image = (torch.rand(1, 3, h, w) * 2 - 1).contiguous(memory_format=torch.channels_last)
    mask = torch.from_numpy(~holes_of(h, w)).float()[None, None].contiguous(memory_format=torch.channels_last)

    def infer():
        with torch.inference_mode():
            model(image, mask)

    planes = _peak_bytes(infer) / (h * w * 4)
    assert planes < PEAK_PLANES, f"peak {planes:.1f} fp32 planes (budget {PEAK_PLANES})"


def test_progress_per_stage_on_a_large_full_run(model, capsys):
    image, holes = photo(1024, 1024), holes_of(1024, 1024)
    mdrnet_fast.inpaint(model, image, ~holes, "full", "fp32", progress=True)
    err = capsys.readouterr().err
    assert "1024x1024" in err and "stage" in err and "refine" in err


@pytest.mark.slow
def test_compiled_model_fills_as_eager(model, tmp_path):
    """inpaint --compile (load_model(compile=True): nn.Module.compile, inductor) gives the eager fill."""
    from mdrnet_fast.inpainting import load_model

    h, w = 48, 80
    image, holes = photo(h, w, 3), holes_of(h, w, 3)
    torch.save({"stage": "full", "step": 0, "config": PRESETS["cpu-demo"], "model": model.state_dict()},
               tmp_path / "m.ckpt")
    compiled = load_model(tmp_path / "m.ckpt", compile=True)
    got = mdrnet_fast.inpaint(compiled, image, ~holes, "full", "fp32")
    expected = mdrnet_fast.inpaint(model, image, ~holes, "full", "fp32")
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1


def test_command_runs_the_api_with_its_flags(model, tmp_path):
    h, w = 90, 130
    image, holes = photo(h, w), holes_of(h, w)
    Image.fromarray(image).save(tmp_path / "in.png")
    Image.fromarray(np.where(holes, 0, 255).astype(np.uint8)).save(tmp_path / "mask.png")
    torch.save({"stage": "full", "step": 0, "config": PRESETS["cpu-demo"], "model": model.state_dict()},
               tmp_path / "m.ckpt")
    assert main(["inpaint", "--checkpoint", str(tmp_path / "m.ckpt"), "--image", str(tmp_path / "in.png"),
                 "--mask", str(tmp_path / "mask.png"), "--out", str(tmp_path / "out.png"), "--strategy", "crop",
                 "--crop-margin", "20", "--precision", "fp32", "--no-progress"]) == 0
    expected = mdrnet_fast.inpaint(model, image, ~holes, "crop", "fp32", crop_margin=20)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out.png")), expected)
