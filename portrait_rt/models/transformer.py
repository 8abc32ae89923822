"""FlowDiT: the blockwise-causal rectified-flow transformer G of the paper (§3.2, §4.1, Algorithms 1 and 2).

One token per latent pixel. Video tokens are the noisy latent concatenated channel-wise with the aligned audio
embedding a'; reference latents are prepended as tokens. The timestep enters through AdaLN *per token*, so clean
references, (lightly noised) context and noisy targets share one pass. Attention is blockwise causal: full inside a
block of `block_size` latent frames, earlier blocks and the references across blocks.

Positions (3D RoPE over t/h/w). Video latent frame l of the current KV window sits at temporal position 1 + l
(window-relative: positions restart when the KV window resets, Algorithm 2 step 3). Every reference sits at temporal
position 0 with the usual h/w positions: distinguishable from video frames, and since all references share the same
positions (and references attend only to references), their order does not change any video output.

Two entry points:
- `forward`: the full-sequence path. With `context_latents` it is the teacher-forcing layout of Algorithm 1,
  [refs, noised context, noisy targets]; without, plain blockwise-causal attention over `latents` (the uncached
  reference for the cached path).
- `init_kv_cache` / `prefill_references` / `forward_cached` / `update_cache`: streaming inference, Algorithm 2.
  The cached passes take one `KVCache` or a list (one per stream): the token work of all their rows is batched and
  attention runs per cache, so streams at any window position run together and each gets exactly its output alone.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention import AttentionModuleMixin, FeedForward
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.embeddings import TimestepEmbedding, Timesteps, get_1d_rotary_pos_embed
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.normalization import FP32LayerNorm

from ..constants import (
    LATENT_CHANNELS,
    MAX_REFERENCES,
    TEMPORAL_COMPRESSION,
    check_block_size,
    video_frames_for_latents,
)

REFERENCE_FRAME_POSITION = 0  # temporal RoPE position of every reference latent
FIRST_VIDEO_FRAME_POSITION = 1  # temporal RoPE position of the first latent frame of a KV window

# (key buffer, value buffer, write offset) of one layer; see FlowDiTAttnProcessor.
LayerKV = tuple[torch.Tensor, torch.Tensor, int]


def apply_rotary_emb(hidden_states: torch.Tensor, freqs_cos: torch.Tensor, freqs_sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved channel pairs of (B, S, H, D) `hidden_states` by (1, S, 1, D) angles (as in Wan)."""
    x1, x2 = hidden_states.float().unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = freqs_cos[..., 0::2].float(), freqs_sin[..., 1::2].float()
    out = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)
    return out.type_as(hidden_states)


def rowwise(fn, x: torch.Tensor) -> torch.Tensor:
    """`fn` (row-wise: linear layers, activations) on the rows of (..., D) `x`, padded to a multiple of 8 rows.

    The per-frame embedders see few rows (B x k). On the CPU, MKL's sgemm computes a matrix of under 12 rows (or not
    a multiple of 4) with other kernels, and PyTorch's vectorised activations compute a tensor's last elements (past a
    multiple of 2 vectors) one by one: both round differently, so a stream alone (B = its CFG rows) would not get
    exactly what it gets batched with other streams. Padded, every row is computed alike whatever the batch.
    """
    rows = x.reshape(-1, x.shape[-1])  # (N, D)
    pad = -rows.shape[0] % 8
    out = fn(F.pad(rows, (0, 0, 0, pad)) if pad else rows)
    return out[: rows.shape[0]].view(*x.shape[:-1], out.shape[-1])


