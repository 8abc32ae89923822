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
library's, shared with the Ray Serve deployment), `space.decoder` (the references decoded in worker processes),
`space.session` (one conversation: its inbox, its stream, when it ends), `space.gate` (admission). This module is the
server that joins them to the app (its routes) and reads its settings from `space.limits`.

Fair sharing (`LiveGate`): at most `capacity` streams run at once (`PORTRAIT_RT_REALTIME_STREAMS`); the next
`max_waiting` wait in line and are told their place ("queued", position n) before their microphone is opened, so no
speech is taken that cannot be served; beyond that a session is refused. A session ends at its time limit, after
`IDLE_TIMEOUT_S` without audio, or if it falls `LIVE_MAX_BACKLOG_S` behind the microphone (it says so, it never
drops audio silently); when the socket closes, its stream, its references and its slot are freed. Each socket has
its own stream: nothing a refused or failed session sent can reach another.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

from portrait_rt.serving.protocol import parse_start
from portrait_rt.serving.worker import StreamWorker, default_capacity
from space import limits
from space.decoder import Decoder
from space.gate import LiveGate
from space.panels import block_size_choices
from space.session import Session, close, send, send_error

STATIC = Path(__file__).parent / "static"
ROUTE = "/live-rt"  # the WebSocket is ROUTE/ws, the client ROUTE/static/live.js, the gate's state ROUTE/status
START_TIMEOUT_S = 30.0  # the socket must say "start" within this


class LiveServer:
    """The WebSocket endpoint: one stream per socket (a `Session`), admitted by a `LiveGate` to the `StreamWorker`
    that runs them all batched; `capacity` streams at once (default: the worker's, measured per device).

    Before a socket reaches the gate: its page must come from this app (or `limits.ALLOWED_ORIGINS`), its client may
    hold at most `per_client` sockets, and its start message is checked in a worker thread and its references decoded
    in `decoders` worker processes, so the event loop (every page and route of the app) never waits on them."""

    def __init__(
        self,
        pipe,
        capacity: int | None = None,
        max_waiting: int = 8,
        time_limit_s: float = 120.0,
        max_backlog_s: float = limits.LIVE_MAX_BACKLOG_S,
        per_client: int = limits.REALTIME_PER_CLIENT,
        decoders: int = limits.START_DECODERS,
    ):
        self.pipe = pipe
        self.worker = StreamWorker(pipe, capacity, max_backlog_s=max_backlog_s)
        self.gate = LiveGate(self.worker.capacity, max_waiting)
        self.time_limit_s = time_limit_s
        self.per_client = per_client
        self.sockets = Counter()  # per client: sockets open now
        self.decoder = Decoder(decoders)
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
        await ws.accept()
        if not limits.origin_allowed(ws.headers):
            await send_error(
                ws,
                f"This live server takes connections from its own pages only (this page is {ws.headers['origin']}); "
                "its host may allow others with PORTRAIT_RT_ALLOWED_ORIGINS.",
            )
            return
        client = limits.client_key(ws.headers, ws.client.host if ws.client else None)
        if self.sockets[client] >= self.per_client:
            await send(
                ws,
                {
                    "type": "refused",
                    "message": f"You already have {self.per_client} live sessions open (starting, waiting or "
                    "talking); hang up one of them, then press Talk again.",
                },
            )
            await close(ws)
            return
        self.sockets[client] += 1
        try:
            request = await self._start(ws)
            if request is not None:
                await Session(ws, request, self.worker, self.time_limit_s).run(self.gate, on_admitted=self._count)
        finally:
            self.sockets[client] -= 1
            if not self.sockets[client]:
                del self.sockets[client]

    async def _start(self, ws):
        """The socket's start message, checked off the event loop -> `LiveRequest`, or None (told why, closed)."""
        from starlette.websockets import WebSocketDisconnect

        try:
            message = await asyncio.wait_for(ws.receive(), START_TIMEOUT_S)
            if message["type"] == "websocket.disconnect":
                return None
            text = message.get("text") if message.get("text") is not None else message.get("bytes")
            request = await asyncio.to_thread(parse_start, text, self.pipe)
            request.references = await self.decoder.decode(
                request.references, limits.LIVE_MAX_PIXELS, limits.REFERENCE_SIDE
            )
            return request
        except ValueError as err:
            await send_error(ws, str(err))
        except (asyncio.TimeoutError, WebSocketDisconnect):
            await close(ws)
        return None

    def _count(self) -> None:
        self.sessions_started += 1


def default_block_size(pipe) -> int:
    """Talk's block size: 1 (4 frames, 160 ms) on a GPU; 2 on a CPU, where block size 1 does not keep up inside the
    app on 2 cores at 12 steps (measured: the lag grew 1.2 -> 3.1 s over 20 s; block size 2 held 0.9 s flat)."""
    choices = block_size_choices(pipe)
    wanted = 1 if pipe.device.type == "cuda" else 2
    return wanted if wanted in choices else min(choices)


def server_from_env(pipe, time_limit_s: float = limits.LIVE_TIME_LIMIT_S) -> LiveServer:
    """The app's `LiveServer`, its limits from `space.limits`: `PORTRAIT_RT_REALTIME_STREAMS` at once (default:
    `default_capacity`, measured per device: 2 on a 2-core CPU), `PORTRAIT_RT_REALTIME_WAITING` in line, and a
    session ends when it falls `PORTRAIT_RT_REALTIME_BACKLOG_S` behind the microphone."""
    return LiveServer(
        pipe,
        capacity=limits.realtime_streams(default_capacity(pipe)),
        max_waiting=limits.REALTIME_WAITING,
        max_backlog_s=limits.LIVE_MAX_BACKLOG_S,
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
