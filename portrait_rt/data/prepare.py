"""`python -m portrait_rt prepare`: a folder of your own talking videos -> clip shards the trainers read.

Each video is resampled to 25 fps and its audio to 16 kHz mono, cropped to a square portrait, resized to
`--resolution` and cut into clips of at most `--max-seconds` (the paper trains on clips of up to 10 s), written with
`portrait_rt.data.shards.ClipStore`. Crops (`--crop`):

- `face` (default): the face is found (OpenCV's Haar cascade, weights from the opencv-python-headless wheel), its
  path smoothed over time and framed as head and shoulders (`portrait_rt.data.face_crop`); stretches with no face
  are cut out;
- `centre`: the centre square, for videos already framed as portraits; `--box x,y,w,h`: that square.

Whatever cannot be used (unreadable, no audio track, silent, no face, too short) is skipped with the reason logged
and recorded in the store's `index.json` under "skipped". Each clip records its source frames and crop there and
keeps its per-frame crops in `<clip>/crop_boxes.npy` (x, y, side in source pixels), for checking the framing.

    python -m portrait_rt prepare my_videos/ data/my_shards --resolution 512
    python -m portrait_rt prepare my_videos/ data/my_shards --crop centre --resolution 128
    python -m portrait_rt prepare my_videos/ data/my_shards --box 420,80,640,640   # x,y,w,h in source pixels
    python -m portrait_rt prepare synthetic data/corpus128 --num-clips 300 --duration 8   # the synthetic corpus
"""

from __future__ import annotations

import argparse
import io
import logging
import math
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from portrait_rt.audio import is_silent
from portrait_rt.constants import FPS, SAMPLE_RATE, SAMPLES_PER_FRAME
from portrait_rt.data.face_crop import CropSpan, FaceFraming, HaarFaceDetector, plan_face_crops
from portrait_rt.data.shards import ClipStore
from portrait_rt.video import ffmpeg_exe, probe

logger = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")
ANALYSIS_SIDE = 360  # short side of the grey copy faces are detected on


def _ffmpeg(args: list[str]) -> bytes:
    proc = subprocess.run([ffmpeg_exe(), "-v", "error", "-nostdin", *args], capture_output=True, check=False)
    if proc.returncode != 0:
        lines = proc.stderr.decode(errors="replace").strip().splitlines()
        raise RuntimeError(lines[-1] if lines else f"ffmpeg exited with {proc.returncode}")
    return proc.stdout


def decode_frames(path: str | Path, size: tuple[int, int], vf: str = "", gray: bool = False) -> Iterator[np.ndarray]:
    """The frames of `path` at 25 fps, one at a time: uint8 (H, W, 3) (or (H, W) with `gray`), `size` = (W, H) being
    the frame size after the filters `vf`. Memory stays at one frame whatever the video's length."""
    width, height = size
    filters = ",".join(f for f in (f"fps={FPS}", vf) if f)
    cmd = [ffmpeg_exe(), "-v", "error", "-nostdin", "-i", str(path), "-vf", filters, "-f", "rawvideo"]
    cmd += ["-pix_fmt", "gray" if gray else "rgb24", "-"]
    shape = (height, width) if gray else (height, width, 3)
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err)
        try:
            while len(buf := proc.stdout.read(math.prod(shape))) == math.prod(shape):
                yield np.frombuffer(buf, np.uint8).reshape(shape)
        finally:
            proc.stdout.close()
            finished = proc.poll() is not None
            if not finished:
                proc.kill()  # the consumer stopped early
            proc.wait()
        if finished and proc.returncode != 0:
            err.seek(0)
            lines = err.read().decode(errors="replace").strip().splitlines()
            raise RuntimeError(lines[-1] if lines else f"ffmpeg exited with {proc.returncode}")


def frame_size(path: str | Path) -> tuple[int, int]:
    """(W, H) of the decoded frames (after the rotation a phone video asks for, which the container size is not)."""
    png = _ffmpeg(["-i", str(path), "-frames:v", "1", "-f", "image2pipe", "-vcodec", "png", "-"])
    return Image.open(io.BytesIO(png)).size


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


def detect_faces(
    path: str | Path, size: tuple[int, int], detector: HaarFaceDetector | None, framing: FaceFraming
) -> tuple[np.ndarray, np.ndarray, int]:
    """Faces on every `framing.detect_every`-th frame of a small grey copy -> (frame indices (K,), faces (K, 3) of
    cx, cy, size in source pixels (NaN where none), the number of frames). `detector` None: count frames only."""
    width, height = size
    s = min(1.0, ANALYSIS_SIDE / min(width, height))
    aw, ah = max(2, round(width * s / 2) * 2), max(2, round(height * s / 2) * 2)
    to_source = np.array([width / aw, height / ah, (width / aw + height / ah) / 2])
    min_size = round(framing.min_face * min(aw, ah))
    at, faces, n = [], [], 0
    for n, gray in enumerate(decode_frames(path, (aw, ah), f"scale={aw}:{ah}:flags=area", gray=True), start=1):
        if detector is not None and (n - 1) % framing.detect_every == 0:
            face = detector(gray, min_size)
            at.append(n - 1)
            faces.append(face * to_source if face is not None else np.full(3, np.nan))
    return np.array(at, np.int64), np.array(faces, np.float64).reshape(-1, 3), n


