"""Three people talking at once on one batched worker, in real browsers: three Chromium instances, each with its own
fake microphone (speech_a/b/c after silence), press Talk 1.3 s apart against `app.py` with the bundled model and
three live slots, at 1 denoising step and with no backlog limit (this checks the mechanics, not the
speed: on a loaded machine sessions fall behind). All three are admitted and live together, each sees frames, and
the server ran steps holding all three streams. Each user's latency goes to `test-artifacts/live_rt_3users.json`;
the figures that count are benchmarks/live_latency.py's (--users 3 --mics 3), under benchmarks/results/.

    python -m pytest -q -m browser tests/test_live_batch_browser.py
"""

from __future__ import annotations

import json
import time

import pytest

from tests import live_client as lc
from tests.conftest import require_chromium

pytestmark = pytest.mark.browser
ARTIFACTS = lc.ROOT / "test-artifacts"

require_chromium(lc.CHROMIUM)


def test_three_users_talk_at_once_batched(tmp_path):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    env = {"PORTRAIT_RT_REALTIME_STREAMS": "3", "PORTRAIT_RT_REALTIME_BACKLOG_S": "600"}  # behind: they go on anyway
    with lc.run_app(ARTIFACTS / "app-server-live-3users.log", **env) as url, sync_playwright() as p:
        assert lc.gate_state(url)["capacity"] == 3
        browsers = [
            p.chromium.launch(
                executable_path=lc.CHROMIUM,
                args=lc.browser_args(lc.mic_wav(tmp_path / f"mic{m}.wav", lc.EXAMPLES / f"speech_{m}.wav")),
                headless=True,
            )
            for m in "abc"
        ]
        try:
            pages = [lc.open_live(b, url, steps=1) for b in browsers]  # the mechanics, not the speed: one step
            for i, page in enumerate(pages):
                page.locator("#rt-block").get_by_label("2", exact=True).check()
                time.sleep(1.3 if i else 0)
                lc.talk(page)
            assert [lc.wait_state(page, ("live", "queued", "error", "refused")) for page in pages] == ["live"] * 3
            time.sleep(8)
            for page in pages:
                lc.hang_up(page)
            users = []
            for page in pages:
                assert lc.wait_state(page, ("ended", "error"), timeout_ms=120_000) == "ended", lc.status_text(page)
                users.append({**lc.measure(page), "status": lc.status_text(page)})
            server = lc.gate_state(url)
        finally:
            for b in browsers:
                b.close()
    (ARTIFACTS / "live_rt_3users.json").write_text(json.dumps({"server": server, "per_user": users}, indent=1))
    assert server["sessions_started"] == 3 and all(u["frames_drawn"] > 0 for u in users), users
    assert max(int(n) for n in server["streams_per_step"]) == 3, server  # steps held all three streams
