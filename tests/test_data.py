"""mdrnet_fast.data: classes and CelebAMask-HQ remap, synthetic faces, free-form masks, image folders."""
import numpy as np
import pytest
import torch
from PIL import Image

from mdrnet_fast.data import (CELEBAMASK_HQ_CLASSES, CELEBAMASK_HQ_TO_14, CLASS_INDEX, CLASSES, NUM_CLASSES,
                              PALETTE, RATIO_BINS, FreeFormMasks, ImageFolderDataset, InpaintingDataset,
                              SyntheticFaces, colorize, hole_ratio, load_mask, make_batch, remap_celebamask_hq,
                              render_face)
from mdrnet_fast.data.synthetic import PART_CLASS, PART_NAMES


# ---------------------------------------------------------------------------------------------- labels

def test_classes_and_mapping():
    assert len(CLASSES) == NUM_CLASSES == 14 and len(set(CLASSES)) == 14
    assert len(CELEBAMASK_HQ_TO_14) == len(CELEBAMASK_HQ_CLASSES) == 19
    assert set(CELEBAMASK_HQ_TO_14) == set(range(14))  # every class is reachable
    to = {name: CLASSES[CELEBAMASK_HQ_TO_14[i]] for i, name in enumerate(CELEBAMASK_HQ_CLASSES)}
    assert to["l_eye"] == to["r_eye"] == "eyes"
    assert to["l_brow"] == to["r_brow"] == "brows"
    assert to["l_ear"] == to["r_ear"] == to["ear_r"] == "ears"
    assert to["neck"] == to["neck_l"] == "neck"
    assert (to["eye_g"], to["hat"], to["hair"], to["cloth"]) == ("eye_glasses", "hat", "hair", "cloth")
    assert PALETTE.shape == (14, 3) and PALETTE.dtype == np.uint8
    assert len({tuple(c) for c in PALETTE}) == 14


@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.int64])
def test_remap_numpy(dtype):
    m = np.arange(19, dtype=dtype).reshape(1, 19).repeat(3, 0)
    out = remap_celebamask_hq(m)
    assert isinstance(out, np.ndarray) and out.dtype == dtype and out.shape == m.shape
    assert out[0].tolist() == list(CELEBAMASK_HQ_TO_14)


def test_remap_tensor_and_errors():
    m = torch.arange(19, dtype=torch.uint8).view(1, 19)
    out = remap_celebamask_hq(m)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.uint8
    assert out[0].tolist() == list(CELEBAMASK_HQ_TO_14)
    with pytest.raises(ValueError, match=r"\[0, 19\)"):
        remap_celebamask_hq(np.array([[19]]))
    with pytest.raises(ValueError):
        remap_celebamask_hq(torch.tensor([-1]))
    with pytest.raises(TypeError):
        remap_celebamask_hq(np.zeros(3, np.float32))


def test_colorize():
    labels = torch.arange(14).view(2, 7)
    rgb = colorize(labels)
    assert rgb.shape == (2, 7, 3) and rgb.dtype == np.uint8
    assert (rgb.reshape(14, 3) == PALETTE).all()
    assert colorize(np.zeros((4, 5, 6), np.int64)).shape == (4, 5, 6, 3)
    scores = torch.nn.functional.one_hot(labels, 14).permute(2, 0, 1).float()[None]  # (1,14,H,W)
    assert (colorize(scores)[0] == rgb).all()
    with pytest.raises(ValueError):
        colorize(np.array([[14]]))


# ------------------------------------------------------------------------------------- synthetic faces

def test_synthetic_deterministic():
    a, b = SyntheticFaces(64, 10, seed=3), SyntheticFaces(64, 10, seed=3)
    x, y = a[4], b[4]
    assert torch.equal(x["image"], y["image"]) and torch.equal(x["labels"], y["labels"])
    assert torch.equal(a[4]["image"], x["image"])  # no hidden state between calls
    assert not torch.equal(a[5]["image"], x["image"])
    assert not torch.equal(SyntheticFaces(64, 10, seed=4)[4]["image"], x["image"])
    assert torch.equal(a[-1]["labels"], a[9]["labels"])
    with pytest.raises(IndexError):
        a[10]


