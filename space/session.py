"""One live conversation over one WebSocket (`Session`): it waits for its slot, then feeds the audio that arrives
(`Inbox`) into its own stream on the server's batched worker (`portrait_rt.serving.worker`: the sessions admitted run
in one stream group) and sends each block back as soon as it is made, until stop, the time limit, silence, or a
backlog too long to be real time; whatever it held is freed when it ends."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import numpy as np

from portrait_rt.constants import SAMPLE_RATE
from portrait_rt.serving.protocol import LiveRequest, pack_block
from portrait_rt.serving.worker import EMPTY, StreamWorker
from space.gate import LiveGate, LiveRefused

logger = logging.getLogger(__name__)
IDLE_TIMEOUT_S = 10.0  # no audio for this long (after "ready"): the microphone is gone, the session ends
MAX_AHEAD_S = 1.0  # audio may arrive this much faster than the wall clock (network bursts), no more
MAX_CHUNK_S = 1.0  # the longest audio message (the page sends 40 ms)

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

    def stop(self) -> None:
        self.put(_STOP)

    async def take_all(self) -> tuple[np.ndarray, bool]:
        """Wait for something, then take everything waiting: (all the audio as one array, whether stop came)."""
        await self._ready.wait()
        items, self._items, self.samples = self._items, [], 0
        self._ready.clear()
        audio = [c for c in items if c is not _STOP]
        return (np.concatenate(audio) if audio else np.zeros(0, np.int16)), len(audio) < len(items)


class Session:
    """One browser tab's live stream on socket `ws`: its own stream on `worker`, admitted by a `LiveGate`."""

    def __init__(self, ws, request: LiveRequest, worker: StreamWorker, time_limit_s: float):
        self.ws, self.request, self.worker, self.time_limit_s = ws, request, worker, time_limit_s
        self.inbox = Inbox()
        self.admitted = asyncio.Event()
        self.clock = time.monotonic()  # when the microphone may have started: reset at "ready"

    async def run(self, gate: LiveGate, on_admitted=lambda: None) -> None:
        """Wait in `gate`'s line, then stream; `on_admitted()` once a slot is held. Ends with the socket closed."""
        from starlette.websockets import WebSocketDisconnect

        ws = self.ws
        receiver = asyncio.create_task(self._receive())
        entered = False
        try:
            waiting = asyncio.create_task(gate.enter(lambda n: ws.send_json({"type": "queued", "position": n})))
            await asyncio.wait({waiting, receiver}, return_when=asyncio.FIRST_COMPLETED)
            if not waiting.done():  # the client left (or misbehaved) while waiting in line
                waiting.cancel()
                await asyncio.gather(waiting, return_exceptions=True)
                receiver.result()  # a protocol error is told to the client
                return
            waiting.result()  # LiveRefused
            entered = True
            on_admitted()
            self.admitted.set()
            worker = asyncio.create_task(self._stream())
            await asyncio.wait({worker, receiver}, return_when=asyncio.FIRST_COMPLETED)
            if not worker.done():  # the socket closed mid-stream (or broke the protocol): stop, free the stream
                worker.cancel()
                await asyncio.gather(worker, return_exceptions=True)
                receiver.result()
                return
            worker.result()  # a bad setting (ValueError) is told to the client
        except LiveRefused as err:
            await send(ws, {"type": "refused", "message": str(err)})
        except ValueError as err:
            await send_error(ws, str(err))
        except WebSocketDisconnect:
            pass
        except Exception as err:  # the model or the socket failed mid-stream: say so, free everything
            logger.exception("live session failed")
            await send_error(ws, f"The live stream failed ({type(err).__name__}: {err}); press Talk to start again.")
        finally:
            if entered:
                gate.leave()
            receiver.cancel()
            await close(ws)

    async def _receive(self) -> None:
        """Everything the client sends; ends when the socket closes. Audio faster than real time, or in messages
        over `MAX_CHUNK_S`, is a protocol error (what the model has not caught up with is bounded by the worker)."""
        rate, arrived = self.request.sample_rate, 0
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("bytes")
            if data is not None:
                if not self.admitted.is_set():
                    raise ValueError("Audio came before the server said 'ready'.")
                if len(data) % 2 or len(data) > 2 * MAX_CHUNK_S * rate:
                    raise ValueError(f"Audio messages must be int16 PCM, at most {MAX_CHUNK_S:g} s each.")
                arrived += len(data) // 2
                elapsed = time.monotonic() - self.clock
                if arrived / rate > elapsed + MAX_AHEAD_S:
                    raise ValueError(
                        f"Audio is arriving faster than real time ({arrived / rate:.1f} s of it in {elapsed:.1f} s); "
                        "send the microphone's audio as it is captured."
                    )
                self.inbox.put(np.frombuffer(data, "<i2"))
                continue
            try:
                control = json.loads(message.get("text") or "{}")
            except ValueError:
                control = None
            if not isinstance(control, dict):
                raise ValueError('After "start", text messages must be JSON such as {"type": "stop"}.')
            if control.get("type") == "stop":
                self.inbox.stop()

    async def _stream(self) -> None:
        """Audio from the inbox -> the worker; its blocks sent back as they come, until stop, the time limit, silence
        of the socket, or a backlog (the worker ends the session saying why)."""
        ws, inbox, rate = self.ws, self.inbox, self.request.sample_rate
        loop, made = asyncio.get_running_loop(), asyncio.Event()
        live = self.worker.open(
            list(self.request.references), notify=lambda: loop.call_soon_threadsafe(made.set), **self.request.settings
        )
        try:
            await ws.send_json(
                {
                    "type": "ready",
                    "block_frames": live.block_frames,
                    "time_limit_s": self.time_limit_s,
                    "sample_rate": SAMPLE_RATE,
                }
            )
            self.clock = time.monotonic()  # the microphone opens now
            sender = asyncio.create_task(self._send_blocks(live, made))
            received, limit, reason = 0, int(self.time_limit_s * rate), "stopped"
            while not live.ended:
                try:
                    samples, stop = await asyncio.wait_for(inbox.take_all(), IDLE_TIMEOUT_S)
                except asyncio.TimeoutError:
                    reason = f"no audio for {IDLE_TIMEOUT_S:.0f} s (is the microphone on?)"
                    break
                if received + samples.size >= limit:
                    samples, stop, reason = (
                        samples[: limit - received],
                        True,
                        f"time limit ({self.time_limit_s:.0f} s)",
                    )
                received += samples.size
                live.push(samples, rate)
                if stop:
                    break
            live.close()  # the last blocks, then the end
            await sender
            if live.error is not None:
                raise live.error
            if live.end_reason != "stopped":
                reason = live.end_reason
            await ws.send_json({"type": "ended", "reason": reason, "audio_s": round(received / rate, 2)})
        finally:
            live.cancel()  # the socket went or something failed: free the stream now (nothing if it ended)

    async def _send_blocks(self, live, made: asyncio.Event) -> None:
        """Each record of `live` as it comes (JPEG-encoded in a worker thread), until the session ends."""
        while True:
            await made.wait()
            made.clear()
            while (record := live.poll()) is not EMPTY:
                if record is None:
                    return
                await self.ws.send_bytes(await in_thread(pack_block, record))


async def in_thread(fn, *args, **kwargs):
    """`fn` in a worker thread, run to its end even if the caller is cancelled (a block is never left half done:
    the caller's cancellation waits for it, so a freed slot is really free)."""
    future = asyncio.ensure_future(asyncio.to_thread(fn, *args, **kwargs))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        await asyncio.gather(future, return_exceptions=True)
        raise


async def send(ws, message: dict) -> None:
    try:
        await ws.send_json(message)
    except Exception:  # noqa: BLE001 - the client may have gone already; nothing left to tell it
        pass


async def send_error(ws, text: str) -> None:
    await send(ws, {"type": "error", "message": text})
    await close(ws)


async def close(ws) -> None:
    try:
        await ws.close()
    except Exception:  # noqa: BLE001 - already closed
        pass
