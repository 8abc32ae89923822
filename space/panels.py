"""What the page shows besides the video: the speed readout, the lip-sync plot, the About text, the block sizes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from portrait_rt.constants import FPS, SAMPLE_RATE, video_frames_for_latents
from portrait_rt.loading import BUNDLED_MODEL, MODEL_ENV, ModelChoice
from portrait_rt.models.transformer import valid_block_sizes
from portrait_rt.streaming import BlockTiming


def speed_readout(timings: list[BlockTiming], frames: int | None = None, lag_s: float | None = None) -> str:
    """Generation frames per second and per-block latency from the block records' `BlockTiming`s.

    `frames`: the frames actually kept (the last block is trimmed to the audio); `lag_s`: how far the video's end
    trails the live microphone.
    """
    if not timings:
        return "No block finished yet."
    frames = sum(t.video_frames for t in timings) if frames is None else frames
    compute_s = sum(t.total_ms for t in timings) / 1e3
    latency = np.array([t.latency_ms for t in timings])
    text = (
        f"{frames} frames ({frames / FPS:.1f} s) in {len(timings)} blocks · generation "
        f"{frames / max(compute_s, 1e-9):.1f} FPS (real time = {FPS}) · latency per block: last {latency[-1]:.0f} ms, "
        f"mean {latency.mean():.0f} ms, max {latency.max():.0f} ms"
    )
    if lag_s is not None:
        text += f" · video {max(0.0, lag_s):.1f} s behind the microphone"
    return text


def lipsync_plot(mouth: np.ndarray, audio: np.ndarray, out_dir: str | os.PathLike) -> tuple[Path | None, str]:
    """The eval tools' lip-sync report of a generated clip: its PNG plot (None if too short) and a one-line summary.

    `mouth`: the opening measured on each frame as the blocks were made (`mouth_opening`), against the opening the
    audio implies, and the best audio-video offset.
    """
    from portrait_rt.eval import lipsync_report, plot_report

    try:
        report = lipsync_report(mouth, audio, SAMPLE_RATE)
    except ValueError as err:  # too short for the offset search
        return None, f"Lip sync not measured: {err}."
    path = plot_report(report, Path(out_dir) / "lipsync.png")
    sync = report["lipsync"]
    return path, f"Lip sync r = {sync['r']:.2f} at offset {sync['offset']:+d} frames."


def block_size_choices(pipe) -> list[int]:
    """Block sizes (latent frames) the loaded model's KV window allows."""
    return valid_block_sizes(int(pipe.transformer.config.kv_window))


def about_markdown(choice: ModelChoice, pipe) -> str:
    """The "about this model" panel: what is loaded, what it knows, what it cannot do, how to load another."""
    params = sum(p.numel() for m in (pipe.vae, pipe.transformer, pipe.audio_encoder) for p in m.parameters())
    k = int(pipe.transformer.config.block_size)
    frames = video_frames_for_latents(k, first=False)
    lines = [
        f"**Model:** `{choice.model}` ({params / 1e6:.1f} M parameters, {pipe.resolution}x{pipe.resolution} px, "
        f"on {pipe.device} in {str(pipe.transformer.dtype).removeprefix('torch.')}).",
        f"**Streaming:** blocks of {k} latent frames = {frames} video frames = {frames / FPS:.2f} s of audio; "
        f"{pipe.transformer.config.kv_window} latent frames of KV cache.",
    ]
    if choice.notice:
        lines.insert(0, f"⚠️ {choice.notice}")
    elif choice.is_random:
        lines.insert(0, "⚠️ Randomly initialised weights (a preset, for tests): the video will not look like a face.")
    if choice.is_random:
        trained = "nothing: randomly initialised weights."
    elif Path(choice.model).name == BUNDLED_MODEL.name:
        trained = (
            "the project's synthetic talking-portrait corpus (procedural illustrated faces, espeak-ng speech); "
            "nothing was downloaded."
        )
    else:
        trained = "see the model's own card; the bundled demo model learnt from the synthetic corpus."
    lines += [
        f"**Trained on:** {trained}",
        "**Can (the bundled model):** animate synthetic-style portraits from 1-3 references, mouth following the "
        "speech and blinks of its own, with the references' detail (eyes, glasses, hair, background) kept sharp, "
        "live from a microphone or offline from a file.",
        "**Cannot (the bundled model):** move the head (it keeps the reference's pose), or animate real photos "
        "convincingly: a photo keeps its detail, but the mouth painted into it is a blurry cartoon's. That needs a "
        "model trained on real talking videos (`python -m portrait_rt prepare` and `train` on your own footage).",
        "**Load another model:** `python app.py --model PATH_OR_HUB_ID`, or set "
        f"`{MODEL_ENV}=PATH_OR_HUB_ID` (a diffusers folder written by `pipe.save_pretrained`).",
    ]
    return "\n\n".join(lines)
