"""The live WebSocket's messages: the client's "start" message checked into a `LiveRequest`, and the blocks sent
back packed as binary messages (`pack_block`; `unpack_block` reads them).

The library's, so that every server of the protocol speaks it the same way: the Space's live path (`space/realtime.py`,
`space/session.py`) and the Ray Serve deployment (`portrait_rt.serving.ray_app`). No web framework here.

`parse_start` is the one place a start message is read: every setting bounded as the page's widgets bound it (the
`Bound`s below, which the page is built from), each error naming the field in the page's words ("Reference 1",
"Denoising steps"). It is pure work on a string; the references it leaves as data URLs, for
`portrait_rt.serving.references.decode` to decode, in a worker process (`space.decoder`) or, for a server with no
event loop to keep free, with `LiveRequest.decoded`.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, replace
from io import BytesIO

import numpy as np
import torch
from PIL import Image

from portrait_rt.constants import FPS, MAX_REFERENCES, SAMPLE_RATE, valid_block_sizes
from portrait_rt.serving.references import decode

MAX_SEED = 2**31 - 1
MIN_CLIENT_RATE, MAX_CLIENT_RATE = 8_000, 192_000
JPEG_QUALITY = 85
MAX_PIXELS = 40_000_000  # decoded pixels of all of a message's references (checked from their headers)
REFERENCE_SIDE = 1024  # a reference's long side once decoded (the page shrinks photos to this before sending)


@dataclass(frozen=True)
class Bound:
    """A setting's range as the page's widget allows it (the widget is built from it, and the live socket checks the
    same): `check` returns the value or raises `ValueError` in the page's words, naming the field."""

    label: str
    low: float
    high: float
    whole: bool = False

    def accepts(self) -> str:
        if self.whole:
            return f"a whole number from {int(self.low)} to {int(self.high)}"
        return f"a number from {self.low:g} to {self.high:g}"

    def check(self, value):
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number or not math.isfinite(value) or (self.whole and not float(value).is_integer()):
            raise ValueError(f"{self.label}: got {repr(value)[:40]}; use {self.accepts()}.")
        if not self.low <= value <= self.high:
            raise ValueError(f"{self.label}: got {repr(value)[:40]}; use {self.accepts()}.")
        return int(value) if self.whole else float(value)


GUIDANCE_AUDIO = Bound("Audio guidance λa", 1, 4)
GUIDANCE_REFERENCE = Bound("Reference guidance λr", 1, 4)
STEPS = Bound("Denoising steps", 1, 50, whole=True)
SEED = Bound("Seed", 0, MAX_SEED, whole=True)


@dataclass
class LiveRequest:
    """A checked "start" message: the stream's references and settings."""

    references: list  # [(slot name, data URL)] as parsed; PIL images once decoded
    settings: dict  # keyword arguments of `start_stream` except the references
    sample_rate: int  # of the PCM the client will send

    def decoded(self, max_pixels: int = MAX_PIXELS, side: int = REFERENCE_SIDE) -> LiveRequest:
        """This request with its references decoded here (`ValueError` naming the slot)."""
        return replace(self, references=decode(self.references, max_pixels, side))


def check_reference_count(count: int) -> None:
    """1 to `MAX_REFERENCES` reference images, else `ValueError` saying which slot to fill or how many to drop."""
    if count == 0:
        raise ValueError("Upload a portrait in 'Reference 1' (the face to animate).")
    if count > MAX_REFERENCES:
        raise ValueError(f"Got {count} reference images; use 1 to {MAX_REFERENCES}.")


def make_generator(seed) -> torch.Generator:
    """A CPU generator seeded with `seed` (an integer 0 .. 2^31-1); the pipeline draws its noise from it."""
    return torch.Generator().manual_seed(SEED.check(seed))


def parse_start(text, pipe) -> LiveRequest:
    """The client's first message (JSON text, or its parsed dict) -> `LiveRequest`; `ValueError` naming the field.

    Faces are aligned (the pipeline's default); `"paste_back": true` asks for the frames pasted back into the photo
    (bigger frames, more bandwidth), else they come as the model's square crop."""
    if isinstance(text, dict):
        message = text
    elif isinstance(text, str):
        try:
            message = json.loads(text)
        except ValueError:
            raise ValueError('The first message must be JSON: {"type": "start", ...}.') from None
    else:
        raise ValueError(
            'The first message must be text: {"type": "start", ...} (JSON); audio is sent after the server says '
            '"ready".'
        )
    if not isinstance(message, dict) or message.get("type") != "start":
        raise ValueError('The first message must be {"type": "start", ...}.')
    block_size = _whole(message, "block_size", "Block size")
    sample_rate = _whole(message, "sample_rate", "sample_rate")
    if not MIN_CLIENT_RATE <= sample_rate <= MAX_CLIENT_RATE:
        raise ValueError(f"sample_rate: got {sample_rate}; use {MIN_CLIENT_RATE} to {MAX_CLIENT_RATE} Hz.")
    paste_back = message.get("paste_back", False)
    if not isinstance(paste_back, bool):
        raise ValueError(f"paste_back: got {repr(paste_back)[:40]}; use true or false.")
    choices = valid_block_sizes(int(pipe.transformer.config.kv_window))
    if block_size not in choices:
        raise ValueError(f"Block size: got {block_size}; use one of {choices}.")
    run_settings = pipe.stream_settings(  # built and checked once, here
        guidance_audio=GUIDANCE_AUDIO.check(message.get("guidance_audio")),
        guidance_reference=GUIDANCE_REFERENCE.check(message.get("guidance_reference")),
        num_inference_steps=STEPS.check(message.get("num_inference_steps")),
        block_size=block_size,
        paste_back=paste_back,
    )
    settings = {"settings": run_settings, "generator": make_generator(message.get("seed"))}
    return LiveRequest(reference_slots(message.get("references")), settings, sample_rate)


def _whole(message: dict, key: str, label: str) -> int:
    value = message.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer():
        raise ValueError(f"{label}: got {repr(value)[:40]}; use a whole number.")
    return int(value)


def reference_slots(slots) -> list[tuple[str, object]]:
    """The page's Reference slots (a data URL each, None where empty) -> `[(slot name, data URL)]` of those filled."""
    if not isinstance(slots, list) or len(slots) > MAX_REFERENCES:
        raise ValueError(
            f"references: send a list of the {MAX_REFERENCES} Reference slots (a data URL each, null if empty)."
        )
    filled = [(f"Reference {slot}", ref) for slot, ref in enumerate(slots, start=1) if ref]
    check_reference_count(len(filled))
    return filled


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
