"""The live server probed as an attacker with nothing but a script (not a test: prints JSON; the reliability suite
tests/test_live_reliability.py asserts each case's outcome).

Starts `app.py` (the bundled model unless --model) on 127.0.0.1 and runs each probe of issue 30 against it:

- heavy_start: start messages of three 6000x6000 single-colour PNGs (36 MP each, under the 40 MP limit); the longest
  /live-rt/status answer while one message, then 3 clients x 4 messages, are being processed;
- steps_1000 / bad_first_messages: what the server answers to settings the page never sends and to malformed first
  messages (a binary message, "references": 5, a seed of 2**70);
- fast_audio: the server's memory (RSS) while one client sends audio faster than real time for --fast-seconds;
- line_from_one_client: how many of 9 sockets from one address get a place in the line of 8;
- big_message: a start message over the 16 MiB WebSocket message limit;
- foreign_origin: a WebSocket from another site's page (Origin: https://evil.example);
- file_queue_12_sessions: File jobs accepted from one script with 12 sessions (8 places in all);
- audio_messages: the File API's words for a FLAC written by `ffmpeg -f flac -` to a pipe, and for a 121 s clip;
- crafted_paths: the File API's errors for paths the page never sends (do they show the server's folder?).

    python benchmarks/live_attacks.py --out benchmarks/results/live_attacks_after.json
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import live_client as lc  # noqa: E402


def _png_data_url(side: int, colour=(180, 120, 90)) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (side, side), colour).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _start(references, **change) -> dict:
    message = {
        "type": "start",
        "references": references,
        "guidance_audio": 2.0,
        "guidance_reference": 2.0,
        "num_inference_steps": 4,
        "seed": 0,
        "block_size": 2,
        "sample_rate": 16000,
    }
    return {**message, **change}


def _ws_url(url: str) -> str:
    return url.replace("http://", "ws://") + "live-rt/ws"


async def _first_reply(url: str, message, headers=None, timeout=60.0) -> str:
    """Send `message` (dict: JSON text, bytes: binary) as the first message; what came back, in words."""
    import websockets

    try:
        async with websockets.connect(
            _ws_url(url), max_size=None, additional_headers=headers or {}, open_timeout=20
        ) as ws:
            try:
                await ws.send(json.dumps(message) if isinstance(message, dict) else message)
            except websockets.ConnectionClosed:
                pass  # refused at once: its answer is still there to read
            reply = await asyncio.wait_for(ws.recv(), timeout)
            return reply if isinstance(reply, str) else f"<binary {len(reply)} bytes>"
    except websockets.ConnectionClosed as err:
        return f"closed without a message (code {err.rcvd.code if err.rcvd else None})"
    except websockets.InvalidStatus as err:
        return f"refused at the handshake (HTTP {err.response.status_code})"
    except asyncio.TimeoutError:
        return "no answer"


class StatusProbe:
    """Polls /live-rt/status every 20 ms in a thread; `max_ms` is the longest answer."""

    def __init__(self, url: str):
        self.url, self.times, self._stop = url + "live-rt/status", [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        import urllib.request

        while not self._stop.is_set():
            t = time.perf_counter()
            with urllib.request.urlopen(self.url, timeout=30) as r:
                r.read()
            self.times.append(1e3 * (time.perf_counter() - t))
            time.sleep(0.02)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict:
        t = np.array(self.times)
        return {"max_ms": round(float(t.max()), 1), "p50_ms": round(float(np.median(t)), 1), "polls": int(t.size)}


def heavy_start(url: str) -> dict:
    refs = [_png_data_url(6000, (180 + i, 120, 90)) for i in range(3)]
    message = _start(refs)
    size_kb = round(len(json.dumps(message)) / 1e3)
    out = {"message_kb": size_kb}
    with StatusProbe(url) as probe:
        time.sleep(0.3)
        t = time.perf_counter()
        out["one_message_reply"] = asyncio.run(_first_reply(url, message))[:160]
        out["one_message_s"] = round(time.perf_counter() - t, 2)
        time.sleep(0.3)
    out["one_message_status"] = probe.summary()

    async def client(n):  # each from an address of its own (the app trusts X-Forwarded-For here, see main)
        return [await _first_reply(url, message, headers={"X-Forwarded-For": f"203.0.113.{n}"}) for _ in range(4)]

    async def three():
        return await asyncio.gather(*(client(n) for n in range(3)))

    with StatusProbe(url) as probe:
        time.sleep(0.3)
        t = time.perf_counter()
        replies = asyncio.run(three())
        out["3x4_s"] = round(time.perf_counter() - t, 2)
        time.sleep(0.3)
    out["3x4_status"] = probe.summary()
    out["3x4_replies"] = sorted({r[:100] for rs in replies for r in rs})
    return out


def bad_first_messages(url: str) -> dict:
    ref = _png_data_url(64)
    cases = {
        "binary first message": b"\x00\x01\x02\x03",
        "not JSON": "hello",
        "references: 5": _start(5),
        "seed 2**70": _start([ref], seed=2**70),
        "steps 1000": _start([ref], num_inference_steps=1000),
        "steps 51": _start([ref], num_inference_steps=51),
        "guidance_audio 1e9": _start([ref], guidance_audio=1e9),
        "4 references": _start([ref] * 4),
        "reference 1 not an image": _start(["data:image/png;base64,bm90IGFuIGltYWdl"]),
    }

    async def run():
        out = {}
        for name, message in cases.items():
            out[name] = (await _first_reply(url, message if not isinstance(message, str) else message.encode()))[:200]
            if name == "not JSON":
                import websockets

                try:
                    async with websockets.connect(_ws_url(url)) as ws:
                        await ws.send("hello")
                        out[name] = (await asyncio.wait_for(ws.recv(), 20))[:200]
                except websockets.ConnectionClosed as err:
                    out[name] = f"closed without a message (code {err.rcvd.code if err.rcvd else None})"
        return out

    return asyncio.run(run())


def _app_process():
    import psutil

    for child in psutil.Process().children(recursive=True):
        if "app.py" in " ".join(child.cmdline()):
            return child
    raise RuntimeError("no app.py child")


def fast_audio(url: str, seconds: float) -> dict:
    """One session sends 100 s of 16 kHz audio in one message, then more as fast as the socket takes it (0.5 s
    chunks) for `seconds`."""
    import websockets

    proc = _app_process()
    rss0 = proc.memory_info().rss
    peak, sent, ended = rss0, 0, None

    async def run():
        nonlocal peak, sent, ended
        chunk = (0.1 * np.sin(np.arange(8000) / 5) * 32767).astype("<i2").tobytes()
        async with websockets.connect(_ws_url(url), max_size=None) as ws:
            await ws.send(json.dumps(_start([_png_data_url(64)])))
            while json.loads(await ws.recv())["type"] != "ready":
                pass

            async def drain():
                nonlocal ended
                async for m in ws:
                    if isinstance(m, str):
                        ended = json.loads(m)

            reader = asyncio.create_task(drain())
            await ws.send(chunk * 200)  # 100 s of audio in one message: the model is busy with it for minutes
            t0 = time.monotonic()
            try:
                while time.monotonic() - t0 < seconds and ended is None:
                    await ws.send(chunk)
                    sent += 1
                    if sent % 50 == 0:
                        peak = max(peak, proc.memory_info().rss)
                        await asyncio.sleep(0)
            except websockets.ConnectionClosed:
                pass
            reader.cancel()

    t = time.monotonic()
    asyncio.run(run())
    peak = max(peak, proc.memory_info().rss)
    return {
        "seconds": round(time.monotonic() - t, 1),
        "audio_sent_s": 100 + sent * 0.5,
        "rss_before_mb": round(rss0 / 2**20),
        "rss_growth_mb": round((peak - rss0) / 2**20),
        "server_said": ended,
    }


def fast_audio_paced(url: str, seconds: float) -> dict:
    """One session sends 0.5 s chunks of 16 kHz audio at twice real time for `seconds` (a buggy or hostile client):
    the server's memory (RSS) meanwhile, and what it said."""
    import websockets

    proc = _app_process()
    rss0 = proc.memory_info().rss
    peak, sent, said = rss0, 0, None

    async def run():
        nonlocal peak, sent, said
        chunk = (0.1 * np.sin(np.arange(8000) / 5) * 32767).astype("<i2").tobytes()
        async with websockets.connect(_ws_url(url), max_size=None) as ws:
            await ws.send(json.dumps(_start([_png_data_url(64)])))
            while json.loads(await ws.recv())["type"] != "ready":
                pass

            async def drain():
                nonlocal said
                async for m in ws:
                    if isinstance(m, str):
                        said = json.loads(m)

            reader = asyncio.create_task(drain())
            t0 = time.monotonic()
            try:
                while time.monotonic() - t0 < seconds and said is None:
                    await ws.send(chunk)
                    sent += 1
                    peak = max(peak, proc.memory_info().rss)
                    await asyncio.sleep(0.25)
            except websockets.ConnectionClosed:
                pass
            reader.cancel()

    t = time.monotonic()
    asyncio.run(run())
    peak = max(peak, proc.memory_info().rss)
    return {
        "seconds": round(time.monotonic() - t, 1),
        "audio_sent_s": sent * 0.5,
        "rss_growth_mb": round((peak - rss0) / 2**20),
        "server_said": said,
    }


