"""Live sessions on a Ray Serve cluster: the Space's live WebSocket protocol, each conversation on one model replica.

    python -m portrait_rt serve --model assets/portrait-rt-demo --replicas 2 --capacity 2    # or:
    serve run portrait_rt.serving.ray_app:app_builder model=assets/portrait-rt-demo replicas=2 capacity=2

    browser / script                 LiveIngress (one FastAPI replica)               PortraitReplica (per GPU / CPU)
    ws /live-rt/ws {"type": "start"} -> a conversation id; `converse` is called  ->  Serve picks a replica with room
                   <- {"type": "queued", "position": n} while Serve holds the call in line
                   <- {"type": "ready", ..., "replica": id}  <-------------------  the start checked, the stream made
    binary PCM ------------------------> `Mailboxes` actor (the upstream audio)  ->  taken by the replica, fed
                   <- binary blocks (the Space's packing) <----------------------  one per block, as made
    {"type": "stop"} ------------------> the stop mark ------------------------->  flushed; {"type": "ended", ...}

Serve does the routing and admission: one conversation is one streaming call (`converse`), which holds one of the
replica's `max_ongoing_requests` (its capacity in sessions) for its whole life, so a replica never takes more
conversations than it can run, calls beyond every replica's capacity wait in Serve's queue (`max_queued_requests` of
them; more are refused), and autoscaling (`target_ongoing_requests`) follows the sessions running. A call is never
moved once it runs: a replica that dies ends exactly its own conversations, each told so by the ingress with
`"reconnect": true`; Serve replaces the replica and new conversations go to live ones.

The audio a client sends travels through `Mailboxes`, a small Ray actor owned by the ingress (a Serve call's
arguments are fixed when it starts; the audio of a conversation is not): per conversation, its chunks and the stop
mark, bounded, taken by the one replica that runs it.
"""

import argparse
import asyncio
import json
import logging
import signal
import sys
import time
import uuid

import numpy as np

try:
    import ray
    from fastapi import FastAPI, WebSocket, WebSocketDisconnect
    from ray import serve
    from ray.exceptions import RayActorError
    from ray.serve.exceptions import BackPressureError
    from ray.serve.handle import DeploymentHandle
except ImportError as err:  # the CLI says this line and exits 2
    raise ImportError(f"{err}; the serving extra installs it: pip install 'portrait-rt[serve]'") from err

from portrait_rt.constants import SAMPLE_RATE

logger = logging.getLogger(__name__)
ROUTE = "/live-rt"  # as in the Space: the socket is ROUTE/ws, the state ROUTE/status
START_TIMEOUT_S = 30.0  # the socket must say "start" within this
IDLE_TIMEOUT_S = 10.0  # no audio for this long (after "ready"): the microphone is gone, the session ends
MAX_BACKLOG_S = 3.0  # audio waiting for the model: more than this and the stream is not real time any more
QUEUED_AFTER_S = 1.0  # a conversation no replica has taken by then is told its place in line (a replica's own
# admission, the start of its call, takes a few hundred ms on a loaded CPU: nobody is told "queued" for that)
MAX_CLIENT_RATE = 192_000  # bounds a mailbox: MAX_BACKLOG_S of int16 at this rate, twice over, then refused


# Serve pickles a deployment class as it is decorated (by value: its name is not bound yet), with the module's globals
# of that moment: whatever the deployments call is defined above them.


