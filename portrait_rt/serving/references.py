"""The references of a live start message, decoded: `decode` (Pillow only: no torch, so a worker process that runs
it, `python -m portrait_rt.serving.references`, starts in a fraction of a second and weighs ~30 MB).

A server runs it out of its own process (the Space: `space.decoder`): decoding a large image is ~1 s of C code that
holds Python's GIL in long stretches, so even in a worker thread it stalls the event loop that serves every page.
Requests go to a worker as JSON and images come back as raw pixels (`serve`), so nothing a worker sends is unpickled.

`decode`: the data URLs are read, every header is checked before any pixels are decoded (the message's
images may hold at most `max_pixels` together), then each is decoded (a JPEG at a reduced scale where that is still
over `side`), turned upright (EXIF) and shrunk to `side` pixels on its long side: the project's loader
(`portrait_rt.images`) turns it to RGB, crops and resizes it when the stream starts, as for any upload.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
import sys
from io import BytesIO

from PIL import Image, ImageOps, UnidentifiedImageError

NOT_AN_IMAGE = "is not an image this app can read (or it is damaged); use a PNG, JPEG or WebP"
MIN_SIDE = 16  # as `portrait_rt.images.MIN_SIDE` (checked again there; here before decoding)


def decode(slots: list, max_pixels: int, side: int) -> list[Image.Image]:
    """`[(name, data URL)]` -> decoded PIL images, each at most `side` on its long side; `ValueError` naming the
    slot ("Reference 2 is not an image ...") or, from the headers alone, images too large in all."""
    images = [(name, _open(ref, name, max_pixels)) for name, ref in slots]
    pixels = sum(image.width * image.height for _, image in images)
    if pixels > max_pixels:
        sizes = ", ".join(f"{name} {image.width}x{image.height}" for name, image in images)
        raise ValueError(
            f"The references are too large to decode ({sizes}: {pixels / 1e6:.0f} MP in all); live takes at most "
            f"{max_pixels / 1e6:.0f} MP. Use smaller photos (the page shrinks them before sending)."
        )
    return [_decode(image, name, side) for name, image in images]


def _open(ref, name: str, max_pixels: int) -> Image.Image:
    """A data URL -> a PIL image whose header has been read (no pixels decoded yet)."""
    if not isinstance(ref, str) or not ref.startswith("data:") or "," not in ref:
        raise ValueError(f"{name} must be a data URL (data:image/...;base64,...).")
    try:
        data = base64.b64decode(ref.split(",", 1)[1], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{name} is not valid base64.") from None
    try:
        image = Image.open(BytesIO(data))
    except Image.DecompressionBombError:
        raise ValueError(f"{name} is too large; use a photo under {max_pixels / 1e6:.0f} MP.") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise ValueError(f"{name} {NOT_AN_IMAGE}.") from None
    if min(image.size) < MIN_SIDE:
        size = f"{image.width}x{image.height}"
        raise ValueError(f"{name} is {size}; it must be at least {MIN_SIDE} pixels on each side.")
    return image


def _decode(image: Image.Image, name: str, side: int) -> Image.Image:
    try:
        image.draft(None, (side, side))  # JPEG only: decodes at 1/2, 1/4 or 1/8 scale
        image.load()
        image = ImageOps.exif_transpose(image)
        if image.mode in ("P", "PA"):  # its palette would not survive the trip as raw pixels
            image = image.convert("RGBA")
        image.thumbnail((side, side), Image.Resampling.LANCZOS)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        raise ValueError(f"{name} {NOT_AN_IMAGE}.") from None
    return image


# ---------------------------------------------------------------------------------------------- the wire
def _write(stream, payload: bytes) -> None:
    stream.write(struct.pack("<Q", len(payload)) + payload)
    stream.flush()


def answer_images(images: list[Image.Image]) -> bytes:
    head = json.dumps({"images": [[im.mode, im.width, im.height, len(im.tobytes())] for im in images]}).encode()
    return struct.pack("<I", len(head)) + head + b"".join(im.tobytes() for im in images)


def read_images(answer: bytes) -> list[Image.Image]:
    (n,) = struct.unpack_from("<I", answer)
    head, at, images = json.loads(answer[4 : 4 + n]), 4 + n, []
    for mode, width, height, size in head["images"]:
        images.append(Image.frombytes(mode, (width, height), answer[at : at + size]))
        at += size
    return images


def serve() -> None:
    """A worker: requests `{"slots", "max_pixels", "side"}` on stdin, answers on stdout, until stdin closes."""
    read, write = sys.stdin.buffer, sys.stdout.buffer
    while header := read.read(8):
        request = json.loads(read.read(struct.unpack("<Q", header)[0]))
        try:
            answer = b"\x00" + answer_images(decode(request["slots"], request["max_pixels"], request["side"]))
        except ValueError as err:
            answer = b"\x01" + str(err).encode()
        _write(write, answer)


if __name__ == "__main__":
    serve()
