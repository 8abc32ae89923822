"""CausalVideoVAE: the reference-guided causal deep-compression video VAE of paper §3.1.

    video (B, 3, 1+4n, H, W) --E1--> features (B, C_f, 1+n, H/16, W/16) --E2--> latent (B, 64, 1+n, H/64, W/64)
    latent --D1--> (B, C_f, 1+n, H/16, W/16) --Dref(+ E1 features of M reference images)--> --D2--> video

Layout (paper §4.1 "Network architectures", supplementary Figure II/III). Figure II (the per-block widths) is
not in our copy of the paper, so the widths are our choice, fitted to the stated sizes (encoder 497M, decoder
406M parameters); the structure follows the text:

- E1: `conv_in`, then 4 stages of `layers_per_block` CausalResBlocks followed by one CR-VA downsampling block
  (spatial /2 each, temporal /2 in stages 2 and 3, i.e. at "blocks 4 and 6" when each stage is one residual
  block and one resampling block); `feature_channels` (1024 in the paper) out at H/16.
- E2: 2 stages of `latent_layers_per_block` CausalResBlocks + a spatial CR-VA downsampling block (/64 in all),
  then norm, SiLU and a causal conv to the posterior moments (mean and log-variance, 2 x 64 channels).
- D1 mirrors E2 (causal conv in, then up blocks each followed by residual blocks), Dref is `ref_num_layers`
  transformer blocks (frame-wise self-attention, cross-attention to the E1 features of M = 0..3 reference
  images, MLP; width `ref_num_attention_heads * ref_attention_head_dim` = `feature_channels`), D2 mirrors E1.

Choices where the paper is silent: causal convs pad the past with zeros at stream start; ResBlocks are
pre-activation (RMSNorm, SiLU, conv) x 2; attention uses q/k RMSNorm and 2D RoPE over the H/16 grid (on the
references too, so a video token and the reference token at the same place see zero relative offset; no
reference index is encoded, so the result does not depend on the order of the references); the decoder output
is not squashed (L1 training sees raw values), `decode`/`decode_chunk` clamp to [-1, 1]. `use_crva=False` gives
the paper's Table 2 "w/o CR-VA" interpolation baseline (pooling / nearest upsampling plus one conv, no
shortcut). Latents are raw; the DiT sees `(z - shift_factor) * scaling_factor`.

Not in the paper, off in the `paper` preset: `ref_warp_channels > 0` adds `ReferenceWarp` after D2, which blends the
decoded frames with the reference images warped by a predicted flow. At small sizes Dref's H/16 grid is too coarse
to carry eyes, glasses or a patterned background; the warp copies them from the references instead.
"""

from __future__ import annotations

import math

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import DecoderOutput, DiagonalGaussianDistribution
from diffusers.models.modeling_outputs import AutoencoderKLOutput
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from ..constants import LATENT_CHANNELS, SPATIAL_COMPRESSION, TEMPORAL_COMPRESSION
from .vae_blocks import (
    CausalConv3d,
    CausalConvOut,
    CausalResBlock,
    CausalSequential,
    DownsampleBlock3d,
    ReferenceTransformerBlock,
    ReferenceWarp,
    RMSNorm,
    UpsampleBlock3d,
    pixel_shuffle_3d,
    pixel_unshuffle_3d,
    rope_2d,
)

VAECache = list  # [E1 cache, E2 cache] or [D1 cache, D2 cache]: nested lists of tensors, see vae_blocks


def _per_stage(value: int | list[int] | tuple[int, ...], n: int, name: str) -> list[int]:
    values = [value] * n if isinstance(value, int) else list(value)
    if len(values) != n:
        raise ValueError(f"{name} must be an int or a list of {n} ints, got {value!r}.")
    return values


