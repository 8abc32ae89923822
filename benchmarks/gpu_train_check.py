"""Training check for a lent GPU, driven by `benchmarks/gpu_train_check.sh`; runs on CPU at `--preset tiny` too.

Phases (`--phases`, run in order; each guarded: a failure is recorded and the next phase runs). The results are
merged into `<out>/train_check_<preset>_<device>.json` and printed:

  data     synthetic corpus clips at the preset's resolution, written straight to shards (their audio is given: no
           espeak-ng needed), long enough for a DiT window
  vae      the preset's VAE on 17-frame clips, bf16 + gradient checkpointing: `--steps` steps, a checkpoint at half
           way, then a fresh trainer resumes from it and finishes (final weights saved)
  latents  the VAE just trained encodes the clips (the DiT's training data)
  dit      the preset's DiT + audio encoder on windows of its KV window (32 latent frames for `paper`), the same
           checks; under `accelerate launch` with an FSDP config (`--tag fsdp`) it runs sharded
  report   projected GPU-hours of the paper's schedules from the measured time per sample

Each training phase records: loss finite and falling, the step it resumed at, the median step time (steady steps:
the first step of each trainer and the checkpoints left out), samples/s, peak GPU memory, checkpoint size and save
time, the distributed type accelerate chose.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from portrait_rt.constants import SAMPLES_PER_FRAME  # noqa: E402
from portrait_rt.presets import get_preset  # noqa: E402

VAE_FRAMES = 17
# The paper's schedules (supplementary, "Training details"). VAE: (resolution, frames, batch, steps); its 512²
# fine-tune "for the last two stages over 40k iterations" is read as 20k steps each.
PAPER_VAE_SCHEDULE = [(256, 5, 512, 400_000), (256, 17, 256, 80_000), (256, 73, 128, 80_000),
                      (512, 17, 256, 20_000), (512, 73, 128, 20_000)]  # fmt: skip
PAPER_DIT_SCHEDULE = (256, 250_000)  # batch, steps; windows of 32 latent frames at 512²
PAPER_GPU_HOURS = {"vae": 128 * 24 * 7, "dit": 128 * 24 * 3}  # 128 H100s for "about one week" / "roughly three days"


def log(*args) -> None:
    print(f"[{time.strftime('%H:%M:%S')}]", *args, flush=True)


def device_name() -> str:
    return torch.cuda.get_device_name().replace(" ", "-") if torch.cuda.is_available() else "cpu"


# --- data ----------------------------------------------------------------------------------------------------------
def make_data(work: Path, preset: str, num_clips: int) -> dict:
    """Synthetic clips (seeds 0..n-1) at the preset's resolution, each long enough for one DiT window plus room."""
    from portrait_rt.data.shards import ClipStore
    from portrait_rt.data.synthetic import render_clip

    cfg = get_preset(preset)
    resolution, window = cfg["vae"]["resolution"], cfg["transformer"]["kv_window"]
    num_frames = 4 * (window + 4) + 1  # window + 1 latent frames needed; a few more for random starts
    store = ClipStore.create(work / "shards", resolution, source="gpu_train_check")
    t = np.arange(num_frames * SAMPLES_PER_FRAME) / 16000
    for k in range(num_clips):
        if f"clip{k}" in store.names:
            continue
        syllables = 0.5 + 0.5 * np.sin(2 * np.pi * (3 + k) * t)  # a 3-6 Hz "speech" envelope drives the mouth
        audio = (0.3 * syllables * np.sin(2 * np.pi * (140 + 20 * k) * t)).astype(np.float32)
        clip = render_clip(k, resolution=resolution, audio=audio)
        store.add(f"clip{k}", clip.frames, clip.audio)
    return {"clips": len(store), "frames_per_clip": num_frames, "resolution": resolution}


# --- training phases -----------------------------------------------------------------------------------------------
def timed(trainer_cls):
    """`trainer_cls` that records when each step starts, how long its batch took to load (shards are read in the
    training process: no loader workers) and how long each checkpoint takes."""

    class Timed(trainer_cls):
        def make_batch(self, step, micro, generator):
            start = time.perf_counter()
            if micro == 0:
                self.__dict__.setdefault("step_starts", []).append(start)
            batch = super().make_batch(step, micro, generator)
            self.__dict__.setdefault("data_s", []).append(time.perf_counter() - start)
            return batch

        def save_checkpoint(self):
            start = time.perf_counter()
            path = super().save_checkpoint()
            self.__dict__.setdefault("checkpoint_s", []).append(time.perf_counter() - start)
            return path

    return Timed


def _peak_gib() -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None


