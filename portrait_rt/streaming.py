"""Streaming state (Algorithm 2): what running streams own, kept apart from the pipeline's weights.

One `PortraitRTPipeline` serves many streams, and one block loop serves every consumer: `feed` / `flush` / `stream`
/ `__call__` run a group of one stream, `feed_group` a group of many. One audio chunk travels one way:

    chunk (any size, rate) -> StreamAudio: resampled to 16 kHz, cut into block-aligned pieces, audio encoder
    -> BlockAudio (the block's model-rate samples and per-frame features)
    -> the group's block step: Euler steps and the t = 0 KV pass (all CFG rows of all streams batched), one decode
    -> BlockRecord (frames, the audio that drove them, timing) -> the consumer (Space, mp4 writer, benchmark)

- `StreamSettings`: the run settings a group fixes at its start (guidance, steps, block size, KV window), checked
  once; its CFG rows follow from the guidance;
- `StreamPosition`: where a stream is (blocks and video frames done), advanced once per block;
- `StreamAudio`: one stream's audio, from chunks in to one block's audio out (`take_block`);
- `Stream`: one stream's own things: references, audio, noise generator, position, KV cache and decoder caches;
- `StreamGroup`: streams run batched: one forward of G per Euler step over all their CFG rows (attention per stream,
  over its own KV cache) and one decode with their caches stacked. Since each stream carries its own position and
  caches, a stream joins (`join`) or leaves (`leave`) a group between any two blocks, and its frames are those it
  makes alone, bit for bit (on the CPU; `tests/test_stream_groups.py`).
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor

from portrait_rt.audio import AudioStreamBuffer
from portrait_rt.constants import SAMPLES_PER_FRAME, check_block_size, video_frames_for_latents

if TYPE_CHECKING:
    from diffusers import FlowMatchEulerDiscreteScheduler

    from portrait_rt.faces import FaceAlignment, PasteBack
    from portrait_rt.models.transformer import KVCache


@dataclass
class BlockTiming:
    """Wall-clock milliseconds spent on one block, for live readouts and benchmarks.

    In a group the block step is shared: every stream's timing holds the whole step (denoise, KV pass, decode) plus
    its own audio encoding.
    """

    block: int
    video_frames: int
    audio_ms: float = 0.0  # audio encoder
    denoise_ms: float = 0.0  # num_inference_steps forwards of G (all CFG rows batched)
    kv_ms: float = 0.0  # the t=0 pass that writes the block's KV
    decode_ms: float = 0.0  # causal VAE decoder
    paste_ms: float = 0.0  # pasting the stream's frames back into its photo (`portrait_rt.faces.PasteBack`)
    latency_ms: float = 0.0  # from the block's last audio sample arriving to its frames being ready

    @property
    def total_ms(self) -> float:
        return self.audio_ms + self.denoise_ms + self.kv_ms + self.decode_ms + self.paste_ms


@dataclass
class BlockRecord:
    """What a stream yields per block: its frames, the model-rate audio that drove them, and its timing.

    Video frame i of a stream is driven by model-rate samples [640 i, 640 (i + 1)), so `audio` holds exactly
    `len(frames) * SAMPLES_PER_FRAME` samples (the stream's last block: the audio's end padded with silence).
    `frames` are what the stream shows: its photo with the face pasted back, or the model's square crop; `crop` is
    always the crop (the same array when nothing is pasted back), framed as the training corpus when the stream's
    first reference was (`Stream.in_training_framing`).
    """

    frames: np.ndarray  # uint8 (n, H, W, 3) at 25 fps
    audio: np.ndarray  # float32 (n * SAMPLES_PER_FRAME,) at 16 kHz
    first_frame: int  # the stream's index of frames[0]: the block starts first_frame / FPS seconds in
    timing: BlockTiming
    crop: np.ndarray | None = None  # uint8 (n, res, res, 3): the model's own frames (None: they are `frames`)
    latents: torch.Tensor | None = None  # (1, C, k, h, w): the block's denoised latents, normalised as G sees them
    video: torch.Tensor | None = None  # float (3, n, H, W) in [-1, 1]: the decoder's, if kept (no paste-back)

    def __post_init__(self):
        if self.crop is None:
            self.crop = self.frames

    def trim(self, num_frames: int) -> None:
        """Keep the first `num_frames` frames (and their crops, float video and audio)."""
        self.frames, self.audio = self.frames[:num_frames], self.audio[: num_frames * SAMPLES_PER_FRAME]
        self.crop = self.crop[:num_frames]
        self.video = None if self.video is None else self.video[:, :num_frames]


MAX_GUIDANCE = 20.0
MAX_STEPS = 1000


@dataclass(frozen=True, kw_only=True)
class StreamSettings:
    """The run settings: what a stream group fixes at its start; built and checked once, then passed by name.

    Every entry point (`__call__`, `generate_blocks`, `stream`, `start_stream`, `start_streams`, `warm_up`) takes these
    fields as keyword arguments, or a ready `settings=StreamSettings(...)`; the pipeline fills `block_size` and
    `kv_window` from its transformer's config (`PortraitRTPipeline.stream_settings`). A bad value raises `ValueError`
    naming the field and what to change. A new option is one field here (with its check in `__post_init__`).
    """

    guidance_audio: float = 2.0  # la of equation (I): 1 = no audio guidance (its CFG row is not computed)
    guidance_reference: float = 2.0  # lr of equation (I): 1 = no reference guidance
    num_inference_steps: int = 12  # Euler steps per block (12 is the paper's)
    block_size: int | None = None  # latent frames per block (k); None: the transformer's config
    kv_window: int | None = None  # latent frames the KV cache holds before it resets; None: the transformer's config
    # Photos (`portrait_rt.faces`): each reference cropped on its own face to the training framing (no face found: a
    # NoFaceFoundWarning and the centre crop; "require": a NoFaceFoundError; False: the centre crop, no search), and a
    # stream whose first reference's face was found shows that photo with the face pasted back (else the crop). A
    # reference already square at the model's resolution is taken as framed.
    align_faces: bool | str = True
    paste_back: bool = True

    def __post_init__(self):
        for name in ("guidance_audio", "guidance_reference"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not np.isfinite(value):
                raise ValueError(f"{name} must be a number, got {value!r}.")
            if not 0.0 <= value <= MAX_GUIDANCE:
                raise ValueError(
                    f"{name}={value} is out of range; use 0 to {MAX_GUIDANCE:g} (1 = no guidance, 2 = default)."
                )
            object.__setattr__(self, name, float(value))
        steps = self.num_inference_steps
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)):
            raise ValueError(f"num_inference_steps must be an integer, got {steps!r}.")
        if not 1 <= steps <= MAX_STEPS:
            raise ValueError(f"num_inference_steps={steps}; use 1 to {MAX_STEPS} (12 is the paper's).")
        object.__setattr__(self, "num_inference_steps", int(steps))
        for name in ("block_size", "kv_window"):
            value = getattr(self, name)
            if value is not None:
                if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                    raise ValueError(f"{name} must be an integer (latent frames), got {value!r}.")
                object.__setattr__(self, name, int(value))
        if self.block_size is not None and self.kv_window is not None:
            check_block_size(self.block_size, self.kv_window)
        if self.align_faces not in (True, False, "require"):
            raise ValueError(f"align_faces must be True, False or 'require', got {self.align_faces!r}.")
        if not isinstance(self.paste_back, (bool, np.bool_)):
            raise ValueError(f"paste_back must be True or False, got {self.paste_back!r}.")

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @property
    def cfg_rows(self) -> tuple[tuple[bool, bool], ...]:
        """The CFG rows a stream computes, as (drop audio, drop references): [full] + [no audio] + [no references].

        A row whose guidance scale is 1 drops out of equation (I) exactly, so it is left out (never computed).
        """
        rows = [(False, False)]
        if self.guidance_audio != 1.0:
            rows.append((True, False))
        if self.guidance_reference != 1.0:
            rows.append((False, True))
        return tuple(rows)

    @property
    def num_cfg_rows(self) -> int:
        return len(self.cfg_rows)


@dataclass
class StreamPosition:
    """Where a stream is: blocks done, and the video frames they hold (the settings' `block_size` latent frames
    each)."""

    settings: StreamSettings
    block_index: int = 0
    video_frames: int = 0

    @property
    def block_size(self) -> int:
        return self.settings.block_size

    def block_video_frames(self, block_index: int | None = None) -> int:
        """Video frames of block `block_index` (default: the next): 1 + 4(k - 1) for the first block, 4k later."""
        i = self.block_index if block_index is None else block_index
        return video_frames_for_latents(self.block_size, first=i == 0)

    def advance(self) -> None:
        """The next block is done."""
        self.video_frames += self.block_video_frames()
        self.block_index += 1

    def block_end(self, video_frames: int) -> int:
        """The first block boundary (in video frames) at or after `video_frames`: where a stream ending there stops."""
        end, block = self.video_frames, self.block_index
        while end < video_frames:
            end += self.block_video_frames(block)
            block += 1
        return end


@dataclass
class BlockAudio:
    """One block's audio for one stream: the model-rate samples of its video frames and their features."""

    samples: np.ndarray  # float32 (n * SAMPLES_PER_FRAME,) at 16 kHz
    features: torch.Tensor  # (1, n, feature_dim) from the audio encoder
    encode_ms: float  # audio-encoder time spent for this block