class FlowDiTAttnProcessor:
    """Self-attention math: QK RMSNorm, 3D RoPE, then `dispatch_attention_fn` on (B, S, H, D) tensors.

    With `kv_cache=(key_buffer, value_buffer, offset)` the new keys/values are written into the buffers at
    `offset` and attention reads the buffer prefix `[:offset + S]`: cached context plus the tokens in flight, without
    a `torch.cat` per layer and step. Writing past the cache's valid length is scratch space; only
    `FlowDiT.update_cache` advances that length. With a 0-d tensor `offset` (a `KVCache` with `static_shapes`),
    attention reads the whole buffer and the caller's `attention_mask` hides what lies past `offset + S`: every
    window position then runs the same shapes, so one compiled graph and one CUDA graph serve them all.

    With a list of `kv_cache`s (one per stream; `rotary_emb` and `attention_mask` then lists too), the rows are split
    in order by the caches' batch sizes and each part attends over its own cache: the projections stay batched, and
    each stream runs the very attention it runs alone.
    """

    _attention_backend = None
    _parallel_config = None

    def __call__(
        self,
        attn: FlowDiTAttention,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
        kv_cache: LayerKV | None = None,
    ) -> torch.Tensor:
        query = attn.norm_q(attn.to_q(hidden_states)).unflatten(2, (attn.heads, -1))  # (B, S, H, Dh)
        key = attn.norm_k(attn.to_k(hidden_states)).unflatten(2, (attn.heads, -1))
        value = attn.to_v(hidden_states).unflatten(2, (attn.heads, -1))
        if isinstance(kv_cache, list):  # several streams' caches: rows [b_0, b_0 + B_i) attend over cache i
            sizes = [layer[0].shape[0] for layer in kv_cache]
            parts = zip(query.split(sizes), key.split(sizes), value.split(sizes), rotary_emb, attention_mask, kv_cache)
            hidden_states = torch.cat([self._attend(*part) for part in parts])  # (B, S, H*Dh)
        else:
            hidden_states = self._attend(query, key, value, rotary_emb, attention_mask, kv_cache)
        return attn.to_out(hidden_states.type_as(query))

    def _attend(self, query, key, value, rotary_emb, attention_mask, kv_cache: LayerKV | None) -> torch.Tensor:
        """RoPE, the cache write and attention for (B, S, H, Dh) `query`/`key`/`value` -> (B, S, H*Dh)."""
        if rotary_emb is not None:
            query, key = apply_rotary_emb(query, *rotary_emb), apply_rotary_emb(key, *rotary_emb)

        if kv_cache is not None:
            key_buffer, value_buffer, offset = kv_cache
            if isinstance(offset, torch.Tensor):  # static shapes: write at a device offset, read the whole buffer
                index = offset + torch.arange(key.shape[1], device=key.device)
                key_buffer.index_copy_(1, index, key.to(key_buffer.dtype))
                value_buffer.index_copy_(1, index, value.to(value_buffer.dtype))
                key, value = key_buffer, value_buffer  # (B, N, H, Dh); `attention_mask` hides [offset + S, N)
            else:
                end = offset + key.shape[1]
                key_buffer[:, offset:end] = key
                value_buffer[:, offset:end] = value
                key, value = key_buffer[:, :end], value_buffer[:, :end]  # (B, offset + S, H, Dh)

        hidden_states = dispatch_attention_fn(
            query,
            key,
            value,
            attn_mask=attention_mask,
            dropout_p=0.0,
            is_causal=False,
            backend=self._attention_backend,
        )
        return hidden_states.flatten(2, 3)  # (B, S, H*Dh)


class FlowDiTAttention(nn.Module, AttentionModuleMixin):
    """Self-attention weights (Q/K/V/out projections, QK RMSNorm across heads); the math is in the processor."""

    _default_processor_cls = FlowDiTAttnProcessor
    _available_processors = [FlowDiTAttnProcessor]

    def __init__(self, dim: int, heads: int, dim_head: int, eps: float = 1e-6, processor=None):
        super().__init__()
        self.heads = heads
        self.inner_dim = heads * dim_head
        self.to_q = nn.Linear(dim, self.inner_dim)
        self.to_k = nn.Linear(dim, self.inner_dim)
        self.to_v = nn.Linear(dim, self.inner_dim)
        self.to_out = nn.Linear(self.inner_dim, dim)
        self.norm_q = nn.RMSNorm(self.inner_dim, eps=eps)
        self.norm_k = nn.RMSNorm(self.inner_dim, eps=eps)
        self.set_processor(processor or self._default_processor_cls())

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
        kv_cache: LayerKV | None = None,
    ) -> torch.Tensor:
        """Self-attention of (B, S, dim) tokens; see `FlowDiTAttnProcessor` for `kv_cache`."""
        return self.processor(self, hidden_states, attention_mask, rotary_emb, kv_cache)


