"""Semantic guidance: a user's map steers the fill (inpaint --segmentation), and the parser's map is written for a
user to edit (--save-segmentation) and read back."""
import numpy as np
import pytest
import torch
from PIL import Image

import mdrnet_fast
from mdrnet_fast.cli import main
from mdrnet_fast.commands.common import PRESETS
from mdrnet_fast.data.labels import NUM_CLASSES, PALETTE
from mdrnet_fast.inpainting import read_segmentation, save_segmentation, segment
from mdrnet_fast.models import MDRNet

H, W = 75, 101


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return MDRNet(**PRESETS["cpu-demo"]).eval().to(memory_format=torch.channels_last)


def make_scene(h, w):
    rng = np.random.default_rng(0)
    image = np.array(Image.fromarray((rng.random((10, 13, 3)) * 255).astype(np.uint8)).resize((w, h), Image.BICUBIC))
    holes = np.zeros((h, w), bool)
    holes[20:55, 30:80] = True
    return image, holes


@pytest.fixture(scope="module")
def scene():
    """At an odd size: the model runs on it padded."""
    return make_scene(H, W)


@pytest.fixture(scope="module")
def unpadded():
    """At a multiple of the model's 32: the map segment() gives is all the map the model sees (when padded, the
    parser labels the padding from the mirrored image, and a given map is mirrored there instead)."""
    return make_scene(64, 96)


def test_palette_png_round_trip_and_legend(tmp_path):
    labels = np.random.default_rng(1).integers(0, NUM_CLASSES, (H, W))
    legend = save_segmentation(labels, tmp_path / "seg.png")
    saved = Image.open(tmp_path / "seg.png")
    assert saved.mode == "P" and saved.size == (W, H) and legend == tmp_path / "seg-legend.png"
    assert Image.open(legend).size[1] > NUM_CLASSES * 10
    assert np.array_equal(read_segmentation(tmp_path / "seg.png", (H, W)), labels)
    saved.convert("RGB").save(tmp_path / "rgb.png")  # an editor that saves RGB: colours back to classes
    assert np.array_equal(read_segmentation(tmp_path / "rgb.png", (H, W)), labels)
    rgb = np.array(Image.open(tmp_path / "rgb.png"))
    rgb[0, 0] = PALETTE[10] + np.array([3, -4, 2], dtype=np.int8)  # anti-aliased edge: the nearest class
    assert read_segmentation(Image.fromarray(rgb), (H, W))[0, 0] == 10
    with pytest.raises(ValueError, match=r"\.png"):
        save_segmentation(labels, tmp_path / "seg.jpg")


def test_label_maps_as_users_have_them():
    labels = np.random.default_rng(2).integers(0, 19, (H, W)).astype(np.uint8)
    mapped = read_segmentation(Image.fromarray(labels), (H, W), "celebamask-hq")
    assert mapped.max() < NUM_CLASSES and mapped[labels == 5].tolist() == [4] * int((labels == 5).sum())  # r_eye
    with pytest.raises(ValueError, match=r"\[0, 14\).*celebamask-hq"):
        read_segmentation(Image.fromarray(labels), (H, W))
    with pytest.raises(ValueError, match=f"segmentation is {W}x{H - 1} but the image is {W}x{H}"):
        read_segmentation(np.zeros((H - 1, W), np.int64), (H, W))
    assert np.array_equal(read_segmentation(torch.ones(1, H, W, dtype=torch.long), (H, W)), np.ones((H, W)))
    with pytest.raises(ValueError, match="integer label map"):
        read_segmentation(np.zeros((H, W), np.float32), (H, W))


def test_segment_is_the_map_the_model_uses(model, scene, unpadded):
    assert segment(model, scene[0], ~scene[1], "fp32").shape == (H, W)
    image, holes = unpadded
    labels = segment(model, image, ~holes, "fp32")
    assert labels.shape == (64, 96) and labels.dtype == np.int64 and 0 <= labels.min() <= labels.max() < NUM_CLASSES
    plain = mdrnet_fast.inpaint(model, image, ~holes, "full", "fp32")
    guided = mdrnet_fast.inpaint(model, image, ~holes, "full", "fp32", segmentation=labels)
    assert np.array_equal(plain, guided)  # the parser's own map, given back, changes nothing


