"""Low-latency live mode: the browser's microphone and a pipeline stream joined by one WebSocket.

    browser (space/static/live.js)                       server (`LiveServer`, mounted at /live-rt by app.py)
    {"type": "start", settings, references} -------->    checks; waits for a free slot (`LiveGate`)
                       <-------- {"type": "queued", "position": n} ... then {"type": "ready", ...}
    binary: PCM int16 mono at the client's rate ---->    `pipe.feed(stream, ...)` in a worker thread
                       <-------- binary, one per block: header JSON + the block's 16 kHz PCM + its JPEG frames
    {"type": "stop"} ------------------------------->    `pipe.flush(stream)`: the tail block
                       <-------- {"type": "ended", "reason": ...}

Why a WebSocket rather than WebRTC: it runs through the Spaces proxy like any page request (no ICE, STUN or TURN
server to run), it rides on the app's own server (uvicorn, with the `websockets` package), the browser needs no
codec negotiation, and its cost is small here: a block is already 160 ms of audio, a 128² JPEG is ~4 KB, so a stream
is ~100 KB/s down and 32 KB/s up. Video frames go down as the block's JPEGs, with the exact audio that drove them
(`BlockRecord.audio`): the client plays both against one clock (its `AudioContext`), and measures the mic-to-screen
latency itself, from the capture time of each frame's audio to the moment the frame is drawn.

Fair sharing (`LiveGate`): at most `capacity` streams run at once (`PORTRAIT_RT_REALTIME_STREAMS`); the next
`max_waiting` wait in line and are told their place ("queued", position n) before their microphone is opened, so no
speech is taken that cannot be served; beyond that a session is refused. A session ends at its time limit, after
`IDLE_TIMEOUT_S` without audio, or if it falls `MAX_BACKLOG_S` behind the microphone (it says so, it never drops audio
silently); when the socket closes, its stream, its references and its slot are freed. Each socket has its own
stream: nothing a refused or failed session sent can reach another.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import os
import struct
import tempfile
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import numpy as np
from PIL import Image

from portrait_rt.constants import FPS, SAMPLE_RATE
from portrait_rt.images import load_reference_images
from space.inputs import check_reference_count, make_generator
from space.panels import block_size_choices

logger = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
ROUTE = "/live-rt"  # the WebSocket is ROUTE/ws, the client ROUTE/static/live.js, the gate's state ROUTE/status
START_TIMEOUT_S = 30.0  # the socket must say "start" within this
IDLE_TIMEOUT_S = 10.0  # no audio for this long (after "ready"): the microphone is gone, the session ends
MAX_BACKLOG_S = 3.0  # audio waiting for the model: more than this and the stream is not real time any more
MAX_REFERENCE_BYTES = 20 * 2**20
MIN_CLIENT_RATE, MAX_CLIENT_RATE = 8_000, 192_000
JPEG_QUALITY = 85


def env_int(name: str, default: int) -> int:
    """A positive integer from the environment variable `name` (`default` if unset); `ValueError` naming it."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{name}={raw!r}: set it to a whole number of at least 1.")
    return int(raw)


class LiveRefused(Exception):
    """No slot now and the line is full."""


