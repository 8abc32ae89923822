"""The live server against a client that is not the page: each probe of issue 30 (benchmarks/live_attacks.py runs
them against the real app and prints the figures) with what it must get.

A real uvicorn server (the same `LiveServer` routes the app mounts) on a free port, the tiny pipeline behind it, and
plain `websockets` clients: a script can send anything a browser would not.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import socket
import subprocess
import threading
import time

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from space import limits
from space.realtime import LiveServer
from tests.conftest import speech_like

pytestmark = pytest.mark.usefixtures("one_thread")
RATE = 16000


def _png(side: int | tuple[int, int], colour=(180, 120, 90), fmt="PNG") -> str:
    size = (side, side) if isinstance(side, int) else side
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, fmt)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode()


SMALL = _png(64)


def _start(references=None, **change) -> dict:
    message = {
        "type": "start",
        "references": [SMALL] if references is None else references,
        "guidance_audio": 2.0,
        "guidance_reference": 2.0,
        "num_inference_steps": 1,
        "seed": 0,
        "block_size": 1,
        "sample_rate": RATE,
    }
    return {**message, **change}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`LiveServer` on uvicorn in a thread: `url`, `ws_url`, the `live` object."""

    def __init__(self, live: LiveServer):
        import uvicorn
        from starlette.applications import Starlette

        self.live, port = live, _free_port()
        config = uvicorn.Config(Starlette(routes=live.routes()), host="127.0.0.1", port=port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)  # the event loop's thread
        self.url, self.ws_url = f"http://127.0.0.1:{port}/live-rt/", f"ws://127.0.0.1:{port}/live-rt/ws"

    def __enter__(self):
        self.thread.start()
        while not self.server.started:
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture
def server(tiny_pipe):
    """4 slots, 8 places in line; every socket comes from 127.0.0.1, so the per-client cap is lifted here (its own
    test puts it back). (4 slots: these tests open and drop sessions faster than the worker frees a slot.)"""
    with Server(LiveServer(tiny_pipe, capacity=4, max_waiting=8, time_limit_s=20.0, per_client=100)) as s:
        yield s


def _status_ms(url: str) -> float:
    import urllib.request

    t = time.perf_counter()
    with urllib.request.urlopen(url + "status", timeout=30) as r:
        r.read()
    return 1e3 * (time.perf_counter() - t)


async def _reply(ws_url: str, message, headers=None, timeout: float = 60) -> dict | str:
    """The first thing the server answers to `message` (dict: JSON text; bytes or str: as is)."""
    import websockets

    try:
        async with websockets.connect(ws_url, max_size=None, additional_headers=headers or {}) as ws:
            await _send_start(ws, message)
            reply = await asyncio.wait_for(ws.recv(), timeout)
            return json.loads(reply)
    except websockets.ConnectionClosed as err:
        return f"closed without a message (code {err.rcvd.code if err.rcvd else None})"


async def _send_start(ws, message) -> None:
    """Send the first message; a server that refuses the socket at once may have closed it already (its answer is
    still there to read)."""
    import websockets

    try:
        await ws.send(json.dumps(message) if isinstance(message, dict) else message)
    except websockets.ConnectionClosed:
        pass


def reply(ws_url, message, **kw):
    return asyncio.run(_reply(ws_url, message, **kw))


# ---------------------------------------------------------------------------------------------- heavy start messages
HEAVY_ATTACK = """
import asyncio, base64, io, json, sys
import websockets
from PIL import Image

def png(side, colour):
    buf = io.BytesIO()
    Image.new("RGB", (side, side), colour).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()

start = json.loads(sys.argv[2])
allowed = json.dumps({**start, "references": [png(6000, (180, 120, 90))]})
over_cap = json.dumps({**start, "references": [png(6000, (180 + i, 0, 0)) for i in range(3)]})

async def client(message, n):
    out = []
    for _ in range(n):
        async with websockets.connect(sys.argv[1], max_size=None) as ws:
            await ws.send(message)
            out.append(json.loads(await ws.recv()))
    return out

async def main():
    print("sending", flush=True)
    clients = [client(allowed, 2) for _ in range(3)] + [client(over_cap, 2) for _ in range(3)]
    print(json.dumps([r for rs in await asyncio.gather(*clients) for r in rs]))

asyncio.run(main())
"""


