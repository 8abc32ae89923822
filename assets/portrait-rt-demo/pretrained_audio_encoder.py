# portrait-rt 0.1.0: portrait_rt/models/pretrained_audio_encoder.py, imports flattened by `python -m portrait_rt export`
"""Optional pretrained audio encoder: a frozen `transformers` Whisper encoder or wav2vec2 + a trainable projection.

The paper (§3.2) extracts audio features with a pretrained encoder; `AudioEncoder` is the built-in, download-free
stand-in. This wrapper is for machines that reach the Hub (`PretrainedAudioEncoder.from_transformers(...)`); it keeps
`AudioEncoder`'s streaming API, so it drops into `PortraitRTPipeline` as its `audio_encoder` (the DiT's `audio_dim`
must equal `feature_dim`).

Both backbones are bidirectional, so streaming uses a **sliding window**: the features of video frame i come from one
backbone pass over the `context_seconds` of audio that end `lookahead_frames` video frames after frame i (zeros before
the clip, and past its end once it is over). Frames are grouped in segments of `hop_frames` that share one window (the
window of segment s ends `lookahead_frames + 1` frames after its first frame), trading compute for look-ahead: frame
offset o of a segment sees `lookahead_frames - o` frames ahead. `hop_frames=1` gives every frame the full look-ahead
at one backbone pass per frame. `forward` is the same windowed computation, so streaming == offline for any chunking.
Latency: `lookahead_frames` x 40 ms; cost: one pass over `context_seconds` per `hop_frames` video frames.

Both backbones run at 50 Hz (20 ms, 320 samples per token), so each 25 fps video frame owns 2 tokens, read from the
window's end: a frame k frames before the window's end reads tokens T - 2k and T - 2k + 1 of the window's T tokens.
The 2 tokens are folded into channels and projected to `feature_dim` (LayerNorm, Linear, GELU, Linear: the only
trainable part).

- Whisper: log-mel as `WhisperFeatureExtractor` computes it (its mel filters, n_fft 400, hop 160, centred STFT), with
  its max - 8 dynamic-range clamp taken **per window**: per clip it would depend on audio not yet heard, per window it
  depends only on that window, which streaming and offline see alike. Whisper's encoder demands 3000 mel frames
  (30 s); instead of padding every window to 30 s (a 1500-token pass, about 7x the work of a 4 s window and mostly
  padding), we run its layers on the window's own tokens with the positional embedding sliced to the window's length
  (as whisper.cpp's `audio_ctx` does): every window starts at position 0, like Whisper's training clips, and ends
  early.
- wav2vec2: raw waveform, zero-mean unit-variance per window when `normalize_waveform` (as `Wav2Vec2FeatureExtractor`
  normalises per clip), then the whole model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from transformers import Wav2Vec2Config, Wav2Vec2Model, WhisperConfig, WhisperFeatureExtractor
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from .constants import FPS, SAMPLE_RATE, SAMPLES_PER_FRAME

BACKBONES = ("whisper", "wav2vec2")
TOKENS_PER_FRAME = 2  # 50 Hz backbone tokens per 25 fps video frame
WINDOW_BATCH = 32  # windows per backbone call (bounds memory of long offline clips)


@dataclass
class PretrainedAudioStreamState:
    """Streaming state of `PretrainedAudioEncoder.encode_chunk`.

    audio: (B, n) samples from absolute sample `audio_start` on (negative at the clip's start: zeros before it), enough
    for the next segment's window. num_samples: samples of the clip received so far. next_frame: next frame to emit.
    """

    audio: torch.Tensor
    audio_start: int
    num_samples: int
    next_frame: int


class PretrainedAudioEncoder(ModelMixin, ConfigMixin):
    r"""Frozen Whisper encoder / wav2vec2 + trainable projection: waveform -> (B, frames, feature_dim) at 25 fps.

    Args:
        backbone: "whisper" (a `WhisperEncoder`) or "wav2vec2" (a `Wav2Vec2Model`).
        backbone_config: the backbone's `transformers` config as a dict (`config.to_dict()`), so a saved pipeline
            rebuilds it offline; the weights are saved with this model.
        num_backbone_layers: run only the first n transformer layers (None: all); the encoder's final LayerNorm stays.
        context_seconds: window length; a multiple of 40 ms, at most 30 s for Whisper.
        lookahead_frames: video frames of future audio each frame's window reaches (latency: x 40 ms).
        hop_frames: video frames sharing one window (1 <= hop_frames <= lookahead_frames + 1).
        normalize_waveform: wav2vec2 only: zero-mean unit-variance per window.
        projection_dim, feature_dim: projection MLP width and output size per video frame (the DiT's `audio_dim`).
        sample_rate: the backbones' 16 kHz.
    """

    @register_to_config
    def __init__(
        self,
        backbone: str = "whisper",
        backbone_config: dict | None = None,
        num_backbone_layers: int | None = None,
        context_seconds: float = 4.0,
        lookahead_frames: int = 2,
        hop_frames: int = 1,
        normalize_waveform: bool = True,
        projection_dim: int = 512,
        feature_dim: int = 768,
        sample_rate: int = SAMPLE_RATE,
    ):
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {BACKBONES}, got {backbone!r}.")
        if sample_rate != SAMPLE_RATE:
            raise ValueError(f"Whisper and wav2vec2 take {SAMPLE_RATE} Hz audio; got sample_rate={sample_rate}.")
        if not 1 <= hop_frames <= lookahead_frames + 1:
            raise ValueError(
                f"Need 1 <= hop_frames <= lookahead_frames + 1 (every frame's window must cover the frame); got "
                f"hop_frames={hop_frames}, lookahead_frames={lookahead_frames}."
            )
        self.window_frames = round(context_seconds * FPS)
        if (
            abs(self.window_frames - context_seconds * FPS) > 1e-6
            or self.window_frames < lookahead_frames + hop_frames
        ):
            raise ValueError(
                f"context_seconds must be a multiple of {1 / FPS} s covering at least lookahead_frames + hop_frames "
                f"= {lookahead_frames + hop_frames} video frames; got {context_seconds}."
            )
        self.window_samples = self.window_frames * SAMPLES_PER_FRAME

        # 1. The frozen backbone, rebuilt from its config (weights come with `from_pretrained` / `from_transformers`).
        if backbone == "whisper":
            config = WhisperConfig.from_dict(backbone_config or {})
            if self.window_samples // 320 > config.max_source_positions:
                raise ValueError(
                    f"context_seconds={context_seconds} exceeds Whisper's {config.max_source_positions / 50:g} s; "
                    "use a shorter window."
                )
            self.pretrained = WhisperEncoder(config)
            layers = self.pretrained.layers
            extractor = WhisperFeatureExtractor(feature_size=config.num_mel_bins, sampling_rate=sample_rate)
            mel = torch.tensor(extractor.mel_filters.T, dtype=torch.float32)  # (M, n_fft // 2 + 1)
            self.register_buffer("mel_filters", mel, persistent=False)
            self.register_buffer("stft_window", torch.hann_window(extractor.n_fft), persistent=False)
            self.n_fft, self.hop_length = extractor.n_fft, extractor.hop_length
        else:
            config = Wav2Vec2Config.from_dict(backbone_config or {})
            self.pretrained = Wav2Vec2Model(config)
            layers = self.pretrained.encoder.layers
        if num_backbone_layers is not None:
            if not 1 <= num_backbone_layers <= len(layers):
                raise ValueError(f"num_backbone_layers must be in 1..{len(layers)}, got {num_backbone_layers}.")
            del layers[num_backbone_layers:]
        self.pretrained.requires_grad_(False)
        self.pretrained.eval()

        tokens = [self._num_tokens(self.window_samples + k * SAMPLES_PER_FRAME) for k in (0, 1)]
        if tokens[1] - tokens[0] != TOKENS_PER_FRAME:
            raise ValueError(
                f"The backbone must give 50 Hz tokens (stride 320 samples); got {tokens[1] - tokens[0]} per 40 ms."
            )
        if tokens[0] < TOKENS_PER_FRAME * (lookahead_frames + 1):
            raise ValueError(f"context_seconds={context_seconds} is too short for this backbone; make it longer.")

        # 2. The trainable projection: a frame's 2 tokens, folded into channels -> feature_dim.
        hidden = TOKENS_PER_FRAME * config.hidden_size
        self.proj = nn.Sequential(
            nn.LayerNorm(hidden),
            nn.Linear(hidden, projection_dim),
            nn.GELU(approximate="tanh"),
            nn.Linear(projection_dim, feature_dim),
        )

    @classmethod
    def from_transformers(
        cls, model_id_or_path: str, hub_kwargs: dict | None = None, **config
    ) -> PretrainedAudioEncoder:
        """Wrap a Hub checkpoint (or local folder) of Whisper or wav2vec2, e.g. "openai/whisper-base" or
        "facebook/wav2vec2-base-960h"; `config` sets this class's other arguments (the projection starts random).
        `hub_kwargs` go to `from_pretrained` (revision, cache_dir, local_files_only, ...)."""
        from transformers import AutoConfig, WhisperModel

        hub_kwargs = hub_kwargs or {}
        model_type = AutoConfig.from_pretrained(model_id_or_path, **hub_kwargs).model_type
        if model_type == "whisper":
            source = WhisperModel.from_pretrained(model_id_or_path, **hub_kwargs).get_encoder()
        elif model_type == "wav2vec2":
            source = Wav2Vec2Model.from_pretrained(model_id_or_path, **hub_kwargs)
        else:
            raise ValueError(f"{model_id_or_path} is a {model_type!r} model; use a Whisper or wav2vec2 checkpoint.")
        model = cls(backbone=model_type, backbone_config=source.config.to_dict(), **config)
        own = model.pretrained.state_dict()  # fewer layers than `source` with num_backbone_layers
        model.pretrained.load_state_dict({k: v for k, v in source.state_dict().items() if k in own})
        return model.to(source.dtype)

    @property
    def receptive_field(self) -> int:
        """Video frames of past audio, its own frame included, that a feature may depend on (for training crops)."""
        return self.window_frames - self.config.lookahead_frames + self.config.hop_frames - 1

    def train(self, mode: bool = True) -> PretrainedAudioEncoder:
        """Train mode for the projection only: the frozen backbone stays in eval mode (no dropout)."""
        super().train(mode)
        self.pretrained.eval()
        return self

    # ------------------------------------------------------------------ backbone on windows
    def _num_tokens(self, num_samples: int) -> int:
        if self.config.backbone == "whisper":
            return num_samples // (2 * self.hop_length)  # centred STFT minus its last frame, then conv2 stride 2
        return int(self.pretrained._get_feat_extract_output_lengths(num_samples))

    def log_mel(self, windows: torch.Tensor) -> torch.Tensor:
        """Whisper's log-mel of (n, W) windows -> (n, num_mel_bins, W // 160), max - 8 clamp per window."""
        spec = torch.stft(windows.float(), self.n_fft, self.hop_length, window=self.stft_window, return_complex=True)
        mel = self.mel_filters @ spec[..., :-1].abs().square()  # (n, M, W // hop)
        log_spec = mel.clamp(min=1e-10).log10()
        log_spec = torch.maximum(log_spec, log_spec.amax(dim=(1, 2), keepdim=True) - 8.0)
        return (log_spec + 4.0) / 4.0

    def _whisper_tokens(self, windows: torch.Tensor) -> torch.Tensor:
        """`WhisperEncoder.forward` on windows shorter than 30 s: positional embedding sliced to the window."""
        enc = self.pretrained
        x = self.log_mel(windows).to(self.pretrained.dtype)  # (n, M, W // 160)
        x = nn.functional.gelu(enc.conv2(nn.functional.gelu(enc.conv1(x)))).transpose(1, 2)  # (n, T, d)
        x = x + enc.embed_positions.weight[: x.shape[1]]
        for layer in enc.layers:
            x = layer(x, None)
        return enc.layer_norm(x)

    def _wav2vec2_tokens(self, windows: torch.Tensor) -> torch.Tensor:
        x = windows.float()
        if self.config.normalize_waveform:  # as Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm, per window
            x = (x - x.mean(dim=1, keepdim=True)) / torch.sqrt(x.var(dim=1, keepdim=True, unbiased=False) + 1e-7)
        return self.pretrained(x.to(self.pretrained.dtype)).last_hidden_state  # (n, T, d)

    def backbone_tokens(self, windows: torch.Tensor) -> torch.Tensor:
        """Frozen backbone on (n, window_samples) windows -> (n, T, hidden) tokens at 50 Hz, in batches."""
        run = self._whisper_tokens if self.config.backbone == "whisper" else self._wav2vec2_tokens
        with torch.no_grad():
            return torch.cat([run(w) for w in windows.split(WINDOW_BATCH)])

    # ------------------------------------------------------------------ streaming
    def _window_end(self, segment: int) -> int:
        """Video frame at which segment `segment`'s window ends (exclusive)."""
        return segment * self.config.hop_frames + 1 + self.config.lookahead_frames

    def init_stream_state(self, batch_size: int, device=None) -> PretrainedAudioStreamState:
        """Fresh state at the start of a clip (silence before it)."""
        start = self._window_end(0) * SAMPLES_PER_FRAME - self.window_samples  # <= 0
        audio = torch.zeros(batch_size, -start, device=device or self.device)
        return PretrainedAudioStreamState(audio=audio, audio_start=start, num_samples=0, next_frame=0)

    def encode_chunk(
        self, samples: torch.Tensor, state: PretrainedAudioStreamState | None = None, final: bool = False
    ) -> tuple[torch.Tensor, PretrainedAudioStreamState]:
        """Features (B, f, feature_dim) of every frame whose window is now complete, and the new state.

        `samples`: (B, n) at 16 kHz, any n >= 0. `final=True` ends the clip: zero-pads and flushes, so the clip's N
        samples yield N // 640 frames in total.
        """
        if samples.ndim != 2:
            raise ValueError(f"samples must be (B, n) at {self.config.sample_rate} Hz; got {tuple(samples.shape)}.")
        state = state or self.init_stream_state(samples.shape[0], samples.device)
        spf, hop, first = SAMPLES_PER_FRAME, self.config.hop_frames, state.next_frame
        audio = torch.cat([state.audio, samples.to(state.audio)], dim=1)  # (B, samples from audio_start on)
        num_samples = state.num_samples + samples.shape[1]
        if final:  # every frame of the clip; zeros past its end fill the last windows
            stop = num_samples // spf
            if stop > first:
                missing = self._window_end((stop - 1) // hop) * spf - state.audio_start - audio.shape[1]
                audio = nn.functional.pad(audio, (0, max(0, missing)))
        else:  # whole segments whose window has arrived
            ready = num_samples // spf - 1 - self.config.lookahead_frames
            stop = max(first, (ready // hop + 1) * hop) if ready >= 0 else first
        if stop <= first:
            empty = samples.new_zeros(samples.shape[0], 0, self.config.feature_dim, dtype=self.dtype)
            return empty, PretrainedAudioStreamState(audio, state.audio_start, num_samples, first)

        # 1. One window per segment: consecutive windows start hop * spf samples apart.
        seg0, seg1 = first // hop, (stop - 1) // hop
        begin = self._window_end(seg0) * spf - self.window_samples - state.audio_start
        span = audio[:, begin : begin + self.window_samples + (seg1 - seg0) * hop * spf]
        windows = span.unfold(1, self.window_samples, hop * spf)  # (B, S, W)
        tokens = self.backbone_tokens(windows.flatten(0, 1))  # (B*S, T, d)
        # 2. Each frame's 2 tokens, read from the window's end; fold them into channels.
        lead = tokens.shape[1] - TOKENS_PER_FRAME * (self.config.lookahead_frames + 1)
        tokens = tokens[:, lead : lead + TOKENS_PER_FRAME * hop]  # (B*S, 2 * hop, d)
        tokens = tokens.reshape(samples.shape[0], -1, TOKENS_PER_FRAME * tokens.shape[-1])  # (B, S * hop, 2d)
        features = self.proj(tokens[:, first - seg0 * hop : stop - seg0 * hop].to(self.dtype))  # (B, f, feature_dim)

        # 3. Keep the audio from the next segment's window start on.
        keep = min(self._window_end(-(-stop // hop)) * spf - self.window_samples - state.audio_start, audio.shape[1])
        new_state = PretrainedAudioStreamState(audio[:, keep:], state.audio_start + keep, num_samples, stop)
        return features, new_state

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """Offline features of whole clips: (B, N) -> (B, N // 640, feature_dim), the streaming windows."""
        return self.encode_chunk(waveform, None, final=True)[0]