def line_from_one_client(url: str) -> dict:
    """One script: a session holds the slot, then 9 more sockets ask for a place."""
    import websockets

    async def run():
        holder = await websockets.connect(_ws_url(url), max_size=None)
        await holder.send(json.dumps(_start([_png_data_url(64)])))
        first = json.loads(await holder.recv())
        sockets, replies = [], []
        for _ in range(9):
            ws = await websockets.connect(_ws_url(url), max_size=None)
            try:
                await ws.send(json.dumps(_start([_png_data_url(64)])))
            except websockets.ConnectionClosed:
                pass  # refused at once: its answer is still there to read
            try:
                replies.append(json.loads(await asyncio.wait_for(ws.recv(), 30))["type"])
            except websockets.ConnectionClosed:
                replies.append("closed")
            sockets.append(ws)
        for ws in [holder, *sockets]:
            await ws.close()
        return first["type"], replies

    first, replies = asyncio.run(run())
    return {"holder": first, "queued": replies.count("queued"), "refused": replies.count("refused"), "all": replies}


def big_message(url: str) -> dict:
    rng = np.random.default_rng(0)
    noise = base64.b64encode(rng.bytes(13 * 2**20)).decode()  # ~17.3 MB of base64
    return {"reply": asyncio.run(_first_reply(url, _start(["data:image/png;base64," + noise])))[:200]}


