"""Synthetic corpus speed: clips/s and frames/s at a resolution, plus dataset windows/s cold and cached (JSON).

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

from portrait_rt.data.synthetic import SyntheticTalkingDataset, clip_speech, render_clip  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per clip")
    parser.add_argument("--num-frames", type=int, default=17, help="training window length")
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

    ds = SyntheticTalkingDataset(
        args.clips,
        args.resolution,
        args.num_frames,
        clip_duration=args.duration,
        windows_per_clip=4,
        cache_size=args.clips,
    )
    t0 = time.perf_counter()
    for i in range(args.clips):  # first window of each clip: renders it
        ds[i]
    cold_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    warm = [ds[i] for i in range(len(ds))]
    warm_s = time.perf_counter() - t0

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
                "windows_per_s_cold": args.clips / cold_s,
                "windows_per_s_cached": len(warm) / warm_s,
                "window_frames": args.num_frames,
                "threads": 1,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
