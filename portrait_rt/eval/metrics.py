"""Offline metrics that need no downloaded weights: mouth opening, lip-sync, reconstruction, drift.

- `mouth_opening(frames)`: from pixels alone (no renderer state), so it also measures generated video; frame by
  frame (in chunks of `CHUNK_FRAMES`), so its memory does not grow with the clip and it can follow a stream.
- `lipsync_score(frames, audio, sample_rate)`: in the spirit of SyncNet's confidence and offset, the correlation
  between the measured mouth opening and the opening the audio implies (`portrait_rt.mouth.audio_to_mouth_opening`,
  the corpus's own audio-to-mouth mapping), searched over audio-video offsets of +-10 frames.
  `lipsync_from_opening` does the same from openings measured block by block as a stream arrives (`mouth_opening`
  of each block, concatenated).
- `reconstruction_metrics` (PSNR, SSIM through torchmetrics) and `reconstruction_by_references`: VAE quality per
  number of reference images M, the paper's Table-style ablation.
- `detail_ratio`: sharpness kept, the variance of the Laplacian of grey frames against the ground truth's.
- `background_drift`: PSNR of the background (outside the face/torso box) against the reference, per 10-second
  window, for long generated streams.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch
from scipy.ndimage import uniform_filter

from ..audio import load_audio
from ..constants import FPS, SAMPLE_RATE
from ..mouth import audio_to_mouth_opening, key_distance, key_membership

MAX_PSNR = 100.0  # dB reported for identical images (keeps JSON finite)
CHUNK_FRAMES = 16  # frames converted to float at once by the per-frame metrics


def _as_uint8_frames(frames) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise ValueError(f"frames must be (T, H, W, 3) RGB (uint8 0-255), got shape {frames.shape}")
    if frames.dtype != np.uint8:
        if frames.max() <= 1.0 + 1e-6 and frames.min() >= -1.0 - 1e-6:
            raise ValueError("frames look normalised; pass uint8 0-255 (e.g. ((x + 1) * 127.5).round().astype(uint8))")
        frames = np.clip(frames, 0, 255).astype(np.float32)
    return frames


def mouth_opening(frames: np.ndarray) -> np.ndarray:
    """Mouth opening per frame (T,), as a fraction of the frame height, measured from pixels alone.

    1. mouth-interior membership m (T, H, W) in [0, 1] from each pixel's `key_distance` (soft: blur and small
       colour shifts degrade it gracefully);
    2. locate the mouth as the peak of m box-filtered over 12% x 12% of the frame;
    3. the opening is the mean of the 3 largest column sums of m within 30% x 30% around it (the interior's height
       at its centre; column sums are preserved by vertical blur). A closed mouth shows no interior: 0.
    """
    frames = _as_uint8_frames(frames)
    t, h, w, _ = frames.shape
    ry, rx = round(0.15 * h), round(0.15 * w)
    out = np.zeros(t, np.float32)
    for start in range(0, t, CHUNK_FRAMES):  # frame by frame in effect; chunks only bound the float copies
        f = frames[start : start + CHUNK_FRAMES].astype(np.float32)
        m = key_membership(key_distance(f))  # (t, H, W)
        score = uniform_filter(m, size=(1, max(3, round(0.12 * h)), max(3, round(0.12 * w))), mode="constant")
        for i in range(len(f)):
            y, x = np.unravel_index(int(np.argmax(score[i])), (h, w))
            cols = m[i, max(0, y - ry) : y + ry + 1, max(0, x - rx) : x + rx + 1].sum(0)
            out[start + i] = np.sort(cols)[-3:].mean() / h
    return out


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation; 0 where either signal is constant (e.g. a mouth that never moves)."""
    a = np.asarray(a, np.float64) - np.mean(a)
    b = np.asarray(b, np.float64) - np.mean(b)
    d = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / d) if d > 1e-12 else 0.0


def lipsync_score(frames: np.ndarray, audio, sample_rate: int = SAMPLE_RATE, max_offset: int = 10) -> dict:
    """Lip-sync of a talking video against its audio (frame i <-> audio samples [640 i, 640 (i+1)) at 16 kHz).

    Returns dict(r, offset, lag, curve, confidence, r_at_zero, measured, implied):
      curve[k + max_offset] = Pearson r between the measured opening of frame i + k and the implied opening of
      frame i (k > 0: the video lags the audio by k frames); offset = argmax, r = curve at the offset; lag = the
      offset to a fraction of a frame (the peak of the parabola through the curve at offset - 1, offset, offset + 1);
      confidence = r - median(curve) (SyncNet-style: high when one offset stands out); measured, implied (T,).
    """
    return lipsync_from_opening(mouth_opening(frames), audio, sample_rate, max_offset)


