"""What the Space (`app.py`) needs besides widgets: model choice, input checks, live segments, readouts, plots.

Kept free of UI code so it can be unit-tested; `app.py` only builds widgets and wires events to these.

Live mode in one paragraph: the microphone's `.stream` event pushes chunks into the tab's `LiveSession` (a
`gr.State`); the live generator (started by `.start_recording`) pops them, feeds a `LiveStream` and yields each
finished `.ts` segment to a streaming `gr.Video`. A `LiveStream` wraps one pipeline `StreamState`: it groups
finished blocks into segments of at least `MIN_SEGMENT_SECONDS` (so playback does not stutter), muxes into each
segment the model-rate audio that drove its frames (frame i <-> samples [640 i, 640 (i+1)) at 16 kHz), and stamps
segments with continuous timestamps. `.stop_recording` asks the generator to finish: it feeds what is left,
flushes the pipeline (the last partial block is padded with silence and trimmed) and sends the tail.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from portrait_rt.audio import AudioStreamBuffer
from portrait_rt.constants import FPS, MAX_REFERENCES, SAMPLE_RATE, SAMPLES_PER_FRAME
from portrait_rt.streaming import BlockTiming, StreamState
from portrait_rt.video import write_video

DEFAULT_MODEL_DIR = "assets/portrait-rt-demo"
FALLBACK_MODEL = "preset:tiny"
MODEL_ENV = "PORTRAIT_RT_MODEL"
MIN_SEGMENT_SECONDS = 1.0  # shorter HLS segments make the browser stall between them
MAX_SEED = 2**31 - 1


# ---------------------------------------------------------------------------------------------- model choice
@dataclass
class ModelChoice:
    """Which pipeline the app loads (`model`: a folder, Hub id or `preset:NAME`) and why (`notice`, if a fallback)."""

    model: str
    notice: str | None = None

    @property
    def is_random(self) -> bool:
        """True for `preset:NAME`: randomly initialised weights (for tests and UI work, not for looking at)."""
        return self.model.startswith("preset:")


def choose_model(requested: str | None = None, default_dir: str | os.PathLike = DEFAULT_MODEL_DIR) -> ModelChoice:
    """`--model`, else `$PORTRAIT_RT_MODEL`, else the bundled demo folder if present, else `preset:tiny`."""
    requested = requested or os.environ.get(MODEL_ENV)
    if requested:
        return ModelChoice(requested)
    if Path(default_dir).is_dir():
        return ModelChoice(str(default_dir))
    return ModelChoice(
        FALLBACK_MODEL,
        notice=f"The bundled demo model (`{default_dir}`) is not there, so this app runs a randomly initialised tiny "
        "pipeline: its videos are noise-like and do not follow the audio. Load a trained model with "
        f"`python app.py --model PATH_OR_HUB_ID` or `{MODEL_ENV}=...`.",
    )


def pick_device_dtype() -> tuple[str, torch.dtype]:
    """CUDA in bfloat16 where available (the paper's setting), else CPU in float32."""
    if torch.cuda.is_available():
        return "cuda", torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return "cpu", torch.float32


def load_model(choice: ModelChoice, device: str | None = None, dtype: torch.dtype | None = None):
    """Load the chosen pipeline once, on the best device and dtype (`generate.load_pipeline` does the loading)."""
    from portrait_rt.generate import load_pipeline

    auto_device, auto_dtype = pick_device_dtype()
    dtype = dtype or auto_dtype
    pipe = load_pipeline(choice.model, device or auto_device, torch_dtype=None if dtype == torch.float32 else dtype)
    pipe.set_progress_bar_config(disable=False)
    return pipe


def block_size_choices(pipe) -> list[int]:
    """Block sizes (latent frames) the loaded model's KV window allows: a multiple of k, at least two blocks."""
    window = int(pipe.transformer.config.kv_window)
    return [k for k in range(1, 5) if window % k == 0 and window >= 2 * k]


def about_markdown(choice: ModelChoice, pipe) -> str:
    """The "about this model" panel: what is loaded, what it knows, what it cannot do, how to load another."""
    params = sum(p.numel() for m in (pipe.vae, pipe.transformer, pipe.audio_encoder) for p in m.parameters())
    k = int(pipe.transformer.config.block_size)
    frames = 4 * k
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
    elif Path(choice.model).name == Path(DEFAULT_MODEL_DIR).name:
        trained = (
            "the project's synthetic talking-portrait corpus (procedural illustrated faces, espeak-ng speech); "
            "nothing was downloaded."
        )
    else:
        trained = "see the model's own card; the bundled demo model learnt from the synthetic corpus."
    lines += [
        f"**Trained on:** {trained}",
        "**Can (the bundled model):** animate synthetic-style portraits from 1-3 references, mouth following the "
        "speech, head motion and blinks of its own, live from a microphone or offline from a file.",
        "**Cannot (the bundled model):** animate real photos convincingly: that needs a model trained on real "
        "talking videos (`python -m portrait_rt prepare` and `train` on your own footage).",
        "**Load another model:** `python app.py --model PATH_OR_HUB_ID`, or set "
        f"`{MODEL_ENV}=PATH_OR_HUB_ID` (a diffusers folder written by `pipe.save_pretrained`).",
    ]
    return "\n\n".join(lines)


# ---------------------------------------------------------------------------------------------- input checks
@contextlib.contextmanager
def user_errors():
    """Turn the library's `ValueError`s (bad input, with what to change) into `gr.Error` pop-ups in the browser."""
    import gradio as gr

    try:
        yield
    except ValueError as err:
        raise gr.Error(str(err)) from err


def collect_references(*images) -> list:
    """The uploaded reference images (None for empty slots) -> a list of 1-3; `ValueError` otherwise."""
    refs = [im for im in images if im is not None]
    if not refs:
        raise ValueError("Upload a portrait in 'Reference 1' (the face to animate).")
    if len(refs) > MAX_REFERENCES:
        raise ValueError(f"Got {len(refs)} reference images; use 1 to {MAX_REFERENCES}.")
    return refs


def make_generator(seed) -> torch.Generator:
    """A CPU generator seeded with `seed` (an integer 0 .. 2^31-1); the pipeline draws its noise from it."""
    if seed is None or not float(seed).is_integer() or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"Seed must be a whole number from 0 to {MAX_SEED}, got {seed!r}.")
    return torch.Generator().manual_seed(int(seed))