class ReferenceGuidanceDecoder(nn.Module):
    """Dref: transformer fusion of D1's features with the E1 features of M reference images (paper §3.1).

    Self-attention is frame-wise (each latent frame attends within itself), so Dref is causal and needs no
    streaming cache; cross-attention keys are all `M * H/16 * W/16` reference tokens. M = 0 skips it.
    """

    def __init__(self, channels: int, num_layers: int, heads: int, head_dim: int, mlp_ratio: float, eps: float):
        super().__init__()
        if heads * head_dim != channels or head_dim % 4:
            raise ValueError(
                f"Dref width ref_num_attention_heads*ref_attention_head_dim = {heads}*{head_dim} must equal "
                f"feature_channels = {channels}, with a head dim divisible by 4 (2D RoPE)."
            )
        self.head_dim = head_dim
        self.norm_context = RMSNorm(channels, channel_dim=-1, eps=eps)
        self.blocks = nn.ModuleList(
            [ReferenceTransformerBlock(channels, heads, head_dim, channels, mlp_ratio, eps) for _ in range(num_layers)]
        )
        self.gradient_checkpointing = False

    def forward(self, f_z: torch.Tensor, f_c: torch.Tensor | None) -> torch.Tensor:
        b, c, t, h, w = f_z.shape
        x = f_z.permute(0, 2, 3, 4, 1).reshape(b, t, h * w, c).contiguous()  # (B, T, S, C) tokens
        rope = rope_2d(h, w, self.head_dim, f_z.device)  # (S, head_dim/2)
        context = context_rope = None
        if f_c is not None and f_c.shape[1] > 0:
            m = f_c.shape[1]
            context = self.norm_context(f_c.permute(0, 1, 3, 4, 2).reshape(b, m * h * w, c))  # (B, M*S, C)
            context_rope = rope.repeat(m, 1)
        for block in self.blocks:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                x = self._gradient_checkpointing_func(block, x, context, rope, context_rope)
            else:
                x = block(x, context, rope, context_rope)
        return x.reshape(b, t, h, w, c).permute(0, 4, 1, 2, 3).contiguous()  # (B, C, T, H/16, W/16)