def lipsync_from_opening(measured: np.ndarray, audio, sample_rate: int = SAMPLE_RATE, max_offset: int = 10) -> dict:
    """`lipsync_score` from the mouth opening already measured per frame (T,): what a stream's consumer keeps."""
    if max_offset < 0:
        raise ValueError(f"max_offset must be >= 0, got {max_offset}")
    measured = np.asarray(measured, np.float32)
    samples = load_audio((np.asarray(audio), sample_rate)) if sample_rate != SAMPLE_RATE else np.asarray(audio)
    implied = audio_to_mouth_opening(samples, SAMPLE_RATE)
    t = min(len(measured), len(implied))
    if t < 2 * max_offset + 3:
        raise ValueError(f"need at least {2 * max_offset + 3} frames with audio for a +-{max_offset} search, got {t}")
    measured, implied = measured[:t], implied[:t]
    curve = np.array(
        [
            pearson(measured[k:], implied[: t - k]) if k >= 0 else pearson(measured[: t + k], implied[-k:])
            for k in range(-max_offset, max_offset + 1)
        ],
        np.float32,
    )
    best = int(np.argmax(curve))
    lag = float(best - max_offset)
    if 0 < best < len(curve) - 1 and (bend := curve[best - 1] - 2 * curve[best] + curve[best + 1]) < 0:
        lag += float(0.5 * (curve[best - 1] - curve[best + 1]) / bend)
    return {
        "r": float(curve[best]),
        "offset": best - max_offset,
        "lag": lag,
        "curve": curve,
        "confidence": float(curve[best] - np.median(curve)),
        "r_at_zero": float(curve[max_offset]),
        "measured": measured,
        "implied": implied,
    }


def _to_nchw(x) -> torch.Tensor:
    """(T, H, W, 3) uint8 array or (N, 3, H, W) float tensor in [-1, 1] -> (N, 3, H, W) float in [0, 1]."""
    if isinstance(x, torch.Tensor):
        return x.detach().float().add(1).div(2).clamp(0, 1)
    x = np.asarray(x)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames (T, H, W, 3) or a tensor (N, 3, H, W) in [-1, 1], got {x.shape}")
    return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).float() / 255.0


def reconstruction_metrics(pred, target) -> dict[str, float]:
    """PSNR (dB, capped at 100) and SSIM of `pred` vs `target`.

    Each is uint8 frames (T, H, W, 3) or a tensor (N, 3, H, W) in [-1, 1]."""
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    p, t = _to_nchw(pred), _to_nchw(target)
    if p.shape != t.shape:
        raise ValueError(f"pred and target shapes differ: {tuple(p.shape)} vs {tuple(t.shape)}")
    return {
        "psnr": min(float(peak_signal_noise_ratio(p, t, data_range=1.0)), MAX_PSNR),
        "ssim": float(structural_similarity_index_measure(p, t, data_range=1.0)),
    }


def laplacian_variance(frames) -> np.ndarray:
    """Per-frame variance of the 4-neighbour Laplacian of the grey image (T,): high for sharp edges and texture."""
    grey = _as_uint8_frames(frames).astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)  # (T, H, W)
    lap = grey[:, 1:-1, :-2] + grey[:, 1:-1, 2:] + grey[:, :-2, 1:-1] + grey[:, 2:, 1:-1] - 4 * grey[:, 1:-1, 1:-1]
    return lap.reshape(len(lap), -1).var(axis=1)


def detail_ratio(frames, target) -> float:
    """Detail kept: mean Laplacian variance of `frames` over that of `target` (uint8 (T, H, W, 3) each); a blur
    gives << 1, a faithful copy 1, added noise > 1."""
    return float(laplacian_variance(frames).mean() / max(laplacian_variance(target).mean(), 1e-6))