def require_audio(audio) -> str:
    """The uploaded audio file path; `ValueError` if there is none (the pipeline checks silence and length)."""
    if audio is None or (isinstance(audio, str) and not audio):
        raise ValueError("Upload a speech audio file (wav, mp3, flac, ogg...) or pick an example below.")
    return audio


# ---------------------------------------------------------------------------------------------- readouts
def speed_readout(timings: list[BlockTiming], frames: int | None = None, lag_s: float | None = None) -> str:
    """Generation frames per second and per-block latency from the pipeline's `BlockTiming`s.

    `frames`: the frames actually kept (the last block is trimmed to the audio); `lag_s`: how far the video's end
    trails the live microphone.
    """
    if not timings:
        return "No block finished yet."
    frames = sum(t.frames for t in timings) if frames is None else frames
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


# ---------------------------------------------------------------------------------------------- live mode
class LiveStream:
    """One microphone stream: feeds a pipeline `StreamState`, writes `.ts` segments of >= `min_segment_frames`.

    Each segment carries the model-rate audio that drove its frames, and starts where the previous one ended
    (`start_time`), so the segments play as one continuous video.
    """

    def __init__(self, pipe, state: StreamState, out_dir: str | os.PathLike, min_segment_frames: int | None = None):
        self.pipe, self.state = pipe, state
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.min_segment_frames = min_segment_frames or round(MIN_SEGMENT_SECONDS * FPS)
        self.audio = AudioStreamBuffer()  # the same resampling as the pipeline's own buffer: identical samples
        self._audio_parts: list[np.ndarray] = []
        self._pending: list[np.ndarray] = []  # finished frames not yet in a segment: (t, H, W, 3) each
        self.frames_written = 0
        self.segments: list[Path] = []
        self.first_audio: float | None = None  # time.monotonic() of the first chunk: the live clock's zero

    def feed(self, samples: np.ndarray, sample_rate: int) -> list[Path]:
        """Add a microphone chunk (any dtype, rate and size); return the segments it completed."""
        if self.first_audio is None:
            self.first_audio = time.monotonic()
        self.audio.push(samples, sample_rate)
        self._take_audio()
        for frames in self.pipe.feed(self.state, samples, sample_rate):
            self._pending.append(frames)
        return self._write(final=False)

    def flush(self) -> list[Path]:
        """End of the stream: generate the last (partial) block and write everything left."""
        if not self.audio.closed:
            self.audio.close()
        self._take_audio()
        for frames in self.pipe.flush(self.state):
            self._pending.append(frames)
        return self._write(final=True)

    def lag_seconds(self) -> float:
        """How far the end of the video written so far trails the live microphone (wall clock since its start)."""
        if self.first_audio is None:
            return 0.0
        return time.monotonic() - self.first_audio - self.frames_written / FPS

    def readout(self) -> str:
        """Live FPS and per-block latency, and (while the microphone is on) how far the video trails it."""
        return speed_readout(
            self.state.timings, self.frames_written, None if self.audio.closed else self.lag_seconds()
        )

    def _take_audio(self) -> None:
        part = self.audio.pop(self.audio.available)
        if part is not None and part.size:
            self._audio_parts.append(part)

    def _write(self, final: bool) -> list[Path]:
        pending = sum(f.shape[0] for f in self._pending)
        if pending == 0 or (pending < self.min_segment_frames and not final):
            return []
        frames = np.concatenate(self._pending)  # (t, H, W, 3)
        self._pending = []
        start, end = self.frames_written, self.frames_written + frames.shape[0]
        audio = np.concatenate(self._audio_parts) if self._audio_parts else np.zeros(0, np.float32)
        clip = audio[start * SAMPLES_PER_FRAME : end * SAMPLES_PER_FRAME]  # the audio that drove these frames
        path = self.out_dir / f"segment_{len(self.segments):05d}.ts"
        write_video(path, frames, clip, SAMPLE_RATE, start_time=start / FPS)
        self.frames_written = end
        self.segments.append(path)
        return [path]


