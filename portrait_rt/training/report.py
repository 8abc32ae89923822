"""The model card's metric table, measured on the corpus's held-out voices and identities (split "eval").

    python -m portrait_rt.training.report --model assets/portrait-rt-demo --output runs/metrics.json

- lip-sync r / offset (`portrait_rt.eval.lipsync_score`) of generated clips, first frame as the reference,
  app defaults (12 steps, guidance 2 / 2), and of the ground-truth renders (the ceiling);
- mouth in silence: mean pixel-measured opening over silent stretches / over speech;
- CFG trends (paper Table II): lip-sync r and background PSNR against the reference per (λa, λr);
- VAE PSNR against the number of references M = 0..3 (paper Table 2) on 17-frame held-out windows;
- drift: background PSNR per 10 s window over a long stream (`--drift-minutes`);
- speed: generated frames per second of wall-clock time while measuring (this machine, whatever its load).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from portrait_rt.constants import FPS, SAMPLE_RATE, SAMPLES_PER_FRAME, usable_video_frames
from portrait_rt.data.synthetic import render_clip
from portrait_rt.eval.metrics import background_drift, lipsync_score, mouth_opening, reconstruction_by_references
from portrait_rt.images import frames_to_tensor, tensor_to_frames
from portrait_rt.pipeline import PortraitRTPipeline

CFG_SETTINGS = ((1.0, 1.0), (2.0, 1.0), (2.0, 2.0), (2.0, 3.0), (3.0, 2.0))


def _boxes(clip) -> list:
    return [clip.meta["body_box"], clip.meta["face_box"]]


def _generate(pipe, reference, audio, la=2.0, lr=2.0, steps=12, seed=0) -> tuple[np.ndarray, float]:
    t0 = time.perf_counter()
    out = pipe([reference], (audio, SAMPLE_RATE), guidance_audio=la, guidance_reference=lr,
               num_inference_steps=steps, generator=torch.Generator().manual_seed(seed))  # fmt: skip
    return out.frames, time.perf_counter() - t0


@torch.no_grad()
def vae_reconstruct(vae, frames: np.ndarray) -> np.ndarray:
    """Encode + decode a clip (first frame as the one reference): what the DiT could at best reproduce."""
    x = frames_to_tensor(frames[: usable_video_frames(len(frames))]).to(vae.dtype)  # (T, 3, H, W)
    recon, _ = vae(x.movedim(0, 1)[None], x[None, :1], sample_posterior=False)  # video (1, 3, T, H, W), 1 reference
    return tensor_to_frames(recon[0].movedim(0, 1))  # (T, H, W, 3)


def vae_psnr_by_references(vae, clips, num_frames: int = 17) -> dict[int, float]:
    """PSNR per M of 17-frame windows reconstructed with M of 3 other frames of the same clip as references."""
    batches = []
    for clip in clips:
        f = frames_to_tensor(clip.frames)  # (T, 3, H, W)
        start = len(f) // 2
        video = f[start : start + num_frames].movedim(0, 1)[None]  # (1, 3, T, H, W)
        refs = f[[0, len(f) // 4, len(f) - 1]][None]  # (1, 3, 3, H, W)
        batches.append({"video": video.to(vae.dtype), "references": refs.to(vae.dtype)})
    return {m: v["psnr"] for m, v in reconstruction_by_references(vae, batches).items()}


def evaluate_model(
    pipe: PortraitRTPipeline, num_clips: int = 4, duration: float = 4.0, drift_minutes: float = 0.0, cfg: bool = True
) -> dict:
    """All figures of the model card's table (see the module docstring)."""
    res = pipe.resolution
    clips = [render_clip(k, resolution=res, duration=duration, split="eval") for k in range(num_clips)]
    report: dict = {"num_clips": num_clips, "clip_seconds": duration, "split": "eval"}

    # 1. Ground truth ceiling, the VAE's own ceiling (reconstructions), and the model at the app's defaults.
    report["lipsync_r_ground_truth"] = float(np.mean([lipsync_score(c.frames, c.audio)["r"] for c in clips]))
    recon = [lipsync_score(vae_reconstruct(pipe.vae, c.frames), c.audio) for c in clips]
    report["lipsync_r_vae_reconstruction"] = float(np.mean([s["r"] for s in recon]))
    report["lipsync_r_at_zero_vae_reconstruction"] = float(np.mean([s["r_at_zero"] for s in recon]))
    runs = {}
    for la, lr in CFG_SETTINGS if cfg else ((2.0, 2.0),):
        rs, r0s, offs, psnrs, frames_n, seconds = [], [], [], [], 0, 0.0
        for c in clips:
            frames, dt = _generate(pipe, c.frames[0], c.audio, la, lr)
            s = lipsync_score(frames, c.audio)
            rs.append(s["r"]), r0s.append(s["r_at_zero"]), offs.append(s["offset"])
            psnrs.append(float(np.mean(background_drift(frames, c.frames[0], _boxes(c))["psnr"])))
            frames_n, seconds = frames_n + len(frames), seconds + dt
        runs[f"la={la:g},lr={lr:g}"] = {"r": float(np.mean(rs)), "r_at_zero": float(np.mean(r0s)),
                                        "offset": float(np.median(offs)), "psnr": float(np.mean(psnrs)),
                                        "fps": frames_n / seconds}  # fmt: skip
    default = runs["la=2,lr=2"]
    report.update(lipsync_r=default["r"], lipsync_r_at_zero=default["r_at_zero"], lipsync_offset=default["offset"],
                  realtime_fps=default["fps"])  # fmt: skip
    if cfg:
        report["cfg"] = runs

    # 2. Mouth in silence: 1 s silence, speech, 1.5 s silence.
    c = clips[0]
    audio = np.concatenate([np.zeros(FPS * SAMPLES_PER_FRAME, np.float32), c.audio,
                            np.zeros(int(1.5 * FPS) * SAMPLES_PER_FRAME, np.float32)])  # fmt: skip
    frames, _ = _generate(pipe, c.frames[0], audio)
    opening = mouth_opening(frames)
    speech_frames = slice(FPS + 5, FPS + len(c.frames) - 5)
    silent = np.r_[opening[3 : FPS - 3], opening[FPS + len(c.frames) + 8 :]]
    report["mouth_silence"] = float(silent.mean() / max(opening[speech_frames].mean(), 1e-6))
    report["mouth_open_silence_abs"] = float(silent.mean())

    # 3. VAE PSNR against the number of references.
    report["vae_psnr_by_references"] = {str(m): v for m, v in vae_psnr_by_references(pipe.vae, clips).items()}

    # 4. Drift over a long stream (held-out speech, repeated with pauses).
    if drift_minutes > 0:
        pause = np.zeros(SAMPLE_RATE // 2, np.float32)
        speech = np.concatenate([np.concatenate([cl.audio, pause]) for cl in clips])
        reps = int(np.ceil(drift_minutes * 60 * SAMPLE_RATE / speech.size))
        long_audio = np.tile(speech, reps)[: int(drift_minutes * 60 * SAMPLE_RATE)]
        frames, dt = _generate(pipe, c.frames[0], long_audio)
        drift = background_drift(frames, c.frames[0], _boxes(c))
        report.update(drift_minutes=drift_minutes, drift_drop_db=float(drift["drop"]), drift_psnr=drift["psnr"],
                      drift_fps=len(frames) / dt)  # fmt: skip
    report["load_average"] = os.getloadavg()[0]
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m portrait_rt.training.report", description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="assets/portrait-rt-demo")
    parser.add_argument("--output", required=True, help="metrics JSON to write (export --metrics reads it)")
    parser.add_argument("--clips", type=int, default=4, help="held-out clips")
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per clip")
    parser.add_argument("--drift-minutes", type=float, default=0.0, help="long-stream length for the drift figure")
    parser.add_argument("--no-cfg", action="store_true", help="only the default guidance (faster)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = PortraitRTPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    report = evaluate_model(pipe, args.clips, args.duration, args.drift_minutes, cfg=not args.no_cfg)
    report["command"] = "python -m portrait_rt.training.report " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v for k, v in report.items() if k != "drift_psnr"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