@ray.remote(num_cpus=0)
class Mailboxes:
    """Each conversation's audio from the ingress to its replica: int16 PCM and the stop mark, taken all at once.

    At most `limit_bytes` wait per conversation (twice the backlog a replica tolerates at the highest client rate):
    past it the conversation is marked `overflow` and its replica ends it saying so; nothing grows unbounded."""

    def __init__(self, limit_bytes: int = int(2 * MAX_BACKLOG_S * MAX_CLIENT_RATE * 2)):
        self.limit_bytes = limit_bytes
        self._boxes: dict[str, dict] = {}

    def open(self, sid: str) -> None:
        self._boxes[sid] = {"pcm": bytearray(), "stop": False, "overflow": False, "ready": asyncio.Event()}

    def put(self, sid: str, pcm: bytes) -> None:
        box = self._boxes.get(sid)
        if box is None:  # closed: the conversation is over
            return
        if len(box["pcm"]) + len(pcm) > self.limit_bytes:
            box["overflow"] = True
        else:
            box["pcm"] += pcm
        box["ready"].set()

    def stop(self, sid: str) -> None:
        if sid in self._boxes:
            self._boxes[sid]["stop"] = True
            self._boxes[sid]["ready"].set()

    async def take(self, sid: str, timeout_s: float) -> tuple[bytes, bool, bool] | None:
        """Wait up to `timeout_s` for something, then take it all: (PCM bytes, stop came, overflowed); None if
        nothing came (or the conversation was closed)."""
        box = self._boxes.get(sid)
        if box is None:
            return None
        try:
            await asyncio.wait_for(box["ready"].wait(), timeout_s)
        except asyncio.TimeoutError:
            return None
        box["ready"].clear()
        pcm, box["pcm"] = bytes(box["pcm"]), bytearray()
        return pcm, box["stop"], box["overflow"]

    def close(self, sid: str) -> None:
        box = self._boxes.pop(sid, None)
        if box is not None:
            box["ready"].set()  # a replica waiting on it stops waiting

    def count(self) -> int:
        return len(self._boxes)


def _parse_start(parse_start, message, pipe):
    return parse_start(message, pipe).decoded()  # the references decoded here, in the replica's worker thread


@serve.deployment(ray_actor_options={"num_cpus": 1}, graceful_shutdown_timeout_s=5.0)
class PortraitReplica:
    """One model replica: the pipeline loaded once, its conversations run as sessions of one `StreamWorker`
    (`portrait_rt.serving.worker`, the Space's live core: they are batched in stream groups, joining and leaving
    between blocks). One `converse` call each, at most `capacity` (= `max_ongoing_requests`) at once."""

    def __init__(self, model: str, capacity: int, threads: int | None = None, time_limit_s: float = 120.0):
        from portrait_rt.loading import load_pipeline
        from portrait_rt.serving.worker import StreamWorker

        self.pipe = load_pipeline(model, threads=threads)
        self.worker = StreamWorker(self.pipe, capacity=capacity)
        self.time_limit_s = time_limit_s
        self.replica = serve.get_replica_context().replica_id.unique_id

    async def converse(self, sid: str, message: dict, mailboxes):
        """One conversation, from its "start" message to "ended": yields the protocol's messages (dicts as JSON text,
        bytes as the packed blocks), in order."""
        from portrait_rt.serving.protocol import pack_block, parse_start
        from portrait_rt.serving.worker import EMPTY

        yield {"type": "admitted", "replica": self.replica}  # for the ingress only: Serve gave this replica the call
        try:
            request = await asyncio.to_thread(_parse_start, parse_start, message, self.pipe)
        except ValueError as err:
            yield {"type": "error", "message": str(err)}
            return
        rate, loop, made = request.sample_rate, asyncio.get_running_loop(), asyncio.Event()
        live = self.worker.open(
            list(request.references), notify=lambda: loop.call_soon_threadsafe(made.set), **request.settings
        )
        state = {"received": 0, "reason": "stopped"}
        audio = asyncio.create_task(self._audio(sid, mailboxes, live, rate, state))
        try:
            yield {
                "type": "ready",
                "block_frames": live.block_frames,
                "time_limit_s": self.time_limit_s,
                "sample_rate": SAMPLE_RATE,
                "replica": self.replica,
            }
            while True:
                await made.wait()
                made.clear()
                while (record := live.poll()) is not EMPTY:
                    if record is None:
                        break
                    yield await asyncio.to_thread(pack_block, record)
                if record is None:
                    break
            audio.cancel()  # done already, unless the worker ended the session (a backlog): then nothing more to take
            await asyncio.gather(audio, return_exceptions=True)
            if live.error is not None:
                raise live.error
            reason = live.end_reason if live.end_reason not in ("stopped", "cancelled") else state["reason"]
            yield {
                "type": "ended",
                "reason": reason,
                "audio_s": round(state["received"] / rate, 2),
                "replica": self.replica,
                "lead_frames": live.lead_frames or 0,  # silence before its audio, aligning it with the group's blocks
            }
        finally:
            audio.cancel()
            live.cancel()  # the client went or something failed: the stream and its slot freed now

    async def _audio(self, sid: str, mailboxes, live, rate: int, state: dict) -> None:
        """The conversation's mailbox -> its worker session, until stop, the time limit, silence, or a backlog."""
        limit = int(self.time_limit_s * rate)
        while not live.ended:
            taken = await mailboxes.take.remote(sid, IDLE_TIMEOUT_S)
            if taken is None:
                state["reason"] = f"no audio for {IDLE_TIMEOUT_S:.0f} s (is the microphone on?)"
                break
            pcm, stop, overflow = taken
            if overflow:
                state["reason"] = "the server fell behind the microphone (too busy); try again later"
                live.cancel()
                return
            samples = np.frombuffer(pcm, "<i2")
            if state["received"] + samples.size >= limit:
                samples, stop = samples[: limit - state["received"]], True
                state["reason"] = f"time limit ({self.time_limit_s:.0f} s)"
            state["received"] += samples.size
            live.push(samples, rate)
            if stop:
                break
        live.close()  # the last blocks, then the end


