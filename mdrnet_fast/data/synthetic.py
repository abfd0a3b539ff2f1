"""A built-in synthetic face set: procedurally drawn cartoon frontal faces with exact parsing maps.

Training and tests run on a fresh machine with no download. Each face is drawn as a map of *parts*
(eye white, iris, pupil, nostril, teeth, ... - finer than the 14 classes) with Pillow, painter's
order: background, back hair, neck, cloth, ears, face, blush, fringe, nose, mouth, eyeglasses, brows,
eyes, hat. The image is then coloured from that one part map (per-part colours, shading, noise), and
the labels are ``PART_CLASS[parts]``, so every pixel's label is the class of the topmost shape drawn
there, exactly. Order follows CelebAMask-HQ's: eyes and brows lie on top of the eyeglasses, whose
lenses (labelled eye_glasses, as in CelebAMask-HQ) tint the skin seen through them.

Item i of ``SyntheticFaces(size, length, seed)`` depends on (seed, i) only:
``numpy.random.default_rng([seed, i])`` drives every random choice. Nothing is cached.
"""
from __future__ import annotations

import math
import threading
from functools import lru_cache

import numpy as np
import torch
from PIL import Image, ImageChops, ImageDraw
from torch.utils.data import Dataset

from .labels import CLASS_INDEX, NUM_CLASSES

# (part, class). The part id is the position in this tuple.
_PARTS = (
    ("background", "background"),
    ("hair_back", "hair"),
    ("neck", "neck"),
    ("cloth", "cloth"),
    ("neckline", "neck"),
    ("necklace", "neck"),
    ("ear", "ears"),
    ("ear_inner", "ears"),
    ("earring", "ears"),
    ("skin", "skin"),
    ("blush", "skin"),
    ("hair_front", "hair"),
    ("nose", "nose"),
    ("nostril", "nose"),
    ("upper_lip", "upper_lip"),
    ("lower_lip", "lower_lip"),
    ("mouth", "mouth"),
    ("teeth", "mouth"),
    ("lens", "eye_glasses"),
    ("glasses", "eye_glasses"),
    ("brow", "brows"),
    ("eye_white", "eyes"),
    ("iris", "eyes"),
    ("pupil", "eyes"),
    ("glint", "eyes"),
    ("lash", "eyes"),
    ("hat", "hat"),
    ("hat_brim", "hat"),
)
PART_NAMES = tuple(p for p, _ in _PARTS)
_ID = {p: i for i, p in enumerate(PART_NAMES)}
PART_CLASS = np.array([CLASS_INDEX[c] for _, c in _PARTS], dtype=np.int64)
_N_PARTS = len(_PARTS)

# Parts lit like a rounded face (darker towards the face outline), and parts with hair streaks.
_FACE_K = np.zeros(_N_PARTS, np.float32)
_FACE_K[[_ID[p] for p in ("skin", "blush", "nose", "ear", "ear_inner", "lens")]] = 0.22
_HAIR_K = np.zeros(_N_PARTS, np.float32)
_HAIR_K[[_ID[p] for p in ("hair_back", "hair_front", "brow")]] = 1.0
_RAMP = np.linspace(0, 1, 256)[:, None]
# Curve parameters, computed once: np.linspace costs more than the drawing it feeds.
_T72 = np.linspace(0, 2 * np.pi, 72, endpoint=False)
_COS72, _SIN72 = np.cos(_T72), np.sin(_T72)
_LOWER72 = np.clip(_SIN72, 0, 1) ** 2
_U40 = np.linspace(0, 1, 40)
_TAU40 = np.linspace(1, -1, 40)
_TT21 = np.linspace(-1, 1, 21)
_K6 = np.linspace(0, 1, 6)

