"""Images and frames: reference portraits in, and the one rule between uint8 pixels and the VAE's [-1, 1].

Reference images: 1-3 portraits from paths, PIL images or arrays -> square RGB uint8 at the model resolution.
Handles RGBA/LA (composited on white), grayscale, palette, CMYK, 16-bit and float arrays, and EXIF rotation;
centre-crops to a square and resizes with Lanczos. Non-images, empty images, absurdly large images and a wrong
number of images raise `ValueError` saying what to change.

Pixels: `frames_to_tensor` (uint8 0..255 -> float in [-1, 1]) and `tensor_to_frames` (back, clamped and rounded)
are the only places that convert; everything that feeds or reads the VAE goes through them.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from portrait_rt.constants import MAX_REFERENCES

MAX_PIXELS = 40_000_000  # ~ 8K x 5K; larger is a mistake or a decompression bomb
MIN_SIDE = 16


def _array_to_pil(array: np.ndarray) -> Image.Image:
    a = np.asarray(array)
    if a.ndim == 3 and a.shape[0] in (1, 3, 4) and a.shape[-1] not in (1, 3, 4):
        a = np.moveaxis(a, 0, -1)  # (C, H, W) -> (H, W, C)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (3, 4)):
        raise ValueError(f"An image array must be (H, W), (H, W, 3) or (H, W, 4), got shape {a.shape}.")
    if a.dtype.kind == "f":
        if not np.isfinite(a).all():
            raise ValueError("Image array contains NaN or inf values.")
        scale = 255.0 if a.max(initial=0) <= 1.0 else 1.0  # floats in [0, 1] or [0, 255]
        a = np.clip(a * scale, 0, 255).round().astype(np.uint8)
    elif a.dtype == np.uint16 or (a.dtype.kind in "iu" and a.max(initial=0) > 255):
        a = (np.clip(a, 0, 65535) / 257.0).round().astype(np.uint8)
    elif a.dtype == bool:
        a = a.astype(np.uint8) * 255
    elif a.dtype.kind in "iu":
        a = np.clip(a, 0, 255).astype(np.uint8)
    else:
        raise ValueError(f"Unsupported image array dtype {a.dtype}; use uint8, uint16 or float.")
    return Image.fromarray(a)


def _open(source) -> Image.Image:
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, np.ndarray) or hasattr(source, "__array__") and not isinstance(source, (str, bytes)):
        return _array_to_pil(np.asarray(source))
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise ValueError(f"Reference image {path.name!r} does not exist.")
        try:
            image = Image.open(path)
            if image.size[0] * image.size[1] > MAX_PIXELS:  # check before decoding the pixels
                raise Image.DecompressionBombError(image.size)
            image.load()
        except Image.DecompressionBombError:
            raise ValueError(f"{path.name} is too large; use an image under {MAX_PIXELS // 1_000_000} MP.") from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
            raise ValueError(
                f"{path.name} is not an image this app can read (or it is damaged); use a PNG, JPEG or WebP."
            ) from None
        return image
    raise ValueError(f"A reference image must be a path, a PIL image or an array, got {type(source).__name__}.")


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB: EXIF orientation applied, alpha composited on white, 16-bit scaled down."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        return _array_to_pil(np.asarray(image).astype(np.uint32).clip(0, 65535).astype(np.uint16)).convert("RGB")
    if image.mode == "F":
        return _array_to_pil(np.asarray(image)).convert("RGB")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def load_photo(source) -> Image.Image:
    """One reference image (path, PIL image or array) -> an RGB PIL image at its own size, checked: not empty, not
    absurdly large, at least `MIN_SIDE` pixels on each side."""
    image = _open(source)
    w, h = image.size
    if w == 0 or h == 0:
        raise ValueError("Reference image is empty (zero width or height).")
    if w * h > MAX_PIXELS:
        raise ValueError(f"Reference image is {w}x{h}; use one under {MAX_PIXELS // 1_000_000} megapixels.")
    if min(w, h) < MIN_SIDE:
        raise ValueError(f"Reference image is {w}x{h}; it must be at least {MIN_SIDE} pixels on each side.")
    return to_rgb(image)


def load_image(source, resolution: int) -> np.ndarray:
    """One reference image -> uint8 (resolution, resolution, 3), centre-cropped to a square (no face search: see
    `portrait_rt.faces` for the crop the model was trained on)."""
    image = ImageOps.fit(
        load_photo(source), (resolution, resolution), method=Image.Resampling.LANCZOS, centering=(0.5, 0.5)
    )
    return np.asarray(image, dtype=np.uint8)


def reference_list(images) -> list:
    """1-3 references as given (a single one, a list or tuple, or a stacked (M, H, W, C) array) -> a list of 1-3,
    Nones dropped; `ValueError` for none or too many."""
    if images is None:
        raise ValueError("Give at least one reference image (a portrait of the person to animate).")
    if isinstance(images, np.ndarray) and images.ndim > 3:
        images = list(images)
    elif not isinstance(images, (list, tuple)):
        images = [images]
    images = [im for im in images if im is not None]
    if not images:
        raise ValueError("Give at least one reference image (a portrait of the person to animate).")
    if len(images) > MAX_REFERENCES:
        raise ValueError(f"Got {len(images)} reference images; give 1 to {MAX_REFERENCES}.")
    return images


def load_reference_images(images, resolution: int) -> np.ndarray:
    """1-3 reference images (a single one or a list) -> uint8 (M, resolution, resolution, 3), centre-cropped."""
    return np.stack([load_image(im, resolution) for im in reference_list(images)])


def frames_to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 frames (..., H, W, 3) -> float32 (..., 3, H, W) in [-1, 1], the VAE's pixel range (a copy)."""
    x = torch.from_numpy(np.array(frames)).float() / 127.5 - 1.0  # np.array copies: read-only mmaps are fine
    return x.movedim(-1, -3)


def tensor_to_frames(x: torch.Tensor) -> np.ndarray:
    """Float (..., 3, H, W) in [-1, 1] (clamped) -> uint8 frames (..., H, W, 3) on the CPU, rounded to nearest."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).movedim(-3, -1).cpu().numpy()
