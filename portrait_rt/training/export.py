"""`python -m portrait_rt export`: trained components -> a complete pipeline folder with a model card; and the copy of
such a folder that is published to the Hub, with its code.

    python -m portrait_rt export --vae runs/vae/vae --dit runs/dit --output assets/portrait-rt-demo \
        --metrics runs/metrics.json
    python -m portrait_rt export --output assets/portrait-rt-demo --hub-folder runs/hub/portrait-rt-demo   # to publish

The folder is `PortraitRTPipeline.save_pretrained` output (configs and safetensors, loaded by
`PortraitRTPipeline.from_pretrained`), README.md in the Hub's model-card format (data, training steps and time read
from each run's `train_config.json` / `metrics.jsonl`, hardware, the metric table and contact sheet that
`python -m portrait_rt eval report` writes, the model's limits) and the metrics it shows. `--hub-folder` writes
a copy that also carries this library's code (`write_hub_folder`), for `DiffusionPipeline.from_pretrained(folder,
trust_remote_code=True)` where portrait_rt is not installed: the code lives only in published copies, written from
the library when they are made, never in git.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import platform
import re
import shutil
from pathlib import Path

import torch
from diffusers import FlowMatchEulerDiscreteScheduler

import portrait_rt
from portrait_rt.constants import SCHEDULER_SHIFT, SPATIAL_COMPRESSION
from portrait_rt.hub import MODEL_CLASSES, model_class
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


PACKAGE = "portrait_rt"
PIPELINE_ENTRY = "pipeline_portrait_rt"  # model_index.json's _class_name[0]: the file diffusers runs for the pipeline


def write_hub_folder(folder: str | Path, hub_folder: str | Path) -> Path:
    """The copy of pipeline folder `folder` to publish on the Hub, in `hub_folder` (replaced if it exists): the same
    weights, configs, card and figures, plus this library's code (`write_remote_code`). Returns `hub_folder`."""
    folder, hub_folder = Path(folder), Path(hub_folder)
    if not (folder / "model_index.json").is_file():
        raise ValueError(f"{str(folder)!r} is not a pipeline folder (no model_index.json): export it first.")
    if hub_folder.resolve() == folder.resolve():
        raise ValueError("--hub-folder must differ from --output: the published copy is written beside the folder.")
    if hub_folder.exists():
        shutil.rmtree(hub_folder)
    shutil.copytree(folder, hub_folder, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    write_remote_code(hub_folder)
    return hub_folder


def write_remote_code(folder: str | Path) -> None:
    """Make a saved pipeline folder load without portrait_rt: `DiffusionPipeline.from_pretrained(folder,
    trust_remote_code=True)`, the Hub's convention for custom pipelines.

    Writes this library's code into the folder, flattened (`portrait_rt.models.vae` -> `vae.py`): beside
    `model_index.json` the pipeline (`pipeline_portrait_rt.py` and the modules it needs, none of them a model's), in
    each model's folder that model (`vae/vae_portrait_rt.py` and its modules), so each model's code is there once;
    points `model_index.json` at them and gives each model's config.json an `auto_map`
    (`AutoModel.from_pretrained(folder, subfolder="vae", trust_remote_code=True)`).
    """
    folder = Path(folder)
    index = json.loads((folder / "model_index.json").read_text())
    _write_entry(folder, PIPELINE_ENTRY, PortraitRTPipeline)
    index["_class_name"] = [PIPELINE_ENTRY, PortraitRTPipeline.__name__]
    for name, entry in index.items():
        if name.startswith("_") or not isinstance(entry, list) or entry[1] not in MODEL_CLASSES:
            continue  # the scheduler is diffusers' own
        module = f"{name}_portrait_rt"
        _write_entry(folder / name, module, model_class(entry[1]))
        index[name] = [module, entry[1]]
        config_path = folder / name / "config.json"
        config = json.loads(config_path.read_text())
        config["auto_map"] = {"AutoModel": f"{module}.{entry[1]}"}
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (folder / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def _write_entry(folder: Path, entry: str, cls: type) -> None:
    """`folder/entry.py`, which diffusers runs to get `cls`, beside the flattened modules `cls` needs.

    diffusers copies (into its modules cache) only the files that the entry file imports relatively, not what those
    import in turn, so the entry imports every module of the closure itself.
    """
    modules = _closure(cls.__module__)
    flat = {module: module.rpartition(".")[2] for module in modules}
    if len(set(flat.values())) < len(flat):
        raise ValueError(f"Flattening {modules} would give two modules one file name; rename one.")
    own = flat[cls.__module__]
    for stale in folder.glob("*.py"):
        stale.unlink()
    for module in modules:
        (folder / f"{flat[module]}.py").write_text(_flattened_source(module, flat))
    lines = [
        f'"""{cls.__name__} from portrait-rt {portrait_rt.__version__}, for diffusers\' `trust_remote_code=True`.',
        "",
        "Written by `python -m portrait_rt export --hub-folder`: the library's modules beside this file, with their",
        "imports made relative. diffusers copies only the modules a remote-code file imports itself, so it imports",
        "them all.",
        '"""',
        "",
        *[f"from .{name} import __name__ as _  # noqa: F401" for name in sorted(flat.values()) if name != own],
        f"from .{own} import {cls.__name__}  # noqa: F401",
    ]
    (folder / f"{entry}.py").write_text("\n".join(lines) + "\n")


def _type_checking_blocks(tree: ast.Module) -> list[ast.If]:
    """The module's top-level `if TYPE_CHECKING:` blocks: imports for annotations only, never run."""
    blocks = [
        n
        for n in tree.body
        if isinstance(n, ast.If) and ast.unparse(n.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
    ]
    for block in blocks:
        if block.orelse:
            raise ValueError("An `if TYPE_CHECKING:` block with an `else:` cannot be exported; drop the else.")
    return blocks


def _package_imports(module: str) -> list[tuple[int, str]]:
    """(line number, imported module) of each `from portrait_rt... import ...` in `module`, relative ones included."""
    tree = ast.parse(Path(importlib.util.find_spec(module).origin).read_text())
    annotations_only = {id(n) for block in _type_checking_blocks(tree) for n in ast.walk(block)}
    found = []
    for node in ast.walk(tree):
        if id(node) in annotations_only:
            continue
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == PACKAGE for a in node.names):
            raise ValueError(f"{module}: use `from portrait_rt.x import y` (the exported code is flattened).")
        if isinstance(node, ast.ImportFrom):
            target = importlib.util.resolve_name("." * node.level + (node.module or ""), module.rpartition(".")[0])
            if target.split(".")[0] != PACKAGE:
                continue
            if importlib.util.find_spec(target).submodule_search_locations is not None:
                raise ValueError(f"{module}: import from a module, not the package {target} (the code is flattened).")
            found.append((node.lineno, target))
    return found


def _closure(module: str) -> list[str]:
    """`module` and every portrait_rt module it imports, directly or not."""
    seen, todo = [], [module]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.append(name)
            todo += [target for _, target in _package_imports(name)]
    return seen


def _flattened_source(module: str, flat: dict[str, str]) -> str:
    """The source of `module` with its portrait_rt imports made relative to the flat folder (`from .vae import`) and
    its `if TYPE_CHECKING:` blocks left out (what they import may not be in the folder)."""
    source = Path(importlib.util.find_spec(module).origin).read_text()
    lines = source.splitlines(keepends=True)
    for lineno, target in _package_imports(module):
        lines[lineno - 1] = re.sub(r"^(\s*from\s+)\S+(\s+import\b)", rf"\g<1>.{flat[target]}\g<2>", lines[lineno - 1])
    for block in _type_checking_blocks(ast.parse(source)):
        lines[block.lineno - 1 : block.end_lineno] = [""] * (block.end_lineno - block.lineno + 1)
    path = module.replace(".", "/") + ".py"
    return (
        f"# portrait-rt {portrait_rt.__version__}: {path}, imports flattened by `python -m portrait_rt export`\n"
        + "".join(lines)
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


def usage_section(model_id: str, resolution: int) -> list[str]:
    """The model card's "Use" section (lines): load `model_id` with portrait-rt, and its published copy without."""
    return [
        "## Use",
        "",
        "```python",
        "import torch",
        "from portrait_rt import PortraitRTPipeline",
        "",
        f'pipe = PortraitRTPipeline.from_pretrained("{model_id}")',
        'out = pipe(reference_images=["face.png"], audio="speech.wav", generator=torch.Generator().manual_seed(0))',
        f"out.frames  # uint8 (T, {resolution}, {resolution}, 3) at 25 fps",
        "```",
        "",
        "portrait-rt adds the streaming API (`pipe.stream`, `pipe.feed`), the CLI and the Space. The copy published "
        "to the Hub (`python -m portrait_rt export --output FOLDER --hub-folder HUB_FOLDER`) also carries the "
        "pipeline's code (`pipeline_portrait_rt.py`, and each model's beside its weights), so diffusers loads it "
        "without portrait-rt (it needs torch, diffusers >= 0.40, transformers, accelerate, numpy, soxr, soundfile "
        "and pillow):",
        "",
        "```python",
        "from diffusers import DiffusionPipeline",
        "",
        'pipe = DiffusionPipeline.from_pretrained("HUB_FOLDER", trust_remote_code=True)  # or the Hub repo it went to',
        "```",
        "",
    ]


def model_card(
    pipe: PortraitRTPipeline,
    vae_run: dict,
    dit_run: dict,
    metrics: dict | None,
    notes: str = "",
    model_id: str = "assets/portrait-rt-demo",
) -> str:
    """README.md text for the exported folder, in the Hub's model-card format (YAML front matter first); `model_id`:
    the folder or Hub id its usage snippet loads."""
    side = pipe.resolution // SPATIAL_COMPRESSION
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
        "license: apache-2.0",
        "library_name: diffusers",
        "pipeline_tag: image-to-video",
        "tags:",
        *[f"- {tag}" for tag in ("talking-portrait", "audio-driven", "streaming", "portrait-rt", "custom_code")],
        "---",
        "",
        "# portrait-rt demo model",
        "",
        "A small, CPU-real-time instance of the streamable talking-portrait method (causal reference-guided video "
        "VAE + blockwise-causal flow DiT), trained from scratch on portrait-rt's procedural synthetic corpus.",
        "",
    ]
    lines += [
        *usage_section(model_id, pipe.resolution),
        "## Model",
        "",
        f"- resolution {pipe.resolution}², 25 fps, latents 64 x T/4 x {side} x {side}; "
        "scheduler FlowMatchEuler, shift 5",
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
        "- trained only on flat-colour synthetic cartoons at 128²: real photos are out of distribution (a photo's "
        "detail comes through the reference warp; the mouth the decoder paints into it stays cartoon-like)",
        "- tiny model, short CPU training: where the decoder's own pixels show (mouth, blinks) they are blurry, and "
        "identity details can wander",
        "- lip-sync follows loudness and broad spectral shape (the corpus's own audio-to-mouth mapping), not visemes",
    ]
    if notes:
        lines += ["", notes]
    return "\n".join(lines) + "\n"


def metrics_table(metrics: dict) -> str:
    """Markdown table of the report's headline numbers (`python -m portrait_rt eval report`)."""
    rows = [("metric", "value", "target")]
    for key, label, target in (
        ("detail_ratio", "detail kept, generated / ground truth (Laplacian variance)", ">= 0.5"),
        ("vae_detail_ratio", "detail kept, VAE alone (M = 1)", ">= 0.7"),
        ("vae_psnr", "VAE reconstruction PSNR, M = 1 (dB)", ">= 28"),
        ("still_psnr", "baseline: the reference held still, PSNR (dB)", "VAE beats it by >= 4"),
        ("psnr", "generated vs ground-truth render, whole-frame PSNR (dB)", ">= 24"),
        ("sharp_ceiling_psnr", "ceiling for a sharp generator: same face and speech, other head motion (dB)", ""),
        ("background_psnr", "generated vs ground truth, background PSNR (dB)", ""),
        ("lipsync_r", "lip-sync r, best of +-10 offsets (mean over clips)", ">= 0.85"),
        ("lipsync_r_worst", "lip-sync r, worst clip", ">= 0.7"),
        ("lipsync_r_at_zero", "lip-sync r at offset 0", ">= 0.85"),
        ("lipsync_offset", "lip-sync offset (frames, median)", "0"),
        ("lipsync_lag", "lip-sync lag, to a fraction of a frame (mean)", "~0"),
        ("vae_lipsync_lag", "lip-sync lag of VAE reconstructions (mean)", "~0"),
        ("ground_truth_lipsync_r", "lip-sync r of ground-truth renders (the metric's ceiling)", "~1"),
        ("vae_lipsync_r", "lip-sync r of VAE reconstructions (the DiT's ceiling)", ""),
        ("cfg_audio_raises_lipsync_clips", "clips where lambda_a 1 -> 2 raises lip-sync", "most"),
        ("cfg_audio_raises_amplitude_clips", "clips where lambda_a 1 -> 2 raises the mouth's amplitude", ""),
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
        label, value = "lip-sync r", f"{v['r']:.3f}{r0}"
        if "mouth_amplitude" in v:
            label, value = f"{label} / mouth amplitude", f"{value} / {v['mouth_amplitude']:.3f}"
        rows.append((f"CFG {name}: {label} / PSNR", f"{value} / {v['psnr']:.2f} dB", "Table II"))
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
    """Write the pipeline folder: `save_pretrained`'s configs and weights, README.md and the metrics it shows
    (metrics.json); returns the pipeline. No code: `write_hub_folder` adds it to the copy that is published."""
    pipe = build_pipeline(vae_dir, dit_dir)
    output = Path(output)
    pipe.save_pretrained(output, safe_serialization=True)
    vae_summary = run_summary(vae_run or Path(vae_dir).parent)
    card = model_card(pipe, vae_summary, run_summary(dit_dir), metrics, notes, str(output))
    (output / "README.md").write_text(card)
    if metrics:  # the card's figures, whole, beside it
        (output / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    return pipe


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--vae", help="trained VAE folder (train vae's <output-dir>/vae)")
    parser.add_argument("--dit", help="DiT run folder (holding transformer/ and audio_encoder/)")
    parser.add_argument(
        "--output", required=True, help="pipeline folder to write (without --vae/--dit: one exported earlier)"
    )
    parser.add_argument("--metrics", default=None, help="metrics JSON from `python -m portrait_rt eval report`")
    parser.add_argument("--notes", default="", help="extra text for the model card")
    parser.add_argument(
        "--hub-folder",
        default=None,
        help="also write the copy of --output to publish on the Hub: the same files plus the pipeline's code, for "
        "DiffusionPipeline.from_pretrained(..., trust_remote_code=True) without portrait_rt",
    )


def cli_main(args: argparse.Namespace) -> int:
    if args.vae and args.dit:
        metrics = json.loads(Path(args.metrics).read_text()) if args.metrics else None
        export(args.vae, args.dit, args.output, metrics, notes=args.notes)
        print(f"wrote {args.output}")
    elif args.vae or args.dit or not args.hub_folder:
        raise ValueError(
            "give --vae and --dit (the trained runs) to export --output, or --hub-folder alone to publish --output"
        )
    if args.hub_folder:
        print(f"wrote {write_hub_folder(args.output, args.hub_folder)}")
    return 0