def _free_memory() -> None:
    """Free the GPU memory of trainers no longer referenced, so that the next one's peak is its own."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _intervals(starts: list[float]) -> list[float]:
    """Step times from step start times: the first step (warm-up) and the last (no end mark) left out."""
    return [b - a for a, b in zip(starts[1:-1], starts[2:])]


def train_twice(make_trainer, steps: int) -> dict:
    """Train to `steps // 2` (checkpoint, stop), resume in a fresh trainer to `steps`; the phase's figures."""
    _free_memory()
    start = time.perf_counter()
    first = make_trainer(stop_at_step=steps // 2)
    history = first.train()
    stopped_at, step_s, data_s = first.progress.step, _intervals(first.step_starts), first.data_s[1:]
    checkpoint_s, peak = first.checkpoint_s, _peak_gib()
    del first
    _free_memory()
    second = make_trainer(stop_at_step=None)
    resumed = second.train()
    if second.progress.step < second.config.max_steps:  # stopped by --max-minutes: save what it has
        second.finish()
    losses = [r["loss"] for r in history + resumed]
    step_s, data_s = step_s + _intervals(second.step_starts), data_s + second.data_s[1:]
    batch = second.config.batch_size
    median = float(np.median(step_s)) if step_s else float("nan")
    ckpt = max((second.output_dir / "checkpoints").glob("checkpoint-*"), key=lambda p: p.stat().st_mtime)
    n = max(3, len(losses) // 4)
    acc = second.accelerator
    return {
        "steps": len(losses),
        "batch_per_process": batch,
        "processes": acc.num_processes,
        "distributed_type": str(acc.distributed_type).split(".")[-1],
        "sharded": second.sharded,
        "mixed_precision": acc.mixed_precision,
        "parameters_m": round(sum(p.numel() for p in second.module.parameters()) / 1e6, 3),
        "stopped_at": stopped_at,
        "resumed_at": resumed[0]["step"] - 1 if resumed else None,
        "loss_first": float(np.mean(losses[:n])),
        "loss_last": float(np.mean(losses[-n:])),
        "loss_finite": bool(np.all(np.isfinite(losses))),
        "loss_falls": bool(np.mean(losses[-n:]) < np.mean(losses[:n])),
        "step_s": round(median, 4),
        "samples_per_s": round(batch * acc.num_processes / median, 3),
        "sample_s": round(median / batch, 4),  # per process: the time one GPU spends on one sample
        "data_s": round(float(np.median(data_s)), 4),  # of step_s: loading a batch
        "timed_steps": len(step_s),
        "peak_memory_gib": max(peak, _peak_gib()) if peak is not None else None,  # one trainer's, the larger
        "checkpoint_gib": round(sum(f.stat().st_size for f in ckpt.rglob("*") if f.is_file()) / 2**30, 2),
        "checkpoint_s": round(max(checkpoint_s + second.checkpoint_s), 1),
        "wall_s": round(time.perf_counter() - start, 1),
    }


def train_config(output_dir: Path, args, batch: int, steps: int, **kw):
    from portrait_rt.training.common import TrainConfig

    return TrainConfig(
        output_dir=str(output_dir),
        max_steps=steps,
        batch_size=batch,
        learning_rate=args.learning_rate,
        lr_warmup_steps=2,
        mixed_precision="bf16" if torch.cuda.is_available() else "no",
        gradient_checkpointing=True,
        checkpointing_steps=10**9,  # only the stop and the end
        checkpoints_total_limit=1,
        log_every=5,
        max_minutes=args.max_minutes,
        **kw,
    )


def vae_phase(work: Path, args) -> dict:
    from portrait_rt.training.vae import VAETrainer

    out = work / "vae"
    shutil.rmtree(out, ignore_errors=True)

    def make(stop_at_step):
        cfg = train_config(out, args, args.vae_batch, args.steps, stop_at_step=stop_at_step)
        stages = [(VAE_FRAMES, args.vae_batch, args.steps)]
        return timed(VAETrainer)(cfg, str(work / "shards"), preset=args.preset, stages=stages)

    result = {"frames": VAE_FRAMES, **train_twice(make, args.steps)}
    shutil.rmtree(out / "checkpoints", ignore_errors=True)  # keep the final VAE only (disk)
    return result


def latents_phase(work: Path, args) -> dict:
    from portrait_rt.data.shards import ClipStore
    from portrait_rt.models.vae import CausalVideoVAE
    from portrait_rt.training.latents import cache_latents

    cuda = torch.cuda.is_available()
    vae = CausalVideoVAE.from_pretrained(work / "vae" / "vae", torch_dtype=torch.bfloat16 if cuda else torch.float32)
    vae = vae.to("cuda" if cuda else "cpu")
    start = time.perf_counter()
    cache = cache_latents(vae, ClipStore(work / "shards"), work / "latents.pt")
    frames = sum(1 + 4 * (z.shape[1] - 1) for z in cache["latents"])
    elapsed = time.perf_counter() - start
    return {"clips": len(cache["latents"]), "latent_shape": list(cache["latents"][0].shape),
            "encode_fps": round(frames / elapsed, 1)}  # fmt: skip


def dit_phase(work: Path, args) -> dict:
    from portrait_rt.training.dit import DiTTrainer

    out = work / f"dit_{args.tag}"
    shutil.rmtree(out, ignore_errors=True)

    def make(stop_at_step):
        cfg = train_config(out, args, args.dit_batch, args.steps, stop_at_step=stop_at_step)
        return timed(DiTTrainer)(cfg, str(work / "latents.pt"), preset=args.preset)

    trainer_window = get_preset(args.preset)["transformer"]["kv_window"]
    result = {"window_latent_frames": trainer_window, **train_twice(make, args.steps)}
    result["exported"] = (out / "transformer" / "diffusion_pytorch_model.safetensors").is_file()
    shutil.rmtree(out, ignore_errors=True)
    return result


# --- report --------------------------------------------------------------------------------------------------------
def project(results: dict) -> dict:
    """GPU-hours of the paper's schedules from the measured seconds per sample (per GPU; data parallelism adds GPUs,
    not GPU-hours, up to its communication cost). VAE stages at other sizes are scaled by pixels x frames from the
    measured 512² x 17-frame sample: convolutions cost in proportion to them; small shapes run less efficiently, so
    the 256² stages are a lower bound."""
    out = {}
    vae = results.get("vae", {})
    if "sample_s" in vae:
        measured = 512 * 512 * VAE_FRAMES
        stages = [{"resolution": r, "frames": f, "batch": b, "steps": s,
                   "gpu_hours": round(s * b * vae["sample_s"] * (r * r * f / measured) / 3600)}
                  for r, f, b, s in PAPER_VAE_SCHEDULE]  # fmt: skip
        out["vae"] = {"stages": stages, "gpu_hours": sum(s["gpu_hours"] for s in stages),
                      "paper_gpu_hours": PAPER_GPU_HOURS["vae"]}  # fmt: skip
    for key in ("dit", "dit_fsdp"):
        if "sample_s" in results.get(key, {}):
            batch, steps = PAPER_DIT_SCHEDULE
            hours = steps * batch * results[key]["sample_s"] / 3600
            out[key] = {"batch": batch, "steps": steps, "gpu_hours": round(hours),
                        "paper_gpu_hours": PAPER_GPU_HOURS["dit"]}  # fmt: skip
    return out


PHASES = {"data": None, "vae": vae_phase, "latents": latents_phase, "dit": dit_phase}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="paper", choices=["paper", "demo", "tiny"])
    parser.add_argument("--phases", default="data,vae,latents,dit,report")
    scratch = os.path.join(tempfile.gettempdir(), "portrait-rt-train-check")
    parser.add_argument("--work", default=scratch, help="data, runs and checkpoints")
    parser.add_argument("--out", default="benchmarks/results", help="folder of the JSON results")
    parser.add_argument("--tag", default="plain", help="names the DiT run: 'fsdp' under the FSDP launch")
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps per training phase (half, resume)")
    parser.add_argument("--vae-batch", type=int, default=2)
    parser.add_argument("--dit-batch", type=int, default=4)
    parser.add_argument("--clips", type=int, default=4)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--max-minutes", type=float, default=0.75, help="wall-clock guard per trainer (each half)")
    args = parser.parse_args()

    from accelerate import PartialState

    state = PartialState()
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"train_check_{args.preset}_{device_name()}.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    results["env"] = {"torch": torch.__version__, "device": device_name(), "preset": args.preset}
    for phase in args.phases.split(","):
        key = f"dit_{args.tag}" if phase == "dit" and args.tag != "plain" else phase
        log("phase", key)
        try:
            if phase == "data":
                results[key] = make_data(work, args.preset, args.clips) if state.is_main_process else {}
            elif phase == "report":
                results[key] = project(results) if args.preset == "paper" else {"projections": "--preset paper only"}
                if os.environ.get("CHECK_STARTED"):  # set by gpu_train_check.sh
                    results[key]["check_wall_s"] = round(time.time() - float(os.environ["CHECK_STARTED"]))
            else:
                results[key] = PHASES[phase](work, args)
        except Exception as e:  # recorded, and the next phase runs
            traceback.print_exc()
            results[key] = {"error": f"{type(e).__name__}: {e}"[:500]}
        state.wait_for_everyone()
        if state.is_main_process:
            path.write_text(json.dumps(results, indent=1))
            log(key, json.dumps(results[key]))
    failed = [k for k, v in results.items() if isinstance(v, dict) and ("error" in v or v.get("loss_finite") is False)]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