@dataclass
class LiveSession:
    """One browser tab's live mode, kept in `gr.State`: microphone chunks waiting for the stream, and flags.

    Only one stream per tab: a start while one runs is refused (`ignoring` then drops that recording's audio).
    """

    chunks: deque = field(default_factory=deque)  # (samples, sample_rate); deque append/popleft are thread-safe
    running: bool = False
    stop_requested: bool = False
    ignoring: bool = False
    last_chunk: float = 0.0

    def push(self, chunk) -> None:
        """A microphone chunk from Gradio, `(sample_rate, samples)`; None and empty chunks are skipped."""
        if chunk is None or self.ignoring:
            return
        rate, samples = chunk
        if np.size(samples):
            self.chunks.append((np.asarray(samples), int(rate)))
            self.last_chunk = time.monotonic()

    def begin(self) -> bool:
        """Mark a stream as started; False (and its audio ignored) if one is already running."""
        if self.running:
            self.ignoring = True
            return False
        self.running, self.stop_requested, self.ignoring = True, False, False
        self.last_chunk = time.monotonic()
        return True

    def fail(self) -> None:
        """The stream could not start (bad input): drop the rest of this recording's audio until it stops."""
        self.running, self.ignoring = False, True
        self.chunks.clear()

    def stop(self) -> None:
        """The recording stopped: end a refused recording, or ask the running stream to finish."""
        if self.ignoring:
            self.ignoring = False
        else:
            self.stop_requested = True

    def end(self) -> None:
        """The stream finished: ready for the next recording."""
        self.running, self.stop_requested = False, False
        self.chunks.clear()


def run_live(
    live: LiveStream,
    session: LiveSession,
    poll_s: float = 0.02,
    grace_s: float = 0.5,
    idle_timeout_s: float = 10.0,
) -> Iterator[tuple[Path, str]]:
    """Drive `live` from `session`'s chunks; yield `(segment, readout)` as segments complete, then the tail.

    Ends `grace_s` after the stop was requested and no chunk arrived (the last chunk can land after the stop event),
    or when no audio arrived for `idle_timeout_s` (the microphone's time limit, a closed tab).
    """
    try:
        while True:
            if session.chunks:
                samples, rate = session.chunks.popleft()
                for path in live.feed(samples, rate):
                    yield path, live.readout()
                continue
            idle = time.monotonic() - session.last_chunk
            if (session.stop_requested and idle >= grace_s) or idle >= idle_timeout_s:
                break
            time.sleep(poll_s)
        for path in live.flush():
            yield path, live.readout()
    finally:
        session.end()


# ---------------------------------------------------------------------------------------------- file mode
def lipsync_plot(frames: np.ndarray, audio: np.ndarray, out_dir: str | os.PathLike) -> tuple[Path | None, str]:
    """The eval tools' lip-sync report of a generated clip: its PNG plot (None if too short) and a one-line summary.

    Mouth opening measured on the video against the opening the audio implies, and the best audio-video offset.
    """
    from portrait_rt.eval import evaluate_video, plot_report

    try:
        report = evaluate_video(frames, audio, SAMPLE_RATE)
    except ValueError as err:  # too short for the offset search
        return None, f"Lip sync not measured: {err}."
    path = plot_report(report, Path(out_dir) / "lipsync.png")
    sync = report["lipsync"]
    return path, f"Lip sync r = {sync['r']:.2f} at offset {sync['offset']:+d} frames."
