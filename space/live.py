"""Live mode: microphone chunks -> a pipeline stream -> `.ts` video segments with their audio, for a streaming
`gr.Video`.

The microphone's `.stream` event pushes chunks into the tab's `LiveSession` (a `gr.State`); the live generator
(started by `.start_recording`) runs `run_live`, which pops them, feeds a `LiveStream` and yields each finished
segment. A `LiveStream` wraps one pipeline `Stream`: it groups the stream's block records into segments of at least
`MIN_SEGMENT_SECONDS` (so playback does not stutter), muxes into each segment the model-rate audio its blocks carry
(the samples that drove those frames: nothing is resampled here), and stamps segments with continuous timestamps
from the blocks' frame indices. `.stop_recording` asks the generator to finish: it feeds what is left, flushes the
stream (the last partial block is padded with silence and trimmed) and sends the tail.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from portrait_rt.constants import FPS, SAMPLE_RATE
from portrait_rt.streaming import BlockRecord, BlockTiming, Stream
from portrait_rt.video import write_video
from space.panels import speed_readout

MIN_SEGMENT_SECONDS = 1.0  # shorter HLS segments make the browser stall between them


class LiveStream:
    """One microphone stream: feeds a pipeline `Stream`, writes its blocks as `.ts` segments (>= `min_segment_frames`).

    Each segment carries the audio of its blocks and starts where the previous one ended (`start_time`), so the
    segments play as one continuous video.
    """

    def __init__(self, pipe, stream: Stream, out_dir: str | os.PathLike, min_segment_frames: int | None = None):
        self.pipe, self.stream = pipe, stream
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.min_segment_frames = min_segment_frames or round(MIN_SEGMENT_SECONDS * FPS)
        self._pending: list[BlockRecord] = []  # finished blocks not yet in a segment
        self.timings: list[BlockTiming] = []  # of the blocks written
        self.frames_written = 0
        self.segments: list[Path] = []
        self.first_audio: float | None = None  # time.monotonic() of the first chunk: the live clock's zero
        self.ended = False

    def feed(self, samples: np.ndarray, sample_rate: int) -> list[Path]:
        """Add a microphone chunk (any dtype, rate and size); return the segments it completed."""
        if self.first_audio is None:
            self.first_audio = time.monotonic()
        self._pending += self.pipe.feed(self.stream, samples, sample_rate)
        return self._write(final=False)

    def flush(self) -> list[Path]:
        """End of the stream: generate the last (partial) block and write everything left."""
        self.ended = True
        self._pending += self.pipe.flush(self.stream)
        return self._write(final=True)

    def lag_seconds(self) -> float:
        """How far the end of the video written so far trails the live microphone (wall clock since its start)."""
        if self.first_audio is None:
            return 0.0
        return time.monotonic() - self.first_audio - self.frames_written / FPS

    def readout(self) -> str:
        """Live FPS and per-block latency, and (while the microphone is on) how far the video trails it."""
        return speed_readout(self.timings, self.frames_written, None if self.ended else self.lag_seconds())

    def _write(self, final: bool) -> list[Path]:
        pending = sum(len(block.frames) for block in self._pending)
        if pending == 0 or (pending < self.min_segment_frames and not final):
            return []
        blocks, self._pending = self._pending, []
        frames = np.concatenate([block.frames for block in blocks])  # (t, H, W, 3)
        audio = np.concatenate([block.audio for block in blocks])  # the model-rate audio that drove these frames
        path = self.out_dir / f"segment_{len(self.segments):05d}.ts"
        write_video(path, frames, audio, SAMPLE_RATE, start_time=blocks[0].first_frame / FPS)
        self.frames_written = blocks[0].first_frame + len(frames)
        self.timings += [block.timing for block in blocks]
        self.segments.append(path)
        return [path]


@dataclass
class LiveSession:
    """One browser tab's live mode, kept in `gr.State`: microphone chunks waiting for the stream, and flags.

    A recording's audio belongs to it alone: every recording starts empty (`start_recording`), so nothing a refused
    recording sent (the settings check refused it, or the stream could not start) reaches a later stream. Only one
    stream per tab: a recording that starts while one still runs is ignored.
    """

    chunks: deque = field(default_factory=deque)  # (samples, sample_rate); deque append/popleft are thread-safe
    running: bool = False
    stop_requested: bool = False
    ignoring: bool = False
    last_chunk: float = 0.0

    def start_recording(self) -> None:
        """A recording starts (before any of its chunks): drop whatever is left of earlier ones, or, while a stream
        still runs, ignore this recording."""
        if self.running:
            self.ignoring = True
            return
        self.chunks.clear()
        self.ignoring, self.stop_requested = False, False

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
