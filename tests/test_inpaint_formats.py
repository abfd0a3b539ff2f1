"""mdrnet_fast.inpaint and `mdrnet-fast inpaint` on images and masks as users have them: 0/1 and RGBA masks,
transparent images, 16-bit, grey, palette, 1-bit, JPEG, EXIF-rotated photos, arrays and tensors, and bad files.

Every case checks the same contract: the output has the input's size, every known pixel is the input's bit for
bit, and the holes are filled (changed somewhere).
"""
import struct
import subprocess
import sys
import textwrap
import warnings
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

import mdrnet_fast
from mdrnet_fast.cli import main
from mdrnet_fast.commands.common import PRESETS
from mdrnet_fast.inpainting import read_image, read_mask, to_pixels, valid_map
from mdrnet_fast.models import MDRNet

H, W = 37, 53  # odd, and not a multiple of the model's 32


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return MDRNet(**PRESETS["cpu-demo"]).eval()


@pytest.fixture(scope="module")
def checkpoint(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "demo.ckpt"
    torch.save({"stage": "full", "step": 0, "config": PRESETS["cpu-demo"], "model": model.state_dict()}, path)
    return str(path)


def rgb_array(h=H, w=W, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def valid_array(h=H, w=W):
    """(h,w) bool: a rectangle of holes and a few lone hole pixels (one on the border)."""
    valid = np.ones((h, w), bool)
    valid[h // 4:h // 4 + max(1, h // 3), w // 4:w // 4 + max(1, w // 3)] = False
    valid[0, w - 1] = valid[h - 1, 0] = False
    return valid


def save_mask(path, valid, white=255):
    Image.fromarray(np.where(valid, white, 0).astype(np.uint8), "L").save(path)
    return path


def check(out, inp, valid):
    """Same shape, known pixels identical, the holes changed somewhere."""
    out, inp = np.asarray(out), np.asarray(inp)
    assert out.shape == inp.shape
    assert np.array_equal(out[valid], inp[valid])
    assert (out[~valid] != inp[~valid]).any()


def run_cli(capsys, *args):
    """main(["inpaint", ...]) -> (exit code, stderr lines)."""
    code = main(["inpaint", *map(str, args), "--no-progress"])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err.strip().splitlines()


def png16_rgb(path, samples):
    """A 16-bit RGB PNG (Pillow cannot write one): samples (H,W,3) uint16."""
    h, w, _ = samples.shape

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = samples.astype(">u2").reshape(h, w * 6 // 2).view(np.uint8).reshape(h, w * 6)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)  # filter type 0 (none) per row
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)  # bit depth 16, colour type 2 (RGB)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))
    return path


# ------------------------------------------------------------------------------------------------ 1. 0/1 masks

def test_zero_one_mask_means_the_same_as_0_255(model, tmp_path):
    image, valid = Image.fromarray(rgb_array()), valid_array()
    m1 = read_mask(save_mask(tmp_path / "m01.png", valid, white=1))
    m255 = read_mask(save_mask(tmp_path / "m255.png", valid))
    assert np.asarray(m1).max() == 1
    assert np.array_equal(valid_map(m1, (H, W)), valid) and np.array_equal(valid_map(m255, (H, W)), valid)
    a, b = mdrnet_fast.inpaint(model, image, m1), mdrnet_fast.inpaint(model, image, m255)
    check(a, image, valid)
    assert np.array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("form", ["rgb-png", "array", "tensor"])
def test_zero_one_mask_in_other_forms(form, tmp_path):
    valid = valid_array()
    levels = valid.astype(np.uint8)
    if form == "rgb-png":
        Image.fromarray(np.repeat(levels[..., None], 3, axis=2), "RGB").save(tmp_path / "m.png")
        mask = read_mask(tmp_path / "m.png")
    else:
        mask = levels if form == "array" else torch.from_numpy(levels)[None]
    assert np.array_equal(valid_map(mask, (H, W)), valid)
    assert np.array_equal(valid_map(mask, (H, W), invert=True), ~valid)


def test_read_only_bool_mask_gives_a_writable_map():
    """np.asarray of a mode-1 PIL image is a read-only bool array; the pipeline hands the map to torch."""
    mask = np.asarray(Image.fromarray(valid_array()).convert("1"))
    assert mask.dtype == np.bool_ and not mask.flags.writeable
    valid = valid_map(mask, (H, W))
    assert valid.flags.writeable and np.array_equal(valid, valid_array())


# ------------------------------------------------------------------------------------------------ 2. RGBA masks

def test_rgba_mask_alpha_is_the_mask(model, tmp_path):
    image, valid = Image.fromarray(rgb_array()), valid_array()
    rgba = np.dstack([rgb_array(seed=1), np.where(valid, 255, 0).astype(np.uint8)])  # colour: noise, ignored
    Image.fromarray(rgba, "RGBA").save(tmp_path / "m.png")
    mask = read_mask(tmp_path / "m.png")
    assert mask.mode == "RGBA"
    assert np.array_equal(valid_map(mask, (H, W)), valid)
    a = mdrnet_fast.inpaint(model, image, mask)
    b = mdrnet_fast.inpaint(model, image, read_mask(save_mask(tmp_path / "l.png", valid)))
    check(a, image, valid)
    assert np.array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("alpha", [255, 128, 0])
def test_rgba_mask_constant_alpha_uses_colour(alpha, tmp_path):
    valid = valid_array()
    grey = np.where(valid, 255, 0).astype(np.uint8)
    colour = np.dstack([grey, grey, grey])
    colour[~valid, 0] = 200  # a red-ish hole is still dark: the luma decides
    Image.fromarray(np.dstack([colour, np.full((H, W), alpha, np.uint8)]), "RGBA").save(tmp_path / "m.png")
    assert np.array_equal(valid_map(read_mask(tmp_path / "m.png"), (H, W)), valid)


# ------------------------------------------------------------------------------------------------ 3. transparent images

def test_rgba_image_without_mask(model, tmp_path):
    valid = valid_array()
    alpha = np.where(valid, 255, 0).astype(np.uint8)
    alpha[valid & (np.arange(W) % 3 == 0)] = 200  # half-transparent known pixels stay as they are
    alpha[~valid & (np.arange(W) % 2 == 0)] = 100  # below half: a hole
    rgba = np.dstack([rgb_array(), alpha])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "t.png")
    out = mdrnet_fast.inpaint(model, read_image(tmp_path / "t.png"))
    assert out.mode == "RGBA" and out.size == (W, H)
    check(out, rgba, valid)
    assert (np.asarray(out)[~valid, 3] == 255).all()


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_trns_colour_is_transparent(mode, model, tmp_path):
    """A grey or RGB PNG with a tRNS colour: pixels of that colour are transparent, so the holes."""
    rgb = rgb_array()
    valid = valid_array()
    key = (7, 9, 11)
    rgb[~valid] = key
    rgb[valid & np.all(rgb == key, axis=2)] = (8, 9, 11)
    image = Image.fromarray(rgb) if mode == "RGB" else Image.fromarray(rgb[..., 0], "L")
    image.save(tmp_path / "t.png", transparency=key if mode == "RGB" else key[0])
    if mode == "L":
        valid = rgb[..., 0] != key[0]
    image = read_image(tmp_path / "t.png")
    assert image.mode == mode and "transparency" in image.info
    out = mdrnet_fast.inpaint(model, image)
    assert out.mode == ("RGBA" if mode == "RGB" else "LA")
    check(out, np.asarray(image.convert("RGBA" if mode == "RGB" else "LA")), valid)


def test_rgb_image_without_mask_is_a_one_line_error(model):
    with pytest.raises(ValueError) as info:
        mdrnet_fast.inpaint(model, Image.fromarray(rgb_array()))
    assert "\n" not in str(info.value) and "mask" in str(info.value)


# ------------------------------------------------------------------------------------------------ 4. mask size

def test_mask_of_another_size(model, tmp_path, capsys, checkpoint):
    image = Image.fromarray(rgb_array())
    mask = Image.new("L", (W + 3, H - 2), 255)
    with pytest.raises(ValueError) as info:
        mdrnet_fast.inpaint(model, image, mask)
    msg = str(info.value)
    assert f"{W}x{H}" in msg and f"{W + 3}x{H - 2}" in msg and "\n" not in msg
    image.save(tmp_path / "i.png")
    mask.save(tmp_path / "m.png")
    code, err = run_cli(capsys, "--checkpoint", checkpoint, "--image", tmp_path / "i.png", "--mask",
                        tmp_path / "m.png", "--out", tmp_path / "o.png")
    assert code == 2 and len(err) == 1 and f"{W}x{H}" in err[0] and f"{W + 3}x{H - 2}" in err[0]
    assert not (tmp_path / "o.png").exists()


# ------------------------------------------------------------------------------------------------ 5. 16 bits

def test_16_bit_grey_png(tmp_path, capsys, checkpoint):
    ramp = np.linspace(0, 65535, H * W).round().astype(np.uint16).reshape(H, W)
    Image.fromarray(ramp).save(tmp_path / "g.png")
    image = read_image(tmp_path / "g.png")
    assert image.mode == "I;16"
    rgb = to_pixels(image).rgb()
    expected = torch.from_numpy(ramp.astype(np.float32) / np.float32(65535))
    assert rgb.shape == (3, H, W)
    torch.testing.assert_close(rgb, expected.expand(3, H, W), rtol=0, atol=1e-7)

    valid = valid_array()
    save_mask(tmp_path / "m.png", valid)
    code, _ = run_cli(capsys, "--checkpoint", checkpoint, "--image", tmp_path / "g.png", "--mask",
                      tmp_path / "m.png", "--out", tmp_path / "o.png")
    assert code == 0
    out = Image.open(tmp_path / "o.png")
    assert out.mode == "I;16" and out.size == (W, H)
    values = np.asarray(out).astype(np.int64)
    check(values, ramp.astype(np.int64), valid)
    holes = values[~valid]
    assert holes.min() >= 0 and holes.max() <= 65535
    assert (holes < 65535).any() and holes.max() > 255  # filled at 16-bit scale, not white, not 8-bit values
    assert len(np.unique(holes)) > 1


def test_16_bit_rgb_png(model, tmp_path):
    y, x = np.mgrid[0:H, 0:W]
    samples = np.dstack([x * 65535 // (W - 1), y * 65535 // (H - 1), (x * y * 997) % 65536]).astype(np.uint16)
    image = read_image(png16_rgb(tmp_path / "rgb16.png", samples))
    assert image.mode == "RGB" and image.size == (W, H)
    expected = (samples >> 8).astype(np.uint8)
    assert np.array_equal(np.asarray(image), expected)
    valid = valid_array()
    out = mdrnet_fast.inpaint(model, image, np.where(valid, 255, 0).astype(np.uint8))
    assert out.mode == "RGB"
    check(out, expected, valid)


# ------------------------------------------------------------------------------------------------ 6. other modes

def _palette_image(transparent: bool) -> Image.Image:
    index = (np.arange(H * W).reshape(H, W) * 7 % 16).astype(np.uint8)
    image = Image.fromarray(index, "P")
    image.putpalette([v for i in range(16) for v in (i * 16, 255 - i * 16, (i * 40) % 256)])
    if transparent:
        image.info["transparency"] = 3
    return image


@pytest.mark.parametrize("case, out_mode", [("L", "L"), ("P", "RGB"), ("P-transparent", "RGBA"), ("1", "L"),
                                            ("JPEG", "RGB"), ("L-8x8", "L")])
def test_modes(case, out_mode, model, tmp_path):
    h, w = (8, 8) if case.endswith("8x8") else (H, W)
    rgb = rgb_array(h, w)
    if case.startswith("L"):
        source = Image.fromarray(rgb[..., 0], "L")
    elif case.startswith("P"):
        source = _palette_image(case == "P-transparent")
    elif case == "1":
        source = Image.fromarray(rgb[..., 0] > 127).convert("1")
    else:
        source = Image.fromarray(rgb)
    path = tmp_path / ("i.jpg" if case == "JPEG" else "i.png")
    source.save(path)
    image = read_image(path)
    valid = valid_array(h, w)
    out = mdrnet_fast.inpaint(model, image, np.where(valid, 255, 0).astype(np.uint8))
    assert out.mode == out_mode and out.size == (w, h)
    with Image.open(path) as decoded:  # what the file holds, decoded by Pillow, in the output's mode
        expected = np.asarray(decoded.convert(out_mode))
    check(out, expected, valid)
    if case == "P-transparent":
        transparent = _palette_image(True).convert("RGBA")
        holes_too = np.asarray(transparent)[..., 3] == 0
        assert holes_too.any()
        out = mdrnet_fast.inpaint(model, image)  # no mask: the transparent palette entry is the hole
        check(out, np.asarray(transparent), ~holes_too)
        assert (np.asarray(out)[holes_too, 3] == 255).all()


# ------------------------------------------------------------------------------------------------ 7. EXIF orientation

@pytest.mark.parametrize("ext", ["jpg", "png"])
@pytest.mark.parametrize("orientation, upright", [(6, Image.Transpose.ROTATE_270), (8, Image.Transpose.ROTATE_90)])
def test_exif_orientation(ext, orientation, upright, model, tmp_path):
    stored = Image.fromarray(rgb_array())  # W x H as stored; shown (and read) as H x W
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"photo.{ext}"
    stored.save(path, exif=exif)
    image = read_image(path)
    assert image.size == (H, W)
    with Image.open(path) as raw:
        assert raw.size == (W, H)
        assert np.array_equal(np.asarray(image), np.asarray(raw.convert("RGB").transpose(upright)))
    valid = valid_array(W, H)  # drawn on the upright image: W rows, H columns
    save_mask(tmp_path / "m.png", valid)
    out = mdrnet_fast.inpaint(model, image, read_mask(tmp_path / "m.png"))
    assert out.size == (H, W)
    check(out, image, valid)
    with pytest.raises(ValueError):  # a mask of the stored (sideways) size no longer fits
        mdrnet_fast.inpaint(model, image, valid_array())


# ----------------------------------------------------------------------------------------------- 8. no holes, all holes

@pytest.mark.parametrize("kind", ["pil", "pil-rgba", "numpy", "tensor"])
def test_all_valid_mask_skips_the_model(kind, model, monkeypatch):
    def forward(*args, **kwargs):
        raise AssertionError("the model ran on an image without holes")

    monkeypatch.setattr(model, "forward", forward)
    rgb = rgb_array()
    image = {"pil": Image.fromarray(rgb), "pil-rgba": Image.fromarray(np.dstack([rgb, rgb[..., 0]]), "RGBA"),
             "numpy": rgb, "tensor": torch.from_numpy(rgb).permute(2, 0, 1).float() / 255}[kind]
    out = mdrnet_fast.inpaint(model, image, np.ones((H, W), bool))
    assert type(out) is type(image)
    if kind == "tensor":
        assert out.dtype == image.dtype and torch.equal(out, image)
    elif kind == "numpy":
        assert out.dtype == image.dtype and np.array_equal(out, image)
    else:
        assert out.mode == image.mode and np.array_equal(np.asarray(out), np.asarray(image))


@pytest.mark.parametrize("kind", ["pil", "float-numpy", "8x8"])
def test_all_hole_mask(kind, model):
    h, w = (8, 8) if kind == "8x8" else (H, W)
    rgb = rgb_array(h, w)
    image = rgb.astype(np.float32) / 255 if kind == "float-numpy" else Image.fromarray(rgb)
    out = mdrnet_fast.inpaint(model, image, np.zeros((h, w), np.uint8))
    arr = np.asarray(out)
    assert arr.shape == rgb.shape and np.isfinite(arr.astype(np.float64)).all()
    if kind == "float-numpy":
        assert out.dtype == np.float32 and arr.min() >= 0 and arr.max() <= 1
    else:
        assert out.mode == "RGB"


# ------------------------------------------------------------------------------------------------ 9. arrays and tensors

def _cases():
    rgb, valid = rgb_array(), valid_array()
    grey16 = (rgb[..., 0].astype(np.uint16) * 257 + rgb[..., 1])
    t = torch.from_numpy(rgb).permute(2, 0, 1)
    return {
        "hw3-uint8": (rgb, valid),
        "hw-uint16": (grey16, valid),
        "hw3-float32": (rgb.astype(np.float32) / 255, valid),
        "3hw-float": (t.float() / 255, torch.from_numpy(valid)),
        "13hw-uint8": (t[None].clone(), torch.from_numpy(valid)[None, None]),
    }


@pytest.mark.parametrize("name", list(_cases()))
def test_array_and_tensor_round_trips(name, model):
    image, mask = _cases()[name]
    out = mdrnet_fast.inpaint(model, image, mask)
    assert type(out) is type(image) and out.shape == image.shape and out.dtype == image.dtype
    valid = valid_array()
    if isinstance(image, torch.Tensor):
        assert out.device == image.device
        image, out = (t.reshape(-1, H, W).permute(1, 2, 0).numpy() for t in (image, out))
    check(out, image, valid)


def test_batch_tensor_with_bool_masks(model):
    images = torch.from_numpy(np.stack([rgb_array(seed=0), rgb_array(seed=1)])).permute(0, 3, 1, 2).float() / 255
    valid = torch.from_numpy(np.stack([valid_array(), np.flipud(valid_array()).copy()]))[:, None]
    out = mdrnet_fast.inpaint(model, images, valid)
    assert out.shape == images.shape and out.dtype == images.dtype and out.device == images.device
    for b in range(2):
        check(out[b].permute(1, 2, 0).numpy(), images[b].permute(1, 2, 0).numpy(), valid[b, 0].numpy())


# ------------------------------------------------------------------------------------------------ 10. bad files

def _bad_files(tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(rgb_array(64, 64)).save(good)
    data = good.read_bytes()
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("not an image\n")
    (tmp_path / "half.png").write_bytes(data[:len(data) // 2])
    (tmp_path / "folder").mkdir()
    return good


BAD = {"empty.png": ValueError, "text.png": ValueError, "half.png": ValueError, "folder": IsADirectoryError,
       "missing.png": FileNotFoundError}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_files_read(name, tmp_path):
    _bad_files(tmp_path)
    for read in (read_image, read_mask):
        with pytest.raises(BAD[name]) as info:
            read(tmp_path / name)
        assert "\n" not in str(info.value) and name in str(info.value)


@pytest.mark.parametrize("role", ["image", "mask"])
@pytest.mark.parametrize("name", list(BAD))
def test_bad_files_command(role, name, tmp_path, capsys, checkpoint):
    good = _bad_files(tmp_path)
    save_mask(tmp_path / "mask.png", valid_array(64, 64))
    image, mask = (tmp_path / name, tmp_path / "mask.png") if role == "image" else (good, tmp_path / name)
    code, err = run_cli(capsys, "--checkpoint", checkpoint, "--image", image, "--mask", mask,
                        "--out", tmp_path / "o.png")
    assert code == 2 and len(err) == 1 and err[0].startswith("mdrnet-fast inpaint: error:")
    assert not (tmp_path / "o.png").exists()


def test_folder_of_bad_images_command(tmp_path, capsys, checkpoint):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "empty.png").write_bytes(b"")
    code, err = run_cli(capsys, "--checkpoint", checkpoint, "--image", tmp_path / "in", "--out", tmp_path / "out")
    assert code == 2 and err[-1].startswith("mdrnet-fast inpaint: error:")


@pytest.mark.parametrize("out", ["result", "result.txt", "existing_folder"])
def test_bad_out_checked_before_the_model(out, tmp_path, capsys, checkpoint, monkeypatch):
    import mdrnet_fast.commands.inpaint as command

    def load_model(*args, **kwargs):
        raise AssertionError("the model was loaded before --out was checked")

    monkeypatch.setattr(command, "load_model", load_model)
    image = tmp_path / "i.png"
    Image.fromarray(np.dstack([rgb_array(), np.where(valid_array(), 255, 0).astype(np.uint8)])).save(image)
    (tmp_path / "existing_folder").mkdir()
    code, err = run_cli(capsys, "--checkpoint", checkpoint, "--image", image, "--out", tmp_path / out)
    assert code == 2 and len(err) == 1 and "--out" in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing_folder", "i.png"]


# ------------------------------------------------------------------------------------------------ 11. the command

@pytest.mark.parametrize("case", ["rgb+mask", "rgba", "grey16", "jpeg"])
def test_command_writes_no_warning(case, tmp_path, capsys, checkpoint):
    valid = valid_array()
    save_mask(tmp_path / "m.png", valid)
    mask = ["--mask", tmp_path / "m.png"]
    if case == "rgba":
        image, mask = Image.fromarray(np.dstack([rgb_array(), np.where(valid, 255, 0).astype(np.uint8)])), []
    elif case == "grey16":
        image = Image.fromarray((rgb_array()[..., 0].astype(np.uint16) * 257))
    else:
        image = Image.fromarray(rgb_array())
    path = tmp_path / ("i.jpg" if case == "jpeg" else "i.png")
    image.save(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        code, err = run_cli(capsys, "--checkpoint", checkpoint, "--image", path, *mask, "--out", tmp_path / "o.png")
    assert code == 0, err
    out = read_image(tmp_path / "o.png")
    expected = read_image(path)
    assert out.size == (W, H) and out.mode == expected.mode
    check(out, expected, valid)


def test_no_warning_in_a_fresh_process(tmp_path, checkpoint):
    """torch warns about a non-writable array once per process: a test after any other may never see it, so
    this one runs the command (and the API with a read-only mask) in a process of its own, warnings as errors."""
    script = textwrap.dedent(f"""
        import warnings
        warnings.simplefilter("error", UserWarning)
        import numpy as np
        import torch
        from PIL import Image
        import mdrnet_fast
        from mdrnet_fast.cli import main
        from mdrnet_fast.inpainting import load_model

        tmp = {str(tmp_path)!r}
        rng = np.random.default_rng(0)
        valid = np.ones(({H}, {W}), bool)
        valid[5:20, 10:30] = False
        Image.fromarray(valid).convert("1").save(tmp + "/m1.png")
        Image.fromarray(rng.integers(0, 256, ({H}, {W}, 3), dtype=np.uint8)).save(tmp + "/i.png")
        Image.fromarray(rng.integers(0, 256, ({H}, {W}), dtype=np.uint16)).save(tmp + "/g.png")
        for image in ("i.png", "g.png"):
            assert main(["inpaint", "--checkpoint", {checkpoint!r}, "--image", tmp + "/" + image, "--mask",
                         tmp + "/m1.png", "--out", tmp + "/o.png", "--no-progress"]) == 0
        model = load_model({checkpoint!r}, torch.device("cpu"))
        mask = np.asarray(Image.open(tmp + "/m1.png"))
        mdrnet_fast.inpaint(model, np.asarray(Image.open(tmp + "/i.png")), mask)
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-2000:]
