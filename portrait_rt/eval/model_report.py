"""`python -m portrait_rt eval report`: the model card's metric table, measured on the corpus's held-out voices and
identities (split "eval").

    python -m portrait_rt eval report --model assets/portrait-rt-demo --output runs/metrics.json

(`python -m portrait_rt export --metrics runs/metrics.json` puts the table in the model card.)

- per clip and averaged, generated at the app defaults (12 steps, guidance 2 / 2, the first frame as the one
  reference) against the ground-truth render: lip-sync r at the best offset (and which) and at offset 0, and the lag
  to a fraction of a frame (`portrait_rt.eval.lipsync_score`), whole-frame and background PSNR, detail kept
  (`detail_ratio`); the same for the VAE alone (encode + decode, M = 1: the ceiling of the generated video), the
  reference held still (the baseline), the ground-truth render's lip-sync (the metric's ceiling), and the sharp
  ceiling: the same identity and speech rendered with another head motion from the same first frame
  (`render_clip(motion_seed=...)`). The audio does not determine the head's motion, so this is the whole-frame PSNR a
  perfect, sharp generator gets; above it, PSNR rewards blur (the average of the possible poses), not a better model;
- a contact sheet (PNG): ground truth, VAE reconstruction and generated frames of two clips, row over row;
- mouth in silence: mean pixel-measured opening over silent stretches / over speech;
- CFG trends (paper Table II): lip-sync r, the mouth's amplitude (the standard deviation of its opening over the
  ground truth's: r is a correlation, blind to how far the mouth opens) and whole-frame PSNR per (λa, λr), and on
  how many clips λa 1 -> 2 raises each of lip-sync and amplitude;
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
from PIL import Image, ImageDraw

from portrait_rt.constants import FPS, SAMPLE_RATE, SAMPLES_PER_FRAME, usable_video_frames
from portrait_rt.data.synthetic import render_clip
from portrait_rt.eval.metrics import (
    MAX_PSNR,
    background_drift,
    background_mask,
    detail_ratio,
    lipsync_score,
    mouth_opening,
    reconstruction_by_references,
)
from portrait_rt.images import frames_to_tensor, tensor_to_frames
from portrait_rt.pipeline import PortraitRTPipeline

CFG_SETTINGS = ((1.0, 1.0), (2.0, 1.0), (2.0, 2.0), (2.0, 3.0), (3.0, 2.0))
SHARP_CEILING_MOTIONS = (1, 2, 3)  # motion seeds of the sharp ceiling's renders, averaged


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


def masked_psnr(frames: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None) -> float:
    """PSNR (dB) of uint8 `frames` against `target` (T, H, W, 3), over the pixels where `mask` (H, W) is True."""
    err = (frames.astype(np.float32) - target.astype(np.float32)) ** 2
    mse = float(err[:, mask].mean() if mask is not None else err.mean())
    return min(10 * np.log10(255.0**2 / max(mse, 1e-10)), MAX_PSNR)


def contact_sheet(clips, rows: dict[str, list[np.ndarray]], columns: int = 6) -> Image.Image:
    """One PNG-able picture: per clip, `columns` frames evenly spaced, one row per entry of `rows` (label -> the
    per-clip frame arrays), the label written on the left."""
    res = clips[0].frames.shape[1]
    label_w, tiles = 96, []
    for k, clip in enumerate(clips):
        picks = np.linspace(0, len(clip.frames) - 1, columns).round().astype(int)
        for label, per_clip in rows.items():
            frames = per_clip[k]
            strip = np.concatenate([frames[min(i, len(frames) - 1)] for i in picks], axis=1)  # (H, columns*H, 3)
            tile = Image.new("RGB", (label_w + strip.shape[1], res), "white")
            tile.paste(Image.fromarray(strip), (label_w, 0))
            ImageDraw.Draw(tile).text((4, res // 2 - 6), f"{label} {k}", fill="black")
            tiles.append(tile)
    sheet = Image.new("RGB", (tiles[0].width, sum(t.height + 2 for t in tiles)), "white")
    for i, tile in enumerate(tiles):
        sheet.paste(tile, (0, i * (res + 2)))
    return sheet


def evaluate_model(
    pipe: PortraitRTPipeline,
    num_clips: int = 8,
    duration: float = 4.0,
    drift_minutes: float = 0.0,
    cfg: bool = True,
    sheet_path: str | Path | None = None,
) -> dict:
    """All figures of the model card's table (see the module docstring)."""
    res = pipe.resolution
    clips = [render_clip(k, resolution=res, duration=duration, split="eval") for k in range(num_clips)]
    report: dict = {"num_clips": num_clips, "clip_seconds": duration, "split": "eval"}

    # 1. Per clip: the model at the app's defaults, the VAE alone (its ceiling) and the reference held still (the
    #    baseline the VAE must beat), each against the ground-truth render; the render's own lip-sync (the ceiling).
    per_clip, generated, reconstructed, truth_amplitude = [], [], [], []  # truth_amplitude: std of the true opening
    for k, c in enumerate(clips):
        frames, dt = _generate(pipe, c.frames[0], c.audio)
        recon = vae_reconstruct(pipe.vae, c.frames)
        gt, gt_recon = c.frames[: len(frames)], c.frames[: len(recon)]
        try:
            background = background_mask(res, res, _boxes(c))
        except ValueError:  # the person fills the frame: no background to score on this clip
            background = None
        sync, vae_sync = lipsync_score(frames, c.audio), lipsync_score(recon, c.audio)
        truth_sync = lipsync_score(c.frames, c.audio)
        per_clip.append({
            "lipsync_r": sync["r"], "lipsync_offset": sync["offset"], "lipsync_r_at_zero": sync["r_at_zero"],
            "lipsync_lag": sync["lag"], "vae_lipsync_lag": vae_sync["lag"],
            "psnr": masked_psnr(frames, gt),
            "background_psnr": None if background is None else masked_psnr(frames, gt, background),
            "detail_ratio": detail_ratio(frames, gt),
            "vae_psnr": masked_psnr(recon, gt_recon), "vae_detail_ratio": detail_ratio(recon, gt_recon),
            "vae_lipsync_r": vae_sync["r"], "vae_lipsync_r_at_zero": vae_sync["r_at_zero"],
            "still_psnr": masked_psnr(np.broadcast_to(gt[:1], gt.shape), gt),
            "sharp_ceiling_psnr": float(np.mean([
                masked_psnr(render_clip(k, res, duration, "eval", motion_seed=s).frames[: len(gt)], gt)
                for s in SHARP_CEILING_MOTIONS
            ])),
            "ground_truth_lipsync_r": truth_sync["r"], "fps": len(frames) / dt,
        })  # fmt: skip
        generated.append(frames), reconstructed.append(recon), truth_amplitude.append(truth_sync["measured"].std())
    report["per_clip"] = per_clip
    for key in per_clip[0]:
        report[key] = float(np.mean([p[key] for p in per_clip if p[key] is not None]))
    report["lipsync_offset"] = float(np.median([p["lipsync_offset"] for p in per_clip]))
    report["lipsync_r_worst"] = float(min(p["lipsync_r"] for p in per_clip))
    report["realtime_fps"] = report.pop("fps")
    if sheet_path:
        rows = {"truth": [c.frames for c in clips[:2]], "VAE": reconstructed[:2], "generated": generated[:2]}
        contact_sheet(clips[:2], rows).save(sheet_path)
        report["contact_sheet"] = Path(sheet_path).name

    # 2. CFG (paper Table II): lip-sync, mouth amplitude and whole-frame PSNR per (lambda_a, lambda_r), and on how
    #    many clips raising lambda_a from 1 to 2 (lambda_r 1) raises lip-sync and amplitude.
    if cfg:
        runs, by_clip, names = {}, {}, ("r", "r_at_zero", "mouth_amplitude", "psnr")
        for la, lr in CFG_SETTINGS:
            scores = []
            for c, amplitude in zip(clips, truth_amplitude):
                frames, _ = _generate(pipe, c.frames[0], c.audio, la, lr)
                s = lipsync_score(frames, c.audio)
                scores.append((s["r"], s["r_at_zero"], float(s["measured"].std() / max(amplitude, 1e-6)),
                               masked_psnr(frames, c.frames[: len(frames)])))  # fmt: skip
            by_clip[(la, lr)] = [dict(zip(names, v)) for v in scores]
            runs[f"la={la:g},lr={lr:g}"] = {name: float(np.mean(v)) for name, v in zip(names, zip(*scores))}
        report["cfg"] = runs
        for name, key in (("lipsync", "r"), ("amplitude", "mouth_amplitude")):
            raised = [b[key] > a[key] for a, b in zip(by_clip[(1.0, 1.0)], by_clip[(2.0, 1.0)])]
            report[f"cfg_audio_raises_{name}_clips"] = f"{sum(raised)}/{len(raised)}"

    # 3. Mouth in silence: 1 s silence, speech, 1.5 s silence.
    c = clips[0]
    audio = np.concatenate([np.zeros(FPS * SAMPLES_PER_FRAME, np.float32), c.audio,
                            np.zeros(int(1.5 * FPS) * SAMPLES_PER_FRAME, np.float32)])  # fmt: skip
    frames, _ = _generate(pipe, c.frames[0], audio)
    opening = mouth_opening(frames)
    speech_frames = slice(FPS + 5, FPS + len(c.frames) - 5)
    silent = np.r_[opening[3 : FPS - 3], opening[FPS + len(c.frames) + 8 :]]
    report["mouth_silence"] = float(silent.mean() / max(opening[speech_frames].mean(), 1e-6))
    report["mouth_open_silence_abs"] = float(silent.mean())

    # 4. VAE PSNR against the number of references.
    report["vae_psnr_by_references"] = {str(m): v for m, v in vae_psnr_by_references(pipe.vae, clips).items()}

    # 5. Drift over a long stream (held-out speech, repeated with pauses).
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


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `python -m portrait_rt eval report`."""
    parser.add_argument("--model", default="assets/portrait-rt-demo")
    parser.add_argument("--output", required=True, help="metrics JSON to write (export --metrics reads it)")
    parser.add_argument("--clips", type=int, default=8, help="held-out clips")
    parser.add_argument("--sheet", default=None, help="contact sheet PNG (default: contact_sheet.png in --model)")
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per clip")
    parser.add_argument("--drift-minutes", type=float, default=0.0, help="long-stream length for the drift figure")
    parser.add_argument("--no-cfg", action="store_true", help="only the default guidance (faster)")
    parser.add_argument("--threads", type=int, default=None)


def cli_main(args: argparse.Namespace) -> int:
    """Measure the model, write the metrics JSON (with the command that made it) and print its headline numbers."""
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = PortraitRTPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    sheet = args.sheet or Path(args.model) / "contact_sheet.png"
    report = evaluate_model(pipe, args.clips, args.duration, args.drift_minutes, cfg=not args.no_cfg, sheet_path=sheet)
    report["command"] = "python -m portrait_rt " + shlex.join(sys.argv[1:])
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v for k, v in report.items() if k not in ("drift_psnr", "per_clip")}, indent=1))
    return 0
