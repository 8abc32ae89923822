"""The low-latency live client in a real browser: Debian's Chromium (Playwright) against `app.py` with the bundled
model, the fake microphone saying silence and then speech (tests/live_client.py drives and measures).

- one user: frames and audio come back, the mouth opens after the speech starts; the client's own mic-to-screen
  latency and the mouth-onset latency go to `test-artifacts/live_rt_latency.json` (a generous sanity bound here: the
  targets are measured by benchmarks/live_latency.py);
- a second user while the one slot is taken is told their place and gets it when the first hangs up; a third,
  with the line full, is refused with a message;
- a tab closed mid-stream frees its slot.

    python -m pytest -q -m browser tests/test_live_browser.py
"""

from __future__ import annotations

import json

import pytest

from tests import live_client as lc
from tests.conftest import require_chromium

pytestmark = pytest.mark.browser
ARTIFACTS = lc.ROOT / "test-artifacts"

require_chromium(lc.CHROMIUM)


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    """The app with the bundled model; one live slot and one place in line (so the third user is refused)."""
    ARTIFACTS.mkdir(exist_ok=True)
    env = {"PORTRAIT_RT_REALTIME_STREAMS": "1", "PORTRAIT_RT_REALTIME_WAITING": "1"}
    with lc.run_app(ARTIFACTS / "app-server-live-rt.log", **env) as url:
        yield url


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from playwright.sync_api import sync_playwright

    wav = lc.mic_wav(tmp_path_factory.mktemp("mic") / "silence-then-speech.wav")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=lc.CHROMIUM, args=lc.browser_args(wav), headless=True)
        yield b
        b.close()


