"""`python -m portrait_rt eval`: lip-sync / drift / reconstruction report of a video, or the metrics' validation;
`python -m portrait_rt eval report`: a pipeline's model report (`portrait_rt.eval.model_report`)."""

from __future__ import annotations

import argparse
import json

import numpy as np


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `python -m portrait_rt eval` (a video, or --validate), and its `report` command."""
    from .model_report import add_cli_arguments as add_report_arguments

    sub = parser.add_subparsers(dest="command", metavar="{report}")
    report_help = "the model card's metric table: a pipeline measured on held-out synthetic clips (JSON)"
    add_report_arguments(sub.add_parser("report", help=report_help, description=report_help))
    parser.add_argument("--video", help="talking video to evaluate (mp4 with its audio track)")
    parser.add_argument("--audio", help="speech to sync against (default: the video's own audio track)")
    parser.add_argument(
        "--reference",
        help="reference image (or video: its first frame) for background drift and the closed mouth of the darkening "
        "measure (default for that: the video's first frame; either in the training framing, e.g. `generate --crop`)",
    )
    parser.add_argument("--target", help="ground-truth video for PSNR/SSIM")
    parser.add_argument(
        "--box",
        type=float,
        nargs=4,
        metavar=("X0", "Y0", "X1", "Y1"),
        help="person box in pixels to exclude from the drift measure (default: a generic one)",
    )
    parser.add_argument("--out", default="outputs/eval", help="folder for report.json and report.png")
    parser.add_argument(
        "--validate",
        type=int,
        metavar="N",
        default=0,
        help="instead: validate the metrics on N ground-truth synthetic clips (prints JSON)",
    )
    parser.add_argument("--resolution", type=int, default=128, help="resolution for --validate")
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per clip for --validate")


def cli_main(args: argparse.Namespace) -> int:
    """Run the chosen evaluation and print its headline numbers as JSON."""
    if args.command == "report":
        from .model_report import cli_main as report_main

        return report_main(args)
    from ..video import read_video
    from .report import evaluate_video, validate_metrics, write_report

    if args.validate:
        print(json.dumps(validate_metrics(args.validate, args.resolution, args.duration), indent=1))
        return 0
    if not args.video:
        raise ValueError("give --video PATH to evaluate (or --validate N to validate the metrics)")
    frames, audio, sample_rate = read_video(args.video)
    if args.audio:
        from ..audio import load_audio

        audio = load_audio(args.audio)
    if audio.size == 0:
        raise ValueError(f"{args.video} has no audio track: pass the speech with --audio PATH")
    reference = target = None
    if args.reference:
        if args.reference.lower().endswith((".mp4", ".mov", ".webm", ".mkv", ".ts")):
            reference = read_video(args.reference)[0][0]
        else:
            from ..images import load_image

            reference = load_image(args.reference, frames.shape[1])
        reference = np.asarray(reference, np.uint8)
    if args.target:
        target = read_video(args.target)[0]
    report = evaluate_video(frames, audio, sample_rate, reference, target, args.box)
    paths = write_report(report, args.out)
    headline = {k: report[k] for k in ("lipsync", "lipsync_darkening", "drift", "reconstruction") if k in report}
    print(json.dumps({**headline, "report": str(paths["json"]), "plot": str(paths["png"])}, indent=1))
    return 0
