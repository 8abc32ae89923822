"""`python -m portrait_rt generate`: reference images + speech -> an mp4 with the audio muxed in."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

# $PORTRAIT_RT_MODEL, else the bundled demo folder of this source checkout, wherever the command runs from
DEFAULT_MODEL = os.environ.get("PORTRAIT_RT_MODEL", str(Path(__file__).parents[1] / "assets" / "portrait-rt-demo"))


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL, help="pipeline folder or Hub id (default: %(default)s)")
    parser.add_argument("--ref", action="append", required=True, help="reference portrait (repeat for up to 3)")
    parser.add_argument("--audio", required=True, help="speech audio file (wav, flac, ogg, mp3, ...)")
    parser.add_argument("--out", default="out.mp4", help="output mp4 path (default: %(default)s)")
    parser.add_argument("--guidance-audio", type=float, default=2.0, help="audio CFG scale (lip-sync), 1 = off")
    parser.add_argument("--guidance-reference", type=float, default=2.0, help="reference CFG scale (stability)")
    parser.add_argument("--steps", type=int, default=12, help="denoising steps (default: %(default)s, the paper's)")
    parser.add_argument("--block-size", type=int, default=None, help="latent frames per block, 1-4")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")


def load_pipeline(model: str, device: str | None = None, torch_dtype=None):
    """Load a pipeline folder / Hub id (or `preset:NAME` for a random preset) on the best device.

    `torch_dtype` (e.g. torch.bfloat16 on GPU) goes through diffusers, which keeps each model's
    `_keep_in_fp32_modules` (norms, AdaLN) in float32.
    """
    import torch

    from portrait_rt.pipeline import PortraitRTPipeline

    if model.startswith("preset:"):
        pipe = PortraitRTPipeline.from_preset(model.split(":", 1)[1])
        if torch_dtype is not None:  # what from_pretrained(torch_dtype=...) does, parameter by parameter
            for component in (pipe.vae, pipe.transformer, pipe.audio_encoder):
                keep = component._keep_in_fp32_modules or []
                for name, param in component.named_parameters():
                    kept = any(k in name.split(".") for k in keep)
                    param.data = param.data.to(torch.float32 if kept else torch_dtype)
    else:
        pipe = PortraitRTPipeline.from_pretrained(model, dtype=torch_dtype)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return pipe.to(device)


def cli_main(args: argparse.Namespace) -> int:
    import torch

    from portrait_rt.video import write_video

    pipe = load_pipeline(args.model, args.device)
    start = time.perf_counter()
    out = pipe(
        reference_images=args.ref,
        audio=args.audio,
        guidance_audio=args.guidance_audio,
        guidance_reference=args.guidance_reference,
        num_inference_steps=args.steps,
        block_size=args.block_size,
        generator=torch.Generator().manual_seed(args.seed),
    )
    seconds = time.perf_counter() - start
    path = write_video(args.out, out.frames, out.audio, out.sample_rate)
    n = out.frames.shape[0]
    print(f"wrote {path} ({n} frames, {n / 25:.2f} s of video in {seconds:.2f} s: {n / seconds:.1f} FPS)")
    return 0
