"""Drive the low-latency live client (space/static/live.js) in headless Chromium and measure it; shared by
tests/test_live_browser.py and benchmarks/live_latency.py.

The fake microphone plays `mic_wav` (silence, then a corpus clip, looped). With `window.portraitLiveCapture` set,
the client logs each microphone chunk's capture time and loudness, and each frame it draws (time and pixels).
`measure` then gives:
- the client's own mic-to-screen latency (from each frame's audio capture to its drawing, on the page's clock);
- the mouth-onset latency: from each speech onset in the microphone's audio (its capture time) to the first frame
  drawn for it whose mouth opens, as the eval tools' mouth detector sees it on the frames captured from the page.
"""

from __future__ import annotations

import base64
import io
import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "assets" / "examples"
CHROMIUM = os.environ.get("PORTRAIT_RT_CHROMIUM", "/usr/bin/chromium")
REFERENCE = EXAMPLES / "portrait_a.png"  # its mouth stays closed through silence with the bundled model
SILENCE_S = 2.5  # before the speech in the microphone's clip
MOUTH_OPEN = 0.015  # mouth opening (fraction of the frame height) that counts as open
ANTICIPATION = 5  # video frames (0.2 s) before a speech onset whose mouth may already open for it
QUIET_RMS, LOUD_RMS = 0.005, 0.02  # microphone chunk loudness: silence / speech


def mic_wav(path: Path, speech: Path = EXAMPLES / "speech_c.wav") -> Path:
    """`SILENCE_S` of silence, then `speech`: what the fake microphone says (Chromium loops it)."""
    audio, rate = sf.read(str(speech), dtype="float32")
    sf.write(str(path), np.concatenate([np.zeros(int(SILENCE_S * rate), np.float32), audio]), rate)
    return path


def browser_args(wav: Path) -> list[str]:
    return [
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--autoplay-policy=no-user-gesture-required",
        "--disable-background-timer-throttling",
        "--disable-renderer-backgrounding",
        "--disable-backgrounding-occluded-windows",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={wav}",
    ]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def run_app(log: Path, timeout_s: float = 240, **env):
    """`python app.py` (the bundled model unless `PORTRAIT_RT_MODEL` is given) on a free port; yields its URL."""
    port = _free_port()
    # Every tab of these tests comes from one address (127.0.0.1): the per-client cap on live sockets is lifted.
    defaults = {"GRADIO_ANALYTICS_ENABLED": "False", "OMP_NUM_THREADS": "1", "PORTRAIT_RT_REALTIME_PER_CLIENT": "16"}
    env = {**os.environ, **defaults, **env}
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "app.py", "--port", str(port)], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
        )
        url = f"http://127.0.0.1:{port}/"
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"app.py exited ({proc.returncode}); see {log}")
                try:
                    with urllib.request.urlopen(url + "live-rt/status", timeout=2):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"app.py did not serve {url} within {timeout_s} s; see {log}") from None
                    time.sleep(0.5)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def gate_state(url: str) -> dict:
    import json

    with urllib.request.urlopen(url + "live-rt/status", timeout=5) as r:
        return json.loads(r.read())


def open_live(browser, url: str, reference: Path = REFERENCE, play_voice: bool = True, steps: int | None = None):
    """A new tab on the Live tab with `reference` uploaded, ready to press Talk (frames and mic logged)."""
    context = browser.new_context(viewport={"width": 1280, "height": 1000}, permissions=["microphone"])
    page = context.new_page()
    page.goto(url)
    page.locator("#rt-talk").wait_for(timeout=60_000)
    page.evaluate("window.portraitLiveCapture = true")
    if steps is not None:
        page.get_by_label("Denoising steps").first.fill(str(steps))
    page.locator("#ref1 input[type=file]").set_input_files(str(reference))
    page.locator("#ref1 img").first.wait_for(timeout=30_000)
    if play_voice:
        page.locator("#rt-voice input").check()
    page.wait_for_timeout(300)
    return page


