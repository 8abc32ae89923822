"""`python -m portrait_rt export`: trained components -> a complete pipeline folder with a model card.

    python -m portrait_rt export --vae runs/vae/vae --dit runs/dit --output assets/portrait-rt-demo \
        --metrics runs/metrics.json

The folder is `PortraitRTPipeline.save_pretrained` output (safetensors only) plus README.md: data, training steps
and time (read from each run's `train_config.json` / `metrics.jsonl`), hardware, the metric table
(`python -m portrait_rt.training.report` writes it) and the model's limits.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from portrait_rt.constants import SCHEDULER_SHIFT
from portrait_rt.models.audio_encoder import AudioEncoder
from portrait_rt.models.transformer import FlowDiT
from portrait_rt.models.vae import CausalVideoVAE
from portrait_rt.pipeline import PortraitRTPipeline


def build_pipeline(vae_dir: str | Path, dit_dir: str | Path) -> PortraitRTPipeline:
    """A pipeline from a trained VAE folder and a DiT run folder (holding transformer/ and audio_encoder/)."""
    dit_dir = Path(dit_dir)
    for path in (Path(vae_dir), dit_dir / "transformer", dit_dir / "audio_encoder"):
        if not (path / "config.json").is_file():
            raise ValueError(f"{str(path)!r} holds no saved model; finish (or --finalize) that training run first.")
    return PortraitRTPipeline(
        vae=CausalVideoVAE.from_pretrained(vae_dir),
        transformer=FlowDiT.from_pretrained(dit_dir / "transformer"),
        audio_encoder=AudioEncoder.from_pretrained(dit_dir / "audio_encoder"),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=SCHEDULER_SHIFT),
    )


def run_summary(run_dir: str | Path) -> dict:
    """Steps, wall time and last logged losses of a training run folder (empty if it has no logs)."""
    run_dir = Path(run_dir)
    out: dict = {}
    if (run_dir / "train_config.json").is_file():
        out["config"] = json.loads((run_dir / "train_config.json").read_text())
    if (run_dir / "metrics.jsonl").is_file():
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
        if records:
            out["last"] = records[-1]
            # elapsed_s restarts with each (resumed) invocation: sum the last value of every segment
            total, prev = 0.0, 0.0
            for r in records:
                if r.get("elapsed_s", 0.0) < prev:
                    total += prev
                prev = r.get("elapsed_s", 0.0)
            out["wall_minutes"] = round((total + prev) / 60, 1)
    return out


def _hardware() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        names = [ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")]
        cpu = f"{names[0]} ({len(names)} cores visible)" if names else cpu
    except OSError:
        pass
    return f"{cpu}; torch {torch.__version__}; CPU only"


def model_card(pipe: PortraitRTPipeline, vae_run: dict, dit_run: dict, metrics: dict | None, notes: str = "") -> str:
    """README.md text for the exported folder."""
    params = {
        name: sum(p.numel() for p in getattr(pipe, name).parameters()) / 1e6
        for name in ("vae", "transformer", "audio_encoder")
    }

    def steps(run: dict) -> str:
        last, cfg = run.get("last", {}), run.get("config", {})
        stages = cfg.get("extra", {}).get("stages")
        batch = ", ".join(f"{f} frames x {b} for {n}" for f, b, n in stages) if stages else cfg.get("batch_size", "?")
        return (
            f"{last.get('step', '?')} steps, batch {batch}, lr {cfg.get('learning_rate', '?')}, "
            f"{run.get('wall_minutes', '?')} min wall-clock, last loss {last.get('loss', float('nan')):.4f}"
        )

    lines = [
        "---",
        "library_name: diffusers",
        "pipeline_tag: image-to-video",
        "tags: [talking-portrait, audio-driven, streaming, portrait-rt]",
        "---",
        "",
        "# portrait-rt demo model",
        "",
        "A small, CPU-real-time instance of the streamable talking-portrait method (causal reference-guided video "
        "VAE + blockwise-causal flow DiT), trained from scratch on portrait-rt's procedural synthetic corpus.",
        "",
        "```python",
        "from portrait_rt import PortraitRTPipeline",
        'pipe = PortraitRTPipeline.from_pretrained("assets/portrait-rt-demo")',
        'out = pipe(reference_images=["face.png"], audio="speech.wav")  # out.frames: uint8 (T, 128, 128, 3)',
        "```",
        "",
        "## Model",
        "",
        f"- resolution {pipe.resolution}², 25 fps, latents 64 x T/4 x 2 x 2; scheduler FlowMatchEuler, shift 5",
        f"- parameters: VAE {params['vae']:.2f}M, DiT {params['transformer']:.2f}M, "
        f"audio encoder {params['audio_encoder']:.2f}M",
        f"- DiT block size {pipe.transformer.config.block_size} latent frames, KV window "
        f"{pipe.transformer.config.kv_window}; VAE latent normalisation shift {pipe.vae.config.shift_factor:.4f}, "
        f"scale {pipe.vae.config.scaling_factor:.4f}",
        "",
        "## Training",
        "",
        "- data: the synthetic corpus (`portrait_rt.data.synthetic`, train split: random identities, backgrounds, "
        "accessories; espeak-ng speech; blinks and head motion), rendered once to clip shards",
        f"- VAE: {steps(vae_run)}",
        f"- DiT + audio encoder: {steps(dit_run)}",
        f"- hardware: {_hardware()}",
        "- exact commands: `scripts/train_demo.sh`",
        "",
    ]
    if metrics:
        lines += ["## Metrics (held-out voices and identities)", "", metrics_table(metrics), ""]
        if metrics.get("contact_sheet"):
            lines += [f"![ground truth, VAE reconstruction and generated frames]({metrics['contact_sheet']})", ""]
        commands = metrics.get("command") or []
        commands = [commands] if isinstance(commands, str) else commands
        if commands:
            lines += ["Produced by:", "", *[f"- `{c}`" for c in commands], ""]
    lines += [
        "## Limits",
        "",
        "- trained only on flat-colour synthetic cartoons at 128²: real photos are out of distribution",
        "- tiny model, short CPU training: blurrier than the references, and identity details can wander",
        "- lip-sync follows loudness and broad spectral shape (the corpus's own audio-to-mouth mapping), not visemes",
    ]
    if notes:
        lines += ["", notes]
    return "\n".join(lines) + "\n"


def metrics_table(metrics: dict) -> str:
    """Markdown table of the report's headline numbers (`python -m portrait_rt.training.report`)."""
    rows = [("metric", "value", "target")]
    for key, label, target in (
        ("detail_ratio", "detail kept, generated / ground truth (Laplacian variance)", ">= 0.5"),
        ("vae_detail_ratio", "detail kept, VAE alone (M = 1)", ">= 0.7"),
        ("vae_psnr", "VAE reconstruction PSNR, M = 1 (dB)", ">= 28"),
        ("still_psnr", "baseline: the reference held still, PSNR (dB)", "VAE beats it by >= 4"),
        ("psnr", "generated vs ground-truth render, whole-frame PSNR (dB)", ">= 24"),
        ("background_psnr", "generated vs ground truth, background PSNR (dB)", ""),
        ("lipsync_r", "lip-sync r, best of +-10 offsets (mean over clips)", ">= 0.85"),
        ("lipsync_r_worst", "lip-sync r, worst clip", ">= 0.7"),
        ("lipsync_r_at_zero", "lip-sync r at offset 0", ">= 0.85"),
        ("lipsync_offset", "lip-sync offset (frames, median)", "0"),
        ("ground_truth_lipsync_r", "lip-sync r of ground-truth renders (the metric's ceiling)", "~1"),
        ("vae_lipsync_r", "lip-sync r of VAE reconstructions (the DiT's ceiling)", ""),
        ("cfg_audio_raises_lipsync_clips", "clips where lambda_a 1 -> 2 raises lip-sync", "most"),
        ("mouth_silence", "mouth opening in silence / in speech", "closed (<< 1)"),
        ("drift_drop_db", "background PSNR drop, first -> last 10 s window", "~0 (no drift)"),
        ("drift_minutes", "stream length for the drift figure (min)", "5"),
        ("realtime_fps", "speed while measuring (FPS, this CPU)", ">= 25"),
    ):
        if key in metrics:
            value = metrics[key]
            if isinstance(value, str):
                text = value
            else:
                text = f"{value:g}" if float(value).is_integer() else f"{value:.3f}"
            rows.append((label, text, target))
    for m, v in sorted(metrics.get("vae_psnr_by_references", {}).items()):
        rows.append((f"VAE PSNR, M = {m} references (17-frame windows)", f"{v:.2f} dB", "rises with M"))
    for name, v in metrics.get("cfg", {}).items():
        r0 = f" (at offset 0: {v['r_at_zero']:.3f})" if "r_at_zero" in v else ""
        rows.append((f"CFG {name}: lip-sync r / PSNR", f"{v['r']:.3f}{r0} / {v['psnr']:.2f} dB", "Table II"))
    width = [max(len(r[i]) for r in rows) for i in range(3)]
    fmt = [("| " + " | ".join(c.ljust(w) for c, w in zip(r, width)) + " |") for r in rows]
    return "\n".join([fmt[0], "|" + "|".join("-" * (w + 2) for w in width) + "|", *fmt[1:]])


