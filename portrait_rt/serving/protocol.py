"""The live WebSocket's messages: the client's "start" message checked into a `LiveRequest`, and the blocks sent
back packed as binary messages (`pack_block`; `unpack_block` reads them).

The library's, so that every server of the protocol speaks it the same way: the Space's live path (`space/realtime.py`,
`space/session.py`) and the Ray Serve deployment (`portrait_rt.serving.ray_app`). No web framework here."""

from __future__ import annotations

import base64
import binascii
import json
import struct
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from portrait_rt.constants import FPS, MAX_REFERENCES, SAMPLE_RATE
from portrait_rt.images import load_reference_images

MAX_SEED = 2**31 - 1
MAX_REFERENCE_BYTES = 20 * 2**20
MIN_CLIENT_RATE, MAX_CLIENT_RATE = 8_000, 192_000
JPEG_QUALITY = 85


@dataclass
class LiveRequest:
    """A checked "start" message: the stream's references (loaded) and settings."""

    references: np.ndarray  # uint8 (M, H, W, 3), as the pipeline loads them
    settings: dict  # keyword arguments of `start_stream` except the references
    sample_rate: int  # of the PCM the client will send


def check_reference_count(count: int) -> None:
    """1 to `MAX_REFERENCES` reference images, else `ValueError` saying which slot to fill or how many to drop."""
    if count == 0:
        raise ValueError("Upload a portrait in 'Reference 1' (the face to animate).")
    if count > MAX_REFERENCES:
        raise ValueError(f"Got {count} reference images; use 1 to {MAX_REFERENCES}.")


def make_generator(seed) -> torch.Generator:
    """A CPU generator seeded with `seed` (an integer 0 .. 2^31-1); the pipeline draws its noise from it."""
    if seed is None or not float(seed).is_integer() or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"Seed must be a whole number from 0 to {MAX_SEED}, got {seed!r}.")
    return torch.Generator().manual_seed(int(seed))


def _number(message: dict, name: str, kind=float):
    value = message.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        raise ValueError(f"{name} must be a number, got {value!r}.")
    if kind is int and not float(value).is_integer():
        raise ValueError(f"{name} must be a whole number, got {value!r}.")
    return kind(value)


def parse_start(message, pipe, folder: Path) -> LiveRequest:
    """The client's "start" message -> `LiveRequest`; `ValueError` naming the field to change.

    References arrive as data URLs (what the browser read from the Reference slots); they are written to `folder` and
    loaded like any uploaded file (the same size and format checks), and the settings checked by the pipeline, all
    before the session waits for a slot.
    """
    if not isinstance(message, dict) or message.get("type") != "start":
        raise ValueError('The first message must be {"type": "start", ...}.')
    refs = [r for r in message.get("references") or [] if r]
    check_reference_count(len(refs))
    paths = []
    for i, ref in enumerate(refs):
        if not isinstance(ref, str) or not ref.startswith("data:") or "," not in ref:
            raise ValueError(f"references[{i}] must be a data URL (data:image/...;base64,...).")
        if len(ref) > MAX_REFERENCE_BYTES * 4 // 3 + 100:
            raise ValueError(f"references[{i}] is over {MAX_REFERENCE_BYTES // 2**20} MB; upload a smaller portrait.")
        try:
            data = base64.b64decode(ref.split(",", 1)[1], validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"references[{i}] is not valid base64.") from None
        paths.append(folder / f"reference_{i}")
        paths[-1].write_bytes(data)
    sample_rate = _number(message, "sample_rate", int)
    if not MIN_CLIENT_RATE <= sample_rate <= MAX_CLIENT_RATE:
        raise ValueError(f"sample_rate={sample_rate}; use {MIN_CLIENT_RATE} to {MAX_CLIENT_RATE} Hz.")
    run_settings = pipe.stream_settings(  # built and checked once, here (the block size against the KV window too)
        guidance_audio=_number(message, "guidance_audio"),
        guidance_reference=_number(message, "guidance_reference"),
        num_inference_steps=_number(message, "num_inference_steps", int),
        block_size=_number(message, "block_size", int),
    )
    settings = {"settings": run_settings, "generator": make_generator(_number(message, "seed", int))}
    return LiveRequest(load_reference_images(paths, pipe.resolution), settings, sample_rate)


def pack_block(record, quality: int = JPEG_QUALITY) -> bytes:
    """One `BlockRecord` -> one binary message: u32 header length, header JSON, PCM int16 (16 kHz), JPEG frames."""
    pcm = (np.clip(record.audio, -1.0, 1.0) * 32767).astype("<i2").tobytes()
    jpegs = []
    for frame in record.frames:
        buf = BytesIO()
        Image.fromarray(frame).save(buf, "JPEG", quality=quality)
        jpegs.append(buf.getvalue())
    header = {
        "type": "block",
        "first_frame": int(record.first_frame),
        "fps": FPS,
        "sample_rate": SAMPLE_RATE,
        "audio_bytes": len(pcm),
        "jpeg_bytes": [len(j) for j in jpegs],
        "server_ms": round(record.timing.latency_ms, 1),  # model time for this block (not the mic-to-screen latency)
    }
    head = json.dumps(header).encode()
    return struct.pack("<I", len(head)) + head + pcm + b"".join(jpegs)


def unpack_block(message: bytes) -> tuple[dict, np.ndarray, list[bytes]]:
    """The inverse of `pack_block` (for tests and tools): header, int16 PCM, JPEG frames."""
    (n,) = struct.unpack_from("<I", message)
    header = json.loads(message[4 : 4 + n])
    start = 4 + n + header["audio_bytes"]
    pcm = np.frombuffer(message[4 + n : start], "<i2")
    jpegs = []
    for size in header["jpeg_bytes"]:
        jpegs.append(message[start : start + size])
        start += size
    return header, pcm, jpegs
