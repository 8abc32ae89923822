# portrait-rt 0.1.0: portrait_rt/models/audio_encoder.py, imports flattened by `python -m portrait_rt export`
"""Built-in streaming audio encoder: causal log-mel + causal conv stack -> features per 25 fps video frame.

The paper (§3.2) uses a pretrained audio encoder; this one is small, trainable with the DiT, and downloads nothing.

Front end. Whisper-style log-mel (n_fft 400, hop 160 at 16 kHz, Slaney mel filters from
`transformers.audio_utils.mel_filter_bank`), with two changes that make it streamable:
- causal framing: STFT frame m covers the 400 samples that *end* at (m + 1) * hop (zeros before the clip), so video
  frame i owns mel frames 4i..4i+3 and they need no audio past the end of frame i;
- fixed normalisation: `(log10(max(mel, 1e-8)) + 4) / 4`. `WhisperFeatureExtractor` clips at the whole clip's
  max - 8, which depends on audio that has not arrived yet, so chunked and offline features would differ.

Network. The 4 mel frames of each video frame are folded into channels, then residual blocks of causal dilated
convolutions at 25 Hz. Causal output j is returned as the feature of frame j - `lookahead_frames`: frame i sees audio
up to the end of frame i + lookahead (zeros past the clip's end). Latency cost: `lookahead_frames` x 40 ms, on top of
waiting for frame i itself to be complete.

Streaming: `encode_chunk` carries explicit state (pending samples, STFT context, one cache per causal convolution), so
any chunking of a clip yields the same features as `forward` on the whole clip (`forward` is one `encode_chunk` on a
fresh state with `final=True`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from transformers.audio_utils import mel_filter_bank

from .constants import FPS, SAMPLE_RATE


@dataclass
class AudioStreamState:
    """Streaming state of `AudioEncoder.encode_chunk`.

    pending: (B, n < samples_per_frame) samples not yet forming a whole video frame. stft_context: (B, n_fft - hop)
    samples preceding `pending` (zeros at the clip's start). conv_caches: per causal conv, its last inputs
    (B, C, (kernel - 1) * dilation). frames_to_skip: causal outputs still to drop (the look-ahead).
    """

    pending: torch.Tensor
    stft_context: torch.Tensor
    conv_caches: list[torch.Tensor]
    frames_to_skip: int


class CausalConv1d(nn.Conv1d):
    """Conv1d that pads the past only; `forward(x, cache) -> (y, new_cache)` carries the left context explicitly."""

    @property
    def context(self) -> int:
        """Past time steps each output needs: (kernel - 1) * dilation."""
        return (self.kernel_size[0] - 1) * self.dilation[0]

    def forward(self, x: torch.Tensor, cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, C, n), cache (B, C, context) -> y (B, C_out, n), the new cache."""
        x = torch.cat([cache, x], dim=-1)  # (B, C, context + n)
        return super().forward(x), x[..., x.shape[-1] - self.context :]


class CausalResBlock(nn.Module):
    """x + proj(GELU(causal_conv(RMSNorm(x)))): per-time-step norm, so it stays causal."""

    def __init__(self, channels: int, kernel_size: int, dilation: int):
        super().__init__()
        self.norm = nn.RMSNorm(channels)
        self.conv = CausalConv1d(channels, channels, kernel_size, dilation=dilation)
        self.act = nn.GELU(approximate="tanh")
        self.proj = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor, cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, C, n) -> (B, C, n), new conv cache."""
        h, cache = self.conv(self.norm(x.transpose(1, 2)).transpose(1, 2), cache)
        return x + self.proj(self.act(h)), cache


class AudioEncoder(ModelMixin, ConfigMixin):
    r"""Streaming audio encoder: waveform at `sample_rate` -> (B, frames, feature_dim), one row per video frame.

    Args:
        sample_rate: model audio rate (16 kHz; resampling is the pipeline's audio buffer's job).
        n_fft, hop_length, num_mel_bins: log-mel front end; `hop_length` must divide samples per video frame.
        hidden_dim, num_layers, kernel_size: causal conv stack (dilations 1, 2, 4, ... cycling every 4 layers).
        feature_dim: output size per video frame (the DiT's `audio_dim`).
        lookahead_frames: video frames of future audio each frame's feature may see (latency: x 40 ms).
    """

    @register_to_config
    def __init__(
        self,
        sample_rate: int = SAMPLE_RATE,
        n_fft: int = 400,
        hop_length: int = 160,
        num_mel_bins: int = 80,
        hidden_dim: int = 256,
        num_layers: int = 4,
        kernel_size: int = 3,
        feature_dim: int = 128,
        lookahead_frames: int = 2,
    ):
        super().__init__()
        if sample_rate % FPS or (sample_rate // FPS) % hop_length or n_fft < hop_length:
            raise ValueError(
                f"Need sample_rate divisible by {FPS}, hop_length dividing sample_rate/{FPS} and n_fft >= hop_length; "
                f"got sample_rate={sample_rate}, hop_length={hop_length}, n_fft={n_fft}."
            )
        if lookahead_frames < 0:
            raise ValueError(f"lookahead_frames must be >= 0, got {lookahead_frames}.")
        self.samples_per_frame = sample_rate // FPS
        self.mels_per_frame = self.samples_per_frame // hop_length

        mel = mel_filter_bank(n_fft // 2 + 1, num_mel_bins, 0.0, sample_rate / 2, sample_rate, "slaney", "slaney")
        self.register_buffer("mel_filters", torch.tensor(mel.T, dtype=torch.float32), persistent=False)  # (M, F)
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)

        self.input_proj = nn.Conv1d(self.mels_per_frame * num_mel_bins, hidden_dim, 1)
        self.blocks = nn.ModuleList(
            [CausalResBlock(hidden_dim, kernel_size, dilation=2 ** (i % 4)) for i in range(num_layers)]
        )
        self.norm_out = nn.RMSNorm(hidden_dim)
        self.proj_out = nn.Linear(hidden_dim, feature_dim)

    def log_mel(self, samples: torch.Tensor) -> torch.Tensor:
        """Causal log-mel of (B, n_fft - hop + k * hop) samples -> (B, num_mel_bins, k), fixed normalisation."""
        spec = torch.stft(
            samples.float(), self.config.n_fft, self.config.hop_length, window=self.window.float(), center=False,
            return_complex=True,
        )  # (B, n_fft // 2 + 1, k)  # fmt: skip
        mel = self.mel_filters.float() @ spec.abs().square()  # (B, M, k)
        return (mel.clamp(min=1e-8).log10() + 4.0) / 4.0

    def init_stream_state(self, batch_size: int, device=None) -> AudioStreamState:
        """Fresh state at the start of a clip (silence before it)."""
        device = device or self.device
        context = self.config.n_fft - self.config.hop_length
        return AudioStreamState(
            pending=torch.zeros(batch_size, 0, device=device),
            stft_context=torch.zeros(batch_size, context, device=device),
            conv_caches=[
                torch.zeros(batch_size, self.config.hidden_dim, block.conv.context, device=device, dtype=self.dtype)
                for block in self.blocks
            ],
            frames_to_skip=self.config.lookahead_frames,
        )

    def encode_chunk(
        self, samples: torch.Tensor, state: AudioStreamState | None = None, final: bool = False
    ) -> tuple[torch.Tensor, AudioStreamState]:
        """Features (B, f, feature_dim) of every frame whose look-ahead is now available, and the new state.

        `samples`: (B, n) at `sample_rate`, any n >= 0. `final=True` ends the clip: zero-pads and flushes, so the
        clip's N samples yield N // samples_per_frame frames in total.
        """
        if samples.ndim != 2:
            raise ValueError(f"samples must be (B, n) at {self.config.sample_rate} Hz; got {tuple(samples.shape)}.")
        state = state or self.init_stream_state(samples.shape[0], samples.device)
        spf = self.samples_per_frame
        audio = torch.cat([state.pending, samples.to(state.pending.dtype)], dim=1)  # (B, pending + n)
        if final:  # zeros past the clip's end feed the look-ahead of its last frames
            target = (audio.shape[1] // spf + self.config.lookahead_frames) * spf
            audio = nn.functional.pad(audio[:, :target], (0, max(0, target - audio.shape[1])))
        num_frames = audio.shape[1] // spf
        ready, pending = audio[:, : num_frames * spf], audio[:, num_frames * spf :]
        if num_frames == 0:
            empty = samples.new_zeros(samples.shape[0], 0, self.config.feature_dim, dtype=self.dtype)
            return empty, AudioStreamState(pending, state.stft_context, state.conv_caches, state.frames_to_skip)
        framed = torch.cat([state.stft_context, ready], dim=1)  # (B, n_fft - hop + num_frames * spf)
        stft_context = framed[:, framed.shape[1] - state.stft_context.shape[1] :]

        # 1. Log-mel, then fold each video frame's mel frames into channels.
        mel = self.log_mel(framed)  # (B, M, num_frames * mels_per_frame)
        mel = mel.unflatten(2, (num_frames, self.mels_per_frame)).transpose(2, 3).flatten(1, 2)  # (B, 4M, frames)
        # 2. Causal conv stack at 25 Hz.
        hidden_states = self.input_proj(mel.to(self.dtype))  # (B, hidden, frames)
        conv_caches = []
        for block, cache in zip(self.blocks, state.conv_caches):
            hidden_states, cache = block(hidden_states, cache)
            conv_caches.append(cache)
        features = self.proj_out(self.norm_out(hidden_states.transpose(1, 2)))  # (B, frames, feature_dim)
        # 3. Look-ahead: causal output j is the feature of frame j - lookahead_frames.
        skip = min(state.frames_to_skip, num_frames)
        new_state = AudioStreamState(pending, stft_context, conv_caches, state.frames_to_skip - skip)
        return features[:, skip:], new_state

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """Offline features of whole clips: (B, N) -> (B, N // samples_per_frame, feature_dim)."""
        return self.encode_chunk(waveform, None, final=True)[0]
