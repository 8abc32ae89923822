"""`python -m portrait_rt generate`: reference images + speech -> an mp4 with the audio muxed in."""

from __future__ import annotations

import argparse
import sys
import time
import warnings


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    from portrait_rt.loading import add_model_arguments

    add_model_arguments(parser, random_fallback=False)  # a video from random weights is noise: refuse
    parser.add_argument("--ref", action="append", required=True, help="reference portrait (repeat for up to 3)")
    parser.add_argument("--audio", required=True, help="speech audio file (wav, flac, ogg, mp3, ...)")
    parser.add_argument("--out", default="out.mp4", help="output mp4 path (default: %(default)s)")
    parser.add_argument("--guidance-audio", type=float, default=2.0, help="audio CFG scale (lip-sync), 1 = off")
    parser.add_argument("--guidance-reference", type=float, default=2.0, help="reference CFG scale (stability)")
    parser.add_argument("--steps", type=int, default=12, help="denoising steps (default: %(default)s, the paper's)")
    parser.add_argument(
        "--block-size", type=int, default=None, help="latent frames per block, 1-4 (default: the model's block_size)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--no-align",
        action="store_true",
        help="centre-crop each reference instead of finding its face and cropping it to the framing the model was "
        "trained on",
    )
    parser.add_argument(
        "--crop",
        action="store_true",
        help="write the model's square crop instead of the photo with the animated face pasted back",
    )


def cli_main(args: argparse.Namespace) -> int:
    import torch

    from portrait_rt.constants import FPS
    from portrait_rt.faces import NoFaceFoundWarning
    from portrait_rt.loading import load_from_args
    from portrait_rt.video import write_video

    pipe, _ = load_from_args(args)
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", NoFaceFoundWarning)
        out = pipe(
            reference_images=args.ref,
            audio=args.audio,
            guidance_audio=args.guidance_audio,
            guidance_reference=args.guidance_reference,
            num_inference_steps=args.steps,
            block_size=args.block_size,
            generator=torch.Generator().manual_seed(args.seed),
            align_faces=not args.no_align,
            paste_back=not args.crop,
        )
    for warning in caught:
        if issubclass(warning.category, NoFaceFoundWarning):
            print(f"warning: {warning.message}", file=sys.stderr)
        else:
            warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)
    seconds = time.perf_counter() - start
    path = write_video(args.out, out.frames, out.audio, out.sample_rate)
    n = out.frames.shape[0]
    size = f"{out.frames.shape[2]}x{out.frames.shape[1]}"
    print(f"wrote {path} ({n} frames of {size}, {n / FPS:.2f} s of video in {seconds:.2f} s: {n / seconds:.1f} FPS)")
    return 0
