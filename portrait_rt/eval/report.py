"""Evaluation reports (JSON + PNG plot) and the metrics' own validation on ground-truth synthetic renders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..constants import FPS, SAMPLE_RATE
from .metrics import (
    background_drift,
    lipsync_from_opening,
    lipsync_score,
    mouth_opening,
    pearson,
    reconstruction_metrics,
)
from .mouth import mouth_darkening


def evaluate_video(
    frames: np.ndarray,
    audio: np.ndarray,
    sample_rate: int = SAMPLE_RATE,
    reference: np.ndarray | None = None,
    target: np.ndarray | None = None,
    box=None,
) -> dict:
    """All offline metrics of one talking video: lip-sync always, by the colour key (`lipsync`: the cartoons'
    mouth colour) and by the mouth's darkening against `reference` or the first frame (`lipsync_darkening`: any
    face, frames in the training framing: the model's square crops); background drift against `reference`
    (H, W, 3) when given (`box`: the person box to exclude); PSNR/SSIM against `target` frames when given."""
    report = lipsync_report(mouth_opening(frames), audio, sample_rate)
    closed = reference if reference is not None and reference.shape == frames.shape[1:] else frames[0]
    darkening = lipsync_report(mouth_darkening(frames, closed), audio, sample_rate)
    report["lipsync_darkening"] = darkening["lipsync"]
    report["mouth_darkening"] = darkening["mouth_measured"]
    if reference is not None:
        report["drift"] = background_drift(frames, reference, box)
    if target is not None:
        n = min(len(frames), len(target))
        report["reconstruction"] = reconstruction_metrics(np.asarray(frames)[:n], np.asarray(target)[:n])
    return report


def lipsync_report(measured: np.ndarray, audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> dict:
    """The lip-sync part of `evaluate_video` from the mouth opening measured per frame (`mouth_opening` of each
    block as a stream arrives, concatenated): the frames themselves need not be kept."""
    sync = lipsync_from_opening(measured, audio, sample_rate)
    return {
        "num_frames": int(len(measured)),
        "duration_s": len(measured) / FPS,
        "lipsync": {k: sync[k] for k in ("r", "offset", "confidence", "r_at_zero")},
        "offset_curve": sync["curve"].tolist(),
        "mouth_measured": sync["measured"].tolist(),
        "mouth_implied": sync["implied"].tolist(),
    }


def plot_report(report: dict, path: str | Path) -> Path:
    """PNG: measured vs audio-implied mouth opening over time, the offset curve, and background PSNR if any."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured, implied = np.asarray(report["mouth_measured"]), np.asarray(report["mouth_implied"])
    n = min(len(measured), len(implied))
    measured, implied = measured[:n], implied[:n]
    a, b = np.polyfit(measured, implied, 1) if measured.std() > 0 else (0.0, float(implied.mean()))  # to one scale
    panels = 3 if "drift" in report else 2
    fig, axes = plt.subplots(
        1, panels, figsize=(5 * panels + 3, 3.2), gridspec_kw={"width_ratios": [3] + [1.3] * (panels - 1)}
    )
    t = np.arange(n) / FPS
    axes[0].plot(t, implied, label="implied by audio", color="tab:orange", lw=1.5)
    axes[0].plot(t, a * measured + b, label="measured from pixels (fitted)", color="tab:blue", lw=1.2)
    axes[0].set(xlabel="time (s)", ylabel="mouth opening", title=f"lip-sync r = {report['lipsync']['r']:.3f}")
    axes[0].legend(loc="upper right", fontsize=8)
    curve = np.asarray(report["offset_curve"])
    k = (len(curve) - 1) // 2
    axes[1].plot(np.arange(-k, k + 1), curve, marker="o", ms=3)
    axes[1].axvline(report["lipsync"]["offset"], color="tab:red", ls="--", lw=1)
    axes[1].set(xlabel="video lag (frames)", ylabel="r", title=f"offset = {report['lipsync']['offset']}")
    if "drift" in report:
        d = report["drift"]
        axes[2].plot(d["times"], d["psnr"], marker="o")
        axes[2].set(xlabel="window start (s)", ylabel="background PSNR (dB)", title="drift")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(report: dict, out_dir: str | Path, name: str = "report") -> dict[str, Path]:
    """Write `name.json` and `name.png` under `out_dir`; returns both paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / f"{name}.json", "png": out_dir / f"{name}.png"}
    paths["json"].write_text(json.dumps(report, indent=1, default=lambda o: np.asarray(o).tolist()))
    plot_report(report, paths["png"])
    return paths


def validate_metrics(num_clips: int = 6, resolution: int = 128, duration: float = 4.0, seed: int = 0) -> dict:
    """The metrics' validation on ground-truth renders of the eval split (held-out voices and identities):

    mouth_r: Pearson r of `mouth_opening` with the true opening (also after a Gaussian blur of 1 px and a colour
    shift); darkening_r: that of `mouth_darkening` (any face), against a closed-mouth render of the clip's first frame;
    lipsync_r/offset on the true audio; mismatched_r: lip-sync of each clip against the next clip's audio.
    """
    from scipy.ndimage import gaussian_filter

    from ..data.synthetic import render_clip

    if num_clips < 2:
        raise ValueError("validate_metrics needs num_clips >= 2 (mismatched pairs)")
    clips = [render_clip(seed + i, resolution, duration, split="eval") for i in range(num_clips)]
    mouth_r, degraded_r, sync_r, offsets, mismatched_r, mismatched_r0, darkening_r = [], [], [], [], [], [], []
    for i, clip in enumerate(clips):
        truth = clip.meta["mouth_open"]
        mouth_r.append(pearson(mouth_opening(clip.frames), truth))
        silent = np.zeros_like(clip.audio)  # the same identity and head motion, the mouth closed
        closed = render_clip(seed + i, resolution, duration, split="eval", audio=silent).frames[0]
        darkening_r.append(pearson(mouth_darkening(clip.frames, closed), truth))
        degraded = gaussian_filter(clip.frames.astype(np.float32), (0, 1.0, 1.0, 0)) + np.array([12.0, -10.0, 8.0])
        degraded_r.append(pearson(mouth_opening(np.clip(degraded, 0, 255)), truth))
        s = lipsync_score(clip.frames, clip.audio, clip.sample_rate)
        sync_r.append(s["r"])
        offsets.append(s["offset"])
        m = lipsync_score(clip.frames, clips[(i + 1) % num_clips].audio, clip.sample_rate)
        mismatched_r.append(m["r"])
        mismatched_r0.append(m["r_at_zero"])
    return {
        "clips": num_clips,
        "resolution": resolution,
        "duration_s": duration,
        "mouth_r_min": float(np.min(mouth_r)),
        "mouth_r_mean": float(np.mean(mouth_r)),
        "mouth_r_blur_shift_min": float(np.min(degraded_r)),
        "darkening_r_min": float(np.min(darkening_r)),
        "darkening_r_mean": float(np.mean(darkening_r)),
        "lipsync_r_min": float(np.min(sync_r)),
        "lipsync_r_mean": float(np.mean(sync_r)),
        "lipsync_offsets": offsets,
        "mismatched_r_mean": float(np.mean(mismatched_r)),
        "mismatched_r_max": float(np.max(mismatched_r)),
        "mismatched_r_at_zero_mean": float(np.mean(mismatched_r0)),
    }