def talk(page) -> None:
    page.locator("#rt-talk").click()


def hang_up(page) -> None:
    page.locator("#rt-hangup").click()


def wait_state(page, states: tuple[str, ...], timeout_ms: int = 120_000) -> str:
    """Wait until the client's state (live, queued, error, refused, ended, ...) is one of `states`; return it."""
    page.wait_for_function(
        "states => window.portraitLive && states.includes(window.portraitLive.stats.state)",
        arg=list(states),
        timeout=timeout_ms,
    )
    return page.evaluate("window.portraitLive.stats.state")


def status_text(page) -> str:
    return page.inner_text("#rt-status")


def _png(data_url: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))).convert("RGB"))


def speech_onsets(capture: list[dict]) -> list[int]:
    """Indices of the microphone chunks where speech starts after at least a second of quiet.

    The client sends 40 ms chunks from the stream's start: chunk k is the audio of video frame k."""
    onsets, quiet = [], 0
    for k, chunk in enumerate(capture):
        if chunk["rms"] > LOUD_RMS and quiet >= 25:
            onsets.append(k)
        quiet = quiet + 1 if chunk["rms"] < QUIET_RMS else 0
    return onsets


def measure(page) -> dict:
    """What the client measured (latency, A/V skew, late blocks) and the mouth-onset latencies from its logs."""
    from portrait_rt.eval.metrics import mouth_opening

    stats = page.evaluate("(({drawn, ...rest}) => rest)(window.portraitLive.stats)")
    count = page.evaluate("(window.portraitLive.stats.drawn || []).length")
    drawn, opening = [], []
    for start in range(0, count, 250):  # in slices: two minutes of frames are ~3000 PNGs
        part = page.evaluate("([a, b]) => window.portraitLive.stats.drawn.slice(a, b)", [start, start + 250])
        opening.append(mouth_opening(np.stack([_png(d.pop("png")) for d in part])))
        drawn += part
    opening = np.concatenate(opening) if opening else np.zeros(0)
    capture = stats["capture"] or []
    mouth = []
    for k in speech_onsets(capture):
        # Frames from ANTICIPATION before the onset on (the model may open the mouth just before a word), never the
        # previous words' (their audio is older); the mouth must be closed in the frames just before those.
        first = k - ANTICIPATION
        before = [o for d, o in zip(drawn, opening) if first - 10 <= d["i"] < first]
        if not before or max(before) > MOUTH_OPEN:
            continue
        opened = next((d["t"] for d, o in zip(drawn, opening) if d["i"] >= first and o > MOUTH_OPEN), None)
        if opened is not None:
            mouth.append(round((opened - capture[k]["t"]) / 1e3, 3))
    loud = np.array([c["rms"] > QUIET_RMS for c in capture])
    silent = [o for d, o in zip(drawn, opening) if d["i"] >= 12 and not loud[d["i"] - 12 : d["i"] + 6].any()]
    lat = np.array(stats["latencies"])
    skew = np.array(stats["skews"])

    def pct(x, q):
        return round(float(np.percentile(x, q)), 3) if x.size else None

    # Flatness: the client latency's median per 10 s of frames drawn.
    per_10s = [pct(lat[i : i + 250], 50) for i in range(0, lat.size, 250)]
    return {
        "client_latency_s": {"median": pct(lat, 50), "p95": pct(lat, 95), "max": pct(lat, 100), "per_10s": per_10s},
        "mouth_onset_latency_s": mouth,
        "av_skew_ms": {"p95": pct(skew * 1e3, 95), "max": pct(skew * 1e3, 100)},
        "frames_drawn": int(lat.size),
        "blocks": stats["blocks"],
        "late_blocks": stats["late"],
        "speech_onsets": len(speech_onsets(capture)),
        "silent_mouth_max": round(float(max(silent)), 4) if silent else None,  # frames driven by silence
    }