@torch.no_grad()
def reconstruction_by_references(
    vae: torch.nn.Module | Callable, batches: Iterable[dict], num_references: Iterable[int] = (0, 1, 2, 3)
) -> dict[int, dict[str, float]]:
    """Reconstruction PSNR/SSIM per number of references M (the reference-guided VAE's ablation).

    `batches` yield dicts with "video" (B, 3, T, H, W) and "references" (B, >=M, 3, H, W) in [-1, 1] (e.g. a
    list of batches of held-out windows). `vae` is a `CausalVideoVAE` (posterior
    mode, decoded with the first M references) or any callable `(video, references (B, M, ...)) -> video`.
    """
    ms = list(num_references)
    sums = {m: {"psnr": 0.0, "ssim": 0.0} for m in ms}
    n = 0
    for batch in batches:
        video, refs = batch["video"], batch["references"]
        target = video.permute(0, 2, 1, 3, 4).flatten(0, 1)  # (B*T, 3, H, W)
        for m in ms:
            if refs.shape[1] < m:
                raise ValueError(f"batches carry {refs.shape[1]} references; M={m} needs at least {m}")
            r = refs[:, :m]
            if hasattr(vae, "encode") and hasattr(vae, "decode"):
                recon = vae(video, r, sample_posterior=False)[0].clamp(-1, 1)
            else:
                recon = vae(video, r)
            scores = reconstruction_metrics(recon.permute(0, 2, 1, 3, 4).flatten(0, 1), target)
            for k, v in scores.items():
                sums[m][k] += v
        n += 1
    if n == 0:
        raise ValueError("batches is empty")
    return {m: {k: v / n for k, v in s.items()} for m, s in sums.items()}


def _box_extent(box) -> tuple[float, float, float, float]:
    b = np.asarray(box, np.float32).reshape(-1, 4)  # (4,) or per-frame (T, 4): the union over frames
    return float(b[:, 0].min()), float(b[:, 1].min()), float(b[:, 2].max()), float(b[:, 3].max())


def background_mask(height: int, width: int, boxes=None) -> np.ndarray:
    """(H, W) bool, True outside the person. `boxes`: one box (4,) or per-frame (T, 4), or a list of such boxes
    (e.g. head and torso), each (x0, y0, x1, y1) in pixels; per-frame boxes count by their union over time.
    Without boxes, a generic portrait box (x 15-85%, y 5-100%) is excluded, leaving top corners and side strips."""
    if boxes is None:
        boxes = (0.15 * width, 0.05 * height, 0.85 * width, height)
    if not isinstance(boxes, list):
        boxes = [boxes]
    yy, xx = np.mgrid[0:height, 0:width]
    inside = np.zeros((height, width), bool)
    for box in boxes:
        x0, y0, x1, y1 = _box_extent(box)
        inside |= (xx >= np.floor(x0)) & (xx < np.ceil(x1)) & (yy >= np.floor(y0)) & (yy < np.ceil(y1))
    if inside.all():
        raise ValueError(f"the person boxes cover the whole {width}x{height} frame: no background left to measure")
    return ~inside


def background_drift(
    frames: np.ndarray, reference: np.ndarray, boxes=None, fps: int = FPS, window_seconds: float = 10.0
) -> dict:
    """Background PSNR (dB) against `reference` (H, W, 3) per `window_seconds` window of `frames` (T, H, W, 3).

    `boxes`: the person to exclude, as in `background_mask` (for synthetic clips
    `[meta["head_box"], meta["torso_box"]]`). A stable stream keeps the same PSNR from the first window to the
    last; drift shows as a falling curve. Returns dict(times (start of each window, s), psnr, drop = first - last,
    background_fraction).
    """
    f = _as_uint8_frames(frames).astype(np.float32)
    ref = np.asarray(reference, np.float32)
    if ref.shape != f.shape[1:]:
        raise ValueError(f"reference must be one frame {f.shape[1:]}, got {ref.shape}")
    mask = background_mask(f.shape[1], f.shape[2], boxes)
    per_frame_mse = ((f - ref) ** 2)[:, mask].mean(axis=(1, 2))  # (T,)
    step = max(1, round(window_seconds * fps))
    starts = range(0, len(per_frame_mse), step)
    psnr = [
        min(float(10 * np.log10(255.0**2 / max(per_frame_mse[s : s + step].mean(), 1e-10))), MAX_PSNR) for s in starts
    ]
    return {
        "times": [s / fps for s in starts],
        "psnr": psnr,
        "drop": psnr[0] - psnr[-1],
        "background_fraction": float(mask.mean()),
    }
