"""Compare's download: both settings' videos side by side in one mp4, each labelled, over one shared audio track.

Both settings' mp4s are read back frame by frame (imageio-ffmpeg's reader), laid out side by side, and written by the
library's `VideoWriter` with the audio both videos were made from: a block of frames at a time, in memory that does not
grow with the clip, and no file outside the writer's own temporary folder. The frames are upscaled by an integer factor
with nearest-neighbour sampling, so a 128 px model's pixels stay crisp in any player, and each panel carries its label
(guidance scales, lip-sync r) burnt in above the picture.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from portrait_rt.constants import FPS
from portrait_rt.video import VideoWriter

PANEL_PX = 384  # each panel's picture is upscaled to at least this size, by a whole factor
LABEL_PX = 44  # the label band above each panel
GAP_PX = 4  # white on either side of a panel


@lru_cache(maxsize=4)
def _font(size: int) -> ImageFont.ImageFont:
    """DejaVu Sans (it has λ), shipped with matplotlib, a requirement of the Space; Pillow's own font otherwise."""
    try:
        from matplotlib import font_manager

        return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), size)
    except (ImportError, OSError, ValueError):
        return ImageFont.load_default(size)


def upscale_factor(size: int, target: int = PANEL_PX) -> int:
    """The whole factor that brings `size` pixels to at least `target` (1 when it is already that large)."""
    return max(1, -(-target // size))


def labelled_frames(frames: np.ndarray, lines: list[str], target: int = PANEL_PX) -> np.ndarray:
    """uint8 (T, H, W, 3) -> frames upscaled (nearest, a whole factor, to >= `target` px) under a band of `lines`."""
    k = upscale_factor(frames.shape[1], target)
    big = frames.repeat(k, axis=1).repeat(k, axis=2)  # (T, kH, kW, 3), crisp pixels
    band = Image.new("RGB", (big.shape[2], LABEL_PX), "white")
    draw = ImageDraw.Draw(band)
    for i, line in enumerate(lines[:2]):
        draw.text((8, 2 + 20 * i), line, fill="black", font=_font(16))
    band = np.broadcast_to(np.asarray(band), (len(big), *np.asarray(band).shape))
    panel = np.concatenate([band, big], axis=1)  # (T, LABEL_PX + kH, kW, 3)
    return np.pad(panel, ((0, 0), (0, 0), (GAP_PX, GAP_PX), (0, 0)), constant_values=255)  # a white gap between


def side_by_side(
    path: str | os.PathLike,
    videos: list[str | os.PathLike],
    labels: list[list[str]],
    audio: np.ndarray,
    sample_rate: int,
    chunk: int = FPS,
) -> Path:
    """Write the mp4s `videos` (same size) next to each other, labelled, over one audio track (`audio` at
    `sample_rate`), `chunk` frames at a time; as long as the shortest of them."""
    import imageio_ffmpeg

    readers = [imageio_ffmpeg.read_frames(str(v), pix_fmt="rgb24") for v in videos]
    try:
        sizes = {tuple(next(r)["size"]) for r in readers}  # each reader yields its metadata first
        if len(sizes) != 1:
            raise ValueError(f"The videos differ in size: {sorted(sizes)}.")
        (width, height), samples = sizes.pop(), np.asarray(audio, np.float32).reshape(-1)
        per_frame = sample_rate / FPS
        with VideoWriter(path, sample_rate=sample_rate) as writer:
            while True:
                panels = [_next_frames(r, chunk, height, width) for r in readers]
                n = min(len(p) for p in panels)
                if n == 0:
                    break
                grid = np.concatenate([labelled_frames(p[:n], lab) for p, lab in zip(panels, labels)], axis=2)
                start = writer.frames_written
                writer.write(grid, samples[round(start * per_frame) : round((start + n) * per_frame)])
                if n < chunk:
                    break
        return writer.path
    finally:
        for r in readers:
            r.close()


def _next_frames(reader, count: int, height: int, width: int) -> np.ndarray:
    """Up to `count` more uint8 (t, H, W, 3) frames from an imageio-ffmpeg reader (fewer at the end)."""
    frames = []
    for raw in reader:
        frames.append(np.frombuffer(raw, np.uint8).reshape(height, width, 3))
        if len(frames) == count:
            break
    return np.stack(frames) if frames else np.zeros((0, height, width, 3), np.uint8)