@pytest.mark.parametrize("size", [32, 100, 256])
def test_synthetic_ranges(size):
    ds = SyntheticFaces(size, 3, seed=1)
    assert len(ds) == 3
    for i in range(3):
        item = ds[i]
        img, lab = item["image"], item["labels"]
        assert img.shape == (3, size, size) and img.dtype == torch.float32 and img.is_contiguous()
        assert lab.shape == (size, size) and lab.dtype == torch.int64
        assert img.min() >= -1 and img.max() <= 1 and torch.isfinite(img).all()
        assert lab.min() >= 0 and lab.max() < NUM_CLASSES
        assert img.std() > 0.1  # a picture, not a flat field


def test_synthetic_parts_present_and_in_order():
    ds = SyntheticFaces(96, 40, seed=0)
    present = np.zeros(14)
    for i in range(len(ds)):
        lab = ds[i]["labels"].numpy()
        present += np.bincount(lab.ravel(), minlength=14) > 0
        # Face parts top to bottom (mean row of each class present).
        rows = [np.nonzero(lab == CLASS_INDEX[c])[0] for c in ("brows", "eyes", "nose", "upper_lip", "lower_lip")]
        means = [r.mean() for r in rows if len(r)]
        assert means == sorted(means), f"face {i}: parts out of order {means}"
    frac = dict(zip(CLASSES, present / len(ds)))
    for c in ("background", "skin", "nose", "brows", "upper_lip", "lower_lip", "neck"):
        assert frac[c] == 1.0, (c, frac)
    for c in ("hair", "eyes", "ears"):
        assert frac[c] >= 0.8, (c, frac)
    for c in ("eye_glasses", "hat", "cloth", "mouth"):  # optional parts do occur
        assert frac[c] > 0, (c, frac)


def test_parsing_map_is_exact():
    """Labels come from the part map the image was coloured from, and they line up with the image's
    edges: label boundaries sit on colour edges, and moving the labels one pixel makes that worse."""
    for i in range(6):
        img, lab, parts = render_face(np.random.default_rng([5, i]), 128)
        assert (PART_CLASS[parts] == lab.numpy()).all()
        x = img.numpy()
        lab = lab.numpy()

        def edge_strength(shift):  # mean colour jump across label boundaries, labels moved by `shift`
            lab_s = np.roll(lab, shift, axis=1)
            diff_lab = lab_s[:, 1:] != lab_s[:, :-1]
            jump = np.abs(x[:, :, 1:] - x[:, :, :-1]).sum(0)
            return jump[diff_lab].mean()

        aligned = edge_strength(0)
        assert aligned > 3 * max(edge_strength(1), edge_strength(-1)), i


def test_synthetic_part_colours_are_per_part():
    """Every pixel of one part has (up to shading and grain) one colour: its spread within the part is
    far below the spread of the image."""
    img, _, parts = render_face(np.random.default_rng([1, 2]), 128)
    x = img.numpy()
    for p in np.unique(parts):
        sel = x[:, parts == p]
        if sel.shape[1] > 50 and PART_NAMES[p] not in ("background", "hair_back", "hair_front"):
            assert sel.std(1).max() < 0.25, PART_NAMES[p]


def test_make_batch():
    batch = make_batch(3, size=48, seed=2)
    assert batch["image"].shape == (3, 3, 48, 48) and batch["labels"].shape == (3, 48, 48)
    assert torch.equal(batch["image"][1], SyntheticFaces(48, 3, seed=2)[1]["image"])


# ------------------------------------------------------------------------------------------------ masks

@pytest.mark.parametrize("name", list(RATIO_BINS))
def test_mask_ratio_bins(name):
    lo, hi = RATIO_BINS[name]
    masks = FreeFormMasks(64, name)
    ratios = []
    for seed in range(50):
        m = masks.sample(np.random.default_rng(seed))
        assert m.shape == (1, 64, 64) and m.dtype == torch.float32
        assert set(m.unique().tolist()) <= {0.0, 1.0}
        r = hole_ratio(m)
        assert lo <= r <= hi, (seed, r)
        ratios.append(r)
    assert np.ptp(ratios) > 0.3 * (hi - lo)  # spread over the bin, not stuck at one end
    for i in range(3):  # full size too
        assert lo <= hole_ratio(FreeFormMasks(256, name, seed=9)[i]) <= hi


