"""The Gradio recorder (live mode's fallback) in Chromium: a recording that is refused leaves nothing behind.

The app on the tiny pipeline and the fake microphone of tests/test_app.py. A recording refused by the settings check
(Seed -1) went on filling the tab's queue with its audio, and the next accepted recording's video began with all of
it (before the fix: 8.3 s refused, then a 0.6 s recording came back as 213 frames, 8.5 s).

    python -m pytest -q -m browser tests/test_live_recorder_browser.py
"""

from __future__ import annotations

import json

import pytest

from tests.test_app import ARTIFACTS, EXAMPLES, _finish, _open, _upload_reference, app_url, browser  # noqa: F401

pytestmark = pytest.mark.browser
REFUSED_S = 6.0  # the refused recording's length
SAID_S = 1.0  # the next one's


def test_a_refused_recording_never_reaches_the_next_stream(browser, app_url):  # noqa: F811
    page = _open(browser, app_url, "recorder-leak")
    page.get_by_role("tab", name="Live").click()
    _upload_reference(page, EXAMPLES / "portrait_c.png")
    seed = page.get_by_label("Seed").first
    seed.fill("-1")
    record, stop = page.get_by_role("button", name="Record"), page.get_by_role("button", name="Stop")
    record.click()
    page.wait_for_timeout(int(REFUSED_S * 1000))  # the microphone sends all along; the stream never starts
    stop.click()
    refusal = page.locator("text=Seed").first.inner_text()
    seed.fill("0")
    page.wait_for_timeout(500)
    record.click()
    page.wait_for_timeout(int(SAID_S * 1000))
    stop.click()
    _, frames = _finish(page)
    readout = page.inner_text("#live-readout")
    result = {"refused_s": REFUSED_S, "said_s": SAID_S, "frames_back": frames, "readout": readout, "refusal": refusal}
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "live_recorder_leak.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result))
    # Only the second recording's audio (1 s, plus the microphone's start-up and the grace after Stop): never the
    # refused one's 6 s.
    assert 0 < frames <= (SAID_S + 1.5) * 25, result
    page.context.close()
