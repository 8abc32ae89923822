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

The rooms: `portrait_rt.serving.protocol` (the messages: the "start" message checked, blocks packed; the
library's, shared with the Ray Serve deployment), `space.session` (one conversation: its inbox, its stream, when it
ends), `space.gate` (admission). This module is the server that joins
them to the app (its routes) and reads its settings from the environment.

Fair sharing (`LiveGate`): at most `capacity` streams run at once (`PORTRAIT_RT_REALTIME_STREAMS`); the next
`max_waiting` wait in line and are told their place ("queued", position n) before their microphone is opened, so no
speech is taken that cannot be served; beyond that a session is refused. A session ends at its time limit, after
`IDLE_TIMEOUT_S` without audio, or if it falls `MAX_BACKLOG_S` behind the microphone (it says so, it never drops audio
silently); when the socket closes, its stream, its references and its slot are freed. Each socket has its own
stream: nothing a refused or failed session sent can reach another.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from pathlib import Path

from portrait_rt.serving.protocol import parse_start
from portrait_rt.serving.worker import StreamWorker, default_capacity
from space.gate import LiveGate
from space.panels import block_size_choices
from space.session import MAX_BACKLOG_S, Session, close, send_error

STATIC = Path(__file__).parent / "static"
ROUTE = "/live-rt"  # the WebSocket is ROUTE/ws, the client ROUTE/static/live.js, the gate's state ROUTE/status
START_TIMEOUT_S = 30.0  # the socket must say "start" within this


def env_int(name: str, default: int) -> int:
    """A positive integer from the environment variable `name` (`default` if unset); `ValueError` naming it."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{name}={raw!r}: set it to a whole number of at least 1.")
    return int(raw)


class LiveServer:
    """The WebSocket endpoint: one stream per socket (a `Session`), admitted by a `LiveGate` to the `StreamWorker`
    that runs them all batched; `capacity` streams at once (default: the worker's, measured per device)."""

    def __init__(
        self,
        pipe,
        capacity: int | None = None,
        max_waiting: int = 8,
        time_limit_s: float = 120.0,
        max_backlog_s: float = MAX_BACKLOG_S,
    ):
        self.pipe = pipe
        self.worker = StreamWorker(pipe, capacity, max_backlog_s=max_backlog_s)
        self.gate = LiveGate(self.worker.capacity, max_waiting)
        self.time_limit_s = time_limit_s
        self.sessions_started = 0

    def routes(self) -> list:
        """Starlette routes to mount on the app's server (Gradio's FastAPI app): the socket, the client, the state."""
        from starlette.responses import JSONResponse
        from starlette.routing import Mount, Route, WebSocketRoute
        from starlette.staticfiles import StaticFiles

        async def status(request):
            steps = {str(n): count for n, count in sorted(self.worker.step_sizes.items())}
            return JSONResponse(
                {**self.gate.state(), "sessions_started": self.sessions_started, "streams_per_step": steps}
            )

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
            await send_error(ws, str(err))
            return
        except (asyncio.TimeoutError, WebSocketDisconnect):
            await close(ws)
            return
        await Session(ws, request, self.worker, self.time_limit_s).run(self.gate, on_admitted=self._count)

    def _count(self) -> None:
        self.sessions_started += 1


def default_block_size(pipe) -> int:
    """Talk's block size: 1 (4 frames, 160 ms) on a GPU; 2 on a CPU, where block size 1 does not keep up inside the
    app on 2 cores at 12 steps (measured: the lag grew 1.2 -> 3.1 s over 20 s; block size 2 held 0.9 s flat)."""
    choices = block_size_choices(pipe)
    wanted = 1 if pipe.device.type == "cuda" else 2
    return wanted if wanted in choices else min(choices)


def server_from_env(pipe, time_limit_s: float) -> LiveServer:
    """The app's `LiveServer`: `PORTRAIT_RT_REALTIME_STREAMS` at once (default: `default_capacity`, measured per
    device: 3 on a 2-core CPU), `PORTRAIT_RT_REALTIME_WAITING` in line (default 8), and a session ends when it falls
    `PORTRAIT_RT_REALTIME_BACKLOG_S` behind the microphone (default `MAX_BACKLOG_S`)."""
    return LiveServer(
        pipe,
        capacity=env_int("PORTRAIT_RT_REALTIME_STREAMS", default_capacity(pipe)),
        max_waiting=env_int("PORTRAIT_RT_REALTIME_WAITING", 8),
        max_backlog_s=env_int("PORTRAIT_RT_REALTIME_BACKLOG_S", MAX_BACKLOG_S),
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
