"""A photograph as uploaded, through the pipeline with and without face alignment and paste-back (JSON).

    OMP_NUM_THREADS=1 python benchmarks/photo_path.py [--model assets/portrait-rt-demo] [--seconds 10] [--out DIR]

grace_hopper.jpg (matplotlib's sample data, 512 x 600) driven by `--seconds` of held-out espeak-ng speech at the
Space's defaults (guidance 2 / 2, 12 steps, the model's block size), twice: the photo path (the face aligned, the
result pasted back) and the old one (the centre crop, the square out). Prints:

- where the mouth is painted: the centre, in photo pixels, of the painted mouth (the colour key's pixels that the
  reference does not have: the only mouth this model paints), and the share of frames where it lies on her mouth
  (`PHOTO_MOUTH_BOX`, read off the picture);
- `psnr_outside_face_db`: PSNR against the photo outside the detector's face box, per frame (min / mean);
- the smear: PSNR inside the face box but outside the mouth box against the reference, first vs last second;
- lip-sync r of the mouth darkening (any face) and of the colour key, on the model's crops;
- generation FPS (one thread) with alignment and paste-back on and off, and the alignment's own time.
With `--out`, PNG frames (first, middle, last) of both paths for looking at.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from portrait_rt.constants import FPS, SAMPLE_RATE  # noqa: E402
from portrait_rt.data.synthetic import clip_speech  # noqa: E402
from portrait_rt.eval import lipsync_from_opening, mouth_darkening, mouth_opening  # noqa: E402
from portrait_rt.faces import TRAINING_FRAMING, align_face  # noqa: E402
from portrait_rt.loading import BUNDLED_MODEL, load_pipeline  # noqa: E402
from portrait_rt.mouth import key_distance, key_membership  # noqa: E402

PHOTO_MOUTH_BOX = (230, 262, 300, 300)  # her lips in grace_hopper.jpg, x0, y0, x1, y1, with a margin


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 100.0 if mse == 0 else 10 * np.log10(255.0**2 / mse)


def _mask(shape, box, inside: bool = True) -> np.ndarray:
    h, w = shape
    m = np.zeros((h, w), bool)
    x0, y0, x1, y1 = box
    m[max(0, int(np.floor(y0))) : int(np.ceil(y1)), max(0, int(np.floor(x0))) : int(np.ceil(x1))] = True
    return m if inside else ~m


def painted_mouth(crops: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per frame: the weight (T,) and centre (T, 2, crop units; NaN where none) of the colour key's pixels that the
    reference crop does not have (a photo's own reds, a flag's stripes, come near the key too)."""
    m = key_membership(key_distance(crops.astype(np.float32)))  # (T, H, W)
    m = np.clip(m - key_membership(key_distance(reference.astype(np.float32)))[None], 0, 1)
    weight = m.sum(axis=(1, 2))
    res = crops.shape[1]
    yy, xx = np.mgrid[0:res, 0:res] + 0.5
    with np.errstate(invalid="ignore", divide="ignore"):
        cx = (m * xx).sum(axis=(1, 2)) / weight / res
        cy = (m * yy).sum(axis=(1, 2)) / weight / res
    return weight, np.stack([cx, cy], axis=1)


def run(pipe, photo: Path, audio: np.ndarray, photo_path: bool) -> dict:
    kw = dict(guidance_audio=2.0, guidance_reference=2.0, num_inference_steps=12)
    start = time.perf_counter()
    alignment = align_face(photo, pipe.resolution, align=photo_path)
    align_ms = (time.perf_counter() - start) * 1e3
    start = time.perf_counter()
    out = pipe(
        [alignment], (audio, SAMPLE_RATE), generator=torch.Generator().manual_seed(0), paste_back=photo_path, **kw
    )
    wall = time.perf_counter() - start
    per_frame = np.array([t.total_ms / t.video_frames for t in out.timings[1:]])  # ms per frame, full blocks
    paste = np.array([t.paste_ms / t.video_frames for t in out.timings[1:]])
    return {
        "alignment": alignment,
        "out": out,
        "align_ms": align_ms,
        "fps_generation": 1e3 / float(np.median(per_frame)),  # the median block (the machine is shared)
        "fps_best_block": 1e3 / float(per_frame.min()),
        "fps_wall": len(out.frames) / wall,
        "paste_ms_per_frame": float(np.median(paste)),
        "paste_share": float(np.median(paste / per_frame)),
    }


