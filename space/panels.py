"""What the page shows besides the video: the speed readout, the lip-sync plot, the About text, the block sizes."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from portrait_rt.constants import FPS, SAMPLE_RATE, valid_block_sizes, video_frames_for_latents
from portrait_rt.loading import BUNDLED_MODEL, MODEL_ENV, ModelChoice
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


NOT_FRAMED = (
    "no face was found in Reference 1, so where its mouth lies in the model's square crop is unknown (the mouth "
    "measure reads the mouth box of the training framing)"
)


def lipsync_plot(
    mouth: np.ndarray, audio: np.ndarray, out_dir: str | os.PathLike, darkening: np.ndarray | None = None
) -> tuple[Path | None, str]:
    """The eval tools' lip-sync report of a generated clip: its PNG plot (None if too short) and a one-line summary.

    Measured per frame on the model's square crops as the blocks were made, against the opening the audio implies
    (best audio-video offset): `darkening`, the mouth box's darkening against the reference (`mouth_darkening`: any
    face), or None where it cannot be measured (`NOT_FRAMED`); `mouth`, the colour key (`mouth_opening`: only the
    synthetic cartoons' reserved mouth colour), given beside it. The plot shows the darkening when there is one.
    """
    from portrait_rt.eval import lipsync_report, plot_report

    try:
        key = lipsync_report(mouth, audio, SAMPLE_RATE)
        main = key if darkening is None else lipsync_report(darkening, audio, SAMPLE_RATE)
    except ValueError as err:  # too short for the offset search
        return None, f"Lip sync not measured: {err}."
    path = plot_report(main, Path(out_dir) / "lipsync.png")
    k = key["lipsync"]
    colour_key = f"colour key (the cartoons' mouth colour only): r = {k['r']:.2f} at offset {k['offset']:+d}"
    if darkening is None:
        return path, f"Lip sync not measured on this face: {NOT_FRAMED}. The {colour_key} (the plot)."
    d = main["lipsync"]
    return (
        path,
        f"Lip sync r = {d['r']:.2f} at offset {d['offset']:+d} frames (mouth darkening, any face); {colour_key}.",
    )


def lipsync_r(mouth: np.ndarray, audio: np.ndarray, darkening: np.ndarray | None = None) -> float | None:
    """The eval tools' lip-sync r (best offset) of a generated clip: of the mouth darkening where measured, else of
    the colour key `mouth`; None if it is too short to measure."""
    from portrait_rt.eval import lipsync_report

    try:
        return float(lipsync_report(mouth if darkening is None else darkening, audio, SAMPLE_RATE)["lipsync"]["r"])
    except ValueError:
        return None


def block_size_choices(pipe) -> list[int]:
    """Block sizes (latent frames) the loaded model's KV window allows."""
    return valid_block_sizes(int(pipe.transformer.config.kv_window))


def model_label(choice: ModelChoice) -> str:
    """The loaded model as a visitor may read it: a Hub id or preset as given, a local folder by its name only."""
    model = choice.model
    if choice.is_random:
        return f"`{model}`"
    path = Path(model)
    if path.is_dir() and path.resolve() == BUNDLED_MODEL.resolve():
        return "the bundled demo model (`assets/portrait-rt-demo`)"
    if path.is_dir() or path.is_absolute():
        return f"a local pipeline folder (`{path.name}`)"  # never the server's path
    return f"`{model}`"


def about_markdown(choice: ModelChoice, pipe) -> str:
    """The "about this model" panel: what is loaded, what it learnt, what it does well and badly, how to change it.

    The figures are the bundled model's card's (`assets/portrait-rt-demo/README.md`); no server paths are shown.
    """
    params = sum(p.numel() for m in (pipe.vae, pipe.transformer, pipe.audio_encoder) for p in m.parameters())
    k = int(pipe.transformer.config.block_size)
    frames = video_frames_for_latents(k, first=False)
    bundled = model_label(choice).startswith("the bundled")
    lines = [
        f"**Model:** {model_label(choice)}: {params / 1e6:.1f} M parameters, {pipe.resolution}x{pipe.resolution} px, "
        f"on {pipe.device} in {str(pipe.transformer.dtype).removeprefix('torch.')}.",
        f"**Streaming:** blocks of {k} latent frames = {frames} video frames = {frames / FPS:.2f} s of audio; "
        f"{pipe.transformer.config.kv_window} latent frames of KV cache.",
    ]
    if choice.notice:
        notice = choice.notice.replace(str(BUNDLED_MODEL), "assets/portrait-rt-demo")
        lines.insert(0, "⚠️ " + re.sub(r"`/[^`]*/([^`/]+)`", r"`\1`", notice))  # a server path -> its last part
    elif choice.is_random:
        lines.insert(0, "⚠️ Randomly initialised weights (a preset, for tests): the video will not look like a face.")
    if choice.is_random:
        lines.append("**Trained on:** nothing: these are random weights, so the video is noise-like.")
    elif bundled:
        lines += [
            "**Trained on:** the project's own synthetic talking-portrait corpus only: procedural flat-colour cartoon "
            "faces at 128 px with espeak-ng speech, about 7.5 hours on a 2-core CPU; nothing was downloaded.",
            "**Does well:** portraits like the examples (synthetic cartoons): background, hair, glasses and earrings "
            "stay sharp, also minutes into a stream; the mouth opens and closes with the speech (lip-sync r 0.87 on "
            "held-out clips); real time on a CPU (40 to 90 frames per second on one thread, depending on the CPU).",
            "**Does not do (yet):** move the head (it keeps the reference's pose); a sharp mouth (the mouth area and "
            "blinks are blurry); real photographs (the background and face stay, but the mouth painted in is a "
            "cartoon's; see the samples below). The mouth follows loudness and the broad sound of the voice, not "
            "the words.",
        ]
    else:
        lines.append("**Trained on:** see the model's own card.")
    from space import limits

    lines.append(
        f"**Limits on this Space:** speech up to {limits.MAX_AUDIO_S:g} s in File and Compare; uploads up to "
        f"{limits.MAX_UPLOAD_MB:g} MB; {limits.JOBS_PER_SESSION} File/Compare jobs per visitor at a time "
        f"({limits.OFFLINE_QUEUE} waiting in all); live sessions of up to 2 minutes, a few at once (others wait in "
        f"line and are told their place); your videos are deleted when the tab closes or after "
        f"{limits.OUTPUT_TTL_S / 3600:g} h. Running the app yourself, set them with the `PORTRAIT_RT_*` variables "
        "(`space/limits.py`)."
    )
    lines.append(
        "**A better model:** one trained on real talking videos (`python -m portrait_rt prepare` and `train` on your "
        "own footage; see `docs/training.md`), loaded with `python app.py --model PATH_OR_HUB_ID` or "
        f"`{MODEL_ENV}=PATH_OR_HUB_ID` (a diffusers folder written by `pipe.save_pretrained`)."
    )
    return "\n\n".join(lines)
