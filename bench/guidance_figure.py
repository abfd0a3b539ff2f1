"""The semantic-guidance workflow as one picture (README "Semantic guidance"): a face with a hole, the parser's
map, the map edited inside the hole, the fill with the parser's map, the fill with the edited one.

    mdrnet-fast train --steps 300 --out runs/demo            # the cpu-demo preset (64²), about 2 minutes on 2 cores
    python bench/guidance_figure.py --checkpoint runs/demo/last.ckpt --out bench/figures/guidance.png

The edit: a mouth (upper lip, mouth, lower lip) painted into the map inside the hole, where the parser, which sees
the coarse fill, found only skin. The last tile is the two fills' difference, amplified: it is inside the hole only.
"""
import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

import mdrnet_fast
from mdrnet_fast.data import SyntheticFaces
from mdrnet_fast.data.labels import CLASS_INDEX, colorize
from mdrnet_fast.inpainting import load_model, segment

SCALE = 4  # the cpu-demo faces are 64²: shown 4x, nearest


def _tile(array: np.ndarray, caption: str) -> Image.Image:
    image = Image.fromarray(array).resize((array.shape[1] * SCALE, array.shape[0] * SCALE), Image.Resampling.NEAREST)
    tile = Image.new("RGB", (image.width, image.height + 18), "white")
    tile.paste(image, (0, 18))
    ImageDraw.Draw(tile).text((4, 3), caption, fill="black")
    return tile


def main(argv=None) -> Path:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", default="bench/figures/guidance.png")
    p.add_argument("--seed", type=int, default=4321, help="synthetic face seed (training used 0)")
    args = p.parse_args(argv)
    model = load_model(args.checkpoint)
    size = model.image_size
    face = ((SyntheticFaces(size=size, length=1, seed=args.seed)[0]["image"] + 1) * 127.5).round()
    face = face.byte().permute(1, 2, 0).numpy()
    valid = np.ones((size, size), bool)
    valid[size * 9 // 16: size * 7 // 8, size // 4: size * 3 // 4] = False  # a block over the mouth
    labels = segment(model, face, valid, precision="fp32")
    edited = labels.copy()
    yy, xx = np.mgrid[:size, :size] / size
    dy, dx = (yy - 0.72) / 0.07, (xx - 0.5) / 0.17
    mouth = (dy ** 2 + dx ** 2 <= 1) & ~valid  # an ellipse: upper lip, a mouth line, lower lip
    edited[mouth & (dy < -0.25)] = CLASS_INDEX["upper_lip"]
    edited[mouth & (np.abs(dy) <= 0.25)] = CLASS_INDEX["mouth"]
    edited[mouth & (dy > 0.25)] = CLASS_INDEX["lower_lip"]
    fills = [np.asarray(mdrnet_fast.inpaint(model, face, valid, strategy="full", precision="fp32", segmentation=m))
             for m in (labels, edited)]
    # the two fills' difference, stretched to full range: a short CPU training follows the map only a little
    diff = np.abs(fills[0].astype(int) - fills[1].astype(int))
    most = int(diff.max())
    gain = 255 // max(most, 1)
    diff = (diff * gain).astype(np.uint8)
    shown = face.copy()
    shown[~valid] = 255
    tiles = [_tile(shown, "input, hole white"), _tile(colorize(labels), "parser's map"),
             _tile(colorize(edited), "edited in the hole"), _tile(fills[0], "fill, parser's map"),
             _tile(fills[1], "fill, edited map"), _tile(diff, f"difference x{gain}")]
    figure = Image.new("RGB", (sum(t.width for t in tiles) + 4 * (len(tiles) - 1), tiles[0].height), "white")
    x = 0
    for t in tiles:
        figure.paste(t, (x, 0))
        x += t.width + 4
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.save(out)
    changed = int((np.abs(fills[0].astype(int) - fills[1].astype(int)).max(-1) > 0).sum())
    print(f"{out}: {int(mouth.sum())} hole pixels relabelled; {changed} pixels of the fill changed (all in the hole: "
          f"{changed == int(((diff.max(-1) > 0) & ~valid).sum())}), by at most {most} of 255; "
          f"{int((~valid).sum())} hole pixels in all")
    return out


if __name__ == "__main__":
    main()