_SKIN_LIGHT = np.array([0.96, 0.80, 0.69])
_SKIN_DARK = np.array([0.36, 0.23, 0.16])
_HAIR = np.array([
    (0.10, 0.08, 0.08), (0.20, 0.13, 0.09), (0.36, 0.23, 0.14), (0.55, 0.38, 0.22),
    (0.80, 0.66, 0.42), (0.62, 0.28, 0.14), (0.68, 0.67, 0.66), (0.30, 0.30, 0.45),
])
_HAIR_P = np.array([0.28, 0.22, 0.17, 0.1, 0.1, 0.06, 0.05, 0.02])
_IRIS = np.array([(0.30, 0.18, 0.10), (0.18, 0.12, 0.08), (0.25, 0.45, 0.70), (0.30, 0.50, 0.30),
                  (0.45, 0.50, 0.52)])


@lru_cache(maxsize=8)
def _grid(size: int):
    """Pixel-centre coordinates (y, x) as float32 (H,1) and (1,W) arrays, shared read-only."""
    c = np.arange(size, dtype=np.float32) + 0.5
    return c[:, None], c[None, :]


def _box(cx, cy, rx, ry):
    return [cx - rx, cy - ry, cx + rx, cy + ry]


def _flat(xs, ys):
    out = np.empty(2 * len(xs))
    out[0::2], out[1::2] = xs, ys
    return out.tolist()


def _clipped_ellipses(P, clip_box, shapes):
    """Paste filled ellipses onto P clipped to the ellipse `clip_box` (x0,y0,x1,y1): the iris and pupil
    must not leave the eye white. `shapes` is [(part id, box)] in drawing order, boxes in image pixels."""
    x0, y0 = int(math.floor(clip_box[0])) - 1, int(math.floor(clip_box[1])) - 1
    x1, y1 = int(math.ceil(clip_box[2])) + 2, int(math.ceil(clip_box[3])) + 2
    w, h = x1 - x0, y1 - y0
    local = lambda b: [b[0] - x0, b[1] - y0, b[2] - x0, b[3] - y0]  # noqa: E731
    clip = Image.new("L", (w, h), 0)
    ImageDraw.Draw(clip).ellipse(local(clip_box), fill=255)
    for part, b in shapes:
        m = Image.new("L", (w, h), 0)
        ImageDraw.Draw(m).ellipse(local(b), fill=255)
        P.paste(part, (x0, y0, x1, y1), ImageChops.multiply(m, clip))


def _colours(rng):
    """Per-part base colours (n_parts, 3) in [0,1] for one face."""
    u = rng.uniform
    c = np.zeros((_N_PARTS, 3))
    skin = _SKIN_LIGHT + (_SKIN_DARK - _SKIN_LIGHT) * u(0, 1) ** 1.4 + u(-0.03, 0.03, 3)
    hair = _HAIR[rng.choice(len(_HAIR), p=_HAIR_P)] * u(0.85, 1.15) + u(-0.03, 0.03, 3)
    lip = np.array([0.75, 0.33, 0.35]) * u(0.7, 1.05) + u(-0.05, 0.05, 3)
    lip = 0.55 * lip + 0.45 * skin * np.array([1.0, 0.7, 0.7])
    c[_ID["hair_back"]] = hair * 0.8
    c[_ID["hair_front"]] = hair
    c[_ID["brow"]] = hair * u(0.5, 0.9)
    c[_ID["skin"]] = skin
    c[_ID["lens"]] = skin
    c[_ID["blush"]] = 0.8 * skin + 0.2 * np.array([0.95, 0.45, 0.5])
    c[_ID["ear"]] = skin * 0.96
    c[_ID["ear_inner"]] = skin * 0.78
    c[_ID["nose"]] = skin * u(0.86, 0.94)
    c[_ID["nostril"]] = skin * 0.4
    c[_ID["neck"]] = skin * u(0.75, 0.85)
    c[_ID["neckline"]] = skin * u(0.85, 0.92)
    c[_ID["necklace"]] = (0.85, 0.7, 0.3) if u() < 0.6 else (0.8, 0.8, 0.82)
    c[_ID["earring"]] = (0.9, 0.75, 0.3) if u() < 0.6 else (0.85, 0.85, 0.9)
    c[_ID["cloth"]] = u(0.05, 0.9, 3)
    c[_ID["upper_lip"]] = lip * 0.92
    c[_ID["lower_lip"]] = lip * 1.05
    c[_ID["mouth"]] = (0.28, 0.07, 0.09)
    c[_ID["teeth"]] = np.array([0.93, 0.91, 0.86]) * u(0.9, 1.0)
    c[_ID["eye_white"]] = np.array([0.95, 0.94, 0.92]) * u(0.88, 1.0)
    c[_ID["iris"]] = _IRIS[rng.integers(len(_IRIS))] * u(0.8, 1.2)
    c[_ID["pupil"]] = (0.03, 0.03, 0.04)
    c[_ID["glint"]] = (1.0, 1.0, 1.0)
    c[_ID["lash"]] = hair * 0.3
    c[_ID["glasses"]] = u(0.0, 0.8, 3) if u() < 0.5 else np.full(3, u(0.02, 0.3))
    c[_ID["hat"]] = u(0.05, 0.9, 3)
    c[_ID["hat_brim"]] = c[_ID["hat"]] * 0.8
    return np.clip(c, 0.0, 1.0).astype(np.float32)


