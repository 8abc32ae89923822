"""Sessions per batched worker at real time (not a test: prints JSON): how many live sessions one `StreamWorker`
keeps at 25 FPS each, on this machine, with the bundled model at the live defaults.

N sessions start a second apart (so their block boundaries differ, as real visitors' do) and each is fed speech at
the microphone's pace (40 ms chunks on the wall clock) for --seconds. Per session it reports the frames made per
second of its talk (25 = real time), the lag of each block (its arrival minus the moment its last audio sample was
"captured": the model's share of mic-to-screen), and whether the session ended by falling behind; for the worker,
how many streams each batched step held. A capacity holds if every session kept up (fps >= 25 over its talk, lag
flat).

    python benchmarks/live_batch.py --sessions 1 2 3 4 --seconds 20 --out benchmarks/results/live_batch_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from portrait_rt.constants import FPS, SAMPLE_RATE  # noqa: E402

CHUNK_S = 0.04


def speech(seconds: float, seed: int) -> np.ndarray:
    """Syllable-rate bursts of a voiced carrier with pauses (the audio encoder and the mouth see speech-like input)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    envelope = (np.sin(2 * np.pi * 2.5 * t + seed) > 0) * (0.5 + 0.5 * np.sin(2 * np.pi * 7 * t))
    carrier = np.sin(2 * np.pi * (140 + 20 * seed) * t) + 0.3 * rng.standard_normal(t.size)
    return (0.3 * envelope * carrier).astype(np.float32)


def run(pipe, sessions: int, seconds: float, block_size: int, steps: int, stagger_s: float) -> dict:
    from portrait_rt.serving.worker import StreamWorker

    worker = StreamWorker(pipe, capacity=sessions)
    reference = ROOT / "assets" / "examples" / "portrait_a.png"
    results = [None] * sessions

    def user(i: int) -> None:
        time.sleep(i * stagger_s)
        session = worker.open([reference], block_size=block_size, num_inference_steps=steps)
        x, n = speech(seconds, i), int(CHUNK_S * SAMPLE_RATE)
        lags, frames, start = [], 0, time.monotonic()

        def take(block: bool) -> bool:
            nonlocal frames
            while True:
                try:
                    record = session.get(timeout=0.0 if not block else 60)
                except Exception:  # noqa: BLE001 - queue.Empty: nothing yet
                    return True
                if record is None:
                    return False
                frames += len(record.frames)
                end = min(record.first_frame + len(record.frames), x.size * FPS // SAMPLE_RATE)
                lags.append(time.monotonic() - (start + end / FPS))

        going = True
        for k, i0 in enumerate(range(0, x.size, n)):
            time.sleep(max(0.0, start + (k + 1) * CHUNK_S - time.monotonic()))  # the chunk's last sample is "now"
            session.push(x[i0 : i0 + n], SAMPLE_RATE)
            going = take(block=False)
            if not going:  # the session ended (it fell behind)
                break
        talk_s = time.monotonic() - start
        made_during_talk = frames
        session.close()
        while going and take(block=True):
            pass
        lags = np.array(lags)
        results[i] = {
            "fps_during_talk": round(made_during_talk / talk_s, 1),
            "frames": frames,
            "end_reason": session.end_reason,
            "lead_in_frames": session.lead_frames,
            "lag_s": {
                "median": round(float(np.median(lags)), 3) if lags.size else None,
                "p95": round(float(np.percentile(lags, 95)), 3) if lags.size else None,
                "first_half_median": round(float(np.median(lags[: lags.size // 2])), 3) if lags.size > 1 else None,
                "second_half_median": round(float(np.median(lags[lags.size // 2 :])), 3) if lags.size > 1 else None,
            },
        }

    threads = [threading.Thread(target=user, args=(i,)) for i in range(sessions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    worker.shutdown()
    kept_up = all(r["end_reason"] == "stopped" and r["fps_during_talk"] >= 0.9 * FPS for r in results)
    return {
        "sessions": sessions,
        "kept_up": kept_up,
        "streams_per_step": dict(sorted(worker.step_sizes.items())),
        "per_session": results,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 2, 3, 4])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--block-size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--stagger", type=float, default=1.0, help="seconds between the sessions' starts")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", default=str(ROOT / "assets" / "portrait-rt-demo"))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    from portrait_rt.loading import load_pipeline

    pipe = load_pipeline(args.model, threads=args.threads)
    out = {
        "model": os.path.relpath(args.model, ROOT),
        "device": str(pipe.device),
        "threads": args.threads,
        "block_size": args.block_size,
        "num_inference_steps": args.steps,
        "seconds": args.seconds,
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
        "runs": [],
    }
    for n in args.sessions:
        out["runs"].append(run(pipe, n, args.seconds, args.block_size, args.steps, args.stagger))
        print(json.dumps(out["runs"][-1]), file=sys.stderr)
    out["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    out["capacity"] = max([r["sessions"] for r in out["runs"] if r["kept_up"]], default=0)
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return out


if __name__ == "__main__":
    main()
