"""Images and masks as users have them, to what the model takes and back.

The model takes a (3,H,W) float RGB image in [0, 1] and a (H,W) bool map of valid (known) pixels. An image comes
as a file, a PIL image, a NumPy array or a tensor, in 8 or 16 bits, grey, RGB, with alpha or a palette; `Pixels`
holds it in its own form and writes the model's fill back into that form, into the holes only, so every known
pixel of the result is the input's, bit for bit.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Optional, Tuple

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

# what `--out` may end with, and the Pillow format written for each
# the files a folder of images (or masks) is read for
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
OUTPUT_FORMATS = {".png": "PNG", ".webp": "WEBP", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF", ".jpg": "JPEG",
                  ".jpeg": "JPEG"}
# the grey modes and the mode each is read as ("1" as L, 32-bit "I" as 16-bit); any other mode is read as RGB,
# or RGBA when it has transparency
_GREY = {"1": "L", "L": "L", "LA": "LA", "I;16": "I;16", "I;16L": "I;16", "I;16B": "I;16", "I;16N": "I;16",
         "I": "I;16"}
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R 601-2, as Pillow's convert("L")


@dataclass
class Pixels:
    """An image in its own form: `array` (H,W,C) with C = 1 (grey), 2 (grey + alpha), 3 (RGB) or 4 (RGBA), in
    its own dtype, `maxval` the value of white (255, 65535 or 1.0), and `back` turning such an array into what
    the user gave (a PIL image of the same mode, an array or a tensor of the same shape, dtype and device)."""
    array: np.ndarray
    maxval: float
    back: Callable[[np.ndarray], Any]

    @property
    def size(self) -> Tuple[int, int]:
        """(H, W)."""
        return self.array.shape[0], self.array.shape[1]

    @property
    def has_alpha(self) -> bool:
        return self.array.shape[2] in (2, 4)

    def rgb(self) -> torch.Tensor:
        """(3,H,W) float32 in [0, 1]: grey repeated, alpha dropped."""
        colour = self.array[..., :3] if self.array.shape[2] >= 3 else self.array[..., :1]
        rgb = torch.from_numpy(np.array(colour, dtype=np.float32)).permute(2, 0, 1) / self.maxval
        return rgb.clamp_(0, 1).expand(3, -1, -1).contiguous()

    def transparent(self) -> Optional[np.ndarray]:
        """(H,W) bool where the alpha channel is below half, or None without alpha."""
        return self.array[..., -1] < self.maxval / 2 if self.has_alpha else None

    def paint(self, out: np.ndarray, fill: torch.Tensor, holes: np.ndarray) -> None:
        """Writes `fill` ((3,h,w) float in [0, 1]) into the `holes` ((h,w) bool) of `out`, an (h,w,C) array (or
        view) in this image's form, and nothing else; a filled pixel is opaque."""
        if not holes.any():
            return
        rgb = fill.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()[holes]  # (K, 3)
        colour = rgb @ _LUMA[:, None] if out.shape[2] <= 2 else rgb
        values = colour * self.maxval
        if np.issubdtype(out.dtype, np.integer):
            values = np.rint(values)
        out[holes, :colour.shape[1]] = values.astype(out.dtype)
        if self.has_alpha:
            out[holes, -1] = self.maxval


# ------------------------------------------------------------------------------------------------ reading