class LiveGate:
    """Admission to live streams: `capacity` run at once; up to `max_waiting` wait in line, first come first served,
    told their place whenever it changes; beyond that, refused. One event loop uses it (no thread locks needed);
    `leave` is synchronous so that a cancelled session still frees its slot."""

    def __init__(self, capacity: int, max_waiting: int):
        self.capacity, self.max_waiting = capacity, max_waiting
        self.active = 0
        self.line: list[object] = []  # tickets of the sessions waiting, first in line first
        self._changed = asyncio.Event()  # set (and replaced) at every change of `active` or `line`

    async def enter(self, on_position) -> None:
        """Wait for a slot, awaiting `on_position(n)` (n = 1: next) whenever the place in line changes; then hold
        the slot until `leave()`. `LiveRefused` if the line is full. Cancel it to leave the line."""
        if self.active >= self.capacity and len(self.line) >= self.max_waiting:
            raise LiveRefused(
                f"Live is busy: all {self.capacity} slot(s) are taken and {len(self.line)} people are waiting; "
                "try again in a minute."
            )
        ticket = object()
        self.line.append(ticket)
        told = None
        try:
            while True:
                changed, place = self._changed, self.line.index(ticket)
                if place == 0 and self.active < self.capacity:
                    break
                if place + 1 != told:
                    told = place + 1
                    await on_position(told)
                if changed is self._changed:  # nothing moved while we told the client
                    await changed.wait()
        finally:
            self.line.remove(ticket)
            self._notify()
        self.active += 1

    def leave(self) -> None:
        self.active -= 1
        self._notify()

    def state(self) -> dict:
        return {"capacity": self.capacity, "active": self.active, "waiting": len(self.line)}

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()


@dataclass
class LiveRequest:
    """A checked "start" message: the stream's references (loaded) and settings."""

    references: np.ndarray  # uint8 (M, H, W, 3), as the pipeline loads them
    settings: dict  # keyword arguments of `start_stream` except the references
    sample_rate: int  # of the PCM the client will send


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
    block_size = _number(message, "block_size", int)
    if block_size not in block_size_choices(pipe):
        raise ValueError(f"block_size={block_size}; use one of {block_size_choices(pipe)}.")
    sample_rate = _number(message, "sample_rate", int)
    if not MIN_CLIENT_RATE <= sample_rate <= MAX_CLIENT_RATE:
        raise ValueError(f"sample_rate={sample_rate}; use {MIN_CLIENT_RATE} to {MAX_CLIENT_RATE} Hz.")
    settings = {
        "guidance_audio": _number(message, "guidance_audio"),
        "guidance_reference": _number(message, "guidance_reference"),
        "num_inference_steps": _number(message, "num_inference_steps", int),
        "generator": make_generator(_number(message, "seed", int)),
        "block_size": block_size,
    }
    pipe.check_inputs(
        settings["guidance_audio"],
        settings["guidance_reference"],
        settings["num_inference_steps"],
        block_size,
        int(pipe.transformer.config.kv_window),
    )
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


_STOP = object()


class Inbox:
    """A session's audio from the socket, waiting for the model: int16 chunks and the stop mark."""

    def __init__(self):
        self._items: list = []
        self._ready = asyncio.Event()
        self.samples = 0  # waiting now

    def put(self, item) -> None:
        self._items.append(item)
        self.samples += 0 if item is _STOP else item.size
        self._ready.set()

    async def take_all(self) -> tuple[np.ndarray, bool]:
        """Wait for something, then take everything waiting: (all the audio as one array, whether stop came)."""
        await self._ready.wait()
        items, self._items, self.samples = self._items, [], 0
        self._ready.clear()
        audio = [c for c in items if c is not _STOP]
        return (np.concatenate(audio) if audio else np.zeros(0, np.int16)), len(audio) < len(items)


