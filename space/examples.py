"""The one-click example: a portrait and a speech clip, and its result cached from the shipped model.

The cached result (`assets/preview/example.mp4`, its lip-sync plot and `example.json`) is made by
`python scripts/make_preview.py` from the bundled model `assets/portrait-rt-demo`. `example.json` records the model's
fingerprint (`model_fingerprint`: a hash of its weights and configs); the Space plays the cached file only when the
loaded model's fingerprint matches it, and otherwise generates the example with whatever model is loaded. A test checks
that the committed cache matches the committed weights, so a retrained model cannot ship with a stale example.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "assets" / "examples"
PREVIEW = ROOT / "assets" / "preview"
EXAMPLE_PORTRAIT = EXAMPLES / "portrait_a.png"
EXAMPLE_SPEECH = EXAMPLES / "speech_a.wav"
EXAMPLE_MANIFEST = PREVIEW / "example.json"
# The settings the example is made with: the Space's defaults (the block size is the model's own).
EXAMPLE_SETTINGS = {"guidance_audio": 2.0, "guidance_reference": 2.0, "num_inference_steps": 12, "seed": 0}


def model_fingerprint(folder: str | os.PathLike) -> str:
    """sha256 over a pipeline folder's weights and configs (`*.safetensors`; `*.json` but metrics.json), not its card.

    A config counts by its values, without the keys that say where it was loaded from or which code it names (`_*`,
    `auto_map`; in model_index.json each component's class name only), so the copy published with its code
    (`export --hub-folder`) has the bundled folder's fingerprint.
    """
    folder = Path(folder)
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.suffix in (".safetensors", ".json") and p.is_file()):
        if path.name == "metrics.json":  # the report's figures, not the model
            continue
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        if path.suffix == ".json":
            config = json.loads(path.read_text())
            config = {k: v[-1] if path.name == "model_index.json" else v for k, v in config.items()}
            kept = {k: v for k, v in config.items() if not k.startswith("_") and k != "auto_map"}
            digest.update(json.dumps(kept, sort_keys=True).encode())
            continue
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


@dataclass
class CachedExample:
    """The example's result as the File tab shows it: the mp4, the lip-sync plot (or None) and the readout."""

    video: Path
    plot: Path | None
    readout: str


def cached_example(model: str | os.PathLike, manifest: Path = EXAMPLE_MANIFEST) -> CachedExample | None:
    """The cached result if it was made by exactly the model in folder `model` (same fingerprint), else None."""
    if not manifest.is_file() or not Path(model).is_dir():
        return None
    meta = json.loads(manifest.read_text())
    if meta.get("model_fingerprint") != model_fingerprint(model):
        return None
    plot = manifest.parent / meta["plot"] if meta.get("plot") else None
    return CachedExample(manifest.parent / meta["video"], plot, meta["readout"])


def generate_example(pipe, reference: str | os.PathLike = EXAMPLE_PORTRAIT):
    """The example's speech driving `reference` with `EXAMPLE_SETTINGS`, through the public path a visitor's upload
    takes (its face found and aligned, the result pasted back into a photo): (the pipeline's output, the reference's
    `FaceAlignment`)."""
    import torch

    from portrait_rt.faces import align_face

    s = EXAMPLE_SETTINGS
    alignment = align_face(reference, pipe.resolution)
    out = pipe(
        reference_images=[alignment],
        audio=str(EXAMPLE_SPEECH),
        guidance_audio=s["guidance_audio"],
        guidance_reference=s["guidance_reference"],
        num_inference_steps=s["num_inference_steps"],
        generator=torch.Generator().manual_seed(s["seed"]),
    )
    return out, alignment


def example_lipsync(out, alignment, out_dir: Path) -> tuple[Path | None, str]:
    """The lip-sync plot and readout of a generated example, as the File tab makes them (`space.panels`)."""
    from portrait_rt.eval import mouth_darkening, mouth_opening
    from space.panels import lipsync_plot

    darkening = mouth_darkening(out.crops, alignment.crop) if alignment.in_training_framing else None
    return lipsync_plot(mouth_opening(out.crops), out.audio, out_dir, darkening)


def render_example(pipe, model: str | os.PathLike, out_dir: Path = PREVIEW) -> CachedExample:
    """Generate the example with `pipe` (loaded from folder `model`) and write the cache: mp4, plot, manifest."""
    from portrait_rt.video import write_video
    from space.panels import speed_readout

    s = EXAMPLE_SETTINGS
    out, alignment = generate_example(pipe)
    out_dir.mkdir(parents=True, exist_ok=True)
    video = write_video(out_dir / "example.mp4", out.frames, out.audio, out.sample_rate)
    plot, sync = example_lipsync(out, alignment, out_dir)
    if plot is not None:
        plot = plot.rename(out_dir / "example_lipsync.png")
    readout = (
        f"Cached example, made by the bundled model with λa {s['guidance_audio']:g}, λr {s['guidance_reference']:g}, "
        f"{s['num_inference_steps']} steps, seed {s['seed']} (`scripts/make_preview.py`). {sync}\n\n"
        f"When it was made: {speed_readout(out.timings, len(out.frames))}"
    )
    meta = {
        "model_fingerprint": model_fingerprint(model),
        "portrait": EXAMPLE_PORTRAIT.name,
        "speech": EXAMPLE_SPEECH.name,
        "settings": s,
        "video": video.name,
        "plot": plot.name if plot else None,
        "readout": readout,
    }
    (out_dir / "example.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n")
    return CachedExample(video, plot, readout)
