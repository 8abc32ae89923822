"""Building blocks of the causal video VAE (paper §3.1, supplementary "Causal residual video auto-encoding").

Every temporal module follows one streaming convention (CogVideoX style): `forward(x, cache) -> (y, new_cache)`,
where `cache=None` means "this chunk starts the stream" and the returned cache is a plain value (a tensor or a
list of them) to pass with the next chunk. Modules hold no state between calls.

Tensors are `(B, C, T, H, W)` throughout.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from diffusers.models.attention import AttentionModuleMixin
from diffusers.models.attention_dispatch import dispatch_attention_fn
from torch import nn

Cache = torch.Tensor | list | None


class RMSNorm(nn.Module):
    """RMSNorm over one dimension (channels for `(B, C, T, H, W)` maps, the last one for tokens).

    Per-position statistics keep it causal (paper §3.1, unlike GroupNorm over time); computed in float32 so that
    bf16/fp16 inputs stay stable, then cast back.
    """

    def __init__(self, dim: int, channel_dim: int = 1, eps: float = 1e-6):
        super().__init__()
        self.channel_dim = channel_dim
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(self.channel_dim, keepdim=True) + self.eps)
        shape = [1] * x.ndim
        shape[self.channel_dim] = -1
        return (h * self.weight.float().view(shape)).to(x.dtype)


class CausalConv3d(nn.Module):
    """3D convolution that pads the past only: output frame i sees input frames <= i.

    Stream start pads with zeros; the cache is the last `kernel_t - 1` input frames. A kernel with one frame
    (the `(1, 3, 3)` convs of CR-VA) runs as a frame-wise 2D convolution (several times faster on CPU) and needs
    no cache. Spatial padding is done by hand because `Conv3d(padding=...)` is much slower on CPU.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int, int] = 3):
        super().__init__()
        kt, kh, kw = (kernel_size,) * 3 if isinstance(kernel_size, int) else kernel_size
        self.time_pad = kt - 1
        self.space_pad = (kw // 2, kw // 2, kh // 2, kh // 2)
        self.conv = nn.Conv3d(in_channels, out_channels, (kt, kh, kw))

    def forward(self, x: torch.Tensor, cache: Cache = None) -> tuple[torch.Tensor, Cache]:
        b, _, t, h, w = x.shape
        if self.time_pad == 0:
            frames = F.pad(x.transpose(1, 2).reshape(b * t, -1, h, w), self.space_pad)  # (B*T, C, H + 2, W + 2)
            y = _conv(frames, self.conv.weight[:, :, 0], self.conv.bias)
            return y.view(b, t, -1, h, w).transpose(1, 2), None  # (B, C_out, T, H, W)
        # One copy: zero-pad space and the past together, then write the cached past frames in.
        pw, ph = self.space_pad[0], self.space_pad[2]
        x = F.pad(x, (*self.space_pad, self.time_pad, 0))  # (B, C, pad + T, H + 2ph, W + 2pw)
        if cache is not None:
            x[:, :, : self.time_pad, ph : ph + h, pw : pw + w] = cache
        new_cache = x[:, :, -self.time_pad :, ph : ph + h, pw : pw + w].clone()
        if self.conv.out_channels < 8 and _on_onednn(x):  # the RGB head: oneDNN is ~2x faster on channels-last input
            x = x.contiguous(memory_format=torch.channels_last_3d)
        return _conv(x, self.conv.weight, self.conv.bias), new_cache


def _on_onednn(x: torch.Tensor) -> bool:
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and not torch.compiler.is_compiling()
        and (torch.backends.mkldnn.is_available())
    )


def _conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """An unpadded 2D or 3D convolution. Eager float32 on the CPU always through oneDNN: PyTorch routes a small batch
    (N*C*T*H) to its slow native kernel (oneDNN is up to 4x faster there; the same op `Conv3d` picks for larger
    inputs, differentiable), which also rounds differently; oneDNN gives each sample the same result at any batch
    size, so streams decoded batched in a group get exactly their frames alone."""
    if _on_onednn(x):
        n = x.ndim - 2
        return torch.ops.aten.mkldnn_convolution(x, weight, bias, [0] * n, [1] * n, [1] * n, 1).contiguous()
    return (F.conv3d if x.ndim == 5 else F.conv2d)(x, weight, bias)