def export(
    vae_dir: str | Path,
    dit_dir: str | Path,
    output: str | Path,
    metrics: dict | None = None,
    vae_run: str | Path | None = None,
    notes: str = "",
) -> PortraitRTPipeline:
    """Write the pipeline folder + README.md model card; returns the pipeline."""
    pipe = build_pipeline(vae_dir, dit_dir)
    output = Path(output)
    pipe.save_pretrained(output, safe_serialization=True)
    vae_summary = run_summary(vae_run or Path(vae_dir).parent)
    card = model_card(pipe, vae_summary, run_summary(dit_dir), metrics, notes)
    (output / "README.md").write_text(card)
    return pipe


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--vae", required=True, help="trained VAE folder (train vae's <output-dir>/vae)")
    parser.add_argument("--dit", required=True, help="DiT run folder (holding transformer/ and audio_encoder/)")
    parser.add_argument("--output", required=True, help="pipeline folder to write")
    parser.add_argument("--metrics", default=None, help="metrics JSON from `python -m portrait_rt.training.report`")
    parser.add_argument("--notes", default="", help="extra text for the model card")


def cli_main(args: argparse.Namespace) -> int:
    metrics = json.loads(Path(args.metrics).read_text()) if args.metrics else None
    export(args.vae, args.dit, args.output, metrics, notes=args.notes)
    print(f"wrote {args.output}")
    return 0