class LiveServer:
    """The WebSocket endpoint: one `pipe` stream per socket, admitted by a `LiveGate`."""

    def __init__(self, pipe, capacity: int, max_waiting: int = 8, time_limit_s: float = 120.0):
        self.pipe = pipe
        self.gate = LiveGate(capacity, max_waiting)
        self.time_limit_s = time_limit_s
        self.sessions_started = 0

    def routes(self) -> list:
        """Starlette routes to mount on the app's server (Gradio's FastAPI app): the socket, the client, the state."""
        from starlette.responses import JSONResponse
        from starlette.routing import Mount, Route, WebSocketRoute
        from starlette.staticfiles import StaticFiles

        async def status(request):
            return JSONResponse({**self.gate.state(), "sessions_started": self.sessions_started})

        return [
            Mount(
                ROUTE,
                routes=[
                    WebSocketRoute("/ws", self.handle),
                    Route("/status", status),
                    Mount("/static", StaticFiles(directory=STATIC)),
                ],
            )
        ]

    async def handle(self, ws) -> None:
        """One browser session, from "start" to the socket's close; everything it held is released on the way out."""
        from starlette.websockets import WebSocketDisconnect

        await ws.accept()
        try:
            message = await asyncio.wait_for(ws.receive_text(), START_TIMEOUT_S)
            with tempfile.TemporaryDirectory(prefix="portrait-rt-live-") as folder:  # gone once the images are read
                request = parse_start(json.loads(message), self.pipe, Path(folder))
        except ValueError as err:  # (json.JSONDecodeError is one)
            await _send_error(ws, str(err))
            return
        except (asyncio.TimeoutError, WebSocketDisconnect):
            await _close(ws)
            return
        await self._serve(ws, request)

    async def _serve(self, ws, request: LiveRequest) -> None:
        from starlette.websockets import WebSocketDisconnect

        inbox = Inbox()
        admitted = asyncio.Event()

        async def receive():
            """Everything the client sends; ends when the socket closes."""
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    return
                if message.get("bytes") is not None:
                    if not admitted.is_set():
                        raise ValueError("Audio came before the server said 'ready'.")
                    inbox.put(np.frombuffer(message["bytes"], "<i2"))
                elif json.loads(message.get("text") or "{}").get("type") == "stop":
                    inbox.put(_STOP)

        receiver = asyncio.create_task(receive())
        entered = False
        try:
            gate = asyncio.create_task(self.gate.enter(lambda n: ws.send_json({"type": "queued", "position": n})))
            await asyncio.wait({gate, receiver}, return_when=asyncio.FIRST_COMPLETED)
            if not gate.done():  # the client left (or misbehaved) while waiting in line
                gate.cancel()
                await asyncio.gather(gate, return_exceptions=True)
                receiver.result()  # a protocol error is told to the client
                return
            gate.result()  # LiveRefused
            entered = True
            self.sessions_started += 1
            admitted.set()
            worker = asyncio.create_task(self._stream(ws, request, inbox))
            await asyncio.wait({worker, receiver}, return_when=asyncio.FIRST_COMPLETED)
            if not worker.done():  # the socket closed mid-stream (or broke the protocol): stop, free the stream
                worker.cancel()
                await asyncio.gather(worker, return_exceptions=True)
                receiver.result()
                return
            worker.result()  # a bad setting (ValueError) is told to the client
        except LiveRefused as err:
            await _send(ws, {"type": "refused", "message": str(err)})
        except ValueError as err:
            await _send_error(ws, str(err))
        except WebSocketDisconnect:
            pass
        except Exception as err:  # the model or the socket failed mid-stream: say so, free everything
            logger.exception("live session failed")
            await _send_error(ws, f"The live stream failed ({type(err).__name__}: {err}); press Talk to start again.")
        finally:
            if entered:
                self.gate.leave()
            receiver.cancel()
            await _close(ws)

    async def _stream(self, ws, request: LiveRequest, inbox: Inbox) -> None:
        """Audio from `inbox` -> blocks sent back, until stop, the time limit, silence of the socket or a backlog."""
        pipe, rate = self.pipe, request.sample_rate
        stream = await _in_thread(pipe.start_stream, list(request.references), **request.settings)
        await ws.send_json(
            {
                "type": "ready",
                "block_frames": int(stream.group.position.block_video_frames(1)),
                "time_limit_s": self.time_limit_s,
                "sample_rate": SAMPLE_RATE,
            }
        )
        received, limit, reason = 0, int(self.time_limit_s * rate), "stopped"
        while True:
            try:
                samples, stop = await asyncio.wait_for(inbox.take_all(), IDLE_TIMEOUT_S)
            except asyncio.TimeoutError:
                reason = f"no audio for {IDLE_TIMEOUT_S:.0f} s (is the microphone on?)"
                break
            if received + samples.size >= limit:
                samples, stop, reason = samples[: limit - received], True, f"time limit ({self.time_limit_s:.0f} s)"
            received += samples.size
            if samples.size:
                await self._send_blocks(ws, lambda s=samples: pipe.feed(stream, s, rate))
            backlog = inbox.samples / rate
            if backlog > MAX_BACKLOG_S:
                reason = f"the server fell {backlog:.1f} s behind the microphone (too busy); try again later"
                break
            if stop:
                break
        await self._send_blocks(ws, lambda: pipe.flush(stream))
        await ws.send_json({"type": "ended", "reason": reason, "audio_s": round(received / rate, 2)})

    async def _send_blocks(self, ws, blocks) -> None:
        """Run `blocks()` (an iterator of `BlockRecord`s) in a worker thread, a block at a time (JPEG-encoded there),
        sending each as soon as it is made."""
        records = iter(blocks())  # a generator: nothing runs until the first `next`
        while (message := await _in_thread(_next_packed, records)) is not None:
            await ws.send_bytes(message)


