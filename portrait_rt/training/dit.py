"""DiT + audio encoder training: Algorithm 1 (teacher forcing) on cached latents.

Per sample (paper §3.2, supplementary Algorithm 1):
1. a window of `window` latent frames of one clip (the clip's start, with the first-frame mask token, in
   `stream_start_prob` of the batches) and M in 1..3 reference latents of the same clip;
2. t ~ LogitNormal(0, 1): z_t = t eps + (1 - t) z, target v = eps - z;
3. teacher-forcing context: the ground truth noised to t' ~ U[0, 0.7], z_aug = t' eps' + (1 - t') z;
4. audio features of the window's video frames from the (jointly trained) audio encoder, with enough audio
   before the window to fill its receptive field, and its look-ahead after;
5. audio and references replaced by the null embeddings with p = 0.1 each (CFG);
loss ||G([z_ref, z_aug, z_t (+) a'], t) - v||^2. Timesteps reach the DiT as sigma * 1000.
"""

from __future__ import annotations

import argparse
import logging

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from portrait_rt.constants import MAX_REFERENCES, SAMPLES_PER_FRAME, TEMPORAL_COMPRESSION, video_frames_for_latents
from portrait_rt.data.shards import ClipStore
from portrait_rt.models.audio_encoder import AudioEncoder
from portrait_rt.models.transformer import FlowDiT
from portrait_rt.presets import get_preset
from portrait_rt.training.common import TrainConfig, Trainer, add_common_arguments, config_from_args

logger = logging.getLogger(__name__)

CONTEXT_NOISE_MAX = 0.7  # t' ~ U[0, 0.7] (supplementary §4.1)
DROP_PROB = 0.1  # audio / reference dropout for CFG


def audio_receptive_field(encoder: AudioEncoder) -> int:
    """Video frames of past audio an `AudioEncoder` feature depends on (its causal convolutions' context)."""
    return 1 + sum(block.conv.context for block in encoder.blocks)


def load_latent_caches(paths: str) -> dict:
    """One cache from a comma-separated list of cache files (disjoint clip ranges of one shard store)."""
    caches = [torch.load(p, weights_only=True) for p in paths.split(",")]
    merged = dict(caches[0])
    for c in caches[1:]:
        if c["store"] != merged["store"] or c["scaling_factor"] != merged["scaling_factor"]:
            raise ValueError("--latents files must come from the same shard store and the same VAE.")
        for key in ("latents", "references", "reference_frames"):
            merged[key] = merged[key] + c[key]
    merged["clip_indices"] = [i for c in caches for i in c.get("clip_indices", range(len(c["latents"])))]
    return merged


class DiTTrainingModule(nn.Module):
    """FlowDiT + AudioEncoder and the flow-matching loss in one module (one DDP wrapper, one forward)."""

    def __init__(self, transformer: FlowDiT, audio_encoder: AudioEncoder):
        super().__init__()
        self.transformer, self.audio_encoder = transformer, audio_encoder

    def forward(
        self,
        latents: torch.Tensor,
        references: torch.Tensor,
        audio: torch.Tensor,
        audio_offset: int,
        stream_start: bool,
        sigma: torch.Tensor,
        noise: torch.Tensor,
        context_sigma: torch.Tensor,
        context_noise: torch.Tensor,
        drop_audio: torch.Tensor,
        drop_reference: torch.Tensor,
    ):
        """latents z (B, C, T, h, w) normalised; references (B, M, C, h, w); audio (B, N) at 16 kHz whose
        features [audio_offset, audio_offset + F) belong to the window; sigma / context_sigma (B,) in [0, 1]."""
        num_video_frames = video_frames_for_latents(latents.shape[2], first=stream_start)
        features = self.audio_encoder(audio)[:, audio_offset : audio_offset + num_video_frames]  # (B, F, Da)
        s, sc = sigma.view(-1, 1, 1, 1, 1), context_sigma.view(-1, 1, 1, 1, 1)
        noisy = s * noise + (1 - s) * latents  # z_t
        context = sc * context_noise + (1 - sc) * latents  # z_aug
        v = self.transformer(
            noisy,
            sigma * 1000,
            features,
            references,
            context_latents=context,
            context_timestep=context_sigma * 1000,
            stream_start=stream_start,
            drop_audio=drop_audio,
            drop_reference=drop_reference,
            return_dict=False,
        )[0]
        loss = F.mse_loss(v.float(), (noise - latents).float())
        return loss, {}


