"""Soak: File mode on a long clip, peak RSS of the process (JSON on stdout). Memory must not grow with the clip.

    OMP_NUM_THREADS=1 python benchmarks/soak_file_mode.py --minutes 10 --threads 1 [--model assets/portrait-rt-demo]

Runs `app._generate` (what the File tab runs: blocks streamed to the mp4 writer and the lip-sync measure) on speech
built from the example clips, looped to the length asked for, with the Space's clip limit lifted for the run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--model", default=str(ROOT / "assets" / "portrait-rt-demo"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ["PORTRAIT_RT_MAX_AUDIO_S"] = str(args.minutes * 60 + 1)

    import app
    from portrait_rt.loading import load_pipeline

    app.PIPE = load_pipeline(args.model)
    examples = ROOT / "assets" / "examples"
    speech = np.concatenate([sf.read(examples / f"speech_{c}.wav", dtype="float32")[0] for c in "abc"])
    rate = sf.info(str(examples / "speech_a.wav")).samplerate
    clip = np.resize(speech, round(args.minutes * 60 * rate))
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "speech.wav"
        sf.write(wav, clip, rate)
        rss_before = peak_rss_mb()
        start = time.perf_counter()
        path, out = app._generate(
            (str(examples / "portrait_a.png"), None, None), str(wav), 2, 2, args.steps, 0, 4, "soak"
        )
        seconds = time.perf_counter() - start
    print(
        json.dumps(
            {
                "audio_minutes": args.minutes,
                "frames": out.num_frames,
                "wall_s": round(seconds, 1),
                "fps": round(out.num_frames / seconds, 1),
                "peak_rss_mb_after_load": round(rss_before, 1),
                "peak_rss_mb": round(peak_rss_mb(), 1),
                "threads": args.threads,
                "steps": args.steps,
                "model": Path(args.model).name,
            }
        )
    )


if __name__ == "__main__":
    main()
