"""Synthetic corpus speed: clips/s and frames/s at a resolution, and espeak-ng's share of it (JSON).

python benchmarks/synth_speed.py --resolution 128 --clips 8 --duration 4
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from portrait_rt.data.synthetic import clip_speech, render_clip  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per clip")
    args = parser.parse_args()
    torch.set_num_threads(1)

    t0 = time.perf_counter()
    for seed in range(args.clips):
        clip_speech(seed, "train", args.duration)
    speech_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    frames = 0
    for seed in range(args.clips):
        frames += render_clip(seed, args.resolution, args.duration).num_frames
    render_s = time.perf_counter() - t0

    print(
        json.dumps(
            {
                "resolution": args.resolution,
                "clip_seconds": args.duration,
                "clips": args.clips,
                "clips_per_s": args.clips / render_s,
                "frames_per_s": frames / render_s,
                "realtime_factor": frames / 25 / render_s,
                "espeak_share": speech_s / render_s,
                "threads": 1,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