@dataclass
class ClipPlan:
    """Frames [start, end) of a source video, cropped per frame by `boxes` int (end - start, 3) of x, y, side."""

    start: int
    end: int
    boxes: np.ndarray


def split_spans(spans: list[CropSpan], max_frames: int | None) -> list[ClipPlan]:
    """Cut each span into equal clips of at most `max_frames` frames (14 s at 10 s max: two clips of 7 s)."""
    clips = []
    for span in spans:
        length = span.end - span.start
        pieces = max(1, math.ceil(length / max_frames)) if max_frames else 1
        bounds = np.linspace(0, length, pieces + 1).round().astype(int)
        for a, b in zip(bounds[:-1], bounds[1:]):
            clips.append(ClipPlan(span.start + int(a), span.start + int(b), span.boxes[a:b]))
    return clips


def crop_clips(path: str | Path, size: tuple[int, int], clips: list[ClipPlan], resolution: int) -> Iterator[tuple]:
    """Decode `path` once and yield (plan, frames uint8 (T, R, R, 3)) for each of `clips` (sorted, disjoint) as it
    completes; a clip the video ends inside comes out shorter."""
    pending, current, frames = list(clips), None, []
    for n, frame in enumerate(decode_frames(path, size)):
        if current is None:
            if not pending:
                return
            if n < pending[0].start:
                continue
            current, frames = pending.pop(0), []
        x, y, side = current.boxes[n - current.start]
        crop = Image.fromarray(frame[y : y + side, x : x + side])
        frames.append(np.asarray(crop.resize((resolution, resolution), Image.Resampling.BOX)))
        if n + 1 == current.end:
            yield current, np.stack(frames)
            current = None
    if current is not None and frames:
        yield ClipPlan(current.start, current.start + len(frames), current.boxes[: len(frames)]), np.stack(frames)


