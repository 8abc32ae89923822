"""Live sessions batched on one worker: a thread that owns the pipeline and runs every open session's stream in a
stream group (one per run settings and reference count), sessions joining and leaving between blocks.

    worker = StreamWorker(pipe)                    # admits up to `capacity` sessions (default_capacity: per device)
    session = worker.open(["me.png"], generator=torch.Generator().manual_seed(0), block_size=2)
    session.push(samples, sample_rate)             # from any thread; returns at once
    record = session.get(timeout=1.0)              # a BlockRecord, or None once the session has ended
    session.close()                                # end of the audio: the last blocks come, then None
    worker.shutdown()

Why one thread: the model runs one batched step at a time anyway, and a step that holds every ready stream costs
little more than one stream's (`python -m portrait_rt bench --streams N`). Each session's stream gets exactly the
frames it gets alone (`StreamGroup`), only sooner.

When a group steps: as soon as every stream of it has its next block's audio, or `max_wait_s` after the first one
had (a stream whose client lags is left for the next step; it never holds the others). Streams that start at other
moments would have their block boundaries at other moments, and the group would wait for the last of them every
block; so a new session's audio starts with a lead-in of silence (under one block) that puts its boundaries just
before the group's. The lead-in's frames are not sent: a session's frame 0 is driven by its first audio sample.
A session's frames are those of `pipe.stream()` on its audio with `lead_frames` video frames of silence before it
(at its audio's rate), those first frames dropped; with `align=False`, of `pipe.stream()` on its audio as it is.

Bounded per session: audio the model has not caught up with (`max_backlog_s`: more and the session ends, saying
so) and blocks its consumer has not taken (`max_pending_blocks`). The worker's model work runs inside `lease()`
(`portrait_rt.serving.lease`: a ZeroGPU GPU lease, or nothing).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import queue
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from portrait_rt.constants import FPS, SAMPLE_RATE, SAMPLES_PER_FRAME, video_frames_for_latents
from portrait_rt.streaming import BlockRecord, Stream, StreamGroup

logger = logging.getLogger(__name__)

# Sessions a worker admits by default, measured with benchmarks/live_batch.py at the live defaults (block size 2,
# 12 steps, CFG 2/2, one reference; real-time feeders): on the shared 2-core CPU at load 4-5 with 2 threads, 1 session
# kept up (lag 0.32 s), 2 nearly (22-23 FPS during talk, lag 0.68 / 0.84 s, flat), 3 fell behind
# (benchmarks/results/live_batch_cpu.json). On an idle 2-core machine 3 may hold (`bench --streams 3`: 38 FPS each at
# block size 4): rerun there, or set PORTRAIT_RT_REALTIME_STREAMS. CUDA: 8, not measured (no GPU lent).
CPU_CAPACITY = 2
CUDA_CAPACITY = 8
EMPTY = object()  # `WorkerSession.poll`: nothing yet


def default_capacity(pipe) -> int:
    """Sessions a worker admits by default on `pipe`'s device (measured; see the constants above)."""
    return CUDA_CAPACITY if pipe.device.type == "cuda" else CPU_CAPACITY


class WorkerFull(Exception):
    """The worker runs `capacity` sessions already."""


@dataclass(eq=False)
class WorkerSession:
    """One session on a `StreamWorker`: audio in (`push`, `close`), its stream's `BlockRecord`s out (`get`, `poll`).

    `push`/`close`/`cancel`/`get`/`poll` may be called from any thread. `notify()` (if given) is called from the
    worker's thread after each record is queued, and once when the session ends (e.g. `loop.call_soon_threadsafe`).
    """

    worker: StreamWorker
    references: object
    options: dict
    block_frames: int  # video frames per block after the first
    notify: object = None
    lead_frames: int | None = None  # silence frames before its first sample (decided at its first audio)
    end_reason: str | None = None  # why it ended, once it has ("stopped" for a close)
    error: BaseException | None = None  # what failed, if the model failed
    stream: Stream | None = field(default=None, repr=False)
    _inbox: collections.deque = field(default_factory=collections.deque, repr=False)  # (samples, rate, arrival)
    _records: queue.Queue = field(default_factory=queue.Queue, repr=False)
    _closing: bool = False
    _cancelled: bool = False
    _received_s: float = 0.0  # seconds of audio pushed
    _last_arrival: float = 0.0  # monotonic time the last chunk fed to the stream arrived
    _generated_frames: int = 0  # video frames of it made (lead-in excluded)

    def push(self, samples: np.ndarray, sample_rate: int) -> None:
        """Add a chunk of the session's audio (any dtype and rate). Ignored once the session has ended."""
        if self.ended or self._closing or not np.size(samples):
            return
        self._received_s += np.size(samples) / sample_rate
        if self.backlog_s > self.worker.max_backlog_s:
            self._end(f"the server fell {self.backlog_s:.1f} s behind the microphone (too busy); try again later")
            return
        self._inbox.append((np.asarray(samples), int(sample_rate), time.monotonic()))
        self.worker._wake()

    @property
    def backlog_s(self) -> float:
        """Seconds of audio pushed that have no frames yet."""
        return self._received_s - self._generated_frames / FPS

    def close(self) -> None:
        """End of the audio: the stream's last blocks come (the tail padded with silence and trimmed), then None."""
        self._closing = True
        self.worker._wake()

    def cancel(self) -> None:
        """Stop now, nothing more made (the consumer is gone); the stream and its slot are freed. Idempotent."""
        self._cancelled = True
        self.worker._wake()

    @property
    def ended(self) -> bool:
        return self.end_reason is not None

    def get(self, timeout: float | None = None) -> BlockRecord | None:
        """The next record (waiting up to `timeout` s; `queue.Empty` after it), or None once the session ended."""
        return self._records.get(timeout=timeout)

    def poll(self):
        """The next record, None once the session ended, or `EMPTY` if nothing is there yet."""
        try:
            return self._records.get_nowait()
        except queue.Empty:
            return EMPTY

    def _put(self, record: BlockRecord | None) -> None:
        if record is not None and self._records.qsize() >= self.worker.max_pending_blocks:
            self._end("the connection is not taking the video fast enough")
            return
        self._records.put(record)
        if self.notify is not None:
            self.notify()

    def _end(self, reason: str, error: BaseException | None = None) -> None:
        if self.end_reason is None:
            self.end_reason, self.error = reason, error
            self._cancelled = True
            self.worker._wake()


