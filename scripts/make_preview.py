"""Render the Space's cached example and the README's animated preview from the shipped model.

    OMP_NUM_THREADS=1 python scripts/make_preview.py [--model assets/portrait-rt-demo]

Run it whenever the bundled model changes (a test fails until you do: it compares the model fingerprint recorded in
`assets/preview/example.json` with the weights). Both go through the public path a visitor's upload takes
(`space.examples.generate_example`: the face found and aligned, the result pasted back into a photo; no hand crop).
It writes, in `assets/preview/`:

- `example.mp4`, `example_lipsync.png`, `example.json`: the one-click example's result (portrait A + speech A at the
  Space's default settings) and its lip-sync plot and readout, which the Space plays instead of generating them;
- `preview.webp`: the README's animated preview, without sound: a synthetic-cartoon reference and what the model
  makes of it (what it was trained for), and a real photograph as uploaded and what comes back (its face found,
  animated and pasted back; the mouth painted in is a cartoon's);
- `photo.jpg`: that photograph, as uploaded: Grace Hopper's official US Navy portrait (public domain), which
  matplotlib ships as sample data (512 x 600).

Nothing is downloaded. About 30 s on one CPU thread.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `space` lives beside app.py, not in the package

from portrait_rt.loading import BUNDLED_MODEL, load_pipeline  # noqa: E402
from space.compare import labelled_frames  # noqa: E402
from space.examples import EXAMPLE_PORTRAIT, PREVIEW, generate_example, render_example  # noqa: E402

PHOTO = PREVIEW / "photo.jpg"
PREVIEW_FPS = 12.5  # every second video frame: half the file size, still reads as speech
PREVIEW_PANEL_PX = 256  # each panel this high (the 128 px cartoon upscaled x2, the photo shrunk to it)


def photo_source() -> Path:
    """Grace Hopper's portrait in matplotlib's sample data, 512 x 600."""
    from matplotlib import cbook

    return Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))


def to_height(frames: np.ndarray, height: int) -> np.ndarray:
    """uint8 (T, H, W, 3) -> (T, height, W * height / H, 3): a whole-factor nearest upscale, or a Lanczos shrink."""
    if height % frames.shape[1] == 0:
        k = height // frames.shape[1]
        return frames.repeat(k, axis=1).repeat(k, axis=2)
    width = round(frames.shape[2] * height / frames.shape[1])
    return np.stack([np.asarray(Image.fromarray(f).resize((width, height), Image.LANCZOS)) for f in frames])


def still(path: Path, length: int) -> np.ndarray:
    """A picture as `length` identical frames (T, H, W, 3)."""
    image = np.asarray(Image.open(path).convert("RGB"))
    return np.broadcast_to(image, (length, *image.shape))


def write_preview(path: Path, panels: list[tuple[np.ndarray, list[str]]]) -> Path:
    """Animated WebP of labelled panels side by side, each `PREVIEW_PANEL_PX` high (every second frame, looped)."""
    step = round(25 / PREVIEW_FPS)
    length = min(len(frames) for frames, _ in panels)
    strips = [labelled_frames(to_height(frames[:length:step], PREVIEW_PANEL_PX), lines, 1) for frames, lines in panels]
    frames = np.concatenate(strips, axis=2)
    images = [Image.fromarray(f) for f in frames]
    images[0].save(
        path, save_all=True, append_images=images[1:], duration=round(1000 / PREVIEW_FPS), loop=0, quality=70, method=6
    )
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(BUNDLED_MODEL), help="the shipped pipeline folder")
    args = parser.parse_args(argv)
    pipe = load_pipeline(args.model, device="cpu", threads=1)
    pipe.set_progress_bar_config(disable=True)

    example = render_example(pipe, args.model, PREVIEW)
    print("example:", example.video, example.readout.splitlines()[0])

    PREVIEW.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(photo_source(), PHOTO)  # the photo as a visitor would upload it
    cartoon, _ = generate_example(pipe)
    photo, alignment = generate_example(pipe, PHOTO)
    print("photo:", alignment.framing, "face", np.round(alignment.face, 1), "crop box", alignment.box)
    n = len(cartoon.frames)
    write_preview(
        PREVIEW / "preview.webp",
        [
            (still(EXAMPLE_PORTRAIT, n), ["reference", "(synthetic cartoon)"]),
            (cartoon.frames, ["generated (bundled model)", "the mouth area is soft"]),
            (still(PHOTO, len(photo.frames)), ["a real photograph,", "as uploaded"]),
            (photo.frames, ["animated face pasted", "back; a cartoon mouth"]),
        ],
    )
    for path in sorted(PREVIEW.iterdir()):
        print(f"{path.relative_to(ROOT)}: {path.stat().st_size / 1024:.0f} KB")


if __name__ == "__main__":
    main()
