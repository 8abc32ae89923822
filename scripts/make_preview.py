"""Render the Space's cached example and the README's animated preview from the shipped model.

    OMP_NUM_THREADS=1 python scripts/make_preview.py [--model assets/portrait-rt-demo]

Run it whenever the bundled model changes (a test fails until you do: it compares the model fingerprint recorded in
`assets/preview/example.json` with the weights). It writes, in `assets/preview/`:

- `example.mp4`, `example_lipsync.png`, `example.json`: the one-click example's result (portrait A + speech A at the
  Space's default settings) and its lip-sync plot and readout, which the Space plays instead of generating them;
- `preview.webp`: the README's animated preview, without sound: a synthetic-cartoon reference and what the model
  makes of it (what it was trained for), and a real photograph and what it makes of that (what it cannot do yet);
- `photo.jpg` is the photograph's crop: Grace Hopper's official US Navy portrait (public domain), which matplotlib
  ships as sample data.

Nothing is downloaded. About 20 s on one CPU thread.
"""

from __future__ import annotations

import argparse
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
PREVIEW_PANEL_PX = 256  # each panel upscaled by a whole factor to at least this (128 px x 2)


def photo_portrait() -> Image.Image:
    """Grace Hopper's portrait (matplotlib's sample data), cropped so the face fills the frame as in the corpus."""
    from matplotlib import cbook

    im = Image.open(cbook.get_sample_data("grace_hopper.jpg"))  # 512 x 600
    return im.convert("RGB").crop((0, 10, 512, 522)).resize((256, 256), Image.LANCZOS)


def reference_frames(path_or_image, size: int, length: int) -> np.ndarray:
    im = path_or_image if isinstance(path_or_image, Image.Image) else Image.open(path_or_image).convert("RGB")
    still = np.asarray(im.resize((size, size), Image.LANCZOS))
    return np.broadcast_to(still, (length, *still.shape))


def write_preview(path: Path, panels: list[tuple[np.ndarray, list[str]]]) -> Path:
    """Animated WebP of labelled panels side by side (every second frame, looped)."""
    strips = [labelled_frames(frames, lines, PREVIEW_PANEL_PX) for frames, lines in panels]
    length = min(len(s) for s in strips)
    frames = np.concatenate([s[:length] for s in strips], axis=2)[:: round(25 / PREVIEW_FPS)]
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
    photo_portrait().save(PHOTO, quality=85)
    cartoon = generate_example(pipe).frames
    photo = generate_example(pipe, PHOTO).frames
    res = pipe.resolution
    write_preview(
        PREVIEW / "preview.webp",
        [
            (reference_frames(EXAMPLE_PORTRAIT, res, len(cartoon)), ["reference", "(synthetic cartoon)"]),
            (cartoon, ["generated (bundled model)", "the mouth area is soft"]),
            (reference_frames(PHOTO, res, len(photo)), ["reference", "(a real photograph)"]),
            (photo, ["generated from the photo", "face kept, cartoon mouth"]),
        ],
    )
    for path in sorted(PREVIEW.iterdir()):
        print(f"{path.relative_to(ROOT)}: {path.stat().st_size / 1024:.0f} KB")


if __name__ == "__main__":
    main()