def test_one_user_sees_the_portrait_talk_in_sync_with_low_latency(browser, app_url):
    page = lc.open_live(browser, app_url)
    lc.talk(page)
    assert lc.wait_state(page, ("live", "error")) == "live", lc.status_text(page)
    page.wait_for_function("window.portraitLive.stats.latencies.length > 50", timeout=60_000)
    page.wait_for_timeout(int((lc.SILENCE_S + 2.5) * 1000))  # past the first speech onset
    page.screenshot(path=str(ARTIFACTS / "20-live-rt-talking.png"), full_page=True)
    lc.hang_up(page)
    assert lc.wait_state(page, ("ended", "error"), timeout_ms=30_000) == "ended", lc.status_text(page)
    result = lc.measure(page)
    result["load_average"] = open("/proc/loadavg").read().split()[:3]
    (ARTIFACTS / "live_rt_latency.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result))
    assert "mic → screen" in page.inner_text("#rt-stats")
    assert result["silent_mouth_max"] < lc.MOUTH_OPEN  # closed while the microphone is silent...
    assert result["speech_onsets"] >= 1 and result["mouth_onset_latency_s"], result  # ...and opens after speech
    # Sanity bounds only (a busy 2-core CI machine; the Gradio recorder took 3-19 s): the targets are benchmarked.
    assert 0.1 < result["mouth_onset_latency_s"][0] < 8.0, result
    assert 0.1 < result["client_latency_s"]["median"] < 8.0, result
    assert result["av_skew_ms"]["p95"] <= 60, result  # the picture is drawn within its audio's 40 ms slot
    page.screenshot(path=str(ARTIFACTS / "21-live-rt-ended.png"), full_page=True)
    page.context.close()


def test_a_second_user_waits_in_line_and_a_third_is_refused(browser, app_url):
    first, second, third = (lc.open_live(browser, app_url, play_voice=False) for _ in range(3))
    lc.talk(first)
    assert lc.wait_state(first, ("live", "error")) == "live", lc.status_text(first)
    lc.talk(second)
    assert lc.wait_state(second, ("queued", "live", "error")) == "queued"
    assert "you are next in line" in lc.status_text(second).lower()
    second.screenshot(path=str(ARTIFACTS / "22-live-rt-queued.png"), full_page=True)
    lc.talk(third)
    assert lc.wait_state(third, ("refused", "queued", "live", "error")) == "refused"
    assert "busy" in lc.status_text(third).lower()
    third.screenshot(path=str(ARTIFACTS / "23-live-rt-refused.png"), full_page=True)
    gate = lc.gate_state(app_url)
    assert (gate["active"], gate["waiting"]) == (1, 1), (gate, lc.status_text(second), lc.status_text(first))
    lc.hang_up(first)
    assert lc.wait_state(first, ("ended", "error"), timeout_ms=30_000) == "ended"
    assert lc.wait_state(second, ("live", "error"), timeout_ms=30_000) == "live"  # its turn: only now its mic opens
    second.wait_for_function("window.portraitLive.stats.latencies.length > 25", timeout=60_000)
    lc.hang_up(second)
    assert lc.wait_state(second, ("ended", "error"), timeout_ms=30_000) == "ended"
    for page in (first, second, third):
        page.context.close()


def test_a_tab_closed_mid_stream_frees_its_slot(browser, app_url):
    page = lc.open_live(browser, app_url, play_voice=False)
    lc.talk(page)
    assert lc.wait_state(page, ("live", "error")) == "live"
    page.wait_for_function("window.portraitLive.stats.blocks > 3", timeout=60_000)
    assert lc.gate_state(app_url)["active"] == 1
    page.context.close()  # the tab goes away mid-stream
    for _ in range(100):
        if lc.gate_state(app_url)["active"] == 0:
            break
        lc.time.sleep(0.1)
    gate = lc.gate_state(app_url)
    assert (gate["active"], gate["waiting"]) == (0, 0), gate
    follower = lc.open_live(browser, app_url, play_voice=False)  # the freed slot serves the next user at once
    lc.talk(follower)
    assert lc.wait_state(follower, ("live", "queued", "error")) == "live"
    lc.hang_up(follower)
    assert lc.wait_state(follower, ("ended", "error"), timeout_ms=30_000) == "ended"
    follower.context.close()


def test_three_large_phone_photos_are_shrunk_in_the_page_and_talk_works(browser, app_url, tmp_path):
    """Three 4000x3000 JPEGs of ~12 MB each (37 MB: far over the socket's 16 MiB message limit as they are; before,
    three 5.6 MB photos ended Talk with "The connection to the server closed"): the page shrinks each to 1024 px
    before sending (measured: a 2.5 MB start message), so the stream goes live."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    photos = []
    for i in range(3):
        path = tmp_path / f"phone_{i}.jpg"
        noise = rng.integers(0, 255, (3000 // 4, 4000 // 4, 3), np.uint8).repeat(4, 0).repeat(4, 1)
        Image.fromarray(noise).save(path, quality=97)
        photos.append(path)
    assert sum(p.stat().st_size for p in photos) > 16 * 2**20
    page = lc.open_live(browser, app_url, reference=photos[0], play_voice=False)
    for slot, photo in ((2, photos[1]), (3, photos[2])):
        page.locator(f"#ref{slot} input[type=file]").set_input_files(str(photo))
        page.locator(f"#ref{slot} img").first.wait_for(timeout=30_000)
    sent = []
    page.on("websocket", lambda ws: ws.on("framesent", lambda payload: sent.append(len(payload))))
    lc.talk(page)
    assert lc.wait_state(page, ("live", "error", "refused")) == "live", lc.status_text(page)
    start_bytes = sent[0]
    assert start_bytes < 3 * 2**20, start_bytes  # three ~1024 px JPEGs, not 17 MB
    lc.hang_up(page)
    assert lc.wait_state(page, ("ended", "error"), timeout_ms=30_000) == "ended"
    print(
        f"start message: {start_bytes / 1e6:.2f} MB for {sum(p.stat().st_size for p in photos) / 1e6:.1f} MB of photos"
    )
    page.context.close()
