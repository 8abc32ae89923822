"""A talking portrait in a Pipecat pipeline over Pipecat's local WebRTC transport (SmallWebRTC), fully offline.

    python examples/pipecat_webrtc_avatar.py                  # then open http://127.0.0.1:7860, type, press Say
    python examples/pipecat_webrtc_avatar.py --self-test      # the same server and a Python WebRTC peer (aiortc)

The pipeline is `transport.input() -> PortraitAvatarProcessor -> transport.output()`; the "TTS" is espeak-ng (Debian's
speech synthesizer) behind a tiny stand-in service that sends its speech as a TTS service does: `TTSStartedFrame`,
`TTSAudioRawFrame`s of 20 ms in real time, `TTSStoppedFrame`. In a real agent put the processor right after your TTS
service: `[transport.input(), stt, llm, tts, PortraitAvatarProcessor(...), transport.output()]`. The browser is the
only client and the server is this process: no cloud service, no STUN/TURN server (localhost).

--self-test runs the server, connects an aiortc peer as the browser would (an offer with audio and video to receive),
has the portrait say a sentence, then interrupts a second one, and prints JSON: frames and audio the peer received,
and the processor's latency from each TTS audio frame to its video frame.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse
from pipecat.frames.frames import InterruptionWorkerFrame, TTSAudioRawFrame, TTSStartedFrame, TTSStoppedFrame
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.transports.base_transport import TransportParams
from pipecat.transports.smallwebrtc.connection import SmallWebRTCConnection
from pipecat.transports.smallwebrtc.transport import SmallWebRTCTransport
from pipecat.workers.runner import WorkerRunner

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a source checkout without installing

from portrait_rt.loading import BUNDLED_MODEL, load_pipeline  # noqa: E402
from portrait_rt.serving.pipecat_avatar import PortraitAvatarProcessor  # noqa: E402

SIZE = 256  # the video's size (the model's frames are scaled up by the transport)

PAGE = """<!doctype html><meta charset="utf-8"><title>portrait-rt + Pipecat (SmallWebRTC)</title>
<body style="font-family:sans-serif;background:#111;color:#eee">
<video id="v" autoplay playsinline width="256" height="256" style="background:#000"></video><br>
<button id="c">Connect</button> <input id="t" size="50" value="Hello! I am a talking portrait, running offline.">
<button id="s">Say</button> <button id="i">Interrupt</button> <span id="st"></span>
<script>
let pc;
document.getElementById('c').onclick = async () => {
  pc = new RTCPeerConnection();
  pc.addTransceiver('audio', {direction: 'sendrecv'});   // index 0: audio (the transport's order)
  pc.addTransceiver('video', {direction: 'sendrecv'});   // index 1: video
  pc.createDataChannel('chat');
  const stream = new MediaStream();
  pc.ontrack = (e) => { stream.addTrack(e.track); document.getElementById('v').srcObject = stream; };
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise(r => pc.iceGatheringState === 'complete' ? r() :
    pc.addEventListener('icegatheringstatechange', () => pc.iceGatheringState === 'complete' && r()));
  const answer = await (await fetch('/api/offer', {method: 'POST', headers: {'Content-Type': 'application/json'},
    body: JSON.stringify({sdp: pc.localDescription.sdp, type: pc.localDescription.type})})).json();
  await pc.setRemoteDescription(answer);
  document.getElementById('st').textContent = 'connected';
};
const post = (path, body) => fetch(path, {method: 'POST', headers: {'Content-Type': 'application/json'},
  body: JSON.stringify(body || {})});