def _draw(rng, size):
    """Draw one face's part map. Returns (parts "L" image, (lens mask, colour, alpha) or None, face geometry)."""
    u = rng.uniform
    s = size / 256.0
    P = Image.new("L", (size, size), _ID["background"])
    d = ImageDraw.Draw(P)

    cx = size / 2 + u(-10, 10) * s
    cy = size * 0.46 + u(-8, 8) * s
    a = u(55, 68) * s          # face half-width
    b = a * u(1.22, 1.38)      # face half-height
    chin = u(0.05, 0.3)        # jaw taper
    style = rng.choice(3, p=[0.04, 0.4, 0.56])  # bald, short, long hair

    # Back hair: behind everything but the background.
    if style == 1:
        d.ellipse(_box(cx, cy - 0.12 * b, a * u(1.08, 1.22), b * u(0.98, 1.06)), fill=_ID["hair_back"])
    elif style == 2:
        hx, hy = a * u(1.15, 1.4), cy - 0.1 * b
        bottom = cy + b * u(0.5, 1.2)
        wb = a * u(1.1, 1.45)
        d.ellipse(_box(cx, hy, hx, b * 1.04), fill=_ID["hair_back"])
        d.polygon([cx - hx, hy, cx + hx, hy, cx + wb, bottom, cx - wb, bottom], fill=_ID["hair_back"])
        d.ellipse(_box(cx, bottom, wb, 0.25 * a), fill=_ID["hair_back"])

    # Neck, then cloth (shoulders) with a neckline showing the neck again.
    nw = a * u(0.42, 0.56)
    d.rectangle([cx - nw, cy + 0.3 * b, cx + nw, size + 1], fill=_ID["neck"])
    if u() < 0.9:
        yt = cy + b * u(0.85, 1.08)
        rx = a * u(1.9, 2.5)
        ry = max(size - yt, 1.0) * u(1.2, 1.8)
        d.ellipse(_box(cx + u(-5, 5) * s, yt + ry, rx, ry), fill=_ID["cloth"])
        kind = rng.integers(3)
        wn, depth = nw * u(0.6, 0.95), a * u(0.15, 0.6)
        if kind == 0:  # V-neck
            d.polygon([cx - wn, yt - 1, cx + wn, yt - 1, cx, yt + depth], fill=_ID["neckline"])
        elif kind == 1:  # round neck: the lower half of an ellipse
            d.chord(_box(cx, yt - 1, wn, depth * 0.7), 0, 180, fill=_ID["neckline"])
        if kind != 2 and u() < 0.2:
            d.arc(_box(cx, yt - 0.25 * a, nw * 0.98, 0.3 * a + depth * 0.3), 15, 165,
                  fill=_ID["necklace"], width=max(1, round(2.2 * s)))

    # Ears, half hidden by the face drawn next.
    ey = cy + b * u(-0.12, 0.04)
    ew, eh = a * u(0.13, 0.18), a * u(0.28, 0.36)
    half = a * math.sqrt(max(0.0, 1 - ((ey - cy) / b) ** 2))
    earring = u() < 0.2
    for side in (-1, 1):
        ex = cx + side * (half + 0.15 * ew)
        d.ellipse(_box(ex, ey, ew, eh), fill=_ID["ear"])
        d.ellipse(_box(ex + side * 0.25 * ew, ey, 0.5 * ew, 0.6 * eh), fill=_ID["ear_inner"])
        if earring:
            r = a * 0.05
            d.ellipse(_box(ex + side * 0.2 * ew, ey + 0.9 * eh + r, r, r), fill=_ID["earring"])

    # Face: an ellipse whose lower half narrows towards the chin.
    d.polygon(_flat(cx + a * _COS72 * (1 - chin * _LOWER72), cy + b * _SIN72),
              fill=_ID["skin"])

    ye = cy - b * u(0.0, 0.12)                               # eye line
    exo, eyw = a * u(0.34, 0.44), a * u(0.15, 0.2)           # eye offset, eye half-width
    eyh = eyw * u(0.42, 0.62)
    yn = ye + a * u(0.42, 0.58)                              # nose tip
    my = yn + a * u(0.24, 0.32)                              # mouth line
    if u() < 0.3:
        for side in (-1, 1):
            d.ellipse(_box(cx + side * 0.55 * a, yn + 0.02 * a, 0.17 * a, 0.1 * a), fill=_ID["blush"])

    # Fringe: the top of an ellipse a little larger than the face, cut by a hairline curve.
    if style != 0:
        hr_x, hr_y, hcy = a * u(1.04, 1.1), b * u(1.03, 1.08), cy - 0.03 * b
        delta = u(0.05, 0.45)
        ta = np.pi + delta + (np.pi - 2 * delta) * _U40
        ox, oy = cx + hr_x * np.cos(ta), hcy + hr_y * np.sin(ta)
        tau = _TAU40                                         # back from right to left
        y_end = hcy - hr_y * math.sin(delta)
        y_mid = cy - b * u(0.45, 0.68)
        hy = y_end + (y_mid - y_end) * (1 - tau ** 2) ** u(0.25, 0.5)
        part_at = u(-0.6, 0.6)
        hy = hy - a * u(0.0, 0.25) * np.exp(-((tau - part_at) / 0.18) ** 2)  # the parting
        hy = hy + a * u(-0.12, 0.12) * tau * (1 - tau ** 2)                  # side-swept
        hy = hy + a * u(0.0, 0.05) * np.abs(np.sin(tau * u(6, 14)))         # bangs
        d.polygon(_flat(np.concatenate([ox, cx + (ox[-1] - cx) * tau]),
                        np.concatenate([oy, hy])), fill=_ID["hair_front"])

    # Nose: a tapered bridge, a round tip, two nostrils.
    nx = cx + u(-2, 2) * s
    tw, bw = a * u(0.04, 0.07), a * u(0.11, 0.16)
    d.polygon([nx - tw, ye + eyh * 0.3, nx + tw, ye + eyh * 0.3, nx + bw, yn, nx - bw, yn], fill=_ID["nose"])
    trx, try_ = a * u(0.16, 0.22), a * u(0.08, 0.11)
    d.ellipse(_box(nx, yn, trx, try_), fill=_ID["nose"])
    for side in (-1, 1):
        d.ellipse(_box(nx + side * 0.45 * trx, yn + 0.35 * try_, 0.22 * trx, 0.3 * try_), fill=_ID["nostril"])

    # Mouth: lips between parametric curves; an open mouth shows the inside and the upper teeth.
    mx = cx + u(-2, 2) * s
    w = a * u(0.26, 0.38)
    hu, hl = a * u(0.05, 0.09), a * u(0.07, 0.12)
    opening = 0.0 if u() < 0.5 else a * u(0.03, 0.12)
    smile = a * u(-0.03, 0.08)
    tt = _TT21
    xs = mx + w * tt
    base = my - smile * tt ** 2
    bell = 1 - tt ** 2
    y_uo = base - hu * bell ** 0.6 * (1 - 0.35 * np.exp(-(tt / 0.15) ** 2))  # cupid's bow
    y_ui = base - 0.5 * opening * bell
    y_li = base + 0.5 * opening * bell
    y_lo = base + hl * bell ** 0.6 + 0.5 * opening * bell
    d.polygon(_flat(np.concatenate([xs, xs[::-1]]), np.concatenate([y_uo, y_ui[::-1]])), fill=_ID["upper_lip"])
    d.polygon(_flat(np.concatenate([xs, xs[::-1]]), np.concatenate([y_li, y_lo[::-1]])), fill=_ID["lower_lip"])
    if opening > 0:
        d.polygon(_flat(np.concatenate([xs, xs[::-1]]), np.concatenate([y_ui, y_li[::-1]])), fill=_ID["mouth"])
        y_teeth = y_ui + 0.45 * (y_li - y_ui)
        d.polygon(_flat(np.concatenate([xs[3:-3], xs[3:-3][::-1]]), np.concatenate([y_ui[3:-3], y_teeth[3:-3][::-1]])),
                  fill=_ID["teeth"])

    # Eyeglasses: filled lenses and frame; sunglasses hide the eyes.
    tint = None
    sunglasses = False
    if u() < 0.22:
        sunglasses = u() < 0.25
        gw = min(eyw * u(1.35, 1.7), exo - 0.07 * a)
        gh = eyw * u(0.9, 1.2)
        fw = max(1, round(u(1.5, 4.5) * s))
        rounded = u() < 0.5 and min(gw, gh) >= 4  # Pillow rejects tiny rounded rectangles
        T = Image.new("L", (size, size), 0)
        dt = ImageDraw.Draw(T)
        for side in (-1, 1):
            box = _box(cx + side * exo, ye + 0.1 * eyh, gw, gh)
            if rounded:
                d.rounded_rectangle(box, radius=0.45 * min(gw, gh), fill=_ID["lens"], outline=_ID["glasses"], width=fw)
                dt.rounded_rectangle(box, radius=0.45 * min(gw, gh), fill=255)
            else:
                d.ellipse(box, fill=_ID["lens"], outline=_ID["glasses"], width=fw)
                dt.ellipse(box, fill=255)
            d.line([cx + side * (exo + gw * 0.95), ye - 0.2 * gh, cx + side * a * 1.02, ye - 0.3 * gh],
                   fill=_ID["glasses"], width=fw)
        gi = exo - gw * 0.95
        d.line([cx - gi, ye - 0.2 * gh, cx, ye - 0.35 * gh, cx + gi, ye - 0.2 * gh],
               fill=_ID["glasses"], width=fw, joint="curve")
        tint = (T, (0.05, 0.05, 0.07) if sunglasses else tuple(u(0.3, 0.9, 3)),
                u(0.6, 0.8) if sunglasses else u(0.05, 0.2))

    # Brows: thick curved strokes over the eyes.
    yb = ye - eyh - a * u(0.12, 0.22)
    bwid = max(1, round(a * u(0.05, 0.1)))
    arch, tilt = a * u(0.02, 0.08), a * u(-0.05, 0.05)
    for side in (-1, 1):
        k = _K6
        xs_b = cx + side * (exo - eyw * 0.9 + k * eyw * 2.1)
        ys_b = yb - arch * np.sin(np.pi * k) + tilt * k
        d.line(_flat(xs_b, ys_b), fill=_ID["brow"], width=bwid, joint="curve")

    # Eyes: white, iris and pupil clipped to the white, a glint, the upper lash line.
    if not sunglasses:
        gx, gy = eyw * u(-0.25, 0.25), eyh * u(-0.15, 0.15)
        ir = eyh * u(0.85, 1.15)
        pr = ir * u(0.4, 0.55)
        for side in (-1, 1):
            ex = cx + side * exo
            ebox = _box(ex, ye, eyw, eyh)
            d.ellipse(ebox, fill=_ID["eye_white"])
            ix, iy = ex + gx, ye + gy
            _clipped_ellipses(P, ebox, [
                (_ID["iris"], _box(ix, iy, ir, ir)),
                (_ID["pupil"], _box(ix, iy, pr, pr)),
                (_ID["glint"], _box(ix - 0.35 * ir, iy - 0.35 * ir, 0.2 * ir, 0.2 * ir)),
            ])
            d.arc(ebox, 180, 360, fill=_ID["lash"], width=max(1, round(eyh * 0.22)))

    # Hat: a crown (upper half of an ellipse) and a brim, over the hair and forehead.
    if u() < 0.12:
        hy = cy - b * u(0.6, 0.78)
        d.chord(_box(cx, hy, a * u(0.98, 1.12), b * u(0.55, 0.8)), 180, 360, fill=_ID["hat"])
        d.ellipse(_box(cx, hy, a * u(1.2, 1.55), a * u(0.07, 0.14)), fill=_ID["hat_brim"])

    return P, tint, (cx, cy, a, b)