def _next_packed(records) -> bytes | None:
    record = next(records, None)
    return None if record is None else pack_block(record)


async def _in_thread(fn, *args, **kwargs):
    """`fn` in a worker thread, run to its end even if the caller is cancelled (a block is never left half done:
    the caller's cancellation waits for it, so a freed slot is really free)."""
    future = asyncio.ensure_future(asyncio.to_thread(fn, *args, **kwargs))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        await asyncio.gather(future, return_exceptions=True)
        raise


async def _send(ws, message: dict) -> None:
    try:
        await ws.send_json(message)
    except Exception:  # noqa: BLE001 - the client may have gone already; nothing left to tell it
        pass


async def _send_error(ws, text: str) -> None:
    await _send(ws, {"type": "error", "message": text})
    await _close(ws)


async def _close(ws) -> None:
    try:
        await ws.close()
    except Exception:  # noqa: BLE001 - already closed
        pass


def default_block_size(pipe) -> int:
    """Talk's block size: 1 (4 frames, 160 ms) on a GPU; 2 on a CPU, where block size 1 does not keep up inside the
    app on 2 cores at 12 steps (measured: the lag grew 1.2 -> 3.1 s over 20 s; block size 2 held 0.9 s flat)."""
    choices = block_size_choices(pipe)
    wanted = 1 if pipe.device.type == "cuda" else 2
    return wanted if wanted in choices else min(choices)


def server_from_env(pipe, time_limit_s: float) -> LiveServer:
    """The app's `LiveServer`: `PORTRAIT_RT_REALTIME_STREAMS` at once (default: 1 on a CPU, 4 on a GPU) and
    `PORTRAIT_RT_REALTIME_WAITING` in line (default 8)."""
    default = 4 if pipe.device.type == "cuda" else 1
    return LiveServer(
        pipe,
        capacity=env_int("PORTRAIT_RT_REALTIME_STREAMS", default),
        max_waiting=env_int("PORTRAIT_RT_REALTIME_WAITING", 8),
        time_limit_s=time_limit_s,
    )


# ---------------------------------------------------------------------------------------------- the page's side
CLIENT_HTML = """<div id="rt-live">
<canvas id="rt-canvas" width="384" height="384" style="width:384px;max-width:100%;background:#111;border-radius:8px">
</canvas>
<div id="rt-status" data-state="idle">Press <b>Talk</b>, allow the microphone, and speak.</div>
<div id="rt-stats"></div>
</div>"""

# Gradio runs these in the page (`js=` of a button with no Python function): they load the client module once.
_IMPORT = (
    "const root = (window.gradio_config && window.gradio_config.root) || window.location.href; "
    f"const m = await import(new URL('{ROUTE.strip('/')}/static/live.js', root.endsWith('/') ? root : root + '/'));"
)
START_JS = f"async (...values) => {{ {_IMPORT} m.start(...values); return []; }}"
STOP_JS = f"async () => {{ {_IMPORT} m.stop(); return []; }}"
