"""Latents precomputed once with the trained VAE (cached to disk), the DiT's training data.

    python -m portrait_rt train latents --vae runs/vae/vae --data data/corpus128 --output runs/latents.pt
    python -m portrait_rt train latents ... --device cuda:1 --dtype bfloat16 --clips 0:5000 --output runs/lat1.pt

For each clip of a shard store: the posterior mode of the whole clip (encoded as one stream, chunk by chunk, so
memory stays bounded), and the reference latents `z_r` of a few of its frames (each encoded alone, as at
inference). Latents are stored raw; `shift_factor` / `scaling_factor` travel with them and the DiT trainer
normalises with the same `(z - shift) * scale` the pipeline uses. Audio stays in the shard store.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

from portrait_rt.constants import TEMPORAL_COMPRESSION, usable_video_frames
from portrait_rt.data.shards import ClipStore
from portrait_rt.images import frames_to_tensor
from portrait_rt.models.vae import CausalVideoVAE

logger = logging.getLogger(__name__)


@torch.no_grad()
def encode_clip(vae: CausalVideoVAE, frames: np.ndarray, chunk_latents: int = 4) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> posterior-mode latents (64, 1 + (T-1)//4, h, w), streamed `chunk_latents` at a time."""
    usable = usable_video_frames(frames.shape[0])
    step = TEMPORAL_COMPRESSION * chunk_latents
    bounds = [0, 1 + step - TEMPORAL_COMPRESSION] + list(range(1 + 2 * step - TEMPORAL_COMPRESSION, usable, step))
    bounds = sorted({min(b, usable) for b in bounds} | {usable})
    cache, zs = None, []
    for a, b in zip(bounds[:-1], bounds[1:]):
        video = frames_to_tensor(frames[a:b]).movedim(0, 1)[None].to(vae.device, vae.dtype)  # (1, 3, t, H, W)
        moments, cache = vae.encode_chunk(video, cache)
        zs.append(DiagonalGaussianDistribution(moments).mode()[0].float().cpu())  # (64, l, h, w)
    return torch.cat(zs, dim=1)


@torch.no_grad()
def cache_latents(
    vae: CausalVideoVAE,
    store: ClipStore,
    path: str | Path,
    references_per_clip: int = 4,
    seed: int = 0,
    clips: range | None = None,
) -> dict:
    """Encode the clips of `store` (all, or the indices in `clips`); save and return the cache dict (see the module
    docstring). Separate processes can encode disjoint ranges into separate files; `train dit` reads them all."""
    vae.eval()
    latents, references, reference_frames = [], [], []
    clips = list(clips if clips is not None else range(len(store)))
    for i in clips:
        frames, _ = store.load(i)
        latents.append(encode_clip(vae, frames).half())
        rng = np.random.default_rng([seed, i])
        picks = np.sort(rng.choice(frames.shape[0], min(references_per_clip, frames.shape[0]), replace=False))
        images = frames_to_tensor(frames[picks])[None].to(vae.device, vae.dtype)  # (1, K, 3, H, W)
        references.append(vae.encode_reference(images)[1][0].float().cpu().half())  # (K, 64, h, w)
        reference_frames.append(picks.tolist())
        if len(latents) % 20 == 0:
            logger.info("encoded %d / %d clips", len(latents), len(clips))
    cache = {
        "store": str(Path(store.root).resolve()),
        "shift_factor": float(vae.config.shift_factor),
        "scaling_factor": float(vae.config.scaling_factor),
        "latents": latents,
        "references": references,
        "reference_frames": reference_frames,
        "clip_indices": clips,  # store index of each entry
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(cache, path)
    return cache


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--vae", required=True, help="trained VAE folder (train vae's <output-dir>/vae)")
    parser.add_argument("--data", required=True, help="clip shard folder")
    parser.add_argument("--output", required=True, help="latent cache file to write (.pt)")
    parser.add_argument("--references-per-clip", type=int, default=4)
    parser.add_argument("--clips", default=None, help="START:END clip indices to encode (default: all)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="the VAE's weights")


def cli_main(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    vae = CausalVideoVAE.from_pretrained(args.vae, torch_dtype=getattr(torch, args.dtype)).to(device)
    store = ClipStore(args.data)
    clips = None
    if args.clips:
        start, end = (int(v) if v else None for v in args.clips.split(":"))
        clips = range(len(store))[slice(start, end)]
    cache = cache_latents(vae, store, args.output, args.references_per_clip, clips=clips)
    print(f"cached latents of {len(cache['latents'])} clips to {args.output}")
    return 0