def measure(result: dict, detector_box, audio: np.ndarray) -> dict:
    a, out = result["alignment"], result["out"]
    crops = out.crops
    weight, centre = painted_mouth(crops, a.crop)
    painted = weight > 2.0  # frames with at least ~2 pixels of the reserved colour
    x0, y0, side = a.box
    at = centre * side + [x0, y0]  # (T, 2) photo pixels
    mx0, my0, mx1, my1 = PHOTO_MOUTH_BOX
    inside = painted & (at[:, 0] >= mx0) & (at[:, 0] <= mx1) & (at[:, 1] >= my0) & (at[:, 1] <= my1)
    centre_px = np.nanmedian(at[painted], axis=0) if painted.any() else None
    # The smear, in the model's crop against the reference crop: the face box without the mouth box.
    res = crops.shape[1]
    face = _mask((res, res), [v * res for v in TRAINING_FRAMING.face_box])
    face &= _mask((res, res), [v * res for v in TRAINING_FRAMING.mouth_box], inside=False)
    first, last = crops[:FPS], crops[-FPS:]
    report = {
        "framing": a.framing,
        "crop_box": list(a.box),
        "frames": len(out.frames),
        "frame_size": list(out.frames.shape[1:3][::-1]),
        "painted_mouth_frames": int(painted.sum()),
        "painted_mouth_on_her_mouth": float(inside.sum() / max(1, painted.sum())),
        "painted_mouth_centre_px": None if centre_px is None else [round(float(v), 1) for v in centre_px],
        "smear_psnr_first_s_db": _psnr(first[:, face], a.crop[face][None].repeat(len(first), 0)),
        "smear_psnr_last_s_db": _psnr(last[:, face], a.crop[face][None].repeat(len(last), 0)),
        "align_ms": round(result["align_ms"], 1),
        "fps_generation": round(result["fps_generation"], 1),
        "fps_best_block": round(result["fps_best_block"], 1),
        "fps_wall": round(result["fps_wall"], 1),
        "paste_ms_per_frame": round(result["paste_ms_per_frame"], 2),
        "paste_share_of_block_time": round(result["paste_share"], 3),
    }
    if out.frames.shape[1:3] == a.photo.shape[:2]:  # pasted back: PSNR against the photo itself
        outside = _mask(a.photo.shape[:2], detector_box, inside=False)
        per_frame = [_psnr(f[outside], a.photo[outside]) for f in out.frames]
        report["psnr_outside_face_db"] = {"min": round(min(per_frame), 2), "mean": round(float(np.mean(per_frame)), 2)}
        fb = a.to_photo(TRAINING_FRAMING.face_box)
        region = _mask(a.photo.shape[:2], fb) & _mask(a.photo.shape[:2], a.to_photo(TRAINING_FRAMING.mouth_box), False)
        report["smear_photo_psnr_first_s_db"] = _psnr(out.frames[:FPS][:, region], a.photo[region][None])
        report["smear_photo_psnr_last_s_db"] = _psnr(out.frames[-FPS:][:, region], a.photo[region][None])
    for name, opening in (
        ("darkening", mouth_darkening(crops, a.crop) if a.in_training_framing else None),
        ("colour_key", mouth_opening(crops)),
    ):
        if opening is not None:
            sync = lipsync_from_opening(opening, out.audio)
            report[f"lipsync_{name}"] = {"r": round(sync["r"], 3), "offset": sync["offset"]}
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(BUNDLED_MODEL))
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--out", default=None, help="folder for PNG frames of both paths")
    args = parser.parse_args(argv)
    from matplotlib import cbook

    photo = Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    pipe = load_pipeline(args.model, device="cpu", threads=1)
    pipe.set_progress_bar_config(disable=True)
    _, audio = clip_speech(7, split="eval", duration=args.seconds)
    aligned = align_face(photo, pipe.resolution)
    cx, cy, size = aligned.face
    detector_box = (cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2)
    results = {}
    for name, on in (("photo_path", True), ("centre_crop", False), ("photo_path_again", True)):
        results[name] = run(pipe, photo, audio, on)
    report = {
        "model": Path(args.model).name,
        "seconds": args.seconds,
        "threads": torch.get_num_threads(),
        "detector_face_box": [round(v, 1) for v in detector_box],
        **{name: measure(r, detector_box, audio) for name, r in results.items() if name != "photo_path_again"},
    }
    report["photo_path"]["fps_generation_second_run"] = round(results["photo_path_again"]["fps_generation"], 1)
    print(json.dumps(report, indent=1))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        for name in ("photo_path", "centre_crop"):
            frames, crops = results[name]["out"].frames, results[name]["out"].crops
            for i in (0, len(frames) // 2, len(frames) - 1):
                Image.fromarray(frames[i]).save(out / f"{name}_{i:04d}.png")
                Image.fromarray(crops[i]).resize((256, 256), Image.NEAREST).save(out / f"{name}_crop_{i:04d}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
