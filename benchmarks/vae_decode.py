"""Streamed decode speed of CausalVideoVAE: frames per second, printed as JSON.

    python benchmarks/vae_decode.py --preset demo            # 16-frame chunks (4 latent frames), 1 reference
    python benchmarks/vae_decode.py --preset tiny --threads 2

Randomly initialised weights (speed does not depend on them). The first chunk (stream start, warm-up) is not
timed; fps is over the later chunks, each decoding `4 * latent_frames` video frames with its cache.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from portrait_rt.constants import SPATIAL_COMPRESSION, TEMPORAL_COMPRESSION
from portrait_rt.models.vae import CausalVideoVAE
from portrait_rt.presets import VAE_PRESETS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="demo", choices=sorted(VAE_PRESETS))
    parser.add_argument("--config", default="{}", help="JSON overrides of the preset's config values")
    parser.add_argument("--resolution", type=int, default=None, help="default: the preset's resolution")
    parser.add_argument("--latent-frames", type=int, default=4, help="latent frames per chunk (4 = 16 frames)")
    parser.add_argument("--chunks", type=int, default=6, help="timed chunks after the warm-up chunk")
    parser.add_argument("--references", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    config = {**VAE_PRESETS[args.preset], **json.loads(args.config)}
    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    vae = CausalVideoVAE(**config).eval()
    if dtype != torch.float32:
        vae = vae.to(dtype)
    res = args.resolution or vae.config.resolution
    lat = res // SPATIAL_COMPRESSION

    with torch.inference_mode():
        refs = torch.rand(1, args.references, 3, res, res, dtype=dtype) * 2 - 1
        f_c, _ = vae.encode_reference(refs)
        z = torch.randn(1, vae.config.latent_channels, args.latent_frames, lat, lat, dtype=dtype)
        frames, cache = vae.decode_chunk(z, f_c)  # warm-up: stream start
        times = []
        for _ in range(args.chunks):
            start = time.perf_counter()
            frames, cache = vae.decode_chunk(z, f_c, cache)
            times.append(time.perf_counter() - start)

    n_frames = TEMPORAL_COMPRESSION * args.latent_frames
    count = lambda *ms: sum(p.numel() for m in ms for p in m.parameters())  # noqa: E731
    print(
        json.dumps(
            {
                "preset": args.preset,
                "resolution": res,
                "dtype": args.dtype,
                "threads": torch.get_num_threads(),
                "references": args.references,
                "frames_per_chunk": n_frames,
                "fps_streamed": round(n_frames * len(times) / sum(times), 2),
                "fps_best_chunk": round(n_frames / min(times), 2),
                "ms_per_chunk": round(1000 * sum(times) / len(times), 1),
                "params": count(vae),
                "encoder_params": count(vae.encoder_1, vae.encoder_2),
                "decoder_params": count(vae.decoder_1, vae.reference_decoder, vae.decoder_2),
            }
        )
    )


if __name__ == "__main__":
    main()