@pytest.mark.parametrize("strategy", ["full", "crop", "resize"])
def test_a_changed_label_in_the_hole_changes_the_fill_there_only(model, scene, strategy):
    image, holes = scene
    labels = segment(model, image, ~holes, "fp32")
    edited = labels.copy()
    edited[25:50, 35:75] = np.where(labels[25:50, 35:75] == 10, 1, 10)  # hair <-> not hair, inside the hole
    options = dict(strategy=strategy, precision="fp32", max_side=64, crop_margin=8)
    before = mdrnet_fast.inpaint(model, image, ~holes, segmentation=labels, **options)
    after = mdrnet_fast.inpaint(model, image, ~holes, segmentation=edited, **options)
    assert np.array_equal(before[~holes], image[~holes]) and np.array_equal(after[~holes], image[~holes])
    assert (before[holes] != after[holes]).any()


def test_command_writes_the_map_and_takes_it_back(model, unpadded, tmp_path, capsys):
    image, holes = unpadded
    Image.fromarray(image).save(tmp_path / "face.png")
    Image.fromarray(np.where(holes, 0, 255).astype(np.uint8)).save(tmp_path / "mask.png")
    torch.save({"stage": "full", "step": 0, "config": PRESETS["cpu-demo"], "model": model.state_dict()},
               tmp_path / "m.ckpt")
    base = ["inpaint", "--checkpoint", str(tmp_path / "m.ckpt"), "--image", str(tmp_path / "face.png"), "--mask",
            str(tmp_path / "mask.png"), "--strategy", "full", "--precision", "fp32", "--no-progress"]
    assert main(base + ["--out", str(tmp_path / "plain.png"), "--save-segmentation", str(tmp_path / "seg.png")]) == 0
    assert "seg-legend.png" in capsys.readouterr().out
    assert np.array_equal(read_segmentation(tmp_path / "seg.png", holes.shape), segment(model, image, ~holes, "fp32"))
    assert main(base + ["--out", str(tmp_path / "same.png"), "--segmentation", str(tmp_path / "seg.png")]) == 0
    plain = np.array(Image.open(tmp_path / "plain.png"))
    assert np.array_equal(np.array(Image.open(tmp_path / "same.png")), plain)
    # edited as a user would, in an editor that saves RGB: a patch of the hole painted with the hair colour
    edited = np.array(Image.open(tmp_path / "seg.png").convert("RGB"))
    edited[25:50, 35:75] = PALETTE[10]
    Image.fromarray(edited).save(tmp_path / "edited.png")
    assert main(base + ["--out", str(tmp_path / "guided.png"), "--segmentation", str(tmp_path / "edited.png")]) == 0
    guided = np.array(Image.open(tmp_path / "guided.png"))
    assert np.array_equal(guided[~holes], image[~holes]) and (guided[holes] != plain[holes]).any()
    capsys.readouterr()
    assert main(base + ["--out", str(tmp_path / "x.png"), "--save-segmentation", str(tmp_path / "seg.jpg")]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0


def test_guidance_figure_script(tmp_path, capsys):
    """bench/guidance_figure.py (the README's picture): a mouth painted into the map inside the hole changes the
    fill, and only inside the hole."""
    import importlib.util
    from pathlib import Path

    assert main(["train", "--steps", "1", "--batch-size", "2", "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    spec = importlib.util.spec_from_file_location(
        "guidance_figure", Path(__file__).resolve().parents[1] / "bench" / "guidance_figure.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = script.main(["--checkpoint", str(tmp_path / "run" / "last.ckpt"), "--out", str(tmp_path / "g.png")])
    assert Image.open(out).size[0] > 6 * 64
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "(all in the hole: True)" in line and " 0 pixels of the fill changed" not in line