def _open(path, what: str) -> Image.Image:
    """A file decoded whole, EXIF orientation applied; one-line errors for what is not an image."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} {path} not found")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{what} {path} is a folder, not an image file")
    if os.path.getsize(path) == 0:
        raise ValueError(f"{what} {path} is empty (0 bytes)")
    try:
        with Image.open(path) as im:
            im.load()
            return ImageOps.exif_transpose(im)  # a photo's pixels upright, as viewers show them
    except UnidentifiedImageError:
        raise ValueError(f"{what} {path} is not an image file that Pillow can read") from None
    except PermissionError:
        raise PermissionError(f"{what} {path} cannot be read (permission denied)") from None
    except (OSError, SyntaxError, Image.DecompressionBombError) as exc:  # truncated or broken data
        raise ValueError(f"{what} {path} could not be decoded: {exc}") from None


def read_image(path) -> Image.Image:
    return _open(path, "image")


def read_mask(path) -> Image.Image:
    return _open(path, "mask")


def _pil_pixels(image: Image.Image) -> Pixels:
    if image.mode in ("1", "L", "RGB") and "transparency" in image.info:
        # a PNG's tRNS colour: its pixels are transparent (the holes without a mask), as a palette's are
        image = image.convert("RGBA" if image.mode == "RGB" else "LA")
    mode = image.mode
    if mode in _GREY:
        target = _GREY[mode]
        if target == "I;16":
            array = np.clip(np.asarray(image), 0, 65535).astype(np.uint16)[..., None]
            return Pixels(array, 65535.0, _to_pil)
        image = image.convert(target)
        array = np.asarray(image)
        return Pixels(array[..., None] if array.ndim == 2 else array, 255.0, _to_pil)
    if mode not in ("RGB", "RGBA"):
        has_alpha = "A" in mode or mode == "RGBa" or "transparency" in image.info
        image = image.convert("RGBA" if has_alpha else "RGB")
    return Pixels(np.asarray(image), 255.0, _to_pil)


def _to_pil(array: np.ndarray) -> Image.Image:
    """Pillow infers the mode from the array: L or I;16 (one channel), LA, RGB, RGBA."""
    return Image.fromarray(array[..., 0] if array.shape[2] == 1 else array)


def _array_pixels(array: np.ndarray) -> Pixels:
    shape, dtype = array.shape, array.dtype
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[2] not in (1, 2, 3, 4):
        raise ValueError(f"image array must be (H,W) or (H,W,C) with C in 1..4, got shape {shape}")
    if dtype == np.bool_:
        array = array.astype(np.uint8)
    if dtype == np.uint8 or dtype == np.bool_:
        maxval = 1.0 if dtype == np.bool_ else 255.0
    elif dtype == np.uint16:
        maxval = 65535.0
    elif np.issubdtype(dtype, np.floating):
        maxval = 1.0
    else:
        raise ValueError(f"image array must be uint8, uint16, bool or float in [0, 1], got {dtype}")
    return Pixels(array, maxval, lambda a: a.reshape(shape).astype(dtype, copy=False))


def _tensor_pixels(tensor: torch.Tensor) -> Pixels:
    shape, dtype, device = tensor.shape, tensor.dtype, tensor.device
    t = tensor[0] if tensor.dim() == 4 and tensor.shape[0] == 1 else tensor
    if t.dim() != 3 or t.shape[0] not in (1, 2, 3, 4):
        raise ValueError(f"image tensor must be (C,H,W) or (1,C,H,W) with C in 1..4, got {tuple(shape)}")
    if dtype == torch.uint8:
        maxval = 255.0
    elif dtype.is_floating_point:
        maxval = 1.0
    else:
        raise ValueError(f"image tensor must be uint8 or float in [0, 1], got {dtype}")
    array = t.detach().permute(1, 2, 0).cpu()
    array = (array.float() if dtype in (torch.bfloat16, torch.float16) else array).numpy()

    def back(a):
        out = torch.from_numpy(a).permute(2, 0, 1).to(device=device, dtype=dtype)
        return out.reshape(shape)

    return Pixels(array, maxval, back)


def to_pixels(image) -> Pixels:
    """A PIL image, NumPy array, tensor or file path as Pixels."""
    if isinstance(image, (str, os.PathLike)):
        image = read_image(image)
    if isinstance(image, Image.Image):
        return _pil_pixels(image)
    if isinstance(image, np.ndarray):
        return _array_pixels(image)
    if isinstance(image, torch.Tensor):
        return _tensor_pixels(image)
    raise TypeError(f"image must be a PIL image, a NumPy array, a tensor or a path, got {type(image).__name__}")


# ------------------------------------------------------------------------------------------------ masks

def _valid_from_levels(levels: np.ndarray, maxval: float) -> np.ndarray:
    """White = valid. A mask whose values are all 0 or 1 is read as 0/1 (a 0/255 mask saved as 0/1 would
    otherwise be a hole everywhere); otherwise the threshold is half of white."""
    if levels.dtype == np.bool_:
        return levels.copy()  # the caller's may be read-only (np.asarray of a PIL image): torch.from_numpy warns
    top = levels.max(initial=0)
    if top <= 1 and np.issubdtype(levels.dtype, np.integer):
        return levels >= 1
    return levels >= maxval / 2


def _mask_levels(mask) -> Tuple[np.ndarray, float]:
    """(H,W) grey levels of a mask and the value of white; a varying alpha channel is the mask itself
    (transparent = hole)."""
    px = to_pixels(mask)
    alpha = px.array[..., -1] if px.has_alpha else None
    if alpha is not None and alpha.min() != alpha.max():
        return alpha, px.maxval
    colour = px.array[..., :3] if px.array.shape[2] >= 3 else px.array[..., :1]
    if colour.shape[2] == 1:
        return colour[..., 0], px.maxval
    grey = colour.astype(np.float32) @ _LUMA
    if np.issubdtype(colour.dtype, np.integer):  # integer levels, as Pillow's convert("L"): 0/1 RGB stays 0/1
        grey = np.rint(grey).astype(colour.dtype)
    return grey, px.maxval


def valid_map(mask, size: Tuple[int, int], invert: bool = False) -> np.ndarray:
    """(H,W) bool, True = valid (known), from a mask (file, PIL image, array or tensor; white = valid, or the
    alpha channel when it varies); `invert` for masks white where the holes are. `size` is the image's (H, W):
    a mask of another size is an error, never stretched."""
    if isinstance(mask, (str, os.PathLike)):
        mask = read_mask(mask)
    if isinstance(mask, torch.Tensor):
        t = mask.detach()
        while t.dim() > 2 and t.shape[0] == 1:
            t = t[0]
        if t.dim() != 2:
            raise ValueError(f"mask tensor must be (H,W), (1,H,W) or (1,1,H,W), got {tuple(mask.shape)}")
        mask = t.cpu().numpy() if t.dtype != torch.bfloat16 else t.float().cpu().numpy()
    if isinstance(mask, np.ndarray) and mask.ndim == 2:
        if not (mask.dtype == np.bool_ or np.issubdtype(mask.dtype, np.integer)
                or np.issubdtype(mask.dtype, np.floating)):
            raise ValueError(f"mask array must be bool, integer or float, got {mask.dtype}")
        # white: True, 1.0 for floats, 255 for 8-bit levels (and wider integers holding them), else 65535
        levels, maxval = mask, (1.0 if not np.issubdtype(mask.dtype, np.integer)
                                else 255.0 if mask.max(initial=0) <= 255 else 65535.0)
    else:
        levels, maxval = _mask_levels(mask)
    if levels.shape != tuple(size):
        (h, w), (mh, mw) = size, levels.shape
        raise ValueError(f"the mask is {mw}x{mh} but the image is {w}x{h} (width x height): a mask must have its "
                         "image's size")
    valid = _valid_from_levels(levels, maxval)
    return ~valid if invert else valid


# ------------------------------------------------------------------------------------------------ writing

def check_output_path(path) -> str:
    """The Pillow format for an output path; a one-line error for a folder or an unknown extension."""
    path = os.fspath(path)
    if os.path.isdir(path) or path.endswith(os.sep):
        raise IsADirectoryError(f"--out {path} is a folder; give a file name such as {os.path.join(path, 'out.png')}")
    ext = os.path.splitext(path)[1].lower()
    if ext not in OUTPUT_FORMATS:
        raise ValueError(f"--out {path} must end with an image extension ({', '.join(OUTPUT_FORMATS)}), got "
                         f"{ext or 'none'}")
    return OUTPUT_FORMATS[ext]


def save_image(image: Image.Image, path) -> None:
    """Writes losslessly where the format can (PNG, WebP lossless, BMP, TIFF); JPEG at quality 95. A mode that
    the format cannot hold (16-bit or alpha in JPEG or BMP) is converted."""
    fmt = check_output_path(path)
    if image.mode == "I;16" and fmt not in ("PNG", "TIFF"):
        image = Image.fromarray((np.asarray(image).astype(np.float32) / 257).round().astype(np.uint8), "L")
    if fmt in ("JPEG", "BMP") and image.mode in ("RGBA", "LA"):
        image = image.convert(image.mode[:-1])
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    # PNG at zlib level 1: a 4K photo is written in 0.4 s instead of 2.3 s (level 6), for a file ~20 % larger
    options = {"WEBP": {"lossless": True}, "JPEG": {"quality": 95}, "PNG": {"compress_level": 1}}.get(fmt, {})
    image.save(path, format=fmt, **options)
