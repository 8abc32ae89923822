"""`python -m portrait_rt prepare`: a folder of your own talking videos -> clip shards the trainers read.

Each video is resampled to 25 fps and its audio to 16 kHz mono, cropped to a square portrait (the centre square, or
a box you give), resized to `--resolution` and written with `portrait_rt.data.shards.ClipStore`. Videos that
cannot be used (unreadable, no audio track, silent, too short) are skipped with the reason logged and recorded in
the store's `index.json` under "skipped".

    python -m portrait_rt prepare my_videos/ data/my_shards --resolution 128
    python -m portrait_rt prepare my_videos/ data/my_shards --box 420,80,640,640   # x,y,w,h in source pixels
    python -m portrait_rt prepare synthetic data/corpus128 --num-clips 300 --duration 8   # the synthetic corpus

Face detection is not built in (no detector weights ship with the project): give `--box` per folder, or crop your
videos beforehand with the detector you have.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
from pathlib import Path

import numpy as np

from portrait_rt.audio import is_silent
from portrait_rt.constants import FPS, SAMPLE_RATE
from portrait_rt.data.shards import ClipStore
from portrait_rt.video import ffmpeg_exe, probe

logger = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")


def _ffmpeg(args: list[str]) -> bytes:
    proc = subprocess.run([ffmpeg_exe(), "-v", "error", "-nostdin", *args], capture_output=True, check=False)
    if proc.returncode != 0:
        lines = proc.stderr.decode(errors="replace").strip().splitlines()
        raise RuntimeError(lines[-1] if lines else f"ffmpeg exited with {proc.returncode}")
    return proc.stdout


def square_crop(size: tuple[int, int], box: tuple[int, int, int, int] | None = None) -> tuple[int, int, int, int]:
    """The (x, y, w, h) crop of a `size` = (W, H) frame: the centre square, or `box` clipped to the frame."""
    width, height = size
    if box is None:
        side = min(width, height)
        return (width - side) // 2, (height - side) // 2, side, side
    x, y, w, h = box
    if w <= 0 or h <= 0 or abs(w - h) > 0.02 * max(w, h):
        raise ValueError(f"--box {box}: give a square x,y,w,h box (w == h) so the portrait is not stretched.")
    if x < 0 or y < 0 or x + w > width or y + h > height:
        raise ValueError(f"--box {box} reaches outside the {width}x{height} video; move or shrink it.")
    return x, y, w, h


def load_portrait_video(
    path: str | Path, resolution: int, box: tuple[int, int, int, int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Decode `path` -> (frames uint8 (T, R, R, 3) at 25 fps, audio float32 mono at 16 kHz).

    Raises `ValueError` with the reason when the video cannot be used for training.
    """
    try:
        meta = probe(path)
    except Exception as e:  # imageio-ffmpeg raises several types for unreadable files
        raise ValueError(f"unreadable video ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e
    if meta.get("audio_codec") is None:
        raise ValueError("no audio track (the mouth needs speech to follow)")
    x, y, w, h = square_crop(tuple(meta["size"]), box)
    vf = f"fps={FPS},crop={w}:{h}:{x}:{y},scale={resolution}:{resolution}:flags=area"
    try:
        raw = _ffmpeg(["-i", str(path), "-vf", vf, "-f", "rawvideo", "-pix_fmt", "rgb24", "-"])
        audio_raw = _ffmpeg(["-i", str(path), "-vn", "-ac", "1", "-ar", str(SAMPLE_RATE), "-f", "f32le", "-"])
    except RuntimeError as e:
        raise ValueError(f"ffmpeg could not decode it ({e})") from e
    frames = np.frombuffer(raw, np.uint8).reshape(-1, resolution, resolution, 3)
    audio = np.frombuffer(audio_raw, np.float32).copy()
    if frames.shape[0] == 0:
        raise ValueError("no video frames")
    if audio.size == 0:
        raise ValueError("no audio track (the mouth needs speech to follow)")
    if is_silent(audio):
        raise ValueError("silent audio (below -60 dBFS)")
    return frames, audio


def prepare_folder(
    input_dir: str | Path,
    output_dir: str | Path,
    resolution: int = 128,
    box: tuple[int, int, int, int] | None = None,
    min_seconds: float = 1.0,
) -> ClipStore:
    """Turn every video in `input_dir` into a clip of the shard store at `output_dir`; returns the store."""
    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise ValueError(f"{str(input_dir)!r} is not a folder; give the folder that holds your videos.")
    if resolution % 64:
        raise ValueError(f"--resolution {resolution} must be a multiple of 64 (the VAE compresses 64x in space).")
    videos = sorted(p for p in input_dir.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES)
    if not videos:
        raise ValueError(f"No videos ({', '.join(VIDEO_SUFFIXES)}) found under {str(input_dir)!r}.")
    store = ClipStore.create(output_dir, resolution, source="prepared")
    for path in videos:
        source = str(path.relative_to(input_dir))
        try:
            frames, audio = load_portrait_video(path, resolution, box)
        except ValueError as e:
            store.skip(source, str(e))
            continue
        if frames.shape[0] < min_seconds * FPS:
            store.skip(source, f"too short ({frames.shape[0] / FPS:.2f} s < {min_seconds} s)")
            continue
        name = source.rsplit(".", 1)[0].replace("/", "__")
        store.add(name, np.ascontiguousarray(frames), audio, source=source)
        logger.info("prepared %s: %d frames", source, frames.shape[0])
    return store


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "input_dir", help="folder of talking-portrait videos (mp4/mov/mkv/webm with audio), or 'synthetic'"
    )
    parser.add_argument("output_dir", help="shard folder to write (created; existing clips are replaced)")
    parser.add_argument("--resolution", type=int, default=128, help="square output size, a multiple of 64")
    parser.add_argument("--box", default=None, help="square crop x,y,w,h in source pixels (default: centre square)")
    parser.add_argument("--min-seconds", type=float, default=1.0, help="skip videos shorter than this")
    synth = parser.add_argument_group("synthetic corpus (input_dir = 'synthetic'): rendered straight to shards")
    synth.add_argument("--num-clips", type=int, default=100)
    synth.add_argument("--duration", type=float, default=None, help="seconds per clip (default: the speech's)")
    synth.add_argument("--split", choices=["train", "eval"], default="train")
    synth.add_argument("--seed", type=int, default=0, help="first clip seed")


def cli_main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if args.input_dir == "synthetic":
        from portrait_rt.data.shards import write_synthetic_shards

        store = write_synthetic_shards(
            args.output_dir, args.num_clips, args.resolution, args.split, args.seed, args.duration
        )
        print(f"{len(store)} synthetic clips in {store.root}")
        return 0
    box = None
    if args.box:
        try:
            box = tuple(int(v) for v in args.box.split(","))
        except ValueError:
            box = ()
        if len(box) != 4:
            raise ValueError(f"--box {args.box!r} must be four integers x,y,w,h.")
    store = prepare_folder(args.input_dir, args.output_dir, args.resolution, box, args.min_seconds)
    print(f"{len(store)} clips in {store.root}; {len(store.index.get('skipped', []))} skipped (see index.json)")
    return 0