class StreamWorker:
    """One thread that owns `pipe` and runs every open session's stream, batched in stream groups.

    `capacity`: sessions at once (`open` raises `WorkerFull` beyond it; default `default_capacity(pipe)`).
    `max_wait_s`: how long a group waits for its last stream's audio before it steps without it.
    `lease`: a context manager factory the model work runs inside (default: none; see `portrait_rt.serving.lease`).
    """

    def __init__(
        self,
        pipe,
        capacity: int | None = None,
        max_wait_s: float = 0.12,
        max_backlog_s: float = 3.0,
        max_pending_blocks: int = 64,
        align: bool = True,
        lease=contextlib.nullcontext,
    ):
        self.pipe = pipe
        self.capacity = capacity or default_capacity(pipe)
        self.max_wait_s, self.max_backlog_s, self.max_pending_blocks = max_wait_s, max_backlog_s, max_pending_blocks
        self.align, self.lease = align, lease
        self.steps = 0  # batched steps run (for readouts and tests)
        self.step_sizes: collections.Counter = collections.Counter()  # streams per step -> how many steps
        self._sessions: list[WorkerSession] = []
        self._groups: dict[tuple, StreamGroup] = {}
        self._waiting_since: dict[tuple, float] = {}  # group key -> when its first stream was ready
        self._phase: dict[tuple, float] = {}  # group key -> when the audio of its last all-ready step had arrived
        self._lock = threading.Lock()
        self._work = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="portrait-rt-worker", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ any thread
    def open(self, reference_images, *, generator=None, notify=None, **options) -> WorkerSession:
        """A new session: `reference_images` (1-3) and the run settings by name (`settings=` or its fields, as for
        `pipe.start_stream`). Settings are checked here (`ValueError` naming the field); the stream starts on the
        worker's thread. `WorkerFull` when `capacity` sessions run already."""
        settings = self.pipe.stream_settings(options.pop("settings", None), **options)
        with self._lock:
            if self._stopping:
                raise RuntimeError("This worker has been shut down.")
            if self.active >= self.capacity:
                raise WorkerFull(f"All {self.capacity} live slot(s) of this worker are taken.")
            frames = video_frames_for_latents(settings.block_size, first=False)
            options = {"generator": generator, "settings": settings}
            session = WorkerSession(self, reference_images, options, frames, notify=notify)
            self._sessions.append(session)
        self._wake()
        return session

    @property
    def active(self) -> int:
        """Sessions open now. A cancelled or ended one no longer counts, though the worker's thread frees its stream
        only at its next step: a slot a gate hands on at once is free here at once."""
        return sum(not s._cancelled for s in self._sessions)

    def shutdown(self, timeout: float | None = 10.0) -> None:
        """End every session (cancelled) and stop the thread."""
        with self._lock:
            self._stopping = True
        self._wake()
        self._thread.join(timeout)

    def _wake(self) -> None:
        self._work.set()

    # ------------------------------------------------------------------ the worker's thread
    def _run(self) -> None:
        with self.lease():
            while not self._stopping:
                waiting = bool(self._waiting_since)
                self._work.wait(timeout=0.01 if waiting else 0.5)
                self._work.clear()
                try:
                    self._tick()
                except Exception as err:  # noqa: BLE001 - the model failed: every session is told, none hangs
                    logger.exception("live worker step failed")
                    for session in list(self._sessions):
                        session._end(f"the live stream failed ({type(err).__name__}: {err})", err)
                    self._tick_cleanup()
        for session in list(self._sessions):
            session._end("the server is shutting down")
        self._tick_cleanup()

    def _tick(self) -> None:
        pipe = self.pipe
        for session in list(self._sessions):
            if session._cancelled:
                continue
            if session.stream is None:  # started on this thread: the model work (encode the references, KV_r)
                session.stream = pipe.start_stream(session.references, **session.options)
                self._group_for(session.stream).join(session.stream)
            self._feed_inbox(session)
        self._tick_cleanup()
        now = time.monotonic()
        for key, group in list(self._groups.items()):
            if not group.streams:
                continue
            ready = [s for s in group.streams if pipe.block_ready(s)]
            if not ready:
                continue
            if len(ready) < len(group.streams):
                since = self._waiting_since.setdefault(key, now)
                if now - since < self.max_wait_s:
                    continue
            else:  # a boundary of the group: when the audio that completed its last stream's block arrived
                self._phase[key] = max(self._session_of(s)._last_arrival for s in group.streams)
            self._waiting_since.pop(key, None)
            out = pipe.feed_group(group, [None] * len(group.streams), lockstep=False)
            self.steps += 1
            self.step_sizes[len(ready)] += 1
            for stream, records in zip(group.streams, out):
                self._deliver(self._session_of(stream), records)
        for session in list(self._sessions):  # audio ended: the tail, alone (its group goes on without it)
            if session._closing and not session._cancelled and not session._inbox and session.stream is not None:
                self._deliver(session, list(pipe.flush(session.stream)))
                session._end("stopped")
        self._tick_cleanup()

    def _feed_inbox(self, session: WorkerSession) -> None:
        while session._inbox:
            samples, rate, arrival = session._inbox.popleft()
            session._last_arrival = arrival
            if session.lead_frames is None:
                session.lead_frames = self._lead_frames(session, arrival - samples.size / rate)
                if session.lead_frames:  # at the chunks' own rate: one signal, resampled as its audio is
                    per_frame = SAMPLES_PER_FRAME * rate / SAMPLE_RATE
                    lead_rate = rate if float(per_frame).is_integer() else SAMPLE_RATE
                    silence = np.zeros(session.lead_frames * round(SAMPLES_PER_FRAME * lead_rate / SAMPLE_RATE))
                    session.stream.audio.push(silence.astype(samples.dtype), lead_rate)
            session.stream.audio.push(samples, rate)

    def _lead_frames(self, session: WorkerSession, start: float) -> int:
        """Silence (video frames) before the session's first sample (which the client captured about `start`,
        monotonic clock) that puts its block boundaries just before its group's: the group then steps once for all,
        not once per stream."""
        phase = self._phase.get(self._key(session.stream))
        if not self.align or phase is None:
            return 0
        period = session.block_frames / FPS
        lookahead = int(self.pipe.audio_encoder.config.lookahead_frames)
        first_ready = start + (session.stream.position.block_video_frames(0) + lookahead) / FPS
        late = (first_ready - phase) % period  # how far after a group boundary its first block would be ready
        return math.ceil(late * FPS) % session.block_frames

    def _deliver(self, session: WorkerSession, records: list[BlockRecord]) -> None:
        lead = session.lead_frames or 0
        for record in records:
            skip = max(0, lead - record.first_frame)
            if skip >= len(record.frames):
                continue
            if skip or lead:  # the lead-in's frames are not the session's; its frame 0 is its first sample's
                record.frames = record.frames[skip:]
                record.crop = None if record.crop is None else record.crop[skip:]
                record.audio = record.audio[skip * SAMPLES_PER_FRAME :]
                record.first_frame = record.first_frame + skip - lead
            session._generated_frames = record.first_frame + len(record.frames)
            session._put(record)

    def _tick_cleanup(self) -> None:
        """Sessions ended or cancelled: out of their group and of the worker, their consumer told (None)."""
        for session in [s for s in self._sessions if s._cancelled]:
            if session.stream is not None and session.stream.group is not None:
                group = session.stream.group
                if session.stream in group.streams:
                    group.streams = tuple(s for s in group.streams if s is not session.stream)
            session.stream = None  # its caches go with it
            if session.end_reason is None:
                session.end_reason = "cancelled"
            with self._lock:
                self._sessions.remove(session)
            session._put(None)
        for key in [k for k, g in self._groups.items() if not g.streams]:
            del self._groups[key]
            self._waiting_since.pop(key, None)

    def _key(self, stream: Stream) -> tuple:
        return (stream.settings, stream.num_references)

    def _group_for(self, stream: Stream) -> StreamGroup:
        key = self._key(stream)
        if key not in self._groups:
            self._groups[key] = stream.group
        return self._groups[key]

    def _session_of(self, stream: Stream) -> WorkerSession:
        return next(s for s in self._sessions if s.stream is stream)