def test_the_event_loop_answers_while_heavy_start_messages_are_decoded(server):
    """References are decoded in worker processes, never in the server's: /status answers in under 100 ms while
    3 clients send 2 messages each of one 6000x6000 PNG (36 MP, under the pixel cap, ~1 s of decoding each) and
    3 more send messages of three such PNGs (108 MP: refused from the headers). The attackers run in a process of
    their own, as they would. (Before: the event loop decoded them itself; status stalled up to 18 s.)

    What the event loop's thread spends during the attack is bounded too (the decoding is the workers' CPU time):
    that holds on any machine, where the wall-clock bound needs the CPU the server is given (on a machine loaded
    past its core count by other work, the 100 ms bound is checked on the 90th percentile, the worst case printed)."""
    import os
    import subprocess
    import sys

    import psutil

    me = psutil.Process()

    def cpu_s():
        loop = sum(t.user_time + t.system_time for t in me.threads() if t.id == server.thread.native_id)
        workers = sum(sum(c.cpu_times()[:2]) for c in me.children() if "portrait_rt.serving.references" in c.cmdline())
        return loop, workers

    loop0, workers0 = cpu_s()
    attack = subprocess.Popen(
        [sys.executable, "-c", HEAVY_ATTACK, server.ws_url, json.dumps(_start())], stdout=subprocess.PIPE, text=True
    )
    assert attack.stdout.readline().strip() == "sending"
    latencies, t = [], time.perf_counter()
    while attack.poll() is None:
        latencies.append(_status_ms(server.url))
        time.sleep(0.02)
    took = time.perf_counter() - t
    loop1, workers1 = cpu_s()
    replies = json.loads(attack.stdout.read())
    refused = [r for r in replies if r["type"] == "error"]
    assert len(replies) == 12 and {r["type"] for r in replies} <= {"ready", "queued", "error"}, replies
    assert len(refused) == 6 and all(
        "too large to decode" in r["message"] and "108 MP" in r["message"] for r in refused
    )
    assert len(latencies) >= 10 and took > 1.0, (latencies, took)  # the probe ran while the decoding did
    overloaded = os.getloadavg()[0] > os.cpu_count()
    worst, p90 = max(latencies), float(np.percentile(latencies, 90))
    loop_s, workers_s = loop1 - loop0, workers1 - workers0
    print(f"status under the attack: max {worst:.0f} ms, p90 {p90:.0f} ms; CPU: event loop {loop_s:.2f} s, decoders")
    print(f"{workers_s:.2f} s; load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    assert workers_s > 2.0 and loop_s < workers_s / 4, (loop_s, workers_s)  # 6 x 36 MP decoded, not on the loop
    assert (p90 if overloaded else worst) < 100, f"status took up to {worst:.0f} ms (p90 {p90:.0f} ms)"


def test_a_phone_photo_is_decoded_small():
    """A 4032x3024 JPEG is decoded at a reduced scale and kept at 1024 px on its long side (what the page sends)."""
    from portrait_rt.serving.references import decode

    (image,) = decode([("Reference 1", _png((4032, 3024), fmt="JPEG"))], limits.LIVE_MAX_PIXELS, 1024)
    assert image.size == (1024, 768)


# ---------------------------------------------------------------------------------------------- every setting
@pytest.mark.parametrize(
    ("message", "words"),
    [
        (b"\x00\x01\x02", "must be text"),
        ("hello", "must be JSON"),
        ("[1, 2]", '{"type": "start"'),
        (_start(5), "references: send a list"),
        (_start([SMALL] * 4), "references: send a list of the 3"),
        (_start([None, None, None]), "Reference 1"),
        (_start(["data:image/png;base64,bm90IGFuIGltYWdl"]), "Reference 1 is not an image"),
        (_start([SMALL, "data:image/png;base64,bm90IGFuIGltYWdl"]), "Reference 2 is not an image"),
        (_start([SMALL, None, "data:x"]), "Reference 3 must be a data URL"),
        (_start([_png(8)]), "Reference 1 is 8x8"),
        (_start(seed=2**70), "Seed: got"),
        (_start(seed=-1), "Seed: got -1; use a whole number from 0 to 2147483647"),
        (_start(seed="0"), "Seed"),
        (_start(num_inference_steps=1000), "Denoising steps: got 1000; use a whole number from 1 to 50"),
        (_start(num_inference_steps=51), "Denoising steps"),
        (_start(num_inference_steps=True), "Denoising steps"),
        (_start(guidance_audio=1e9), "Audio guidance λa: got 1000000000.0; use a number from 1 to 4"),
        (_start(guidance_audio=0.5), "Audio guidance λa"),
        (_start(guidance_reference=float("nan")), "Reference guidance λr"),
        (_start(block_size=3), "Block size: got 3"),
        (_start(block_size=2**70), "Block size"),
        (_start(sample_rate=2**70), "sample_rate"),
    ],
)
def test_every_bad_start_message_is_answered_naming_the_field(server, message, words):
    """Whatever the first message is, the answer is an error message naming the field in the page's words (before:
    a binary message, "references": 5 and a seed of 2**70 closed the socket without a word; steps 1000 was run)."""
    answer = reply(server.ws_url, message)
    assert isinstance(answer, dict) and answer["type"] == "error" and words in answer["message"], answer
    assert server.live.gate.state()["active"] == 0


# ---------------------------------------------------------------------------------------------- backpressure
async def _talk(ws_url, chunks, pace_s: float | None, headers=None, stop=True):
    """Start, wait for ready, send `chunks` (bytes) `pace_s` apart (None: as fast as the socket takes them), then
    collect text messages until the socket closes."""
    import websockets

    texts = []
    async with websockets.connect(ws_url, max_size=None, additional_headers=headers or {}) as ws:
        await ws.send(json.dumps(_start()))
        assert json.loads(await ws.recv())["type"] == "ready"

        async def read():
            async for m in ws:
                if isinstance(m, str):
                    texts.append(json.loads(m))

        reader = asyncio.create_task(read())
        try:
            for chunk in chunks:
                await ws.send(chunk)
                await asyncio.sleep(pace_s or 0)
            if stop:
                await ws.send(json.dumps({"type": "stop"}))
        except websockets.ConnectionClosed:
            pass
        await asyncio.wait_for(reader, 60)
    return texts


def _pcm(seconds: float) -> bytes:
    return (speech_like(seconds, RATE) * 32767).astype("<i2").tobytes()


def test_audio_faster_than_real_time_ends_the_session_saying_why(server):
    """60 s of audio sent as fast as the socket takes it: refused after ~1 s of audio more than the wall clock, with
    a message (before: all of it was kept, +535 MB of server memory in 60 s)."""
    chunk = _pcm(0.5)
    texts = asyncio.run(_talk(server.ws_url, [chunk] * 120, None))
    assert texts[-1]["type"] == "error" and "faster than real time" in texts[-1]["message"], texts


def test_a_chunk_over_a_second_is_refused(server):
    texts = asyncio.run(_talk(server.ws_url, [_pcm(1.5)], None))
    assert texts[-1]["type"] == "error" and "at most 1 s each" in texts[-1]["message"], texts


def test_one_client_cannot_fill_the_line(tiny_pipe, monkeypatch):
    """Nine sockets from one address: 2 held (one talking, one in line), the rest refused with a message; the line
    keeps its other places for other people (before: one script filled all 8)."""
    import websockets

    monkeypatch.setattr(limits, "CLIENT_HEADER", "x-forwarded-for")

    async def run(url):
        held, answers = [], []
        for _ in range(9):
            ws = await websockets.connect(url, additional_headers={"X-Forwarded-For": "203.0.113.7"})
            await _send_start(ws, _start())
            answers.append(json.loads(await ws.recv()))
            held.append(ws)
        other = await websockets.connect(url, additional_headers={"X-Forwarded-For": "198.51.100.2, 10.0.0.1"})
        await _send_start(other, _start())
        answers.append(json.loads(await other.recv()))
        for ws in [*held, other]:
            await ws.close()
        return answers

    with Server(LiveServer(tiny_pipe, capacity=1, max_waiting=8)) as s:
        answers = asyncio.run(run(s.ws_url))
    assert [a["type"] for a in answers[:2]] == ["ready", "queued"]
    assert all(a["type"] == "refused" and "already have 2 live sessions" in a["message"] for a in answers[2:9])
    assert answers[9] == {"type": "queued", "position": 2}  # another address still gets a place


# ---------------------------------------------------------------------------------------------- origin
def test_pages_of_other_sites_may_not_use_the_socket(server, monkeypatch):
    """A page from another site (a visitor's browser sends its Origin) is refused, naming the setting; the app's own
    pages, scripts (no Origin) and the origins the host allows are served."""
    evil = reply(server.ws_url, _start(), headers={"Origin": "https://evil.example"})
    assert evil["type"] == "error" and "PORTRAIT_RT_ALLOWED_ORIGINS" in evil["message"], evil
    own = server.url.split("/live-rt")[0]
    assert reply(server.ws_url, _start(), headers={"Origin": own})["type"] == "ready"
    assert reply(server.ws_url, _start())["type"] == "ready"
    monkeypatch.setattr(limits, "ALLOWED_ORIGINS", ["https://embed.example"])
    assert reply(server.ws_url, _start(), headers={"Origin": "https://embed.example"})["type"] == "ready"


# ---------------------------------------------------------------------------------------------- File queue, per client
class _Event:
    def __init__(self, session, host, forwarded=None):
        from types import SimpleNamespace

        self.concurrency_id, self.session_hash = "offline", session
        headers = {"x-forwarded-for": forwarded} if forwarded else {}
        self.request = SimpleNamespace(headers=headers, client=SimpleNamespace(host=host))


def _blocks(events):
    from types import SimpleNamespace

    return SimpleNamespace(_queue=SimpleNamespace(event_ids_to_events={i: e for i, e in enumerate(events)}))


def test_one_client_with_many_sessions_cannot_fill_the_file_queue():
    """12 sessions from one address, 2 jobs each: `JOBS_PER_CLIENT` (4) get places, then each is refused naming the
    address rule, and the queue keeps its other places (before: one script with 12 sessions took all 8)."""
    events, refusals = [], []
    for n in range(12):
        for _ in range(2):
            why = limits.offline_job_refusal(_blocks(events), "offline", f"s{n}", "192.0.2.1")
            if why is None:
                events.append(_Event(f"s{n}", "192.0.2.1"))
            else:
                refusals.append(why)
    assert len(events) == limits.JOBS_PER_CLIENT == 4 and len(refusals) == 20
    assert all("from your address" in why for why in refusals)
    assert limits.offline_job_refusal(_blocks(events), "offline", "other", "198.51.100.9") is None


def test_the_client_address_comes_from_the_proxy_header_only_where_set(monkeypatch):
    headers = {"x-forwarded-for": "203.0.113.7, 10.0.0.1"}
    monkeypatch.setattr(limits, "CLIENT_HEADER", "")
    assert limits.client_key(headers, "10.0.0.2") == "10.0.0.2"  # not behind a known proxy: the header is ignored
    monkeypatch.setattr(limits, "CLIENT_HEADER", "x-forwarded-for")
    assert limits.client_key(headers, "10.0.0.2") == "203.0.113.7"
    assert limits.client_key({}, "10.0.0.2") == "10.0.0.2"


# ---------------------------------------------------------------------------------------------- audio messages
def test_flac_written_to_a_pipe_reads_at_its_real_length(tmp_path):
    """`ffmpeg -f flac -` to a pipe writes no length in the header (libsndfile reports 2^63 frames): the clip is
    decoded and measured (before: "9607679205057 minutes long")."""
    from portrait_rt.audio import read_mono
    from portrait_rt.video import ffmpeg_exe

    wav = tmp_path / "4s.wav"
    sf.write(str(wav), speech_like(4.0), RATE)
    flac = tmp_path / "piped.flac"
    with open(flac, "wb") as out:
        subprocess.run([ffmpeg_exe(), "-v", "error", "-i", str(wav), "-f", "flac", "-"], stdout=out, check=True)
    assert sf.info(str(flac)).frames > 2**62  # the header has no length
    samples, rate = read_mono(str(flac), max_seconds=120)
    assert rate == RATE and samples.size == 4 * RATE
    with pytest.raises(ValueError, match="The audio is over 3 s long; the limit is 3 s"):
        read_mono(str(flac), max_seconds=3)


@pytest.mark.parametrize(
    ("seconds", "limit", "words"),
    [
        (121, 120, "The audio is 2 min 1 s long; the limit is 2 minutes"),
        (120.3, 120, "The audio is 2 min 1 s long; the limit is 2 minutes"),
        (61, 60, "The audio is 1 min 1 s long; the limit is 1 minute"),
        (7, 6, "The audio is 7 s long; the limit is 6 s"),
    ],
)
def test_a_clip_over_the_limit_is_never_called_as_long_as_the_limit(seconds, limit, words):
    from portrait_rt.audio import read_mono

    with pytest.raises(ValueError, match=words):
        read_mono((np.zeros(int(seconds * RATE), np.float32), RATE), max_seconds=limit)