def test_masks_deterministic_and_shapes():
    m = FreeFormMasks((48, 80), ratio=(0.1, 0.3), seed=1)
    assert m[0].shape == (1, 48, 80)
    assert torch.equal(m[0], m[0]) and not torch.equal(m[0], m[1])
    assert torch.equal(m[0], FreeFormMasks((48, 80), ratio=(0.1, 0.3), seed=1)[0])
    assert torch.equal(m.sample(np.random.default_rng(7)), m.sample(np.random.default_rng(7)))
    with pytest.raises(ValueError, match="unknown ratio bin"):
        FreeFormMasks(64, "10-30%")
    with pytest.raises(ValueError):
        FreeFormMasks(64, (0.5, 0.2))
    assert hole_ratio(np.ones((1, 4, 4))) == 0.0
    assert hole_ratio(torch.zeros(1, 4, 4)) == 1.0


def test_load_mask(tmp_path):
    arr = np.full((20, 30), 255, np.uint8)
    arr[5:10, 10:20] = 0  # a black hole
    Image.fromarray(arr).save(tmp_path / "m.png")
    m = load_mask(tmp_path / "m.png")
    assert m.shape == (1, 20, 30) and m.dtype == torch.float32
    assert m[0, 7, 15] == 0 and m[0, 0, 0] == 1 and hole_ratio(m) == pytest.approx(50 / 600)
    inv = load_mask(str(tmp_path / "m.png"), invert=True)
    assert torch.equal(inv, 1 - m)
    r = load_mask(tmp_path / "m.png", size=(40, 60))
    assert r.shape == (1, 40, 60) and hole_ratio(r) == pytest.approx(50 / 600)
    Image.fromarray(np.stack([arr] * 3, -1)).save(tmp_path / "rgb.png")
    assert torch.equal(load_mask(tmp_path / "rgb.png"), m)
    with pytest.raises(FileNotFoundError, match="nope.png"):
        load_mask(tmp_path / "nope.png")


def test_inpainting_dataset():
    masks = FreeFormMasks(64, "20-40%", seed=0)
    ds = InpaintingDataset(SyntheticFaces(64, 6, seed=0), masks, seed=11)
    a = ds[2]
    assert set(a) == {"image", "labels", "mask"} and a["mask"].shape == (1, 64, 64)
    assert torch.equal(ds[2]["mask"], a["mask"]) and not torch.equal(ds[3]["mask"], a["mask"])
    ds.set_epoch(1)
    b = ds[2]
    assert torch.equal(b["image"], a["image"]) and not torch.equal(b["mask"], a["mask"])
    ds.set_epoch(0)
    assert torch.equal(ds[2]["mask"], a["mask"])
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch["image"].shape == (4, 3, 64, 64) and batch["mask"].shape == (4, 1, 64, 64)
    assert batch["labels"].shape == (4, 64, 64)
    with pytest.raises(ValueError, match="does not match"):
        InpaintingDataset(SyntheticFaces(32, 2), masks)[0]


# ------------------------------------------------------------------------------------------ image folder

def _write_faces(root, n=3, size=40):
    root.mkdir(parents=True, exist_ok=True)
    colours = [(255, 0, 128), (0, 255, 0), (10, 20, 30), (200, 100, 50)]
    for i in range(n):
        Image.new("RGB", (size, size), colours[i]).save(root / f"{i}.png")
    Image.new("RGB", (size, size), colours[3]).save(root / f"{n}.jpg", quality=100)
    (root / "notes.txt").write_text("not an image")
    return colours


def test_folder_without_parsing(tmp_path):
    colours = _write_faces(tmp_path / "img")
    ds = ImageFolderDataset(tmp_path / "img", size=32)
    assert len(ds) == 4
    item = ds[0]
    assert set(item) == {"image"}  # no parsing maps -> no "labels" key
    img = item["image"]
    assert img.shape == (3, 32, 32) and img.dtype == torch.float32 and img.is_contiguous()
    expected = torch.tensor(colours[0], dtype=torch.float32) / 127.5 - 1
    assert torch.allclose(img[:, 16, 16], expected, atol=1e-6)
    assert img.min() >= -1 and img.max() <= 1
    assert len(ImageFolderDataset(tmp_path / "img", size=32, extensions=(".png",))) == 3