class CausalResBlock(nn.Module):
    """Two causal convolutions with an identity residual (supplementary "Network architecture")."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.norm1 = RMSNorm(channels, eps=eps)
        self.conv1 = CausalConv3d(channels, channels)
        self.norm2 = RMSNorm(channels, eps=eps)
        self.conv2 = CausalConv3d(channels, channels)

    def forward(self, x: torch.Tensor, cache: Cache = None) -> tuple[torch.Tensor, Cache]:
        c1, c2 = cache if cache is not None else (None, None)
        h, c1 = self.conv1(F.silu(self.norm1(x)), c1)
        h, c2 = self.conv2(F.silu(self.norm2(h)), c2)
        return x + h, [c1, c2]


class CausalConvOut(nn.Module):
    """Norm, SiLU, causal conv: the head that maps features to latent moments or to pixels."""

    def __init__(self, in_channels: int, out_channels: int, eps: float = 1e-6):
        super().__init__()
        self.norm = RMSNorm(in_channels, eps=eps)
        self.conv = CausalConv3d(in_channels, out_channels)

    def forward(self, x: torch.Tensor, cache: Cache = None) -> tuple[torch.Tensor, Cache]:
        return self.conv(F.silu(self.norm(x)), cache)


class CausalSequential(nn.ModuleList):
    """Runs cached modules in order, threading one cache per child; supports gradient checkpointing."""

    def __init__(self, modules: list[nn.Module]):
        super().__init__(modules)
        self.gradient_checkpointing = False

    def forward(
        self, x: torch.Tensor, cache: Cache = None, after: dict[int, Callable] | None = None
    ) -> tuple[torch.Tensor, Cache]:
        """`after[i]`, if given, is called on x after child i and returns the x to go on with (the VAE reads E1's
        H/4 features of the references this way, for `ReferenceWarp`)."""
        new_cache = []
        for i, module in enumerate(self):
            c = None if cache is None else cache[i]
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                x, c = self._gradient_checkpointing_func(module, x, c)
            else:
                x, c = module(x, c)
            if after and i in after:
                x = after[i](x)
            new_cache.append(c)
        return x, new_cache


# --- CR-VA: causal residual video auto-encoding (paper §3.1, supplementary Figure III) -------------------------


def pixel_unshuffle_3d(x: torch.Tensor, kt: int, ks: int) -> torch.Tensor:
    """Space/time-to-channel: `(B, C, T, H, W) -> (B, C*kt*ks*ks, T/kt, H/ks, W/ks)`, channel-major."""
    b, c, t, h, w = x.shape
    x = x.view(b, c, t // kt, kt, h // ks, ks, w // ks, ks)
    x = x.permute(0, 1, 3, 5, 7, 2, 4, 6)  # (B, C, kt, ks, ks, T', H', W')
    return x.reshape(b, c * kt * ks * ks, t // kt, h // ks, w // ks)


def pixel_shuffle_3d(x: torch.Tensor, kt: int, ks: int) -> torch.Tensor:
    """Channel-to-space/time, the inverse of `pixel_unshuffle_3d`."""
    b, c, t, h, w = x.shape
    c_out = c // (kt * ks * ks)
    x = x.view(b, c_out, kt, ks, ks, t, h, w)
    x = x.permute(0, 1, 5, 2, 6, 3, 7, 4)  # (B, C', T, kt, H, ks, W, ks)
    return x.reshape(b, c_out, t * kt, h * ks, w * ks)


def split_first(x: torch.Tensor, first: bool) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Split-first: at stream start frame 0 is kept out of temporal resampling, so it depends on itself only."""
    return (x[:, :, :1], x[:, :, 1:]) if first else (None, x)


def join_first(x0: torch.Tensor | None, xt: torch.Tensor | None) -> torch.Tensor:
    return xt if x0 is None else x0 if xt is None else torch.cat([x0, xt], dim=2)