async def _next_or_none(replies, receiver):
    async for item in _until(replies, receiver):
        return item
    return None


async def _until(replies, receiver):
    """The items of `replies`, until it ends or `receiver` (the client's side) does."""
    while True:
        item = asyncio.ensure_future(replies.__anext__())
        done, _ = await asyncio.wait({item, receiver}, return_when=asyncio.FIRST_COMPLETED)
        if item not in done:
            item.cancel()
            await asyncio.gather(item, return_exceptions=True)
            receiver.result()  # a protocol error is told to the client; a clean close just ends the relay
            return
        try:
            yield item.result()
        except StopAsyncIteration:
            return


async def _send(ws: WebSocket, message: dict) -> None:
    try:
        await ws.send_json(message)
    except Exception:  # noqa: BLE001 - the client may have gone already; nothing left to tell it
        pass


async def _send_error(ws: WebSocket, text: str) -> None:
    await _send(ws, {"type": "error", "message": text})
    await _close(ws)


async def _close(ws: WebSocket) -> None:
    try:
        await ws.close()
    except Exception:  # noqa: BLE001 - already closed
        pass


app = FastAPI(title="portrait-rt live (Ray Serve)")


@serve.deployment(
    max_ongoing_requests=10_000,  # each open socket is one ongoing request here
    ray_actor_options={"num_cpus": 0},
    graceful_shutdown_timeout_s=5.0,
)
@serve.ingress(app)
class LiveIngress:
    """The WebSocket endpoint: each socket is one conversation, one `converse` call on whichever replica Serve picks.

    While Serve holds the call in line (every replica full), the client is told its place among the conversations
    waiting here; once the replica says "ready", the client's audio goes to the conversation's mailbox and the
    replica's messages come back as they are."""

    def __init__(self, replicas: DeploymentHandle):
        self.replicas = replicas.options(stream=True)
        self.mailboxes = Mailboxes.remote()
        self.waiting: list[str] = []  # conversations whose call Serve has not started yet, first come first
        self._changed = asyncio.Event()
        self.running = 0
        self.started = 0
        self.replica_failures = 0

    @app.get(f"{ROUTE}/status")
    async def status(self) -> dict:
        return {
            "running": self.running,
            "waiting": len(self.waiting),
            "sessions_started": self.started,
            "replica_failures": self.replica_failures,
        }

    @app.websocket(f"{ROUTE}/ws")
    async def websocket(self, ws: WebSocket) -> None:
        await ws.accept()
        try:
            message = json.loads(await asyncio.wait_for(ws.receive_text(), START_TIMEOUT_S))
        except (asyncio.TimeoutError, WebSocketDisconnect, KeyError):
            await _close(ws)
            return
        except ValueError:  # (json.JSONDecodeError is one)
            await _send_error(ws, 'The first message must be JSON: {"type": "start", ...}.')
            return
        if not isinstance(message, dict) or message.get("type") != "start":
            await _send_error(ws, 'The first message must be {"type": "start", ...}.')
            return
        await self._converse(ws, message)

    async def _converse(self, ws: WebSocket, message: dict) -> None:
        sid = uuid.uuid4().hex
        await self.mailboxes.open.remote(sid)
        ready = asyncio.Event()
        replies = self.replicas.converse.remote(sid, message, self.mailboxes)
        receiver = asyncio.create_task(self._receive(ws, sid, ready))
        replica = None
        self.waiting.append(sid)
        try:
            admitted = await self._wait_in_line(ws, sid, replies, receiver)
            if admitted is None:  # the client left (or broke the protocol) while waiting
                return
            replica = admitted["replica"]
            self.running += 1
            self.started += 1
            try:
                first = await _next_or_none(replies, receiver)
                if first is None:
                    return
                await ws.send_json(first)
                if first["type"] != "ready":
                    return
                ready.set()
                await self._relay(ws, replies, receiver)
            finally:
                self.running -= 1
        except BackPressureError:
            await _send(
                ws,
                {
                    "type": "refused",
                    "message": f"Live is busy: every replica is full and {len(self.waiting)} people are waiting; "
                    "try again in a minute.",
                },
            )
        except RayActorError as err:  # the replica's process died (or became unreachable) mid-conversation
            self.replica_failures += 1
            logger.warning("conversation %s: replica %s failed: %s", sid, replica, type(err).__name__)
            await _send(
                ws,
                {
                    "type": "error",
                    "reconnect": True,
                    "replica": replica,
                    "message": "The server running this conversation stopped, so the conversation ended here (it "
                    "was not moved to another server). Press Talk to start a new one.",
                },
            )
        except ValueError as err:  # a protocol error from the client
            await _send(ws, {"type": "error", "message": str(err)})
        except WebSocketDisconnect:
            pass
        finally:
            replies.cancel()
            receiver.cancel()
            self.mailboxes.close.remote(sid)
            await _close(ws)

    async def _wait_in_line(self, ws: WebSocket, sid: str, replies, receiver) -> dict | None:
        """The replica's "admitted" message, telling the client its place in line while Serve holds the
        call (every replica full; nothing is said if a replica takes it within `QUEUED_AFTER_S`); None if the
        client left first."""
        admitted = asyncio.ensure_future(replies.__anext__())
        told = None
        try:
            while True:
                changed = asyncio.ensure_future(self._changed.wait())
                done, _ = await asyncio.wait(
                    {admitted, receiver, changed},
                    timeout=QUEUED_AFTER_S if told is None else None,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                changed.cancel()
                if admitted in done:
                    return admitted.result()  # {"type": "admitted", ...}, or BackPressureError: the line is full
                if receiver in done:
                    receiver.result()  # a protocol error is told to the client
                    return None
                place = self.waiting.index(sid) + 1
                if place != told:
                    told = place
                    await ws.send_json({"type": "queued", "position": place})
        finally:
            admitted.cancel()
            await asyncio.gather(admitted, return_exceptions=True)  # (a cancelled call raises; nobody waits for it)
            self.waiting.remove(sid)
            self._notify()

    async def _relay(self, ws: WebSocket, replies, receiver) -> None:
        """The replica's messages to the client until "ended" (or the client leaves)."""
        async for item in _until(replies, receiver):
            if isinstance(item, bytes):
                await ws.send_bytes(item)
            else:
                await ws.send_json(item)

    async def _receive(self, ws: WebSocket, sid: str, ready: asyncio.Event) -> None:
        """Everything the client sends, into the conversation's mailbox; ends when the socket closes."""
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("bytes") is not None:
                if not ready.is_set():
                    raise ValueError("Audio came before the server said 'ready'.")
                self.mailboxes.put.remote(sid, message["bytes"])
            elif json.loads(message.get("text") or "{}").get("type") == "stop":
                self.mailboxes.stop.remote(sid)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()


# ---------------------------------------------------------------------------------------------- the application
def build_app(
    model: str,
    capacity: int = 2,
    replicas: int = 1,
    max_replicas: int | None = None,
    max_waiting: int = 8,
    time_limit_s: float = 120.0,
    threads: int | None = None,
    num_cpus: float = 1,
    num_gpus: float = 0,
    health_check_period_s: float = 2.0,
) -> serve.Application:
    """The Serve application: `LiveIngress` in front of `PortraitReplica`s of `model` (a folder, Hub id or
    preset:NAME), each running up to `capacity` conversations; `replicas` of them, or autoscaled from `replicas` to
    `max_replicas` on the conversations running (target: `capacity` each)."""
    if capacity < 1 or replicas < 1 or max_waiting < 0:
        raise ValueError("capacity and replicas must be at least 1, max_waiting at least 0.")
    scaling: dict = {"num_replicas": replicas}
    if max_replicas is not None:
        if max_replicas < replicas:
            raise ValueError(f"max_replicas={max_replicas} is below replicas={replicas}.")
        scaling = {
            "autoscaling_config": {
                "min_replicas": replicas,
                "max_replicas": max_replicas,
                "target_ongoing_requests": capacity,
                "upscale_delay_s": 5.0,
                "downscale_delay_s": 60.0,
            }
        }
    replica = PortraitReplica.options(
        max_ongoing_requests=capacity,
        max_queued_requests=max_waiting,
        ray_actor_options={"num_cpus": num_cpus, "num_gpus": num_gpus},
        health_check_period_s=health_check_period_s,
        **scaling,
    ).bind(model, capacity, threads, time_limit_s)
    return LiveIngress.bind(replica)


def app_builder(args: dict) -> serve.Application:
    """For `serve run portrait_rt.serving.ray_app:app_builder model=... capacity=2 replicas=2 [max_replicas=4]`."""
    kinds = {"capacity": int, "replicas": int, "max_replicas": int, "max_waiting": int, "threads": int}
    kinds |= {"time_limit_s": float, "num_cpus": float, "num_gpus": float, "health_check_period_s": float}
    unknown = set(args) - set(kinds) - {"model"}
    if unknown:
        raise ValueError(f"unknown argument(s) {sorted(unknown)}; use model=... and any of {sorted(kinds)}.")
    from portrait_rt.loading import choose_model

    kwargs = {name: kinds[name](value) for name, value in args.items() if name in kinds}
    return build_app(choose_model(args.get("model")).model, **kwargs)


# ---------------------------------------------------------------------------------------------- CLI
def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="pipeline folder, Hub id or preset:NAME (default: as the app)")
    parser.add_argument("--capacity", type=int, default=2, help="conversations per replica (max_ongoing_requests)")
    parser.add_argument("--replicas", type=int, default=1, help="model replicas (the minimum, with --max-replicas)")
    parser.add_argument("--max-replicas", type=int, default=None, help="autoscale up to this many replicas")
    parser.add_argument("--max-waiting", type=int, default=8, help="conversations waiting in line beyond capacity")
    parser.add_argument("--time-limit", type=float, default=120.0, help="seconds of audio per conversation")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads per replica")
    parser.add_argument("--cpus", type=float, default=1, help="Ray CPUs per replica")
    parser.add_argument("--gpus", type=float, default=0, help="Ray GPUs per replica (1: one replica per GPU)")
    parser.add_argument("--address", default=None, help="Ray cluster to join (default: start a local one)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)


def cli_main(args: argparse.Namespace) -> int:
    from portrait_rt.loading import choose_model

    choice = choose_model(args.model)
    if choice.notice:
        logger.warning(choice.notice)
    application = build_app(
        choice.model,
        capacity=args.capacity,
        replicas=args.replicas,
        max_replicas=args.max_replicas,
        max_waiting=args.max_waiting,
        time_limit_s=args.time_limit,
        threads=args.threads,
        num_cpus=args.cpus,
        num_gpus=args.gpus,
    )
    ray.init(address=args.address, include_dashboard=False)
    serve.start(http_options={"host": args.host, "port": args.port})
    serve.run(application, name="portrait-rt", route_prefix="/")
    print(f"portrait-rt live on ws://{args.host}:{args.port}{ROUTE}/ws (Ctrl-C or SIGTERM stops)", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # a service manager's stop: the same clean shutdown
    try:
        while True:
            time.sleep(3600)
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0