def foreign_origin(url: str) -> dict:
    message = _start([_png_data_url(64)], num_inference_steps=1)
    out = {}
    for origin in ("https://evil.example", url.rstrip("/")):
        reply = asyncio.run(_first_reply(url, message, headers={"Origin": origin}))
        out[origin] = reply[:120]
    return out


def _file_client(url: str):
    from gradio_client import Client

    return Client(url, verbose=False)


def file_queue(url: str, folder: Path) -> dict:
    """12 sessions from one script, 2 File jobs each (long ones: they are still waiting when the others ask)."""
    import soundfile as sf
    from gradio_client import handle_file

    from tests.conftest import speech_like

    wav = folder / "long.wav"
    sf.write(str(wav), speech_like(60.0), 16000)
    ref = str(lc.REFERENCE)
    jobs = []
    for _ in range(12):
        client = _file_client(url)
        for _ in range(2):
            args = (handle_file(ref), handle_file(str(wav)), None, None, 2, 2, 50, 0, 2)
            jobs.append(client.submit(*args, api_name="/generate"))
    time.sleep(5)
    refused = []
    for job in jobs:
        if job.done():
            try:
                job.result(timeout=1)
            except Exception as err:  # noqa: BLE001 - a refusal
                refused.append(str(err)[:100])
    for job in jobs:
        job.cancel()
    return {"jobs": len(jobs), "accepted": len(jobs) - len(refused), "why_refused": sorted(set(refused))}


def audio_messages(url: str, folder: Path) -> dict:
    import soundfile as sf
    from gradio_client import handle_file

    from portrait_rt.video import ffmpeg_exe
    from tests.conftest import speech_like

    wav = folder / "4s.wav"
    sf.write(str(wav), speech_like(4.0), 16000)
    flac = folder / "piped.flac"
    with open(flac, "wb") as out:
        subprocess.run([ffmpeg_exe(), "-v", "error", "-i", str(wav), "-f", "flac", "-"], stdout=out, check=True)
    long = folder / "121s.wav"
    sf.write(str(long), speech_like(121.0), 16000)
    client = _file_client(url)
    out = {}
    for name, path in (("flac_from_a_pipe_4s", flac), ("wav_121s", long)):
        try:
            client.predict(
                handle_file(str(lc.REFERENCE)), handle_file(str(path)), None, None, 2, 2, 1, 0, 2, api_name="/generate"
            )
            out[name] = "works"
        except Exception as err:  # noqa: BLE001
            out[name] = str(err)[:200]
    return out