def _table(values):
    """A 256-entry Pillow point() table from per-part values."""
    return [int(v) for v in values] + [0] * (256 - len(values))


_CLASS_TABLE = _table(PART_CLASS)
_BG_TABLE = _table([255] + [0] * (_N_PARTS - 1))
_FACE_TABLE = _table(_FACE_K > 0)
_HAIR_TABLE = _table(_HAIR_K > 0)
_LOCAL = threading.local()


def _workspace(size):
    """Two (H,W) float32 scratch arrays, reused per thread: fresh large temporaries cost more in page
    faults than the arithmetic done on them."""
    ws = getattr(_LOCAL, "ws", None)
    if ws is None or ws[0].shape != (size, size):
        ws = _LOCAL.ws = (np.empty((size, size), np.float32), np.empty((size, size), np.float32))
    return ws


def render_face(rng: np.random.Generator, size: int = 256):
    """Draw one synthetic face with `rng`: returns (image float32 tensor (3,H,W) in [-1,1], labels int64
    tensor (H,W), parts uint8 array (H,W)); ``PART_CLASS[parts] == labels``, PART_NAMES names the parts."""
    L, tint, (cx, cy, a, b) = _draw(rng, size)
    u = rng.uniform
    gy, gx = _grid(size)
    shade, tmp = _workspace(size)
    f32 = np.float32

    # Flat colours in 8 bits through Pillow (palette, composite, blend and point() run in C, with no
    # numpy temporaries), then one float pass for shading and noise.
    P = L.copy()
    P.putpalette(np.round(_colours(rng) * 255).astype(np.uint8).tobytes())
    rgb = P.convert("RGB")
    # Background: a linear gradient between two colours in a random direction (an 8-bit ramp coloured
    # through a 256-entry palette).
    c0 = u(0.05, 0.95, 3)
    c1 = np.clip(c0 + u(-0.4, 0.4, 3), 0, 1)
    ang = u(0, 2 * np.pi)
    k = 255 / (1.42 * size)
    np.add(f32(k * math.cos(ang)) * (gx - f32(size / 2)), f32(k * math.sin(ang)) * (gy - f32(size / 2)) + f32(128),
           out=tmp)
    G = Image.fromarray(tmp.astype(np.uint8))
    G.putpalette(np.round((c0 + (c1 - c0) * _RAMP) * 255).astype(np.uint8).tobytes())
    rgb = Image.composite(G.convert("RGB"), rgb, L.point(_BG_TABLE))
    if tint is not None:  # the lenses tint what is seen through them
        lens, colour, alpha = tint
        tinted = Image.blend(rgb, Image.new("RGB", (size, size), tuple(int(255 * c) for c in colour)), alpha)
        rgb = Image.composite(tinted, rgb, lens)

    # One multiplicative (H,W) field: soft directional light, a rounded face, hair streaks, grain.
    lx, ly = u(-0.25, 0.25) / size, u(-0.25, 0.15) / size
    np.add(f32(lx) * (gx - f32(cx)) + f32(1), f32(ly) * (gy - f32(cy)), out=shade)
    # Face parts darken towards the face outline: 1 - 0.22 r^4, r the elliptic radius, in their box.
    y0, y1 = max(0, int(cy - 1.15 * b)), min(size, int(cy + 1.15 * b) + 1)
    x0, x1 = max(0, int(cx - 1.6 * a)), min(size, int(cx + 1.6 * a) + 1)
    r2 = tmp[y0:y1, x0:x1]
    np.add(np.square((gx[:, x0:x1] - f32(cx)) * f32(1 / a)), np.square((gy[y0:y1] - f32(cy)) * f32(1 / b)), out=r2)
    np.minimum(r2, f32(1.3), out=r2)
    np.square(r2, out=r2)
    r2 *= np.asarray(L.point(_FACE_TABLE))[y0:y1, x0:x1]
    r2 *= f32(-0.22)
    r2 += f32(1)
    shade[y0:y1, x0:x1] *= r2
    # Hair: vertical streaks, a smoothed random brightness per column.
    streak = np.convolve(rng.standard_normal(size + 4), np.ones(5) / 5, mode="valid").astype(np.float32)
    np.multiply(np.asarray(L.point(_HAIR_TABLE)), f32(u(0.08, 0.2)) * streak, out=tmp)
    tmp += f32(1)
    shade *= tmp
    # Grain from raw random bytes (cheaper than float draws), folded with the 8-bit -> [0,2] scale.
    sigma = u(0.02, 0.08)
    np.multiply(np.frombuffer(rng.bytes(size * size), np.uint8).reshape(size, size), f32(2 * sigma / 255 ** 2),
                out=tmp)
    tmp += f32((1 - sigma / 2) * 2 / 255)
    shade *= tmp

    # image = rgb * shade - 1 in [-1,1]. Numpy, not torch: torch's intra-op threads cost more than
    # these small ops when the main process has many threads.
    img = np.empty((3, size, size), np.float32)
    for c, band in enumerate(rgb.split()):
        np.multiply(np.asarray(band), shade, out=img[c])
    img -= f32(1)
    np.clip(img, -1, 1, out=img)
    labels = np.asarray(L.point(_CLASS_TABLE)).astype(np.int64)
    return torch.from_numpy(img), torch.from_numpy(labels), np.asarray(L)


