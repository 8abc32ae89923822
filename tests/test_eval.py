"""Offline metrics validated on ground-truth synthetic renders (held-out eval split)."""

import json
import math

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from portrait_rt.data.synthetic import render_clip
from portrait_rt.eval import (
    background_drift,
    evaluate_video,
    lipsync_from_opening,
    lipsync_score,
    mouth_opening,
    pearson,
    reconstruction_by_references,
    reconstruction_metrics,
    write_report,
)


@pytest.fixture(scope="module")
def clips():
    """Ground-truth renders at the demo resolution, held-out voices and identities."""
    return [render_clip(seed, 128, duration=3.0, split="eval") for seed in range(3)]


@pytest.fixture(scope="module")
def small_clips():
    return [render_clip(seed, 64, duration=6.0, split="eval") for seed in range(10, 14)]


def test_mouth_opening_from_pixels_matches_ground_truth(clips):
    for clip in clips:
        assert pearson(mouth_opening(clip.frames), clip.meta["mouth_open"]) >= 0.95
        # robust to blur and a small colour shift (what a generator's output looks like)
        degraded = gaussian_filter(clip.frames.astype(np.float32), (0, 1.0, 1.0, 0)) + np.array([12.0, -10.0, 8.0])
        assert pearson(mouth_opening(np.clip(degraded, 0, 255).astype(np.uint8)), clip.meta["mouth_open"]) >= 0.9
    closed = clips[0].frames[clips[0].meta["mouth_open"] == 0]
    assert len(closed) and mouth_opening(closed).max() == 0
    with pytest.raises(ValueError):
        mouth_opening(clips[0].frames.astype(np.float32) / 255)  # normalised frames: say what to pass


def test_lipsync_on_ground_truth_and_shifted_video(clips):
    for clip in clips:
        s = lipsync_score(clip.frames, clip.audio, clip.sample_rate)
        assert s["r"] >= 0.95 and s["offset"] == 0 and s["curve"].shape == (21,) and s["confidence"] > 0.2
        assert abs(s["lag"]) < 0.1
    clip = clips[0]
    delayed = np.concatenate([np.repeat(clip.frames[:1], 3, 0), clip.frames[:-3]])  # the video lags by 3 frames
    s = lipsync_score(delayed, clip.audio)
    assert s["offset"] == 3 and abs(s["lag"] - 3) < 0.1
    # Half a frame late: each frame's mouth opening is the mean of its own and its predecessor's.
    half = lipsync_from_opening(np.convolve(mouth_opening(clip.frames), [0.5, 0.5])[: len(clip.frames)], clip.audio)
    assert 0.3 < half["lag"] < 0.7, half["lag"]
    audio_48k = np.repeat(clip.audio, 3)  # same speech at 48 kHz (crude upsampling): same verdict
    assert lipsync_score(clip.frames, audio_48k, 48000)["offset"] == 0


def test_lipsync_with_another_clips_audio_is_near_zero(small_clips):
    r, r0 = [], []
    for i, clip in enumerate(small_clips):
        other = small_clips[(i + 1) % len(small_clips)]
        s = lipsync_score(clip.frames, other.audio, other.sample_rate)
        r.append(s["r"])
        r0.append(s["r_at_zero"])
        # a render of this identity driven by the other clip's audio is in sync with that audio
        assert lipsync_score(render_clip(10 + i, 64, audio=other.audio, split="eval").frames, other.audio)["r"] > 0.9
    assert abs(np.mean(r0)) < 0.15 and np.mean(r) < 0.4


def test_reconstruction_metrics():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    same = reconstruction_metrics(a, a)
    assert same["psnr"] == 100.0 and same["ssim"] > 0.999
    noisy = np.clip(a + rng.normal(0, 8, a.shape), 0, 255).astype(np.uint8)
    worse = reconstruction_metrics(noisy, a)
    assert 25 < worse["psnr"] < 40 and worse["ssim"] < same["ssim"]
    t = torch.from_numpy(a).permute(0, 3, 1, 2).float() / 127.5 - 1
    assert math.isclose(reconstruction_metrics(t, t)["psnr"], 100.0)
    with pytest.raises(ValueError):
        reconstruction_metrics(a, a[:, :16])