class CausalVideoVAE(ModelMixin, ConfigMixin):
    r"""Reference-guided causal video VAE with CR-VA and streaming (chunked, cached) encode and decode.

    Compression: 4x in time (the first frame alone in the first latent frame), 64x in space, 64 channels.
    Streams start with `cache=None`; every call returns the cache to pass with the next chunk. The first chunk
    holds `1 + 4n` video frames (or n+1 latent frames), later ones `4n` video frames (or n latent frames).
    One-shot `encode`/`decode` are the first chunk of a stream.

    Args:
        resolution: the square frame size the preset is meant for (any multiple of 64 runs).
        block_out_channels: E1 stage widths (full resolution first); D2 uses `decoder_block_out_channels`.
        feature_channels: C_f, the E1 output width at H/16 (also D1's output and Dref's width).
        latent_block_out_channels: E2 block output widths; D1 uses `decoder_latent_block_out_channels`.
        layers_per_block / decoder_layers_per_block: CausalResBlocks per E1 / D2 stage (int or one per stage).
        latent_layers_per_block: CausalResBlocks per E2 / D1 block.
        temporal_downsample: which E1 stages halve time (two of them: 4x).
        ref_num_layers, ref_num_attention_heads, ref_attention_head_dim, ref_mlp_ratio: Dref size.
        ref_warp_channels: not in the paper (0 in the `paper` preset). Width of `ReferenceWarp`'s head: the decoded
            frames are blended, per pixel, with each reference image warped by a flow predicted at H/4. Dref's H/16
            grid is 8 x 8 at 128²: an eye is smaller than a cell, so without this nothing finer than 16 px comes
            from the references. Its H/4 inputs (E1 features and pixels) travel in `f_c`, space-to-channel at H/16.
        use_crva: False gives the interpolation baseline without CR-VA shortcuts (paper Table 2).
        scaling_factor, shift_factor: latent normalisation for the DiT: `(z - shift_factor) * scaling_factor`.
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = ["CausalResBlock", "ReferenceTransformerBlock"]
    _repeated_blocks = ["CausalResBlock", "UpsampleBlock3d", "ReferenceTransformerBlock"]  # regional compilation

    @register_to_config
    def __init__(
        self,
        resolution: int = 128,
        in_channels: int = 3,
        latent_channels: int = LATENT_CHANNELS,
        block_out_channels: tuple[int, ...] = (32, 64, 128, 256),
        feature_channels: int = 256,
        latent_block_out_channels: tuple[int, ...] = (256, 256),
        layers_per_block: int | tuple[int, ...] = 1,
        latent_layers_per_block: int = 1,
        decoder_block_out_channels: tuple[int, ...] | None = None,
        decoder_latent_block_out_channels: tuple[int, ...] | None = None,
        decoder_layers_per_block: int | tuple[int, ...] | None = None,
        temporal_downsample: tuple[bool, ...] = (False, True, True, False),
        ref_num_layers: int = 2,
        ref_num_attention_heads: int = 4,
        ref_attention_head_dim: int = 64,
        ref_mlp_ratio: float = 4.0,
        ref_warp_channels: int = 0,
        use_crva: bool = True,
        scaling_factor: float = 1.0,
        shift_factor: float = 0.0,
        norm_eps: float = 1e-6,
    ):
        super().__init__()
        enc_ch, lat_ch = list(block_out_channels), list(latent_block_out_channels)
        dec_ch = list(decoder_block_out_channels or enc_ch)
        dec_lat_ch = list(decoder_latent_block_out_channels or lat_ch)
        n_stages, n_latent = len(enc_ch), len(lat_ch)
        kts = [2 if d else 1 for d in _per_stage(list(temporal_downsample), n_stages, "temporal_downsample")]
        if 2 ** (n_stages + n_latent) != SPATIAL_COMPRESSION or math.prod(kts) != TEMPORAL_COMPRESSION:
            raise ValueError(
                f"The VAE must compress {SPATIAL_COMPRESSION}x in space and {TEMPORAL_COMPRESSION}x in time: use "
                "len(block_out_channels) + len(latent_block_out_channels) = 6 and two temporal_downsample stages."
            )
        if len(dec_ch) != n_stages or len(dec_lat_ch) != n_latent:
            raise ValueError("decoder_(latent_)block_out_channels must have as many entries as the encoder's.")
        enc_layers = _per_stage(layers_per_block, n_stages, "layers_per_block")
        dec_layers = _per_stage(
            enc_layers if decoder_layers_per_block is None else decoder_layers_per_block,
            n_stages,
            "decoder_layers_per_block",
        )
        eps = norm_eps

        # E1: pixels -> C_f features at H/16, time /4. `self._e1_at_warp`: the child whose output is at H/4.
        e1: list[nn.Module] = [CausalConv3d(in_channels, enc_ch[0])]
        for s in range(n_stages):
            e1 += [CausalResBlock(enc_ch[s], eps) for _ in range(enc_layers[s])]
            out = enc_ch[s + 1] if s + 1 < n_stages else feature_channels
            e1.append(DownsampleBlock3d(enc_ch[s], out, kts[s], 2, use_crva))
            if 2 ** (s + 1) == ReferenceWarp.downscale:
                self._e1_at_warp = len(e1) - 1
        self.encoder_1 = CausalSequential(e1)

        # E2: C_f features -> posterior moments at H/64.
        e2: list[nn.Module] = []
        for j, ch_in in enumerate([feature_channels, *lat_ch[:-1]]):
            e2 += [CausalResBlock(ch_in, eps) for _ in range(latent_layers_per_block)]
            e2.append(DownsampleBlock3d(ch_in, lat_ch[j], 1, 2, use_crva))
        e2.append(CausalConvOut(lat_ch[-1], 2 * latent_channels, eps))
        self.encoder_2 = CausalSequential(e2)

        # D1 (mirror of E2): latent -> C_f features at H/16.
        d1: list[nn.Module] = [CausalConv3d(latent_channels, dec_lat_ch[-1])]
        for j in reversed(range(n_latent)):
            out = dec_lat_ch[j - 1] if j > 0 else feature_channels
            d1.append(UpsampleBlock3d(dec_lat_ch[j], out, 1, 2, use_crva))
            d1 += [CausalResBlock(out, eps) for _ in range(latent_layers_per_block)]
        self.decoder_1 = CausalSequential(d1)

        # Dref: fuse reference features.
        self.reference_decoder = ReferenceGuidanceDecoder(
            feature_channels, ref_num_layers, ref_num_attention_heads, ref_attention_head_dim, ref_mlp_ratio, eps
        )

        # D2 (mirror of E1): features -> pixels, time x4.
        d2: list[nn.Module] = []
        for s in reversed(range(n_stages)):
            ch_in = dec_ch[s + 1] if s + 1 < n_stages else feature_channels
            d2.append(UpsampleBlock3d(ch_in, dec_ch[s], kts[s], 2, use_crva))
            d2 += [CausalResBlock(dec_ch[s], eps) for _ in range(dec_layers[s])]
        d2.append(CausalConvOut(dec_ch[0], in_channels, eps))
        self.decoder_2 = CausalSequential(d2)

        # Reference warp (not in the paper): its inputs per reference are E1's features at H/4 and the pixels.
        warp_features = enc_ch[int(math.log2(ReferenceWarp.downscale))]
        self.reference_warp = ReferenceWarp(warp_features, ref_warp_channels) if ref_warp_channels else None

    # --- checks -------------------------------------------------------------------------------------------------

    def _check_frames(self, x: torch.Tensor, first: bool, name: str) -> None:
        if x.ndim != 5 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"{name} must be (B, {self.config.in_channels}, T, H, W), got {tuple(x.shape)}.")
        t, h, w = x.shape[2:]
        if h % SPATIAL_COMPRESSION or w % SPATIAL_COMPRESSION:
            raise ValueError(f"{name} height and width must be multiples of {SPATIAL_COMPRESSION}, got {h}x{w}.")
        k = TEMPORAL_COMPRESSION
        if first and (t - 1) % k:
            raise ValueError(f"{name} starts a stream so needs 1 + {k}n frames (1, 5, 9, ...), got {t}.")
        if not first and (t == 0 or t % k):
            raise ValueError(f"{name} continues a stream so needs {k}n frames (n >= 1), got {t}.")

    @property
    def reference_channels(self) -> int:
        """Channels of `f_c`: C_f for Dref, then (with the reference warp) its H/4 inputs folded to H/16."""
        if self.reference_warp is None:
            return self.config.feature_channels
        return self.config.feature_channels + self.reference_warp.input_channels * (16 // ReferenceWarp.downscale) ** 2

    def _check_references(self, f_c: torch.Tensor | None, z: torch.Tensor) -> None:
        if f_c is None:
            return
        shape = (z.shape[0], self.reference_channels, z.shape[3] * 4, z.shape[4] * 4)
        if f_c.ndim != 5 or (f_c.shape[0], *f_c.shape[2:]) != shape:
            raise ValueError(
                f"f_c must be (B, M, C, H/16, W/16) = ({shape[0]}, M, {shape[1]}, {shape[2]}, {shape[3]}) as "
                f"returned by encode_reference, got {tuple(f_c.shape)}."
            )

    # --- encoding -----------------------------------------------------------------------------------------------

    def encode_chunk(self, video_chunk: torch.Tensor, cache: VAECache | None = None) -> tuple[torch.Tensor, VAECache]:
        """Streaming encode. `video_chunk` (B, 3, 1+4n or 4n, H, W) in [-1, 1] -> posterior moments
        (B, 2*64, n+1 or n, H/64, W/64) (mean, then log-variance; wrap in `DiagonalGaussianDistribution`), cache."""
        self._check_frames(video_chunk, cache is None, "video_chunk")
        c1, c2 = cache if cache is not None else (None, None)
        f, c1 = self.encoder_1(video_chunk, c1)  # (B, C_f, T', H/16, W/16)
        moments, c2 = self.encoder_2(f, c2)  # (B, 128, T', H/64, W/64)
        return moments, [c1, c2]

    def encode(self, video: torch.Tensor, return_dict: bool = True) -> AutoencoderKLOutput | tuple:
        """One-shot encode of `video` (B, 3, 1+4n, H, W) in [-1, 1] -> `AutoencoderKLOutput(latent_dist=posterior)`
        over (B, 64, n+1, H/64, W/64) (`return_dict=False`: `(posterior,)`), as diffusers' `AutoencoderKL`."""
        posterior = DiagonalGaussianDistribution(self.encode_chunk(video)[0])
        return AutoencoderKLOutput(latent_dist=posterior) if return_dict else (posterior,)

    def _reference_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """E1 features of each image alone: (B, M, 3, H, W) -> `f` (B*M, C_f, 1, H/16, W/16), E2's input, and
        `f_c` (B, M, reference_channels, H/16, W/16): `f`, then (with the reference warp) E1's features at H/4 and
        the image's 4 x 4 pixel patches, folded space-to-channel to H/16."""
        if images.ndim != 5 or images.shape[2] != self.config.in_channels:
            raise ValueError(f"reference images must be (B, M, 3, H, W) in [-1, 1], got {tuple(images.shape)}.")
        frames = images.flatten(0, 1).unsqueeze(2)  # (B*M, 3, 1, H, W): each image is a 1-frame video
        self._check_frames(frames, True, "reference images")
        if self.reference_warp is None:
            f = self.encoder_1(frames)[0]
            return f, f.squeeze(2).unflatten(0, images.shape[:2])
        taken = []
        f = self.encoder_1(frames, None, {self._e1_at_warp: lambda x: taken.append(x) or x})[0]
        d = ReferenceWarp.downscale
        warp_inputs = torch.cat([taken[0], pixel_unshuffle_3d(frames, 1, d)], dim=1)  # (B*M, C_w, 1, H/4, W/4)
        f_c = torch.cat([f, pixel_unshuffle_3d(warp_inputs, 1, 16 // d)], dim=1)  # (B*M, C, 1, H/16, W/16)
        return f, f_c.squeeze(2).unflatten(0, images.shape[:2])

    def _split_references(self, f_c: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """`f_c` -> Dref's features (B, M, C_f, H/16, W/16) and the warp's inputs (B, M, C_w, H/4, W/4) or None."""
        if f_c is None or f_c.shape[1] == 0:
            return None, None
        c_f = self.config.feature_channels
        if self.reference_warp is None:
            return f_c, None
        folded = f_c[:, :, c_f:].flatten(0, 1).unsqueeze(2)  # (B*M, C_w * 16, 1, H/16, W/16)
        warp_inputs = pixel_shuffle_3d(folded, 1, 16 // ReferenceWarp.downscale).squeeze(2).unflatten(0, f_c.shape[:2])
        return f_c[:, :, :c_f], warp_inputs

    def encode_reference(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reference features, computed once per stream: `images` (B, M, 3, H, W) in [-1, 1], M = 0..3 ->
        `f_c` (B, M, C_f, H/16, W/16), E1 features for Dref, and `z_r` (B, M, 64, H/64, W/64), the posterior
        mode of each image encoded alone as a 1-frame video (reference latents for the DiT)."""
        b, m, _, h, w = images.shape
        if m == 0:
            k = SPATIAL_COMPRESSION
            f_c = images.new_zeros(b, 0, self.reference_channels, h * 4 // k, w * 4 // k)
            return f_c, images.new_zeros(b, 0, self.config.latent_channels, h // k, w // k)
        f, f_c = self._reference_features(images)
        z_r = DiagonalGaussianDistribution(self.encoder_2(f)[0]).mode()  # (B*M, 64, 1, H/64, W/64)
        return f_c, z_r.squeeze(2).unflatten(0, (b, m))

    # --- decoding -----------------------------------------------------------------------------------------------

    def _decode_chunk(
        self, z: torch.Tensor, f_c: torch.Tensor | None, cache: VAECache | None
    ) -> tuple[torch.Tensor, VAECache]:
        if z.ndim != 5 or z.shape[1] != self.config.latent_channels or z.shape[2] == 0:
            raise ValueError(f"z must be (B, {self.config.latent_channels}, t>=1, h, w), got {tuple(z.shape)}.")
        self._check_references(f_c, z)
        c1, c2 = cache if cache is not None else (None, None)
        f_dref, warp_inputs = self._split_references(f_c)
        f_z, c1 = self.decoder_1(z, c1)  # (B, C_f, t, H/16, W/16)
        f_z = self.reference_decoder(f_z, f_dref)
        frames, c2 = self.decoder_2(f_z, c2)  # (B, 3, 1+4(t-1) or 4t, H, W)
        if self.reference_warp is not None and warp_inputs is not None:
            frames = self.reference_warp(frames, warp_inputs)
        return frames, [c1, c2]

    def decode_chunk(
        self, z: torch.Tensor, f_c: torch.Tensor | None = None, cache: VAECache | None = None
    ) -> tuple[torch.Tensor, VAECache]:
        """Streaming decode of latents `z` (B, 64, t, h, w) with reference features `f_c` (B, M, C_f, 4h, 4w)
        (M = 0 or None: no references). `cache=None` starts the stream: 1 + 4(t-1) frames, later chunks 4t.
        Returns frames (B, 3, n, 64h, 64w) clamped to [-1, 1] and the cache for the next chunk."""
        frames, cache = self._decode_chunk(z, f_c, cache)
        return frames.clamp(-1, 1), cache

    def decode(
        self, z: torch.Tensor, f_c: torch.Tensor | None = None, return_dict: bool = True
    ) -> DecoderOutput | tuple:
        """One-shot decode: `z` (B, 64, n+1, h, w) -> `DecoderOutput(sample=video)`, video (B, 3, 1+4n, 64h, 64w) in
        [-1, 1] (`return_dict=False`: `(video,)`), as diffusers' `AutoencoderKL`. Streams use `decode_chunk`."""
        video = self.decode_chunk(z, f_c)[0]
        return DecoderOutput(sample=video) if return_dict else (video,)

    def forward(
        self,
        video: torch.Tensor,
        reference_images: torch.Tensor | None = None,
        sample_posterior: bool = True,
        generator: torch.Generator | None = None,
        context_latents: int = 0,
    ) -> tuple[torch.Tensor, DiagonalGaussianDistribution]:
        """Training pass: encode `video` (B, 3, 1+4n, H, W), sample (or take the mean of) the posterior, decode
        with the E1 features of `reference_images` (B, M, 3, H, W) or None. Returns the unclamped
        reconstruction (B, 3, 1+4n, H, W) and the posterior (for the KL term).

        `context_latents` k > 0: the first k latent frames are decoded without gradient, only to fill the causal
        decoder's cache, as a stream's past does; the reconstruction is then of the last 1+4n - (4k-3) frames only.
        The causal decoder's receptive field spans many frames (~80 in the demo preset), so a shorter training window
        always contains the stream's start; with a context the decoder also trains as it runs deep into a stream."""
        posterior = self.encode(video).latent_dist
        z = posterior.sample(generator=generator) if sample_posterior else posterior.mode()
        f_c = None
        if reference_images is not None and reference_images.shape[1] > 0:
            f_c = self._reference_features(reference_images)[1]
        if not 0 <= context_latents < z.shape[2]:
            raise ValueError(f"context_latents must be in [0, {z.shape[2] - 1}] for {z.shape[2]} latent frames.")
        cache = None
        if context_latents:
            with torch.no_grad():
                cache = self._decode_chunk(z[:, :, :context_latents], f_c, None)[1]
        return self._decode_chunk(z[:, :, context_latents:], f_c, cache)[0], posterior