class DiTTrainer(Trainer):
    """Trains FlowDiT and the built-in AudioEncoder on a latent cache (`python -m portrait_rt train dit`)."""

    def __init__(
        self,
        config: TrainConfig,
        latents: str,
        preset: str = "demo",
        window: int | None = None,
        kv_window: int | None = None,
        stream_start_prob: float = 0.25,
        init_from: str | None = None,
    ):
        self.cache = load_latent_caches(latents)
        self.store = ClipStore(self.cache["store"])
        self.preset, self.init_from, self.kv_window = preset, init_from, kv_window
        self.stream_start_prob = stream_start_prob
        self.shift, self.scale = self.cache["shift_factor"], self.cache["scaling_factor"]
        super().__init__(config)
        dit = self.accelerator.unwrap_model(self.model).transformer
        self.window = window or dit.config.kv_window
        if self.window % dit.config.block_size or self.window > dit.config.kv_window:
            raise ValueError(
                f"--window {self.window} must be a multiple of block_size {dit.config.block_size}, at most "
                f"kv_window {dit.config.kv_window} (the positions inference uses)."
            )
        self.usable = [i for i, z in enumerate(self.cache["latents"]) if z.shape[1] >= self.window + 1]
        if not self.usable:
            raise ValueError(f"No clip has {self.window + 1} latent frames; use longer clips or a smaller --window.")

    def build_module(self) -> nn.Module:
        if self.init_from:
            transformer = FlowDiT.from_pretrained(self.init_from, subfolder="transformer")
            audio_encoder = AudioEncoder.from_pretrained(self.init_from, subfolder="audio_encoder")
        else:
            cfg = get_preset(self.preset)
            if self.kv_window:
                cfg["transformer"]["kv_window"] = self.kv_window
            transformer, audio_encoder = FlowDiT(**cfg["transformer"]), AudioEncoder(**cfg["audio_encoder"])
        self.receptive_field = audio_receptive_field(audio_encoder)
        self.lookahead = audio_encoder.config.lookahead_frames
        return DiTTrainingModule(transformer, audio_encoder)

    def _normalise(self, z: torch.Tensor) -> torch.Tensor:
        return (z.float() - self.shift) * self.scale

    def _audio(self, clip: int, first: int, count: int) -> np.ndarray:
        """Samples of video frames [first, first + count) of cache entry `clip`, zeros outside the clip."""
        _, audio = self.store.load(self.cache["clip_indices"][clip])
        out = np.zeros(count * SAMPLES_PER_FRAME, np.float32)
        a, b = max(first, 0), min(first + count, audio.size // SAMPLES_PER_FRAME)
        if b > a:
            out[(a - first) * SAMPLES_PER_FRAME : (b - first) * SAMPLES_PER_FRAME] = audio[
                a * SAMPLES_PER_FRAME : b * SAMPLES_PER_FRAME
            ]
        return out

    def make_batch(self, step: int, micro: int, generator: torch.Generator) -> dict:
        b, w, g = self.config.batch_size, self.window, generator
        stream_start = bool(torch.rand(1, generator=g) < self.stream_start_prob)
        m = int(torch.randint(1, MAX_REFERENCES + 1, (1,), generator=g))
        num_video = video_frames_for_latents(w, first=stream_start)
        context = 0 if stream_start else self.receptive_field
        latents, references, audio = [], [], []
        for _ in range(b):
            clip = self.usable[int(torch.randint(len(self.usable), (1,), generator=g))]
            z = self.cache["latents"][clip]  # (C, L, h, w)
            l0 = 0 if stream_start else int(torch.randint(1, z.shape[1] - w + 1, (1,), generator=g))
            latents.append(self._normalise(z[:, l0 : l0 + w]))
            refs = self.cache["references"][clip]
            references.append(self._normalise(refs[torch.randperm(refs.shape[0], generator=g)[:m]]))
            v0 = 0 if stream_start else TEMPORAL_COMPRESSION * l0 - (TEMPORAL_COMPRESSION - 1)
            audio.append(torch.from_numpy(self._audio(clip, v0 - context, context + num_video + self.lookahead)))
        latents = torch.stack(latents)
        device = self.accelerator.device
        batch = {
            "latents": latents,
            "references": torch.stack(references),
            "audio": torch.stack(audio),
            "sigma": torch.sigmoid(torch.randn(b, generator=g)),  # t ~ LogitNormal(0, 1)
            "noise": torch.randn(latents.shape, generator=g),
            "context_sigma": torch.rand(b, generator=g) * CONTEXT_NOISE_MAX,
            "context_noise": torch.randn(latents.shape, generator=g),
            "drop_audio": torch.rand(b, generator=g) < DROP_PROB,
            "drop_reference": torch.rand(b, generator=g) < DROP_PROB,
        }
        batch = {k: v.to(device) for k, v in batch.items()}
        return {**batch, "audio_offset": context, "stream_start": stream_start}

    def save_final(self, module: DiTTrainingModule) -> None:
        module.transformer.save_pretrained(self.output_dir / "transformer")
        module.audio_encoder.save_pretrained(self.output_dir / "audio_encoder")
        logger.info("saved transformer and audio_encoder to %s", self.output_dir)


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument("--latents", required=True, help="latent cache(s) from `train latents`, comma-separated")
    parser.add_argument("--preset", default="demo", help="DiT + audio encoder preset for fresh models")
    parser.add_argument("--init-from", default=None, help="folder with transformer/ and audio_encoder/ to continue")
    parser.add_argument("--window", type=int, default=None, help="latent frames per window (default: kv_window)")
    parser.add_argument("--kv-window", type=int, default=None, help="override the preset's KV window (latent frames)")
    parser.add_argument("--stream-start-prob", type=float, default=0.25, help="share of windows at a clip's start")


def build_trainer(args: argparse.Namespace) -> DiTTrainer:
    if args.max_steps is None:
        raise ValueError("Give --max-steps.")
    return DiTTrainer(
        config_from_args(args, args.max_steps),
        args.latents,
        preset=args.preset,
        window=args.window,
        kv_window=args.kv_window,
        stream_start_prob=args.stream_start_prob,
        init_from=args.init_from,
    )
