"""A talking portrait inside a Pipecat voice agent: the TTS service's audio frames in, video frames and the same audio
out, aligned frame by frame.

    from pipecat.pipeline.pipeline import Pipeline
    from portrait_rt.serving.pipecat_avatar import PortraitAvatarProcessor

    avatar = PortraitAvatarProcessor(pipe, ["me.png"], seed=0, block_size=1)
    Pipeline([transport.input(), stt, llm, tts, avatar, transport.output()])    # any transport with video out

Per utterance (TTS audio between `TTSStartedFrame` and `TTSStoppedFrame`, or up to an interruption) the processor
opens one session on a `StreamWorker` (the live session core the Space and the Ray replicas run on; processors that
share a worker have their utterances batched in its stream groups): each TTS audio frame is pushed to it, and for
every block the session completes, each video frame goes downstream as an `OutputImageRawFrame` (`sync_with_audio`:
the output transport shows it when the audio before it has played) followed by the TTS audio of that frame's 40 ms,
at the TTS service's own rate, bytes unchanged. So audio and video leave together, shifted by one block's latency;
the audio frames keep their class (`TTSAudioRawFrame`, context id) so the transport's bot-speaking events still work.

On an `InterruptionFrame` (the user barged in) the queued audio is dropped (Pipecat cancels this processor's frame
task) and the portrait stops talking: the speech the stream already holds (at most the block in progress and the
audio encoder's look-ahead) is finished without its sound, silence to that block's end, and one more block of silence
closes the mouth. Those frames go out with silent (non-TTS) audio,
so they play at 25 fps. Between utterances the transport keeps showing the last frame (a closed mouth); before the
first, the reference portrait.

Model work runs on the worker's thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import math
import time

import numpy as np
import torch
from pipecat.frames.frames import (
    CancelFrame,
    EndFrame,
    Frame,
    InterruptionFrame,
    OutputAudioRawFrame,
    OutputImageRawFrame,
    StartFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from portrait_rt.constants import FPS, video_frames_for_latents
from portrait_rt.faces import align_references
from portrait_rt.serving.worker import EMPTY, StreamWorker


class PortraitAvatarProcessor(FrameProcessor):
    """TTS audio frames -> `OutputImageRawFrame`s of the portrait saying them, each followed by its own 40 ms of audio.

    `engine`: a `StreamWorker` (`portrait_rt.serving.worker`, the live session core; processors sharing one have
    their utterances batched; make it with `max_backlog_s=math.inf`: a TTS sends its speech faster than real time,
    which a microphone's limit would take for a lagging server) or a pipeline (the processor then runs its own).
    `reference_images`: 1-3 paths / PIL images / arrays (photos are aligned on their faces, as `pipe.start_stream`
    does); `seed` or `generator`: the noise; `settings` / `options`: the run settings, as for `pipe.start_stream`
    (`block_size=1` gives the lowest latency; `paste_back` defaults to False here: the video is the square crop).
    `latencies_ms` records, per block, the time from the TTS frame that completed its audio to its first image pushed.
    """

    def __init__(
        self,
        engine,
        reference_images,
        *,
        seed: int | None = 0,
        generator: torch.Generator | None = None,
        settings=None,
        **options,
    ):
        super().__init__()
        self._own_worker = not isinstance(engine, StreamWorker)
        # 2 sessions: one may still be closing; no backlog limit: a TTS sends its speech faster than real time
        self.worker = StreamWorker(engine, capacity=2, max_backlog_s=math.inf) if self._own_worker else engine
        self.pipe = self.worker.pipe
        if settings is None:  # the video track keeps one size: the square crop unless the photo is asked for
            options.setdefault("paste_back", False)
        self.settings = self.pipe.stream_settings(settings, **options)
        align = self.settings.align_faces
        self.references = align_references(reference_images, self.pipe.resolution, bool(align), align == "require")
        self.generator = generator or (None if seed is None else torch.Generator().manual_seed(int(seed)))
        self.latencies_ms: list[float] = []
        self._utterance: _Utterance | None = None
        self._closing: asyncio.Task | None = None

    def _at_rest(self) -> np.ndarray:
        """The first reference as the video shows it: its photo with `paste_back` (a face found), else its crop."""
        first = self.references[0]
        return first.photo if self.settings.paste_back and first.face_found else first.crop

    @property
    def block_frames(self) -> int:
        """Video frames per block after the first (the granularity of the output and of an interruption)."""
        return video_frames_for_latents(self.settings.block_size, first=False)

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, StartFrame):
            await self.push_frame(frame, direction)
            await self.push_frame(_image(self._at_rest()))  # the portrait at rest, until it first speaks
        elif isinstance(frame, InterruptionFrame):
            await self.push_frame(frame, direction)
            utterance, self._utterance = self._utterance, None
            if utterance is not None:
                self._closing = self.create_task(self._close(utterance), name="portrait-close")
        elif isinstance(frame, OutputAudioRawFrame) and direction == FrameDirection.DOWNSTREAM:
            await self._speak(frame)
        elif isinstance(frame, TTSStoppedFrame):
            await self._end_utterance()
            await self.push_frame(frame, direction)
        elif isinstance(frame, (EndFrame, CancelFrame)):
            if not isinstance(frame, CancelFrame):
                await self._end_utterance()
            await self.push_frame(frame, direction)
        else:
            await self.push_frame(frame, direction)
            if isinstance(frame, TTSStartedFrame):
                await self._end_utterance()  # a new response: the last one is over

    async def cleanup(self) -> None:
        await super().cleanup()
        for utterance in (self._utterance,):
            if utterance is not None:
                utterance.session.cancel()
                await self.cancel_task(utterance.drainer)
        if self._closing is not None:
            await self.cancel_task(self._closing)
            self._closing = None
        if self._own_worker:
            await asyncio.to_thread(self.worker.shutdown)

    async def _speak(self, frame: OutputAudioRawFrame) -> None:
        if self._closing is not None:  # an interrupted utterance still closing its mouth: its frames go first
            await asyncio.shield(self._closing)
            self._closing = None
        utterance = self._utterance
        if utterance is not None and (frame.sample_rate, frame.num_channels) != utterance.format:
            await self._end_utterance()
            utterance = None
        if utterance is None:
            loop, made = asyncio.get_running_loop(), asyncio.Event()
            session = self.worker.open(
                list(self.references),
                generator=self.generator,
                settings=self.settings,
                notify=lambda: loop.call_soon_threadsafe(made.set),
            )
            utterance = self._utterance = _Utterance(session, made, frame)
            utterance.drainer = self.create_task(self._drain(utterance, speech=True), name="portrait-frames")
        utterance.add(frame)
        mono = _mono(frame.audio, frame.num_channels)
        utterance.fed += mono.size
        utterance.arrivals.append((utterance.fed, time.perf_counter()))
        utterance.session.push(mono, frame.sample_rate)  # returns at once: the worker's thread runs the model

    async def _drain(self, utterance: _Utterance, speech: bool) -> None:
        """The session's blocks as they come: each frame's image, then its TTS audio (`speech`) or silence."""
        rate = utterance.format[0]
        lookahead = int(self.pipe.audio_encoder.config.lookahead_frames)
        while True:
            await utterance.made.wait()
            utterance.made.clear()
            while (record := utterance.session.poll()) is not EMPTY:
                if record is None:
                    return
                if speech:
                    needed = (record.first_frame + len(record.frames) + lookahead) * rate / FPS
                    arrived = next((t for fed, t in utterance.arrivals if fed >= needed), utterance.arrivals[-1][1])
                    self.latencies_ms.append((time.perf_counter() - arrived) * 1e3)
                for frame in record.frames:
                    await self.push_frame(_image(frame))
                    if speech:
                        await self.push_frame(utterance.next_audio_frame())
                    else:
                        await self.push_frame(OutputAudioRawFrame(b"\0\0" * round(rate / FPS), rate, 1))

    async def _end_utterance(self) -> None:
        """The TTS response ended: its session's last blocks (the tail padded and trimmed), then the audio's last
        partial frame."""
        utterance, self._utterance = self._utterance, None
        if utterance is None:
            return
        utterance.session.close()
        await utterance.drainer
        if utterance.pending:  # the audio's last partial frame (it drove the last image)
            await self.push_frame(utterance.audio_frame(len(utterance.pending)))

    async def _close(self, utterance: _Utterance) -> None:
        """After an interruption: the speech the session holds finished without its sound, silence to its block's
        end and one block of silence more; the frames go out with silent audio (not TTS: the agent is quiet)."""
        await self.cancel_task(utterance.drainer)
        rate, lead = utterance.format[0], utterance.session.lead_frames or 0
        held = lead + -(-utterance.fed * FPS // rate)  # the session's video frames the speech covers
        first = video_frames_for_latents(self.settings.block_size, first=True)
        end = first + max(0, -(-(held - first) // self.block_frames)) * self.block_frames + self.block_frames
        utterance.session.push(np.zeros(max(0, round((end - lead) * rate / FPS) - utterance.fed), np.float32), rate)
        utterance.session.close()
        await self._drain(utterance, speech=False)


class _Utterance:
    """One TTS response: its worker session, and its audio (as the TTS sent it) not yet pushed, cut per video frame."""

    def __init__(self, session, made: asyncio.Event, first: OutputAudioRawFrame):
        self.session, self.made = session, made  # the worker session; set when it has a block (or ended)
        self.drainer: asyncio.Task | None = None
        self.arrivals: list[tuple[int, float]] = []  # (samples fed after a TTS frame, when it came)
        self.format = (first.sample_rate, first.num_channels)
        self.kind = type(first)
        self.context_id = getattr(first, "context_id", None)
        self.pending = bytearray()
        self.frames_out = 0  # video frames whose audio has been pushed
        self.fed = 0  # samples (per channel) fed to the stream

    def add(self, frame: OutputAudioRawFrame) -> None:
        self.pending += frame.audio
        self.context_id = getattr(frame, "context_id", self.context_id)

    def next_audio_frame(self) -> OutputAudioRawFrame:
        """The TTS audio of the next video frame: bytes [round(i r / 25), round((i + 1) r / 25)) of the utterance."""
        rate, channels = self.format
        i = self.frames_out
        size = (round((i + 1) * rate / FPS) - round(i * rate / FPS)) * 2 * channels
        self.frames_out += 1
        return self.audio_frame(size)

    def audio_frame(self, size: int) -> OutputAudioRawFrame:
        chunk, self.pending = bytes(self.pending[:size]), self.pending[size:]
        rate, channels = self.format
        if self.kind is TTSAudioRawFrame:
            return TTSAudioRawFrame(chunk, rate, channels, context_id=self.context_id)
        return self.kind(chunk, rate, channels)


def _mono(pcm: bytes, channels: int) -> np.ndarray:
    samples = np.frombuffer(pcm, "<i2").astype(np.float32) / 32768.0
    return samples.reshape(-1, channels).mean(axis=1) if channels > 1 else samples


def _image(frame: np.ndarray) -> OutputImageRawFrame:
    """One RGB frame, shown by the output transport once the audio queued before it has played."""
    height, width = frame.shape[:2]
    image = OutputImageRawFrame(image=np.ascontiguousarray(frame).tobytes(), size=(width, height), format="RGB")
    image.sync_with_audio = True
    return image