class FlowDiTRotaryPosEmbed(nn.Module):
    """3D RoPE: the head dimension is split over (t, h, w); tables are non-persistent buffers (as in Wan)."""

    def __init__(self, attention_head_dim: int, max_seq_len: int, theta: float = 10000.0):
        super().__init__()
        h_dim = w_dim = 2 * (attention_head_dim // 6)
        self.split_sizes = [attention_head_dim - h_dim - w_dim, h_dim, w_dim]  # t, h, w
        tables = [get_1d_rotary_pos_embed(d, max_seq_len, theta, use_real=True, repeat_interleave_real=True,
                                          freqs_dtype=torch.float64) for d in self.split_sizes]  # fmt: skip
        self.register_buffer("freqs_cos", torch.cat([c for c, _ in tables], 1).float(), persistent=False)
        self.register_buffer("freqs_sin", torch.cat([s for _, s in tables], 1).float(), persistent=False)

    def forward(self, frame_positions: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(cos, sin), each (1, len(frame_positions)*height*width, 1, head_dim), for frames at `frame_positions`."""
        num_frames = frame_positions.shape[0]
        shape = (num_frames, height, width, -1)
        out = []
        for table in (self.freqs_cos, self.freqs_sin):
            table_t, table_h, table_w = table.split(self.split_sizes, dim=1)
            freqs = torch.cat(
                [
                    table_t[frame_positions].view(num_frames, 1, 1, -1).expand(shape),
                    table_h[:height].view(1, height, 1, -1).expand(shape),
                    table_w[:width].view(1, 1, width, -1).expand(shape),
                ],
                dim=-1,
            )
            out.append(freqs.reshape(1, num_frames * height * width, 1, -1))
        return out[0], out[1]


class AudioEmbedder(nn.Module):
    """MLP embedder: `in_features` of audio (one or four video frames' features) -> an audio embedding a'."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_features, 4 * out_features),
            nn.GELU(approximate="tanh"),
            nn.Linear(4 * out_features, out_features),
        )

    def forward(self, audio_features: torch.Tensor) -> torch.Tensor:
        """(..., in_features) -> (..., out_features)."""
        return self.net(audio_features)


class FlowDiTBlock(nn.Module):
    """Transformer block with per-token AdaLN (shift/scale/gate for attention and FFN; `scale_shift_table`)."""

    def __init__(self, dim: int, ffn_dim: int, num_heads: int, eps: float = 1e-6):
        super().__init__()
        self.norm1 = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.attn1 = FlowDiTAttention(dim, heads=num_heads, dim_head=dim // num_heads, eps=eps)
        self.norm2 = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.ffn = FeedForward(dim, inner_dim=ffn_dim, activation_fn="gelu-approximate")
        # adaLN-zero: table and timestep projection start at zero, so every gate is 0 and the block is the identity.
        self.scale_shift_table = nn.Parameter(torch.zeros(1, 6, dim))

    def forward(
        self,
        hidden_states: torch.Tensor,
        temb: torch.Tensor,
        rotary_emb: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None = None,
        kv_cache: LayerKV | None = None,
    ) -> torch.Tensor:
        """hidden_states (B, S, D); temb (B, S, 6, D), the per-token timestep projection."""
        shift_msa, scale_msa, gate_msa, c_shift_msa, c_scale_msa, c_gate_msa = (
            self.scale_shift_table + temb.float()
        ).unbind(2)  # each (B, S, D)

        # 1. Self-attention
        norm_hidden_states = (self.norm1(hidden_states.float()) * (1 + scale_msa) + shift_msa).type_as(hidden_states)
        attn_output = self.attn1(norm_hidden_states, attention_mask, rotary_emb, kv_cache)
        hidden_states = (hidden_states.float() + attn_output * gate_msa).type_as(hidden_states)

        # 2. Feed-forward
        norm_hidden_states = (self.norm2(hidden_states.float()) * (1 + c_scale_msa) + c_shift_msa).type_as(
            hidden_states
        )
        ff_output = self.ffn(norm_hidden_states)
        return (hidden_states.float() + ff_output.float() * c_gate_msa).type_as(hidden_states)


@dataclass
class KVCache:
    """Preallocated KV cache, Algorithm 2's KV_list: one row per CFG row of each stream it serves (batch dim).

    `key`/`value`: (num_layers, B, (num_references + kv_window) * h * w, heads, head_dim), token order
    [references, window frames 0..kv_window-1]. `num_latent_frames` latent frames of the current window are valid;
    the next block sits at window positions `num_latent_frames...`. `stream_start`: the next block is the stream's
    first (mask token, first-frame audio embedder). The window moves only through `advance` / `reset_window`.
    """

    key: torch.Tensor
    value: torch.Tensor
    num_references: int
    latent_size: tuple[int, int]
    block_size: int
    kv_window: int
    num_latent_frames: int = 0
    stream_start: bool = True
    references_ready: bool = False
    # Static shapes (the fast path): `num_latent_frames` mirrored in a 0-d device tensor that G reads, so the pass
    # at every window position runs the same kernels on the same buffers (see `FlowDiTAttnProcessor`).
    position: torch.Tensor | None = None
    # CUDA graphs captured over this cache's buffers (`portrait_rt.fast_path`); they live and die with the cache.
    graphs: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def static_shapes(self) -> bool:
        """G attends over the whole buffer with a length mask instead of the valid prefix (one shape per block)."""
        return self.position is not None

    def advance(self, num_latent_frames: int) -> None:
        """The block just written at the window's end is now valid context for the next ones."""
        self.num_latent_frames += num_latent_frames
        self.stream_start = False

    @property
    def is_full(self) -> bool:
        """The window holds `kv_window` latent frames: it must reset before the next block."""
        return self.num_latent_frames >= self.kv_window

    def reset_window(self) -> None:
        """Back to the references alone (KV_r); the next block is written at window position 0."""
        self.num_latent_frames = 0

    def select_rows(self, rows: list[int]) -> KVCache:
        """A new cache of only `rows` (copied) at the same window position: a stream leaving a group takes its rows."""
        index = torch.tensor(rows, device=self.key.device)
        return dataclasses.replace(
            self,
            key=self.key.index_select(1, index),
            value=self.value.index_select(1, index),
            position=None if self.position is None else self.position.clone(),
            graphs={},
        )

    @property
    def batch_size(self) -> int:
        """Rows of the cache: one per CFG row of each stream it serves."""
        return self.key.shape[1]

    @property
    def tokens_per_frame(self) -> int:
        """Latent pixels per latent frame, h * w."""
        return self.latent_size[0] * self.latent_size[1]

    @property
    def num_reference_tokens(self) -> int:
        """Tokens taken by the references at the start of the cache."""
        return self.num_references * self.tokens_per_frame


class FlowDiT(ModelMixin, ConfigMixin):
    r"""Blockwise-causal rectified-flow DiT G (paper §3.2): predicts the velocity v = eps - z0 of video latents.

    Args:
        in_channels: latent channels (64).
        out_channels: predicted channels (defaults to `in_channels`).
        audio_dim: per-video-frame audio feature size (the audio encoder's `feature_dim`).
        audio_embed_dim: channels of the audio embedding a' concatenated to each latent pixel.
        num_layers, num_attention_heads, attention_head_dim, ffn_dim: transformer size.
        freq_dim: sinusoidal timestep embedding size.
        block_size: latent frames per causal block k (1-4).
        kv_window: video latent frames held by the KV cache before it resets (Algorithm 2).
        rope_max_seq_len: RoPE table length (>= kv_window + 1 and >= the latent height/width).
        eps: norm epsilon.
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = ["FlowDiTBlock"]
    _repeated_blocks = ["FlowDiTBlock"]  # diffusers' regional compilation (`compile_repeated_blocks`)
    _cached_step_runner: Callable[..., torch.Tensor] | None = None  # `set_cached_step_runner`
    _keep_in_fp32_modules = ["time_embedder", "scale_shift_table", "norm1", "norm2", "norm_out"]

    @register_to_config
    def __init__(
        self,
        in_channels: int = LATENT_CHANNELS,
        out_channels: int | None = None,
        audio_dim: int = 768,
        audio_embed_dim: int = 128,
        num_layers: int = 24,
        num_attention_heads: int = 12,
        attention_head_dim: int = 128,
        ffn_dim: int = 10240,
        freq_dim: int = 256,
        block_size: int = 4,
        kv_window: int = 32,
        rope_max_seq_len: int = 1024,
        eps: float = 1e-6,
    ):
        super().__init__()
        check_block_size(block_size, kv_window)
        inner_dim = num_attention_heads * attention_head_dim
        out_channels = out_channels or in_channels

        # 1. Token embeddings: video tokens are [z_t (+) a'], references are z_r alone.
        self.rope = FlowDiTRotaryPosEmbed(attention_head_dim, rope_max_seq_len)
        self.patch_embedding = nn.Linear(in_channels + audio_embed_dim, inner_dim)
        self.reference_embedding = nn.Linear(in_channels, inner_dim)

        # 2. Conditions: two audio embedders (first frame / shared), timestep, null tokens for CFG, mask token.
        self.first_frame_audio_embedder = AudioEmbedder(audio_dim, audio_embed_dim)
        self.audio_embedder = AudioEmbedder(TEMPORAL_COMPRESSION * audio_dim, audio_embed_dim)
        self.timesteps_proj = Timesteps(freq_dim, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedder = TimestepEmbedding(freq_dim, inner_dim)
        self.time_proj = nn.Linear(inner_dim, 6 * inner_dim)
        self.null_audio = nn.Parameter(torch.randn(audio_embed_dim) * 0.02)  # replaces a' (CFG)
        self.null_reference = nn.Parameter(torch.randn(inner_dim) * 0.02)  # replaces each reference token (CFG)
        self.mask_token = nn.Parameter(torch.randn(inner_dim) * 0.02)  # added to the stream's first latent frame

        # 3. Transformer blocks
        self.blocks = nn.ModuleList(
            [FlowDiTBlock(inner_dim, ffn_dim, num_attention_heads, eps) for _ in range(num_layers)]
        )

        # 4. Output norm & projection
        self.norm_out = FP32LayerNorm(inner_dim, eps, elementwise_affine=False)
        self.proj_out = nn.Linear(inner_dim, out_channels)
        self.scale_shift_table = nn.Parameter(torch.zeros(1, 2, inner_dim))

        # adaLN-zero initialisation (DiT): zero timestep modulation and output projection -> G starts at v = 0.
        for layer in (self.time_proj, self.proj_out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.gradient_checkpointing = False

    # ----------------------------------------------------------------------------------------------- embeddings
    def _embed_audio(
        self, audio_features: torch.Tensor, num_frames: int, stream_start: bool, drop_audio: torch.Tensor | None
    ) -> torch.Tensor:
        """Per-video-frame features (B, F, Da) -> a' per latent frame (B, num_frames, audio_embed_dim)."""
        batch_size, num_video_frames, audio_dim = audio_features.shape
        expected = video_frames_for_latents(num_frames, first=stream_start)
        if num_video_frames != expected or audio_dim != self.config.audio_dim:
            where = "at stream start (1 + 4(T-1))" if stream_start else "not at stream start (4T)"
            raise ValueError(
                f"audio_features must be (B, {expected}, {self.config.audio_dim}) for {num_frames} latent frames "
                f"{where}; got {tuple(audio_features.shape)}."
            )
        embeddings = []
        if stream_start:  # latent frame 0 holds one video frame: its own embedder
            embeddings.append(rowwise(self.first_frame_audio_embedder, audio_features[:, :1]))  # (B, 1, Dae)
            audio_features = audio_features[:, 1:]
        if audio_features.shape[1]:  # fold 4 video frames into one latent frame
            folded = audio_features.reshape(batch_size, -1, TEMPORAL_COMPRESSION * audio_dim)  # (B, T', 4*Da)
            embeddings.append(rowwise(self.audio_embedder, folded))  # (B, T', Dae)
        audio = torch.cat(embeddings, dim=1)  # (B, T, Dae)
        if drop_audio is not None:
            audio = torch.where(drop_audio.view(-1, 1, 1), self.null_audio.to(audio.dtype), audio)
        return audio

    def _embed_video(self, latents: torch.Tensor, audio: torch.Tensor, stream_start: bool) -> torch.Tensor:
        """Latents (B, C, T, h, w) + a' (B, T, Dae) -> tokens (B, T*h*w, D), mask token on a stream's frame 0."""
        batch_size, _, num_frames, height, width = latents.shape
        latents = latents.permute(0, 2, 3, 4, 1)  # (B, T, h, w, C)
        audio = audio[:, :, None, None, :].expand(-1, -1, height, width, -1)  # broadcast over space
        tokens = self.patch_embedding(torch.cat([latents, audio.to(latents.dtype)], dim=-1))  # (B, T, h, w, D)
        if stream_start:
            tokens = torch.cat([tokens[:, :1] + self.mask_token.to(tokens.dtype), tokens[:, 1:]], dim=1)
        return tokens.flatten(1, 3)  # (B, T*h*w, D)

    def _embed_references(self, reference_latents: torch.Tensor, drop_reference: torch.Tensor | None) -> torch.Tensor:
        """References (B, M, C, h, w) -> tokens (B, M*h*w, D); dropped rows get the null reference token."""
        if reference_latents.ndim != 5 or not 1 <= reference_latents.shape[1] <= MAX_REFERENCES:
            raise ValueError(
                f"reference_latents must be (B, M, C, h, w) with M in 1..{MAX_REFERENCES}; "
                f"got {tuple(reference_latents.shape)}."
            )
        tokens = self.reference_embedding(reference_latents.permute(0, 1, 3, 4, 2)).flatten(1, 3)  # (B, M*h*w, D)
        if drop_reference is not None:
            tokens = torch.where(drop_reference.view(-1, 1, 1), self.null_reference.to(tokens.dtype), tokens)
        return tokens

    def _embed_timestep(self, timestep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-frame timesteps (B, Tf) -> temb (B, Tf, D) and the AdaLN projection (B, Tf, 6, D)."""
        t_freq = self.timesteps_proj(timestep.flatten()).unflatten(0, timestep.shape)  # (B, Tf, freq_dim)
        temb = rowwise(self.time_embedder, t_freq.to(self.time_embedder.linear_1.weight.dtype))  # (B, Tf, D)
        temb_proj = rowwise(lambda x: self.time_proj(F.silu(x).to(self.time_proj.weight.dtype)), temb)  # (B, Tf, 6D)
        return temb, temb_proj.unflatten(-1, (6, -1))

    @staticmethod
    def _frame_timesteps(timestep: torch.Tensor | float, batch_size: int, num_frames: int, device) -> torch.Tensor:
        """A scalar, (B,) or (B, T) timestep -> (B, T) per latent frame."""
        timestep = torch.as_tensor(timestep, device=device, dtype=torch.float32)
        if timestep.ndim == 0:
            timestep = timestep.expand(batch_size)
        if timestep.ndim == 1:
            timestep = timestep[:, None].expand(-1, num_frames)
        if timestep.shape != (batch_size, num_frames):
            raise ValueError(f"timestep must be (B,) or (B, T) = ({batch_size}, {num_frames}); got {timestep.shape}.")
        return timestep

    # ------------------------------------------------------------------------------------------------- trunk
    def _run_blocks(self, hidden_states, temb_proj, rotary_emb, attention_mask=None, kv_caches=None):
        for i, block in enumerate(self.blocks):
            kv_cache = None if kv_caches is None else kv_caches[i]
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                hidden_states = self._gradient_checkpointing_func(
                    block, hidden_states, temb_proj, rotary_emb, attention_mask, kv_cache
                )
            else:
                hidden_states = block(hidden_states, temb_proj, rotary_emb, attention_mask, kv_cache)
        return hidden_states

    def _head(self, hidden_states: torch.Tensor, temb: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        """Final AdaLN + projection of the (B, T*h*w, D) video tokens -> velocity (B, C, T, h, w)."""
        batch_size, _, num_frames, height, width = shape
        shift, scale = (self.scale_shift_table + temb[:, :, None].float()).unbind(2)  # (B, T, D) each
        shift, scale = (x.repeat_interleave(height * width, dim=1) for x in (shift, scale))  # (B, T*h*w, D)
        hidden_states = (self.norm_out(hidden_states.float()) * (1 + scale) + shift).type_as(hidden_states)
        out = self.proj_out(hidden_states)  # (B, T*h*w, C_out)
        return out.view(batch_size, num_frames, height, width, -1).permute(0, 4, 1, 2, 3)  # (B, C_out, T, h, w)

    def blockwise_causal_mask(
        self, num_references: int, num_frames: int, with_context: bool, block_size: int | None = None, device=None
    ) -> torch.Tensor:
        """Frame-level attention mask (Fig. 4), (Tf, Tf) bool, True = may attend; frames [refs, context?, targets].

        References see references only. Context block j sees references and context blocks <= j. Target block j
        sees references, context blocks < j and itself (with context), or target blocks <= j (without).
        """
        block = torch.arange(num_frames, device=device) // (block_size or self.config.block_size)  # (T,)
        earlier_or_same = block[None, :] <= block[:, None]  # (T, T): key block <= query block
        video = earlier_or_same
        if with_context:
            context_rows = torch.cat([earlier_or_same, torch.zeros_like(earlier_or_same)], dim=1)
            target_rows = torch.cat([block[None, :] < block[:, None], block[None, :] == block[:, None]], dim=1)
            video = torch.cat([context_rows, target_rows], dim=0)  # (2T, 2T)
        total = num_references + video.shape[0]
        mask = torch.zeros(total, total, dtype=torch.bool, device=device)
        mask[:, :num_references] = True
        mask[num_references:, num_references:] = video
        return mask

    # ------------------------------------------------------------------------------------ full-sequence forward
    def forward(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor | float,
        audio_features: torch.Tensor,
        reference_latents: torch.Tensor,
        context_latents: torch.Tensor | None = None,
        context_timestep: torch.Tensor | float | None = None,
        stream_start: bool = True,
        drop_audio: torch.Tensor | None = None,
        drop_reference: torch.Tensor | None = None,
        return_dict: bool = False,
    ) -> Transformer2DModelOutput | tuple[torch.Tensor]:
        """Velocity of the noisy `latents` over one window (training, Algorithm 1; uncached reference).

        Args:
            latents: (B, C, T, h, w) noisy targets z_t; window frame l sits at RoPE position 1 + l.
            timestep: (B,) or (B, T), sigma * 1000 per latent frame.
            audio_features: (B, F, audio_dim) per video frame; F = 1 + 4(T-1) if `stream_start` else 4T.
            reference_latents: (B, M, C, h, w), M in 1..3.
            context_latents: (B, C, T, h, w) ground-truth context z_aug (teacher forcing), or None for plain
                blockwise-causal attention over `latents`.
            context_timestep: (B,) or (B, T) noise level of the context (default 0).
            stream_start: the window starts at the stream's first frame (mask token, first-frame audio embedder).
            drop_audio, drop_reference: (B,) bool, rows whose audio / references are replaced by null embeddings.

        Returns:
            v (B, C_out, T, h, w) for the targets, in a `Transformer2DModelOutput` or a 1-tuple.
        """
        batch_size, _, num_frames, height, width = latents.shape
        if latents.shape[1] != self.config.in_channels:
            raise ValueError(f"latents must have {self.config.in_channels} channels; got {latents.shape[1]}.")
        if context_latents is not None and context_latents.shape != latents.shape:
            raise ValueError(f"context_latents {tuple(context_latents.shape)} must match latents {latents.shape}.")
        device = latents.device
        num_references = reference_latents.shape[1]

        # 1. Tokens: [references, context?, targets], each video frame carrying a'.
        audio = self._embed_audio(audio_features, num_frames, stream_start, drop_audio)  # (B, T, Dae)
        segments = [self._embed_references(reference_latents, drop_reference)]
        timesteps = [torch.zeros(batch_size, num_references, device=device)]
        if context_latents is not None:
            segments.append(self._embed_video(context_latents, audio, stream_start))
            timesteps.append(
                self._frame_timesteps(
                    0.0 if context_timestep is None else context_timestep, batch_size, num_frames, device
                )
            )
        segments.append(self._embed_video(latents, audio, stream_start))
        timesteps.append(self._frame_timesteps(timestep, batch_size, num_frames, device))
        hidden_states = torch.cat(segments, dim=1)  # (B, (M + [T] + T) * h*w, D)

        # 2. Per-token timestep modulation, positions, blockwise-causal mask.
        temb, temb_proj = self._embed_timestep(torch.cat(timesteps, dim=1))  # (B, Tf, D), (B, Tf, 6, D)
        temb_proj = temb_proj.repeat_interleave(height * width, dim=1)  # (B, S, 6, D)
        video_positions = FIRST_VIDEO_FRAME_POSITION + torch.arange(num_frames, device=device)
        positions = [torch.full((num_references,), REFERENCE_FRAME_POSITION, device=device)]
        positions += [video_positions] * (len(segments) - 1)
        rotary_emb = self.rope(torch.cat(positions), height, width)
        mask = self.blockwise_causal_mask(num_references, num_frames, context_latents is not None, device=device)
        mask = mask.repeat_interleave(height * width, 0).repeat_interleave(height * width, 1)[None, None]  # (1,1,S,S)

        # 3. Transformer blocks, 4. output head on the target tokens.
        hidden_states = self._run_blocks(hidden_states, temb_proj, rotary_emb, attention_mask=mask)
        target_tokens = num_frames * height * width
        output = self._head(hidden_states[:, -target_tokens:], temb[:, -num_frames:], latents.shape)
        return Transformer2DModelOutput(sample=output) if return_dict else (output,)

    # ------------------------------------------------------------------------- cached streaming (Algorithm 2)
    def init_kv_cache(
        self,
        batch_size: int,
        num_references: int,
        latent_size: tuple[int, int],
        kv_window: int | None = None,
        block_size: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        static_shapes: bool = False,
    ) -> KVCache:
        """Preallocate a KV cache: B rows (every CFG row of every stream), M references each.

        With `static_shapes`, G attends over the whole buffer with a length mask, so the passes at every window
        position share one shape (one compiled graph, one CUDA graph); without, over the valid prefix (less work
        early in a window, for eager runs)."""
        kv_window = kv_window or self.config.kv_window
        block_size = block_size or self.config.block_size
        if not 1 <= num_references <= MAX_REFERENCES:
            raise ValueError(f"num_references must be 1..{MAX_REFERENCES}; got {num_references}.")
        check_block_size(block_size, kv_window)
        if kv_window + FIRST_VIDEO_FRAME_POSITION > self.config.rope_max_seq_len:
            raise ValueError(f"kv_window ({kv_window}) exceeds rope_max_seq_len ({self.config.rope_max_seq_len}).")
        height, width = latent_size
        tokens = (num_references + kv_window) * height * width
        shape = (len(self.blocks), batch_size, tokens, self.config.num_attention_heads, self.config.attention_head_dim)
        kwargs = {"device": device or self.device, "dtype": dtype or self.dtype}
        return KVCache(
            key=torch.zeros(shape, **kwargs),
            value=torch.zeros(shape, **kwargs),
            num_references=num_references,
            latent_size=(height, width),
            block_size=block_size,
            kv_window=kv_window,
            position=torch.zeros((), dtype=torch.long, device=kwargs["device"]) if static_shapes else None,
        )

    def _layer_caches(self, cache: KVCache, offset) -> list[LayerKV]:
        return [(cache.key[i], cache.value[i], offset) for i in range(len(self.blocks))]

    def prefill_references(
        self, cache: KVCache, reference_latents: torch.Tensor, drop_reference: torch.Tensor | None = None
    ) -> None:
        """Write KV_r, the references' keys/values (once per stream; Algorithm 2 step 1)."""
        batch_size, num_references, _, height, width = reference_latents.shape
        if (batch_size, num_references, (height, width)) != (
            cache.batch_size,
            cache.num_references,
            cache.latent_size,
        ):
            raise ValueError(
                f"reference_latents {tuple(reference_latents.shape)} do not fit the cache "
                f"(B={cache.batch_size}, M={cache.num_references}, latent_size={cache.latent_size})."
            )
        hidden_states = self._embed_references(reference_latents, drop_reference)  # (B, M*h*w, D)
        device = hidden_states.device
        _, temb_proj = self._embed_timestep(torch.zeros(batch_size, num_references, device=device))
        temb_proj = temb_proj.repeat_interleave(height * width, dim=1)  # (B, M*h*w, 6, D)
        positions = torch.full((num_references,), REFERENCE_FRAME_POSITION, device=device)
        rotary_emb = self.rope(positions, height, width)
        self._run_blocks(hidden_states, temb_proj, rotary_emb, kv_caches=self._layer_caches(cache, 0))
        cache.references_ready = True

    def _cached_pass(
        self,
        caches: KVCache | Sequence[KVCache],
        latents: torch.Tensor,
        timestep: torch.Tensor | float,
        audio_features: torch.Tensor,
        drop_audio: torch.Tensor | None,
        stream_start: bool,
    ) -> torch.Tensor:
        """Run one block at each cache's next window position (its K/V land right after the valid prefix): v.

        Several caches (one per stream): the rows of `latents` are theirs in order, `batch_size` rows each."""
        caches = _as_list(caches)
        batch_size, _, num_frames, height, width = latents.shape
        for cache in caches:
            if not cache.references_ready:
                raise ValueError("Call prefill_references(cache, reference_latents) before generating blocks.")
            if (height, width) != cache.latent_size:
                raise ValueError(
                    f"latents {tuple(latents.shape)} do not fit the cache (latent_size={cache.latent_size})."
                )
            if not 1 <= num_frames <= cache.block_size or cache.num_latent_frames + num_frames > cache.kv_window:
                raise ValueError(
                    f"A block has 1..{cache.block_size} latent frames and must fit the KV window "
                    f"({cache.num_latent_frames} + {num_frames} > {cache.kv_window}); got {num_frames}."
                )
        if batch_size != sum(cache.batch_size for cache in caches):
            raise ValueError(
                f"latents {tuple(latents.shape)} do not fit the cache (B={[c.batch_size for c in caches]} rows)."
            )
        timestep = self._frame_timesteps(timestep, batch_size, num_frames, latents.device).contiguous()  # (B, k)
        for cache in caches:
            if cache.static_shapes:
                cache.position.fill_(cache.num_latent_frames)  # on the device, outside any captured graph
        cache = caches[0] if len(caches) == 1 else caches  # one cache: the fast path may replay its CUDA graph
        inputs = (cache, latents, timestep, audio_features, drop_audio, stream_start)
        if self._cached_step_runner is not None:
            return self._cached_step_runner(self._cached_step, *inputs)
        return self._cached_step(*inputs)

    def set_cached_step_runner(self, runner: Callable[..., torch.Tensor] | None) -> None:
        """Run the tensor work of every cached pass as `runner(step, cache, latents, timestep, audio_features,
        drop_audio, stream_start)`, where `step` is `_cached_step` (the fast path's CUDA graphs,
        `portrait_rt.fast_path.CachedStepGraphs`, replay it) and `cache` one `KVCache` or a list (several streams);
        None: `step` runs as it is."""
        self._cached_step_runner = runner

    def _cached_step(
        self,
        cache: KVCache | list[KVCache],
        latents: torch.Tensor,
        timestep: torch.Tensor,
        audio_features: torch.Tensor,
        drop_audio: torch.Tensor | None,
        stream_start: bool,
    ) -> torch.Tensor:
        """The tensor work of `_cached_pass` (checked inputs, (B, k) `timestep`): with `cache.static_shapes` it reads
        no Python state that changes along a stream, so the fast path can capture it as one CUDA graph."""
        _, _, num_frames, height, width = latents.shape
        audio = self._embed_audio(audio_features, num_frames, stream_start, drop_audio)  # (B, k, Dae)
        hidden_states = self._embed_video(latents, audio, stream_start)  # (B, k*h*w, D)
        temb, temb_proj = self._embed_timestep(timestep)
        temb_proj = temb_proj.repeat_interleave(height * width, dim=1)  # (B, k*h*w, 6, D)
        windows = [self._window(c, num_frames, height, width) for c in _as_list(cache)]  # (rotary, mask, layers)
        if isinstance(cache, list):  # one (rotary, mask) per cache; the caches' (key, value, offset) per layer
            rotary_emb, mask = [w[0] for w in windows], [w[1] for w in windows]
            layers = [list(per_layer) for per_layer in zip(*(w[2] for w in windows))]
        else:
            rotary_emb, mask, layers = windows[0]
        hidden_states = self._run_blocks(hidden_states, temb_proj, rotary_emb, attention_mask=mask, kv_caches=layers)
        return self._head(hidden_states, temb, latents.shape)

    def _window(self, cache: KVCache, num_frames: int, height: int, width: int):
        """Where the next block sits in `cache`'s window: its RoPE angles, the attention mask (static shapes only)
        and the per-layer (key, value, write offset)."""
        device = cache.key.device
        if cache.static_shapes:
            window_frame = cache.position  # 0-d device tensor
            offset = cache.num_reference_tokens + window_frame * cache.tokens_per_frame
            tokens = torch.arange(cache.key.shape[2], device=device)
            mask = (tokens < offset + num_frames * height * width)[None, None, None]  # (1, 1, 1, N): valid + block
        else:
            window_frame = cache.num_latent_frames
            offset = cache.num_reference_tokens + window_frame * cache.tokens_per_frame
            mask = None
        positions = FIRST_VIDEO_FRAME_POSITION + window_frame + torch.arange(num_frames, device=device)
        return self.rope(positions, height, width), mask, self._layer_caches(cache, offset)

    def forward_cached(
        self,
        cache: KVCache | Sequence[KVCache],
        latents: torch.Tensor,
        timestep: torch.Tensor | float,
        audio_features: torch.Tensor,
        drop_audio: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Velocity of one noisy block (B, C, k, h, w) attending to the cache (Algorithm 2 step 2).

        `timestep`: (B,) (or (B, k)). `audio_features`: this block's per-video-frame features, 1 + 4(k-1) frames
        for the stream's first block, else 4k. Leaves the cache's state unchanged (it only uses the scratch slots
        past the valid prefix). Returns v (B, C_out, k, h, w).

        A list of caches (one per stream, at any window positions; all at their stream's first block or none): the
        rows of `latents` are theirs in order, and each stream's rows get what they would alone.
        """
        return self._cached_pass(cache, latents, timestep, audio_features, drop_audio, _stream_start(cache))

    def update_cache(
        self,
        cache: KVCache | Sequence[KVCache],
        clean_latents: torch.Tensor,
        audio_features: torch.Tensor,
        drop_audio: torch.Tensor | None = None,
    ) -> None:
        """The t = 0 pass on the generated block: append its K/V to the cache (Algorithm 2 step 3).

        When the window then holds `kv_window` frames, the cache resets to KV_r and the block is re-fed at window
        positions 0..k-1. The uncached equivalent of the blocks that follow is `forward(..., context_latents=...,
        stream_start=False)` over a window whose first block is this re-fed block. A list of caches: as in
        `forward_cached`; only the caches whose window is full re-feed (their rows alone).
        """
        caches, was_start, num_latent_frames = _as_list(cache), _stream_start(cache), clean_latents.shape[2]
        self._cached_pass(caches, clean_latents, 0.0, audio_features, drop_audio, was_start)
        for c in caches:
            c.advance(num_latent_frames)
        full = [i for i, c in enumerate(caches) if c.is_full]
        if not full:
            return
        if len(full) < len(caches):  # the rows of the caches that reset
            starts = [0, *itertools.accumulate(c.batch_size for c in caches)]
            rows = torch.cat([torch.arange(starts[i], starts[i + 1]) for i in full]).to(clean_latents.device)
            clean_latents, audio_features = clean_latents[rows], audio_features[rows]
            drop_audio = None if drop_audio is None else drop_audio[rows]
        caches = [caches[i] for i in full]
        for c in caches:  # reset to the references, re-feed the last block
            c.reset_window()
        self._cached_pass(caches, clean_latents, 0.0, audio_features, drop_audio, was_start)
        for c in caches:
            c.advance(num_latent_frames)


def _as_list(cache: KVCache | Sequence[KVCache]) -> list[KVCache]:
    return [cache] if isinstance(cache, KVCache) else list(cache)


def _stream_start(cache: KVCache | Sequence[KVCache]) -> bool:
    """Whether the next block is the streams' first (mask token, first-frame audio embedder): one answer for all."""
    starts = {c.stream_start for c in _as_list(cache)}
    if len(starts) != 1:
        raise ValueError("A stream's first block runs apart from streams already under way; batch them separately.")
    return starts.pop()