class SyntheticFaces(Dataset):
    """Procedural cartoon faces with exact 14-class parsing maps; no files needed.

    ``item = SyntheticFaces(size=256, length=1000, seed=0)[i]`` is
    ``{"image": float32 (3,H,W) in [-1,1], "labels": int64 (H,W) in [0,14)}``, a function of (seed, i)
    only. Any size >= 32 works; shapes scale with it.
    """

    num_classes = NUM_CLASSES

    def __init__(self, size: int = 256, length: int = 1000, seed: int = 0):
        if int(size) < 32:
            raise ValueError(f"size must be >= 32, got {size}")
        if int(length) < 0:
            raise ValueError(f"length must be >= 0, got {length}")
        self.size, self.length, self.seed = int(size), int(length), int(seed)

    def __len__(self):
        return self.length

    def __getitem__(self, index):
        index = int(index)
        if index < 0:
            index += self.length
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} faces")
        image, labels, _ = render_face(np.random.default_rng([self.seed, index]), self.size)
        return {"image": image, "labels": labels}

    def __repr__(self):
        return f"SyntheticFaces(size={self.size}, length={self.length}, seed={self.seed})"


def make_batch(batch_size: int, size: int = 256, seed: int = 0):
    """Faces 0..batch_size-1 of SyntheticFaces(size, seed=seed), stacked:
    ``{"image": (B,3,H,W) float32, "labels": (B,H,W) int64}``."""
    ds = SyntheticFaces(size, batch_size, seed)
    items = [ds[i] for i in range(batch_size)]
    return {k: torch.stack([it[k] for it in items]) for k in ("image", "labels")}
