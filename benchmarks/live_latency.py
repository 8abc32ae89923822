"""Mic-to-screen latency of the low-latency live path, measured in headless Chromium (not a test: prints JSON).

Starts `app.py` (the bundled model unless --model), opens --users tabs that press Talk at once (the live cap is set to
--users so all are admitted), lets the fake microphone say silence-then-speech (looped) for --seconds, hangs up, and
reports per user what tests/live_client.py measures: the client's own mic-to-screen latency (median, p95, median per
10 s: flat = no growing lag), the mouth-onset latency (speech onset at the mic -> first drawn frame whose mouth opens,
by the eval tools' mouth detector), A/V skew and late blocks; with the machine's load average before and after.

    python benchmarks/live_latency.py --users 1 --seconds 20
    python benchmarks/live_latency.py --users 2 --seconds 20
    python benchmarks/live_latency.py --users 1 --seconds 120 --out benchmarks/results/live_rt_2min.json
    python benchmarks/live_latency.py --users 3 --mics 3 --stagger 1.3 --block-size 2 --threads 2   # batched

`--mics N`: N browsers, each with its own fake microphone (the corpus clips speech_a/b/c in turn), the users spread
over them; `--stagger`: seconds between the users' Talk presses (real visitors do not start together).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import live_client as lc  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=20.0, help="how long each user talks")
    parser.add_argument("--model", default=None, help="PORTRAIT_RT_MODEL for the app (default: the bundled model)")
    parser.add_argument("--block-size", type=int, default=1)
    parser.add_argument("--threads", default="1", help="OMP_NUM_THREADS for the app")
    parser.add_argument("--mics", type=int, default=1, help="browsers, each with its own fake microphone")
    parser.add_argument("--stagger", type=float, default=0.0, help="seconds between the users' Talk presses")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    from playwright.sync_api import sync_playwright

    load_before = os.getloadavg()
    env = {"PORTRAIT_RT_REALTIME_STREAMS": str(args.users), "OMP_NUM_THREADS": args.threads}
    if args.model:
        env["PORTRAIT_RT_MODEL"] = args.model
    with tempfile.TemporaryDirectory() as tmp, lc.run_app(Path(tmp) / "app.log", **env) as url, sync_playwright() as p:
        browsers = []
        for m in range(args.mics):
            speech = lc.EXAMPLES / f"speech_{'abc'[m % 3]}.wav" if args.mics > 1 else lc.EXAMPLES / "speech_c.wav"
            wav = lc.mic_wav(Path(tmp) / f"mic{m}.wav", speech)
            browsers.append(p.chromium.launch(executable_path=lc.CHROMIUM, args=lc.browser_args(wav), headless=True))
        pages = [lc.open_live(browsers[i % args.mics], url) for i in range(args.users)]
        for i, page in enumerate(pages):
            page.locator("#rt-block").get_by_label(str(args.block_size), exact=True).check()
            if i:
                time.sleep(args.stagger)
            lc.talk(page)
        states = [lc.wait_state(page, ("live", "queued", "error", "refused")) for page in pages]
        time.sleep(args.seconds)
        for page in pages:
            lc.hang_up(page)
        users = []
        for page, state in zip(pages, states):
            lc.wait_state(page, ("ended", "error"), timeout_ms=120_000)
            users.append({"state_at_start": state, **lc.measure(page), "status": lc.status_text(page)})
        server = lc.gate_state(url)
        for browser in browsers:
            browser.close()
    report = {
        "users": args.users,
        "seconds": args.seconds,
        "block_size": args.block_size,
        "model": args.model or "assets/portrait-rt-demo",
        "threads": args.threads,
        "mics": args.mics,
        "stagger_s": args.stagger,
        "server": server,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "per_user": users,
    }
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text)
    return report


if __name__ == "__main__":
    main()
