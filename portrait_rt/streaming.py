"""Per-stream state of streaming generation (Algorithm 2), kept apart from the pipeline's weights.

One `PortraitRTPipeline` serves many concurrent streams: everything that changes while a stream runs (the audio
buffer and encoder state, the reference features, the per-branch KV cache, the decoder's causal caches, the block
index, the random generator, the scheduler's step state) lives in a `StreamState`, created by
`pipe.start_stream(...)` and advanced by `pipe.feed(...)` / `pipe.flush(...)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from portrait_rt.audio import AudioStreamBuffer
from portrait_rt.constants import video_frames_for_latents


@dataclass
class BlockTiming:
    """Wall-clock milliseconds spent on one block, for live readouts and benchmarks."""

    block: int
    frames: int
    audio_ms: float = 0.0  # audio encoder
    denoise_ms: float = 0.0  # num_inference_steps forwards of G (all CFG branches batched)
    kv_ms: float = 0.0  # the t=0 pass that writes the block's KV
    decode_ms: float = 0.0  # causal VAE decoder
    latency_ms: float = 0.0  # from the block's last audio sample arriving to its frames being ready

    @property
    def total_ms(self) -> float:
        return self.audio_ms + self.denoise_ms + self.kv_ms + self.decode_ms


@dataclass
class StreamState:
    """Everything one stream owns. Create with `PortraitRTPipeline.start_stream`."""

    reference_frames: np.ndarray  # uint8 (M, H, W, 3), as loaded
    ref_features: torch.Tensor  # f_c = E1(I_r): (1, M, C_f, H/16, W/16), for the decoder's Dref
    kv_cache: Any  # FlowDiT KVCache over the CFG branch rows
    drop_audio: torch.Tensor  # (branches,) bool: which rows use the null audio embedding
    guidance_audio: float
    guidance_reference: float
    num_inference_steps: int
    block_size: int  # latent frames per block (k)
    generator: torch.Generator | None
    scheduler: Any  # this stream's own copy of the pipeline scheduler (step state is per stream)
    audio_buffer: AudioStreamBuffer = field(default_factory=AudioStreamBuffer)
    audio_state: Any = None  # the audio encoder's streaming state
    audio_features: list[torch.Tensor] = field(default_factory=list)  # per-frame features not yet used: (D,) each
    audio_frames_in: int = 0  # video frames of audio given to the audio encoder so far
    pending_audio_ms: float = 0.0  # audio-encoder time not yet booked to a block
    decoder_cache: Any = None
    block_index: int = 0
    frames_out: int = 0
    finished: bool = False
    timings: list[BlockTiming] = field(default_factory=list)

    def block_video_frames(self, block_index: int | None = None) -> int:
        """Video frames in block `block_index`: 1 + 4(k-1) for the stream's first block, 4k afterwards."""
        i = self.block_index if block_index is None else block_index
        return video_frames_for_latents(self.block_size, first=i == 0)

    @property
    def num_branches(self) -> int:
        return int(self.drop_audio.shape[0])


@dataclass
class StreamGroup:
    """Concurrent streams stepped together: one KV cache over all their CFG rows, one batched forward per step.

    Each stream's own `kv_cache` is a view of its rows of `kv_cache`, so a stream can also be advanced alone
    (e.g. to flush streams of different lengths); a group step needs all streams at the same window position.
    """

    states: list[StreamState]
    kv_cache: Any