def load_audio(path: str | Path) -> np.ndarray:
    """Mono float32 audio at 16 kHz; raises `ValueError` when there is none to train on."""
    try:
        meta = probe(path)
    except Exception as e:  # imageio-ffmpeg raises several types for unreadable files
        raise ValueError(f"unreadable video ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e
    if meta.get("audio_codec") is None:
        raise ValueError("no audio track (the mouth needs speech to follow)")
    try:
        audio = np.frombuffer(
            _ffmpeg(["-i", str(path), "-vn", "-ac", "1", "-ar", str(SAMPLE_RATE), "-f", "f32le", "-"]), np.float32
        )
    except RuntimeError as e:
        raise ValueError(f"ffmpeg could not decode it ({e})") from e
    if audio.size == 0:
        raise ValueError("no audio track (the mouth needs speech to follow)")
    if is_silent(audio):
        raise ValueError("silent audio (below -60 dBFS)")
    return audio.copy()


def _part(source: str, start: int, end: int, num_frames: int) -> str:
    """How a skipped or prepared part of a video is named in logs and index.json: "talk.mp4 [2.24-3.60 s]"."""
    return source if (start, end) == (0, num_frames) else f"{source} [{start / FPS:.2f}-{end / FPS:.2f} s]"


def prepare_video(
    path: str | Path,
    store: ClipStore,
    source: str,
    crop: str = "face",
    box: tuple[int, int, int, int] | None = None,
    framing: FaceFraming | None = None,
    detector: HaarFaceDetector | None = None,
    min_seconds: float = 1.0,
    max_seconds: float | None = 10.0,
) -> int:
    """Add the clips of one video to `store`, recording what is skipped and why; returns the number of clips added."""
    framing = framing or FaceFraming()
    try:
        audio = load_audio(path)
        size = frame_size(path)
        fixed = square_crop(size, box) if box is not None or crop == "centre" else None
        if fixed is None and detector is None:
            detector = HaarFaceDetector()
        at, faces, num_frames = detect_faces(path, size, None if fixed else detector, framing)
    except (ValueError, RuntimeError) as e:
        store.skip(source, str(e) if isinstance(e, ValueError) else f"ffmpeg could not decode it ({e})")
        return 0
    if num_frames == 0:
        store.skip(source, "no video frames")
        return 0
    if fixed is not None:
        x, y, side, _ = fixed
        spans, gaps = [CropSpan(0, num_frames, np.tile(np.array([x, y, side]), (num_frames, 1)))], []
    else:
        spans, gaps = plan_face_crops(at, faces, num_frames, size, framing, FPS)
    for a, b in gaps:
        store.skip(_part(source, a, b, num_frames), "no face found")
    plans = []
    for plan in split_spans(spans, round(max_seconds * FPS) if max_seconds else None):
        if plan.end - plan.start < min_seconds * FPS:
            reason = f"too short ({(plan.end - plan.start) / FPS:.2f} s < {min_seconds} s)"
            store.skip(_part(source, plan.start, plan.end, num_frames), reason)
        else:
            plans.append(plan)
    stem, added = source.rsplit(".", 1)[0].replace("/", "__"), 0
    mode = "box" if box is not None else ("centre" if fixed is not None else "face")
    try:
        for plan, frames in crop_clips(path, size, plans, store.resolution):
            part = _part(source, plan.start, plan.end, num_frames)
            clip_audio = audio[plan.start * SAMPLES_PER_FRAME : plan.end * SAMPLES_PER_FRAME]
            if is_silent(clip_audio):
                store.skip(part, "silent audio (below -60 dBFS)")
                continue
            name = stem if part == source else f"{stem}__{plan.start:06d}"
            info = {"source": source, "source_frames": [plan.start, plan.end], "source_size": list(size), "crop": mode}
            store.add(name, frames, clip_audio, **info)
            np.save(store.root / name / "crop_boxes.npy", plan.boxes.astype(np.int32))
            logger.info("prepared %s: %d frames (%s crop)", part, frames.shape[0], mode)
            added += 1
    except RuntimeError as e:  # ffmpeg failed part way: keep the clips before the failure
        store.skip(source, f"ffmpeg could not decode it ({e})")
    return added


def prepare_folder(
    input_dir: str | Path,
    output_dir: str | Path,
    resolution: int = 128,
    box: tuple[int, int, int, int] | None = None,
    min_seconds: float = 1.0,
    crop: str = "face",
    framing: FaceFraming | None = None,
    max_seconds: float | None = 10.0,
) -> ClipStore:
    """Turn every video in `input_dir` into clips of the shard store at `output_dir`; returns the store.

    `crop`: "face" (follow the face, framed by `framing`) or "centre"; a `box` (x, y, w, h) overrides both.
    """
    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise ValueError(f"{str(input_dir)!r} is not a folder; give the folder that holds your videos.")
    if resolution % 64:
        raise ValueError(f"--resolution {resolution} must be a multiple of 64 (the VAE compresses 64x in space).")
    if crop not in ("face", "centre"):
        raise ValueError(f"--crop {crop!r}: choose 'face' or 'centre' (or give --box).")
    videos = sorted(p for p in input_dir.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES)
    if not videos:
        raise ValueError(f"No videos ({', '.join(VIDEO_SUFFIXES)}) found under {str(input_dir)!r}.")
    detector = HaarFaceDetector() if crop == "face" and box is None else None  # fails early without OpenCV
    store = ClipStore.create(output_dir, resolution, source="prepared")
    for path in videos:
        source = str(path.relative_to(input_dir))
        prepare_video(path, store, source, crop, box, framing, detector, min_seconds, max_seconds)
    return store


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "input_dir", help="folder of talking-portrait videos (mp4/mov/mkv/webm with audio), or 'synthetic'"
    )
    parser.add_argument("output_dir", help="shard folder to write (created; existing clips are replaced)")
    parser.add_argument("--resolution", type=int, default=128, help="square output size, a multiple of 64")
    parser.add_argument(
        "--crop", choices=["face", "centre"], default="face", help="follow the face (default) or the centre square"
    )
    parser.add_argument("--box", default=None, help="a fixed square crop x,y,w,h in source pixels (overrides --crop)")
    d = FaceFraming()
    parser.add_argument("--face-scale", type=float, default=d.scale, help="crop side / face size (2: head+shoulders)")
    parser.add_argument(
        "--smooth-seconds", type=float, default=d.smooth_seconds, help="Gaussian sigma of the face crop's path"
    )
    parser.add_argument("--min-seconds", type=float, default=1.0, help="skip clips shorter than this")
    parser.add_argument("--max-seconds", type=float, default=10.0, help="cut longer videos into clips (0: never)")
    synth = parser.add_argument_group("synthetic corpus (input_dir = 'synthetic'): rendered straight to shards")
    synth.add_argument("--num-clips", type=int, default=100)
    synth.add_argument("--duration", type=float, default=None, help="seconds per clip (default: the speech's)")
    synth.add_argument("--split", choices=["train", "eval"], default="train")
    synth.add_argument("--seed", type=int, default=0, help="first clip seed")
    synth.add_argument(
        "--photo-fraction", type=float, default=0.0, help="share of clips in the photographic look (0-1; 0: cartoons)"
    )
    synth.add_argument("--workers", type=int, default=1, help="render in this many processes")


def cli_main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if args.input_dir == "synthetic":
        from portrait_rt.data.shards import write_synthetic_shards

        store = write_synthetic_shards(
            args.output_dir, args.num_clips, args.resolution, args.split, args.seed, args.duration,
            photo_fraction=args.photo_fraction, workers=args.workers,
        )  # fmt: skip
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
    framing = FaceFraming(scale=args.face_scale, smooth_seconds=args.smooth_seconds)
    store = prepare_folder(
        args.input_dir, args.output_dir, args.resolution, box, args.min_seconds, args.crop, framing, args.max_seconds
    )
    print(f"{len(store)} clips in {store.root}; {len(store.index.get('skipped', []))} skipped (see index.json)")
    return 0