class StreamAudio:
    """One stream's audio: chunks of any size and rate in, one block's audio out.

    The audio encoder gets block-aligned pieces (a block's frames plus its look-ahead), never the microphone's own
    chunks: it then sees the same calls whatever the chunking, so a streamed clip equals the offline one bit for bit.
    """

    def __init__(self, encoder_state):
        self.buffer = AudioStreamBuffer()  # resampled to the model rate, not yet given to the encoder
        self.encoder_state = encoder_state
        self.num_samples: int | None = None  # model-rate samples of the whole stream, once closed
        self._first_frame = 0  # the stream's index of the first video frame still queued below
        self._samples = np.zeros(0, np.float32)  # model-rate samples given to the encoder, from _first_frame on
        self._features: torch.Tensor | None = None  # (1, f, D) features of frames _first_frame... (None: f = 0)
        self._encode_ms = 0.0

    def push(self, samples: np.ndarray, sample_rate: int) -> None:
        """Add a chunk (any dtype, mono or multichannel, any size and rate)."""
        self.buffer.push(samples, sample_rate)

    def close(self) -> int:
        """End of the audio; returns the video frames it covers (the last one possibly in part)."""
        self.buffer.close()
        self.num_samples = self.buffer.total_samples
        return -(-self.num_samples // SAMPLES_PER_FRAME)

    def pad_to(self, video_frames: int) -> None:
        """After `close`: model-rate silence up to the end of video frame `video_frames - 1` (a whole last block)."""
        self.buffer.pad(video_frames * SAMPLES_PER_FRAME - self.buffer.total_samples)

    def take_block(self, first_frame: int, num_frames: int, encoder, final: bool = False) -> BlockAudio | None:
        """The audio of video frames [first_frame, first_frame + num_frames), or None until it has arrived.

        Encodes what the block needs (with `final`, after `close`: whatever is left, the encoder flushing its
        look-ahead). Frames before `first_frame` are dropped: a block's audio is taken again, unchanged, until the
        caller moves on (a group waits for all its streams).
        """
        self._drop_before(first_frame)
        if self._num_features < num_frames:
            need = (num_frames + int(encoder.config.lookahead_frames)) * SAMPLES_PER_FRAME - self._samples.size
            piece = self.buffer.pop(need, partial=final)
            if piece is None:
                return None
            self._encode(piece, encoder, final=final and not self.buffer.available)
            if self._num_features < num_frames:
                return None
        samples = self._samples[: num_frames * SAMPLES_PER_FRAME]
        return BlockAudio(samples, self._features[:, :num_frames], self._encode_ms)

    @property
    def _num_features(self) -> int:
        return 0 if self._features is None else self._features.shape[1]

    def _drop_before(self, first_frame: int) -> None:
        drop = first_frame - self._first_frame
        if drop > 0:
            self._samples = self._samples[drop * SAMPLES_PER_FRAME :]
            self._features = self._features[:, drop:] if self._num_features > drop else None
            self._first_frame, self._encode_ms = first_frame, 0.0

    def _encode(self, piece: np.ndarray, encoder, final: bool) -> None:
        start = time.perf_counter()
        x = torch.from_numpy(piece).to(encoder.device, encoder.dtype)[None]  # (1, n)
        features, self.encoder_state = encoder.encode_chunk(x, self.encoder_state, final=final)  # (1, f, D)
        self._features = features if self._features is None else torch.cat([self._features, features], dim=1)
        self._samples = np.concatenate([self._samples, piece])
        self._encode_ms += (time.perf_counter() - start) * 1e3


@dataclass(eq=False)
class Stream:
    """One stream's own state. Create with `PortraitRTPipeline.start_stream` (a group of one) or `start_streams`.

    `alignments`: how each reference was framed (`portrait_rt.faces.FaceAlignment`: the photo, its crop, the face);
    `paste_back`: puts each block's frames back into the first reference's photo (None: the frames are the crops).
    """

    reference_frames: np.ndarray  # uint8 (M, H, W, 3), as loaded
    audio: StreamAudio
    generator: torch.Generator | None
    settings: StreamSettings
    kv_cache: KVCache = field(repr=False)  # its CFG rows: KV_r and its window
    reference_features: torch.Tensor = field(repr=False)  # (1, M, C, h, w): f_c = E1(I_r), for the decoder's Dref
    position: StreamPosition = field(default=None)  # type: ignore[assignment]  (set from the settings)
    decoder_cache: list | None = field(default=None, repr=False)  # the VAE decoder's causal caches (None: start)
    group: StreamGroup | None = field(default=None, repr=False)  # set by the group it runs in
    finished: bool = False  # flushed: its audio ended and its last block is out
    alignments: tuple[FaceAlignment, ...] = ()
    paste_back: PasteBack | None = field(default=None, repr=False)
    latents: torch.Tensor | None = field(default=None, repr=False)  # (1, C, L, h, w): noise of its next L / k blocks

    @property
    def in_training_framing(self) -> bool:
        """Whether the first reference's crop is framed as the training corpus (its mouth in the mouth box)."""
        return bool(self.alignments) and self.alignments[0].in_training_framing

    def present(self, record: BlockRecord) -> BlockRecord:
        """With `paste_back`, a new record's frames become the photo's (its `crop` keeps the model's)."""
        if self.paste_back is not None:
            start = time.perf_counter()
            record.frames = self.paste_back(record.frames)
            record.timing.paste_ms = (time.perf_counter() - start) * 1e3
            record.timing.latency_ms += record.timing.paste_ms
        return record

    def __post_init__(self):
        if self.position is None:
            self.position = StreamPosition(self.settings)

    @property
    def num_references(self) -> int:
        return self.reference_frames.shape[0]

    def next_noise(self, shape: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """The initial noise (t = 1) of the stream's next block, `shape` (1, C, k, h, w): the next k latent frames of
        `latents` while they last (the `latents` input of `__call__`), else drawn from its generator."""
        if self.latents is not None:
            noise, rest = self.latents[:, :, : shape[2]], self.latents[:, :, shape[2] :]
            self.latents = rest if rest.shape[2] else None
            return noise.to(device, dtype)
        return randn_tensor(shape, generator=self.generator, device=device, dtype=dtype)


@dataclass(eq=False)
class StreamGroup:
    """Streams run batched: per block, one forward of G per Euler step over all their CFG rows and one VAE decode.

    Every stream keeps its own position, KV cache (its CFG rows; G attends per stream) and decoder caches (stacked
    along the batch for the decode), so streams of a group may be at any blocks: those at their first block (13 video
    frames for k = 4, the mask token) run batched apart from the others. A stream joins (`join`) or leaves (`leave`)
    between blocks; the others' frames do not change. The streams of a group share the settings and the number of
    reference images (the decoder's reference features are stacked).
    """

    settings: StreamSettings
    streams: tuple[Stream, ...]
    scheduler: FlowMatchEulerDiscreteScheduler  # the group's own copy (its step state)
    # `(pipe, step, timestep, {"latents": ..., "audio_features": ...}) -> dict` after each Euler step (diffusers'
    # `callback_on_step_end`, its tensor inputs already chosen); what it returns replaces those tensors
    on_step_end: Callable | None = field(default=None, repr=False)
    keep_video: bool = False  # records carry the decoder's float video too (`output_type="pt"` / `"pil"`)

    def __post_init__(self):
        self.streams = tuple(self.streams)
        for stream in self.streams:
            self._check(stream)
            stream.group = self

    @property
    def position(self) -> StreamPosition:
        """The streams' position, where they are all at one (as `start_streams` makes them)."""
        positions = {(s.position.block_index, s.position.video_frames) for s in self.streams}
        if len(positions) != 1:
            raise ValueError("The streams of this group are at different blocks; read each stream's `position`.")
        return self.streams[0].position

    def drop_audio(self, num_streams: int) -> torch.Tensor:
        """(num_streams * R,) bool: the rows that use the null audio embedding."""
        rows = [drop for drop, _ in self.settings.cfg_rows] * num_streams
        return torch.tensor(rows, device=self.streams[0].kv_cache.key.device)

    def join(self, stream: Stream) -> None:
        """Add `stream` (from its own group, which it leaves) before the next block; the streams already here go on
        as they were. Its first block, if it has not run yet, runs batched apart from blocks of streams under way."""
        if stream.finished:
            raise ValueError("This stream has been flushed; start a new one.")
        self._check(stream)
        if stream.group is not None and stream.group is not self:
            stream.group.streams = tuple(s for s in stream.group.streams if s is not stream)
        if stream not in self.streams:
            self.streams += (stream,)
        stream.group = self

    def leave(self, stream: Stream) -> StreamGroup:
        """Move `stream` into a group of its own, between blocks; returns that group. The others go on unchanged."""
        self.streams = tuple(s for s in self.streams if s is not stream)
        return StreamGroup(
            self.settings,
            (stream,),
            copy.deepcopy(self.scheduler),
            on_step_end=self.on_step_end,
            keep_video=self.keep_video,
        )

    def _check(self, stream: Stream) -> None:
        if stream.settings != self.settings:
            raise ValueError(
                f"A stream joins only a group of its settings: {stream.settings} is not the group's {self.settings}."
            )
        others = {s.num_references for s in self.streams if s is not stream}
        if others and others != {stream.num_references}:
            raise ValueError(
                f"The streams of a group have the same number of reference images: {stream.num_references} is not "
                f"the group's {others.pop()}."
            )


def stack_batch(caches: list):
    """Per-stream nested caches (lists of (1, ...) tensors, or None) -> one, concatenated along dim 0."""
    first = caches[0]
    if first is None:
        return None
    if isinstance(first, torch.Tensor):
        return torch.cat(caches) if len(caches) > 1 else first
    return [stack_batch([c[i] for c in caches]) for i in range(len(first))]


def select_batch(cache, i: int):
    """Entry `i` (dim 0, kept as a batch of one) of every tensor of a nested cache (lists of tensors, or None)."""
    if cache is None:
        return None
    if isinstance(cache, torch.Tensor):
        return cache[i : i + 1]
    return [select_batch(c, i) for c in cache]