def test_reconstruction_by_references():
    g = torch.Generator().manual_seed(0)
    video = torch.rand(2, 3, 5, 16, 16, generator=g) * 2 - 1
    batch = {"video": video, "references": video[:, :, :3].permute(0, 2, 1, 3, 4)}  # (B, 3, 3, H, W)

    def blend(v, refs):  # better with more references: a stand-in for a reference-guided decoder
        m = refs.shape[1]
        return v * (m / 3) + (1 - m / 3) * v.mean()

    out = reconstruction_by_references(blend, [batch, batch])
    assert sorted(out) == [0, 1, 2, 3] and out[3]["psnr"] == 100.0
    assert out[0]["psnr"] < out[1]["psnr"] < out[2]["psnr"] < out[3]["psnr"]
    with pytest.raises(ValueError):
        reconstruction_by_references(blend, [{"video": video, "references": batch["references"][:, :1]}], (2,))


def test_background_drift(clips):
    clip = clips[1]
    boxes = [clip.meta["head_box"], clip.meta["torso_box"]]
    stable = background_drift(clip.frames, clip.frames[0], boxes, window_seconds=1.0)
    assert stable["psnr"] == [100.0] * 3 and stable["drop"] == 0 and 0.05 < stable["background_fraction"] < 0.9
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 40, clip.num_frames)[:, None, None, None]
    drifting = np.clip(clip.frames + ramp * rng.standard_normal(clip.frames.shape), 0, 255).astype(np.uint8)
    d = background_drift(drifting, clip.frames[0], boxes, window_seconds=1.0)
    assert d["psnr"][0] > d["psnr"][1] > d["psnr"][2] and d["drop"] > 5
    with pytest.raises(ValueError):
        background_drift(clip.frames, clip.frames[0], (0, 0, 128, 128))


def test_report_and_eval_cli(clips, tmp_path):
    from portrait_rt.cli import main
    from portrait_rt.data.synthetic import write_clip

    clip = clips[2]
    report = evaluate_video(clip.frames, clip.audio, reference=clip.frames[0], target=clip.frames)
    paths = write_report(report, tmp_path / "direct")
    data = json.loads(paths["json"].read_text())
    assert data["lipsync"]["offset"] == 0 and len(data["offset_curve"]) == 21 and "drift" in data
    assert paths["png"].stat().st_size > 10_000
    written = write_clip(clip, tmp_path, "clip")
    from PIL import Image

    Image.fromarray(clip.frames[0]).save(tmp_path / "ref.png")
    assert main(["eval", "--video", str(written["mp4"]), "--reference", str(tmp_path / "ref.png"),
                 "--out", str(tmp_path / "cli")]) == 0  # fmt: skip
    cli_report = json.loads((tmp_path / "cli" / "report.json").read_text())
    assert cli_report["lipsync"]["r"] > 0.9 and cli_report["lipsync"]["offset"] == 0  # through h.264 + AAC
    assert (tmp_path / "cli" / "report.png").is_file()


def test_detail_ratio_sees_blur():
    """A copy keeps all the detail (1), a 5x5 box blur of a rendered portrait keeps little, noise adds some."""
    from scipy.ndimage import uniform_filter

    from portrait_rt.eval.metrics import detail_ratio

    frames = render_clip(0, resolution=64, duration=0.2, split="eval").frames
    blurred = uniform_filter(frames.astype(np.float32), size=(1, 5, 5, 1)).round().astype(np.uint8)
    noisy = np.clip(frames + np.random.default_rng(0).normal(0, 20, frames.shape), 0, 255).astype(np.uint8)
    assert detail_ratio(frames, frames) == 1.0
    assert detail_ratio(blurred, frames) < 0.3
    assert detail_ratio(noisy, frames) > 1.0