def pixel_unshuffle_shortcut(x: torch.Tensor, kt: int, ks: int, out_channels: int, first: bool) -> torch.Tensor:
    """Parameter-free CR-VA shortcut going down: temporal then spatial unshuffle, channel averaging to match."""
    b, c = x.shape[:2]
    # 1. Temporal (split-first): fold kt frames into channels, average the kt copies of each channel.
    if kt > 1:
        x0, xt = split_first(x, first)
        if xt.shape[2] > 0:
            xt = pixel_unshuffle_3d(xt, kt, 1)
            xt = xt.view(b, c, kt, *xt.shape[2:]).mean(dim=2)  # (B, C, T'/kt, H, W)
        x = join_first(x0, xt)
    # 2. Spatial (all frames): fold ks x ks into channels, average consecutive groups down to out_channels.
    x = pixel_unshuffle_3d(x, 1, ks)  # (B, C*ks*ks, T, H/ks, W/ks)
    return x.view(b, out_channels, -1, *x.shape[2:]).mean(dim=2)


def pixel_shuffle_shortcut(x: torch.Tensor, kt: int, ks: int, out_channels: int, first: bool) -> torch.Tensor:
    """Parameter-free CR-VA shortcut going up: spatial then temporal, channel duplication then shuffle."""
    # 1. Spatial: duplicate channels, channel-to-space.
    x = x.repeat_interleave(out_channels * ks * ks // x.shape[1], dim=1)
    x = pixel_shuffle_3d(x, 1, ks)  # (B, C_out, T, H*ks, W*ks)
    # 2. Temporal (split-first): duplicate channels kt times, channel-to-time.
    if kt > 1:
        x0, xt = split_first(x, first)
        xt = pixel_shuffle_3d(xt.repeat_interleave(kt, dim=1), kt, 1) if xt.shape[2] > 0 else None
        x = join_first(x0, xt)
    return x


class DownsampleBlock3d(nn.Module):
    """Spatio-temporal downsampling with CR-VA (supplementary Figure III, Algorithm 1).

    Main branch: temporal (split-first) `conv_t` + unshuffle, then spatial `conv_s` + unshuffle; plus the
    parameter-free `pixel_unshuffle_shortcut`. With `use_crva=False` it is the interpolation baseline of the
    paper's Table 2 ("w/o CR-VA"): average pooling (split-first in time), then one causal conv, no shortcut.
    """

    def __init__(self, in_channels: int, out_channels: int, kt: int, ks: int, use_crva: bool = True):
        super().__init__()
        if use_crva and (in_channels % kt or out_channels % (ks * ks) or (in_channels * ks * ks) % out_channels):
            raise ValueError(
                f"CR-VA downsampling {in_channels}->{out_channels} channels (kt={kt}, ks={ks}) needs in_channels "
                "divisible by kt, out_channels by ks*ks, and in_channels*ks*ks by out_channels; change the widths."
            )
        self.kt, self.ks, self.out_channels, self.use_crva = kt, ks, out_channels, use_crva
        if use_crva:
            self.conv_t = CausalConv3d(in_channels, in_channels // kt, (1, 3, 3)) if kt > 1 else None
            self.conv_s = CausalConv3d(in_channels, out_channels // (ks * ks))
        else:
            self.conv = CausalConv3d(in_channels, out_channels)

    def forward(self, x: torch.Tensor, cache: Cache = None) -> tuple[torch.Tensor, Cache]:
        first = cache is None
        if not self.use_crva:
            if self.kt > 1:
                x0, xt = split_first(x, first)
                xt = F.avg_pool3d(xt, (self.kt, 1, 1)) if xt.shape[2] > 0 else None
                x = join_first(x0, xt)
            x = F.avg_pool3d(x, (1, self.ks, self.ks))
            x, c = self.conv(x, None if first else cache[0])
            return x, [c]
        # Residual encoding branch (parameter-free).
        h = pixel_unshuffle_shortcut(x, self.kt, self.ks, self.out_channels, first)
        # Main branch: 1. temporal (split-first).
        if self.kt > 1:
            x0, xt = split_first(x, first)
            if xt.shape[2] > 0:
                xt = pixel_unshuffle_3d(self.conv_t(xt)[0], self.kt, 1)  # (B, C_in, T'/kt, H, W)
            x = join_first(x0, xt if xt.shape[2] > 0 else None)
        # Main branch: 2. spatial (all frames).
        x, c = self.conv_s(x, None if first else cache[0])
        x = pixel_unshuffle_3d(x, 1, self.ks)  # (B, C_out, T, H/ks, W/ks)
        return x + h, [c]


class UpsampleBlock3d(nn.Module):
    """Spatio-temporal upsampling with CR-VA (supplementary Figure III, Algorithm 2).

    Main branch: spatial `conv_s` + shuffle, then temporal (split-first) `conv_t` + shuffle; plus the
    parameter-free `pixel_shuffle_shortcut`. With `use_crva=False` it is the interpolation baseline: one causal
    conv at the low resolution, then nearest-neighbour upsampling (split-first in time), no shortcut.
    """

    def __init__(self, in_channels: int, out_channels: int, kt: int, ks: int, use_crva: bool = True):
        super().__init__()
        if use_crva and (out_channels * ks * ks) % in_channels:
            raise ValueError(
                f"CR-VA upsampling {in_channels}->{out_channels} channels (ks={ks}) needs out_channels*ks*ks "
                "divisible by in_channels; change the widths."
            )
        self.kt, self.ks, self.out_channels, self.use_crva = kt, ks, out_channels, use_crva
        if use_crva:
            self.conv_s = CausalConv3d(in_channels, out_channels * ks * ks)
            self.conv_t = CausalConv3d(out_channels, out_channels * kt, (1, 3, 3)) if kt > 1 else None
        else:
            self.conv = CausalConv3d(in_channels, out_channels)

    def forward(self, x: torch.Tensor, cache: Cache = None) -> tuple[torch.Tensor, Cache]:
        first = cache is None
        if not self.use_crva:
            x, c = self.conv(x, None if first else cache[0])
            x = x.repeat_interleave(self.ks, dim=3).repeat_interleave(self.ks, dim=4)
            if self.kt > 1:
                x0, xt = split_first(x, first)
                x = join_first(x0, xt.repeat_interleave(self.kt, dim=2) if xt.shape[2] > 0 else None)
            return x, [c]
        # Residual encoding branch (parameter-free).
        h = pixel_shuffle_shortcut(x, self.kt, self.ks, self.out_channels, first)
        # Main branch: 1. spatial.
        x, c = self.conv_s(x, None if first else cache[0])
        x = pixel_shuffle_3d(x, 1, self.ks)  # (B, C_out, T, H*ks, W*ks)
        # Main branch: 2. temporal (split-first).
        if self.kt > 1:
            x0, xt = split_first(x, first)
            xt = pixel_shuffle_3d(self.conv_t(xt)[0], self.kt, 1) if xt.shape[2] > 0 else None
            x = join_first(x0, xt)  # (B, C_out, 1 + kt*(T-1) or kt*T, H*ks, W*ks)
        return x + h, [c]


# --- Dref: reference-guidance transformer (paper §3.1 "Reference guidance injection with Transformer") ---------


def rope_2d(h: int, w: int, head_dim: int, device: torch.device, theta: float = 100.0) -> torch.Tensor:
    """Axial 2D rotary angles for an `h x w` grid: `(h*w, head_dim/2)`, half the pairs for rows, half for columns."""
    quarter = head_dim // 4
    freqs = theta ** (-torch.arange(quarter, device=device, dtype=torch.float32) / quarter)
    ang_y = torch.arange(h, device=device, dtype=torch.float32)[:, None] * freqs  # (h, d/4)
    ang_x = torch.arange(w, device=device, dtype=torch.float32)[:, None] * freqs  # (w, d/4)
    ang = torch.cat([ang_y[:, None].expand(h, w, quarter), ang_x[None].expand(h, w, quarter)], dim=-1)
    return ang.reshape(h * w, 2 * quarter)


def apply_rope(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive pairs of `x` (..., S, D) by `angles` (S, D/2); computed in float32."""
    xf = x.float().unflatten(-1, (-1, 2))
    cos, sin = angles.cos(), angles.sin()
    out = torch.stack([xf[..., 0] * cos - xf[..., 1] * sin, xf[..., 0] * sin + xf[..., 1] * cos], dim=-1)
    return out.flatten(-2).to(x.dtype)


class DrefAttnProcessor:
    """Dref's attention math: q/k RMSNorm per head, 2D RoPE, then `dispatch_attention_fn` on (N, S, heads, head_dim)
    tensors, so the backend (SDPA and its math / flash / memory-efficient kernels, flex, ...) is a setting:
    `CausalVideoVAE.set_attention_backend(name)`, as for the DiT."""

    _attention_backend = None
    _parallel_config = None

    def __call__(
        self, attn: Attention, x: torch.Tensor, context: torch.Tensor, rope_q: torch.Tensor, rope_k: torch.Tensor
    ) -> torch.Tensor:
        # x: (N, S, dim), context: (N, S_k, context_dim); rope_*: (S, head_dim/2) angles.
        q = attn.norm_q(attn.to_q(x).unflatten(-1, (attn.heads, -1)).transpose(1, 2))  # (N, heads, S, head_dim)
        k = attn.norm_k(attn.to_k(context).unflatten(-1, (attn.heads, -1)).transpose(1, 2))
        v = attn.to_v(context).unflatten(-1, (attn.heads, -1)).transpose(1, 2)
        q, k = apply_rope(q, rope_q), apply_rope(k, rope_k)
        out = dispatch_attention_fn(  # (N, S, heads, head_dim)
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), backend=self._attention_backend
        )
        return attn.to_out(out.flatten(2))  # (N, S, dim)


class Attention(nn.Module, AttentionModuleMixin):
    """Multi-head attention weights with q/k RMSNorm (per head); the math, with 2D RoPE, is in the processor."""

    _default_processor_cls = DrefAttnProcessor
    _available_processors = [DrefAttnProcessor]

    def __init__(self, dim: int, heads: int, head_dim: int, context_dim: int | None = None, eps: float = 1e-6):
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.to_q = nn.Linear(dim, inner)
        self.to_k = nn.Linear(context_dim or dim, inner)
        self.to_v = nn.Linear(context_dim or dim, inner)
        self.norm_q = RMSNorm(head_dim, channel_dim=-1, eps=eps)
        self.norm_k = RMSNorm(head_dim, channel_dim=-1, eps=eps)
        self.to_out = nn.Linear(inner, dim)
        self.set_processor(self._default_processor_cls())

    def forward(
        self, x: torch.Tensor, context: torch.Tensor, rope_q: torch.Tensor, rope_k: torch.Tensor
    ) -> torch.Tensor:
        return self.processor(self, x, context, rope_q, rope_k)


class ReferenceTransformerBlock(nn.Module):
    """One Dref block: frame-wise self-attention, cross-attention to reference features, MLP (pre-norm)."""

    def __init__(self, dim: int, heads: int, head_dim: int, context_dim: int, mlp_ratio: float, eps: float = 1e-6):
        super().__init__()
        self.norm1 = RMSNorm(dim, channel_dim=-1, eps=eps)
        self.self_attn = Attention(dim, heads, head_dim, eps=eps)
        self.norm2 = RMSNorm(dim, channel_dim=-1, eps=eps)
        self.cross_attn = Attention(dim, heads, head_dim, context_dim=context_dim, eps=eps)
        self.norm3 = RMSNorm(dim, channel_dim=-1, eps=eps)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None, rope: torch.Tensor, context_rope: torch.Tensor | None
    ) -> torch.Tensor:
        # x: (B, T, S, dim) tokens of T latent frames; context: (B, M*S, context_dim) or None when M = 0.
        b, t, s, d = x.shape
        h = self.norm1(x).reshape(b * t, s, d)  # frame-wise: each frame attends to itself only (causal)
        x = x + self.self_attn(h, h, rope, rope).reshape(b, t, s, d)
        if context is not None:
            # Keys are the same for every frame, so all T*S queries attend to them in one call.
            h = self.norm2(x).reshape(b, t * s, d)
            x = x + self.cross_attn(h, context, rope.repeat(t, 1), context_rope).reshape(b, t, s, d)
        return x + self.mlp(self.norm3(x))


class ReferenceWarp(nn.Module):
    """Reference detail by warping (not in the paper; `CausalVideoVAE(ref_warp_channels=...)`).

    Per decoded frame and reference image, a small conv head at H/4 looks at the frame's and the reference's 4 x 4
    pixel patches and the reference's E1 features there, and predicts a flow (in pixels, bilinearly upsampled to
    H) and a blend logit. The output is the softmax-weighted mix, per pixel, of the decoded frame (logit 0) and each
    reference warped by its flow: sharp wherever a reference shows the same thing, the decoder's own pixels where
    none does (an open mouth, closed eyes). The head's last conv starts at zero: identity flow, equal weights.
    Frame-wise, so causal and cache-free.
    """

    downscale = 4

    def __init__(self, feature_channels: int, hidden: int):
        super().__init__()
        patch = 3 * self.downscale**2
        self.input_channels = feature_channels + patch  # per reference token: E1 features + its pixel patch
        self.head = nn.Sequential(
            nn.Conv2d(self.input_channels + patch, hidden, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(hidden, hidden, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(hidden, 3, 3, padding=1),  # flow x, flow y (pixels), blend logit
        )
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def forward(self, frames: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
        # frames: (B, 3, T, H, W) decoded; references: (B, M, input_channels, H/4, W/4) E1 features + pixel patches.
        b, _, t, height, width = frames.shape
        m, d = references.shape[1], self.downscale
        frames_2d = frames.transpose(1, 2).reshape(b * t, 3, height, width)  # (B*T, 3, H, W)
        current = F.pixel_unshuffle(frames_2d.detach().clamp(-1, 1), d).view(b, t, 1, -1, height // d, width // d)
        refs = references[:, None].expand(b, t, m, *references.shape[2:])
        inputs = torch.cat([current.expand(b, t, m, *current.shape[3:]), refs], dim=3).flatten(0, 2)  # (BTM, C, h, w)
        out = F.interpolate(self.head(inputs), size=(height, width), mode="bilinear", align_corners=False)
        flow, logit = out[:, :2] * d, out[:, 2:]  # (B*T*M, 2, H, W) pixels, (B*T*M, 1, H, W)
        # Sample each reference image at (pixel + flow), in grid_sample's [-1, 1] coordinates.
        ys, xs = torch.meshgrid(torch.arange(height, device=frames.device), torch.arange(width, device=frames.device),
                                indexing="ij")  # fmt: skip
        base = torch.stack([xs, ys], dim=-1).to(frames.dtype)  # (H, W, 2) pixel centres
        scale = torch.tensor([2.0 / width, 2.0 / height], dtype=frames.dtype, device=frames.device)
        grid = (base + 0.5 + flow.permute(0, 2, 3, 1)) * scale - 1
        images = F.pixel_shuffle(refs.flatten(0, 2)[:, -3 * d * d :], d)  # (B*T*M, 3, H, W)
        warped = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
        # Blend: softmax over [decoded frame (logit 0), reference 1..M].
        logits = torch.cat([logit.new_zeros(b * t, 1, height, width), logit.view(b * t, m, height, width)], dim=1)
        weights = logits.softmax(dim=1).unsqueeze(2)  # (B*T, 1+M, 1, H, W)
        warped = warped.view(b * t, m, 3, height, width)
        sources = torch.cat([frames_2d[:, None], warped], dim=1)  # (B*T, 1+M, 3, H, W)
        out = (weights * sources).sum(dim=1)  # (B*T, 3, H, W)
        return out.view(b, t, 3, height, width).transpose(1, 2)
