"""A talking portrait inside a Pipecat voice agent: the TTS service's audio frames in, video frames and the same audio
out, aligned frame by frame.

    from pipecat.pipeline.pipeline import Pipeline
    from portrait_rt.serving.pipecat_avatar import PortraitAvatarProcessor

    avatar = PortraitAvatarProcessor(pipe, ["me.png"], seed=0, block_size=1)
    Pipeline([transport.input(), stt, llm, tts, avatar, transport.output()])    # any transport with video out

Per utterance (TTS audio between `TTSStartedFrame` and `TTSStoppedFrame`, or up to an interruption) the processor
runs one pipeline stream (`start_stream` / `feed` / `flush`): each TTS audio frame is fed to it, and for every block
the stream completes, each video frame goes downstream as an `OutputImageRawFrame` (`sync_with_audio`: the output
transport shows it when the audio before it has played) followed by the TTS audio of that frame's 40 ms, at the TTS
service's own rate, bytes unchanged. So audio and video leave together, shifted by one block's latency; the audio
frames keep their class (`TTSAudioRawFrame`, context id) so the transport's bot-speaking events still work.

On an `InterruptionFrame` (the user barged in) the queued audio is dropped (Pipecat cancels this processor's frame
task) and the portrait stops talking: the speech the stream already holds (at most the block in progress and the
audio encoder's look-ahead) is finished without its sound, silence to that block's end, and one more block of silence
closes the mouth. Those frames go out with silent (non-TTS) audio,
so they play at 25 fps. Between utterances the transport keeps showing the last frame (a closed mouth); before the
first, the reference portrait.

Model work runs in a worker thread, one block step at a time, never on the event loop.
"""

from __future__ import annotations

import asyncio
import threading
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

from portrait_rt.constants import FPS
from portrait_rt.images import load_reference_images


class PortraitAvatarProcessor(FrameProcessor):
    """TTS audio frames -> `OutputImageRawFrame`s of `pipe` saying them, each followed by its own 40 ms of the audio.

    `reference_images`: 1-3 paths / PIL images / arrays (the face); `seed` or `generator`: the noise;
    `settings` / `options`: the run settings, as for `pipe.start_stream` (`block_size=1` gives the lowest latency).
    `latencies_ms` records, per block, the time from the TTS frame that completed its audio to its first image pushed.
    """

    def __init__(
        self,
        pipe,
        reference_images,
        *,
        seed: int | None = 0,
        generator: torch.Generator | None = None,
        settings=None,
        **options,
    ):
        super().__init__()
        self.pipe = pipe
        self.references = load_reference_images(reference_images, pipe.resolution)
        self.generator = generator or (None if seed is None else torch.Generator().manual_seed(int(seed)))
        self.settings = pipe.stream_settings(settings, **options)
        self.latencies_ms: list[float] = []
        self._model_lock = threading.Lock()  # one model call on the stream at a time (a cancelled await lets it run)
        self._utterance: _Utterance | None = None
        self._closing: asyncio.Task | None = None

    @property
    def block_frames(self) -> int:
        """Video frames per block after the first (the granularity of the output and of an interruption)."""
        return 4 * self.settings.block_size

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, StartFrame):
            await self.push_frame(frame, direction)
            await self.push_frame(_image(self.references[0]))  # the portrait at rest, until it first speaks
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
        if self._closing is not None:
            await self.cancel_task(self._closing)
            self._closing = None

    async def _speak(self, frame: OutputAudioRawFrame) -> None:
        arrived = time.perf_counter()
        if self._closing is not None:  # an interrupted utterance still closing its mouth: its frames go first
            await asyncio.shield(self._closing)
            self._closing = None
        utterance = self._utterance
        if utterance is not None and (frame.sample_rate, frame.num_channels) != utterance.format:
            await self._end_utterance()
            utterance = None
        if utterance is None:
            stream = await asyncio.to_thread(self._locked, self._start_stream)
            utterance = self._utterance = _Utterance(stream, frame)
        utterance.add(frame)
        mono = _mono(frame.audio, frame.num_channels)
        utterance.fed += mono.size
        feed = lambda: list(self.pipe.feed(utterance.stream, mono, frame.sample_rate))  # noqa: E731
        records = await asyncio.to_thread(self._locked, feed)
        for record in records:
            self.latencies_ms.append((time.perf_counter() - arrived) * 1e3)
            await self._push_block(utterance, record)

    async def _end_utterance(self) -> None:
        """The TTS response ended: flush its stream (the last partial block), push the rest of its frames."""
        utterance, self._utterance = self._utterance, None
        if utterance is None:
            return
        records = await asyncio.to_thread(self._locked, lambda: list(self.pipe.flush(utterance.stream)))
        for record in records:
            await self._push_block(utterance, record)
        if utterance.pending:  # the audio's last partial frame (it drove the last image)
            await self.push_frame(utterance.audio_frame(len(utterance.pending)))

    async def _close(self, utterance: _Utterance) -> None:
        """After an interruption: the stream's held audio finished as silence to its block's end, one block of
        silence more, flushed; the frames go out with silent audio (not TTS: the agent is not speaking)."""
        rate = utterance.format[0]

        def run() -> list:
            stream = utterance.stream
            held = -(-utterance.fed * FPS // rate)  # video frames the speech fed so far covers
            end = stream.group.position.block_end(held) + self.block_frames
            quiet = np.zeros(max(0, round(end * rate / FPS) - utterance.fed), np.float32)
            return list(self.pipe.feed(stream, quiet, rate)) + list(self.pipe.flush(stream))

        records = await asyncio.to_thread(self._locked, run)
        quiet_frame = b"\0\0" * round(rate / FPS)
        for record in records:
            for frame in record.frames:
                await self.push_frame(_image(frame))
                await self.push_frame(OutputAudioRawFrame(quiet_frame, rate, 1))

    async def _push_block(self, utterance: _Utterance, record) -> None:
        for frame in record.frames:
            await self.push_frame(_image(frame))
            await self.push_frame(utterance.next_audio_frame())

    def _start_stream(self):
        return self.pipe.start_stream(list(self.references), generator=self.generator, settings=self.settings)

    def _locked(self, fn):
        with self._model_lock:
            return fn()


class _Utterance:
    """One TTS response: its stream, and its audio (as the TTS sent it) not yet pushed, cut per video frame."""

    def __init__(self, stream, first: OutputAudioRawFrame):
        self.stream = stream
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
