"""Compare's download: both settings' videos side by side in one mp4, each labelled, over one shared audio track.

Assembled with moviepy (`clips_array` for the layout, `AudioArrayClip` for the audio both videos were made from). The
frames are upscaled by an integer factor with nearest-neighbour sampling, so a 128 px model's pixels stay crisp in any
player, and each panel carries its label (guidance scales, lip-sync r) burnt in above the picture.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from portrait_rt.constants import FPS

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
) -> Path:
    """Write the mp4s `videos` (same size) next to each other, labelled, over one audio track (`audio` at
    `sample_rate`). Frames are read and written one at a time, so memory does not grow with the clip."""
    from moviepy import VideoFileClip, clips_array
    from moviepy.audio.AudioClip import AudioArrayClip

    sources = [VideoFileClip(str(v), audio=False) for v in videos]
    length = min(c.duration for c in sources)
    clips = [
        c.with_duration(length).image_transform(lambda frame, lab=lab: labelled_frames(frame[None], lab)[0])
        for c, lab in zip(sources, labels)
    ]
    grid = clips_array([clips], bg_color=(255, 255, 255))
    samples = np.asarray(audio, np.float32).reshape(-1)[: round(length * sample_rate)]
    track = AudioArrayClip(np.stack([samples, samples], axis=1), fps=sample_rate)  # (n, 2): stereo for players
    grid = grid.with_audio(track.with_duration(min(track.duration, grid.duration)))
    path = Path(path)
    try:
        grid.write_videofile(
            str(path),
            fps=FPS,
            codec="libx264",
            audio_codec="aac",
            audio_fps=sample_rate,
            preset="veryfast",
            ffmpeg_params=["-pix_fmt", "yuv420p", "-movflags", "+faststart", "-crf", "20"],
            logger=None,
        )
    finally:
        grid.close()
        for c in sources:
            c.close()
    return path