def _call_raw(url: str, data: list) -> str:
    """One /generate call over plain HTTP (Gradio's `/call` API), its inputs as given: a path in a FileData is sent
    as a string, not uploaded from this machine as gradio_client would. The error (or "works")."""
    import httpx

    with httpx.Client(timeout=120) as http:
        event = http.post(url + "gradio_api/call/generate", json={"data": data})
        if event.status_code != 200:
            return f"HTTP {event.status_code}: {event.text[:200]}"
        stream = http.get(url + f"gradio_api/call/generate/{event.json()['event_id']}")
        lines = stream.text.splitlines()
    kinds = [line.split(":", 1)[1].strip() for line in lines if line.startswith("event:")]
    payload = [line.split(":", 1)[1].strip() for line in lines if line.startswith("data:")]
    return "works" if "complete" in kinds else (payload[-1] if payload else stream.text)[:300]


def crafted_paths(url: str, folder: Path) -> dict:
    """File API calls naming server paths (never uploaded): does the app read them, and does the answer show the
    server's folder?"""
    import httpx
    import soundfile as sf

    from tests.conftest import speech_like

    wav = folder / "speech.wav"
    sf.write(str(wav), speech_like(1.0), 16000)
    with httpx.Client(timeout=60) as http:  # one honest upload of each, for the other field
        uploaded = http.post(
            url + "gradio_api/upload",
            files=[("files", open(lc.REFERENCE, "rb")), ("files", open(wav, "rb"))],
        ).json()
    meta = {"_type": "gradio.FileData"}
    ref, audio = ({"path": p, "meta": meta} for p in uploaded)
    cases = {
        "reference app.py (absolute)": ({"path": str(ROOT / "app.py"), "meta": meta}, audio),
        "reference ../../etc/passwd": ({"path": "../../../../etc/passwd", "meta": meta}, audio),
        "reference relative path": ({"path": "assets/examples/portrait_a.png", "meta": meta}, audio),
        "audio app.py (absolute)": (ref, {"path": str(ROOT / "app.py"), "meta": meta}),
        "audio missing file in the app's folder": (ref, {"path": str(ROOT / "missing.wav"), "meta": meta}),
        "reference as a plain string": (str(ROOT / "app.py"), audio),
    }
    out = {}
    for name, (r, a) in cases.items():
        text = _call_raw(url, [r, a, None, None, 2, 2, 1, 0, 2])
        out[name] = {"answer": text[:200], "shows_server_folder": str(ROOT) in text or os.getcwd() in text}
    return out


PROBES = (
    "heavy_start",
    "bad_first_messages",
    "line_from_one_client",
    "big_message",
    "foreign_origin",
    "audio_messages",
    "crafted_paths",
    "fast_audio",
    "fast_audio_paced",
    "file_queue",  # last: its jobs keep the CPU busy
)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="PORTRAIT_RT_MODEL for the app (default: the bundled model)")
    parser.add_argument("--only", nargs="*", default=list(PROBES), choices=PROBES)
    parser.add_argument("--fast-seconds", type=float, default=60.0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    # As behind a proxy (a Space): the client's address is X-Forwarded-For's first, so that one machine can play
    # several clients (heavy_start) and one client with many sockets (line_from_one_client).
    env = {
        "PORTRAIT_RT_REALTIME_STREAMS": "1",
        "PORTRAIT_RT_REALTIME_WAITING": "8",
        "PORTRAIT_RT_CLIENT_HEADER": "x-forwarded-for",
    }
    if args.model:
        env["PORTRAIT_RT_MODEL"] = args.model
    result = {"load_average_before": open("/proc/loadavg").read().split()[:3]}
    with tempfile.TemporaryDirectory() as tmp, lc.run_app(Path(tmp) / "app.log", **env) as url:
        for name in args.only:
            t = time.monotonic()
            probe = globals()[name]
            if name in ("fast_audio", "fast_audio_paced"):
                result[name] = probe(url, args.fast_seconds)
            elif name in ("file_queue", "audio_messages", "crafted_paths"):
                result[name] = probe(url, Path(tmp))
            else:
                result[name] = probe(url)
            print(name, round(time.monotonic() - t, 1), "s", json.dumps(result[name]), file=sys.stderr, flush=True)
    result["load_average_after"] = open("/proc/loadavg").read().split()[:3]
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