def test_folder_with_celebamask_parsing(tmp_path):
    _write_faces(tmp_path / "img", n=3)
    (tmp_path / "img" / "3.jpg").unlink()
    rng = np.random.default_rng(0)
    maps = {}
    for i in range(3):
        m = rng.integers(0, 19, (8, 8)).astype(np.uint8).repeat(5, 0).repeat(5, 1)  # 40x40 blocks
        (tmp_path / "anno").mkdir(exist_ok=True)
        Image.fromarray(m).save(tmp_path / "anno" / f"{i}.png")
        maps[i] = m
    ds = ImageFolderDataset(tmp_path / "img", size=40, parsing_root=tmp_path / "anno")
    for i in range(3):
        item = ds[i]
        assert item["labels"].dtype == torch.int64 and item["labels"].shape == (40, 40)
        assert item["labels"].numpy().tolist() == remap_celebamask_hq(maps[i].astype(np.int64)).tolist()
    # Resized with nearest neighbour: still only valid labels, blocks preserved.
    small = ImageFolderDataset(tmp_path / "img", size=8, parsing_root=tmp_path / "anno")
    assert small[1]["labels"].numpy().tolist() == remap_celebamask_hq(maps[1][::5, ::5].astype(np.int64)).tolist()
    # As "14"-class maps the same files hold labels >= 14: refused, naming the file.
    with pytest.raises(ValueError, match=r"0\.png has labels in .*outside \[0, 14\)"):
        ImageFolderDataset(tmp_path / "img", size=40, parsing_root=tmp_path / "anno", parsing_format="14")[0]


def test_folder_parsing_inside_root_and_format_14(tmp_path):
    _write_faces(tmp_path / "img", n=2)
    (tmp_path / "img" / "2.jpg").unlink()
    (tmp_path / "img" / "maps").mkdir()
    for i in range(2):
        Image.fromarray(np.full((40, 40), 13, np.uint8)).save(tmp_path / "img" / "maps" / f"{i}.png")
    ds = ImageFolderDataset(tmp_path / "img", size=40, parsing_root=tmp_path / "img" / "maps", parsing_format="14")
    assert len(ds) == 2  # the maps are not taken for images
    assert (ds[0]["labels"] == 13).all()


def test_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        ImageFolderDataset(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match=r"\.png, \.jpg, \.jpeg"):
        ImageFolderDataset(tmp_path / "empty")
    _write_faces(tmp_path / "img", n=2)
    (tmp_path / "anno").mkdir()
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(tmp_path / "anno" / "0.png")
    with pytest.raises(FileNotFoundError, match=r"3 of 3 images|2 of 3 images") as e:
        ImageFolderDataset(tmp_path / "img", parsing_root=tmp_path / "anno")
    assert "1.png" in str(e.value)
    with pytest.raises(FileNotFoundError, match="parsing folder not found"):
        ImageFolderDataset(tmp_path / "img", parsing_root=tmp_path / "nope")
    with pytest.raises(ValueError, match="parsing_format"):
        ImageFolderDataset(tmp_path / "img", parsing_format="19")
    # A colourised (RGB) map is refused with a reason.
    for i in range(3):
        Image.new("RGB", (40, 40)).save(tmp_path / "anno" / f"{i}.png")
    ds = ImageFolderDataset(tmp_path / "img", parsing_root=tmp_path / "anno", size=40)
    with pytest.raises(ValueError, match="single-channel"):
        ds[0]
    # Labels out of range for CelebAMask-HQ.
    for i in range(3):
        Image.fromarray(np.full((40, 40), 19, np.uint8)).save(tmp_path / "anno" / f"{i}.png")
    with pytest.raises(ValueError, match=r"outside \[0, 19\)"):
        ImageFolderDataset(tmp_path / "img", parsing_root=tmp_path / "anno", size=40)[0]


@pytest.mark.parametrize("size", [32, 64])
def test_small_masks_always_land_in_their_bin(size):
    """Near the top of a bin every stroke can overshoot; the sampler must still return a mask in the bin
    (regression: it used to raise for 64x64 masks in the 40-60% bin)."""
    for name, (lo, hi) in RATIO_BINS.items():
        masks = FreeFormMasks(size, ratio=(lo, hi))
        for i in range(150):
            assert lo <= hole_ratio(masks.sample(np.random.default_rng([7, i]))) <= hi, (name, i)