document.getElementById('s').onclick = () => post('/api/say', {text: document.getElementById('t').value});
document.getElementById('i').onclick = () => post('/api/interrupt');
</script></body>"""


def espeak(text: str) -> tuple[np.ndarray, int]:
    """`text` spoken by espeak-ng: int16 mono samples and their rate."""
    wav = subprocess.run(["espeak-ng", "-v", "en", "-s", "165", "--stdout", text], capture_output=True, check=True)
    audio, rate = sf.read(io.BytesIO(wav.stdout), dtype="int16")
    return audio, rate


class FakeTTS:
    """What a streaming TTS service sends for one response: started, 20 ms audio frames in real time, stopped."""

    def __init__(self, worker: PipelineWorker):
        self.worker = worker
        self.sent: list[float] = []  # when each audio frame was queued

    async def say(self, text: str, stop_after_s: float | None = None) -> None:
        audio, rate = await asyncio.to_thread(espeak, text)
        step = rate // 50
        context = f"say-{time.monotonic_ns()}"
        await self.worker.queue_frame(TTSStartedFrame(context_id=context))
        start = time.perf_counter()
        for i, k in enumerate(range(0, audio.size, step)):
            if stop_after_s is not None and i * 0.02 >= stop_after_s:
                return  # interrupted: the rest is never sent
            await self.worker.queue_frame(TTSAudioRawFrame(audio[k : k + step].tobytes(), rate, 1, context_id=context))
            self.sent.append(time.perf_counter())
            await asyncio.sleep(max(0.0, start + (i + 1) * 0.02 - time.perf_counter()))
        await self.worker.queue_frame(TTSStoppedFrame(context_id=context))


def build_server(pipe, reference: str, block_size: int, steps: int) -> tuple[FastAPI, dict]:
    app, state = FastAPI(), {}

    @app.get("/")
    async def page():
        return HTMLResponse(PAGE)

    @app.post("/api/offer")
    async def offer(request: Request):
        body = await request.json()
        connection = SmallWebRTCConnection()
        await connection.initialize(sdp=body["sdp"], type=body["type"])
        params = TransportParams(
            audio_in_enabled=False,
            audio_out_enabled=True,
            video_out_enabled=True,
            video_out_width=SIZE,
            video_out_height=SIZE,
            video_out_framerate=25,
        )
        transport = SmallWebRTCTransport(webrtc_connection=connection, params=params)
        avatar = PortraitAvatarProcessor(pipe, [reference], seed=0, num_inference_steps=steps, block_size=block_size)
        worker = PipelineWorker(
            Pipeline([transport.input(), avatar, transport.output()]),
            params=PipelineParams(audio_out_sample_rate=24000),
            cancel_on_idle_timeout=False,
        )
        state.update(worker=worker, avatar=avatar, tts=FakeTTS(worker), transport=transport)
        runner = WorkerRunner(handle_sigint=False)
        await runner.add_workers(worker)
        state["task"] = asyncio.create_task(runner.run())
        return connection.get_answer()

    @app.post("/api/say")
    async def say(request: Request):
        body = await request.json()
        state["speaking"] = asyncio.create_task(state["tts"].say(str(body.get("text") or "Hello.")))
        return {"ok": True}

    @app.post("/api/interrupt")
    async def interrupt():
        if state.get("speaking"):
            state["speaking"].cancel()
        await state["worker"].queue_frame(InterruptionWorkerFrame())
        return {"ok": True}

    return app, state


async def self_test(app: FastAPI, state: dict, port: int, strip: str | None = None) -> dict:
    """A Python WebRTC peer (aiortc, as the browser above): connect, receive, have the portrait speak."""
    import httpx  # (gradio's dependency)
    from aiortc import RTCPeerConnection, RTCSessionDescription

    pc = RTCPeerConnection()
    pc.addTransceiver("audio", direction="sendrecv")
    pc.addTransceiver("video", direction="sendrecv")
    pc.createDataChannel("chat")
    received = {"video": [], "audio_samples": 0}

    @pc.on("track")
    def on_track(track):
        async def pull():
            while True:
                try:
                    frame = await track.recv()
                except Exception:  # noqa: BLE001 - the track ended
                    return
                if track.kind == "video":
                    received["video"].append((time.perf_counter(), frame.to_ndarray(format="rgb24")))
                else:
                    received["audio_samples"] += frame.samples

        asyncio.ensure_future(pull())

    await pc.setLocalDescription(await pc.createOffer())
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        answer = (await client.post("/api/offer", json={"sdp": pc.localDescription.sdp, "type": "offer"})).json()
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))
        await asyncio.sleep(3.0)  # connected, the portrait at rest
        tts = state["tts"]
        await tts.say("Hello! I am a talking portrait, running offline inside a Pipecat pipeline.")
        await asyncio.sleep(2.0)
        interrupted = asyncio.create_task(tts.say("This sentence is interrupted halfway through, so the portrait"))
        await asyncio.sleep(1.2)
        interrupted.cancel()
        await client.post("/api/interrupt")
        await asyncio.sleep(2.0)
    await pc.close()
    await state["worker"].cancel()
    latencies = np.array(state["avatar"].latencies_ms)
    frames = np.stack([f for _, f in received["video"]]) if received["video"] else np.zeros((0, 1, 1, 3), np.uint8)
    changed = np.abs(np.diff(frames.astype(np.int16), axis=0)).max(axis=(1, 2, 3)) > 8
    changes = int(changed.sum())
    if strip and changes:  # 8 of the frames the peer saw change, side by side
        from PIL import Image

        picks = np.flatnonzero(changed)[np.linspace(0, changes - 1, 8).astype(int)] + 1
        Image.fromarray(np.concatenate(list(frames[picks]), axis=1)).save(strip)
    return {
        "video_frames_received": len(received["video"]),
        "video_frames_that_changed": changes,
        "video_size": list(frames.shape[1:3]),
        "audio_seconds_received": round(received["audio_samples"] / 48000, 2),
        "tts_audio_frames_sent": len(tts.sent),
        "blocks": int(latencies.size),
        "tts_audio_to_frame_ms": {
            "median": round(float(np.median(latencies)), 1),
            "p90": round(float(np.percentile(latencies, 90)), 1),
            "max": round(float(latencies.max()), 1),
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(BUNDLED_MODEL))
    parser.add_argument("--reference", default=str(ROOT / "assets" / "examples" / "portrait_a.png"))
    parser.add_argument("--block-size", type=int, default=1, help="latent frames per block (1: 160 ms, the lowest)")
    parser.add_argument("--steps", type=int, default=8, help="denoising steps")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--self-test", action="store_true")
    parser.add_argument("--strip", default=None, help="with --self-test: save 8 received frames side by side (PNG)")
    args = parser.parse_args()

    import uvicorn

    pipe = load_pipeline(args.model, threads=args.threads)
    app, state = build_server(pipe, args.reference, args.block_size, args.steps)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=args.port, log_level="warning"))
    if not args.self_test:
        print(f"open http://127.0.0.1:{args.port}", flush=True)
        server.run()
        return 0

    async def run() -> dict:
        serving = asyncio.create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.05)
        try:
            return await self_test(app, state, args.port, args.strip)
        finally:
            server.should_exit = True
            await serving

    print(json.dumps(asyncio.run(run()), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
