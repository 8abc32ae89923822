"""The streaming speed check for a lent GPU (issue 16), run by `benchmarks/gpu_check.sh`; prints a table, writes JSON.

Phases, each guarded (a failure is recorded and the next phase runs) and each skipped once the time budget is spent:
  eager        the model eager: 1 stream, 4 and 8 streams batched, block size 1
  fast         the same pipeline after `enable_fast_path()`: warm-up (compile, graphs) timed, then the same settings
               and a short flatness run (per-minute block time and memory)
  correctness  the bundled demo model: fast path vs eager, fp32 on the device, and bf16 fast vs fp32 eager (levels)
  demo         the bundled demo model with the fast path: how many real-time streams fit

    python benchmarks/gpu_check.py OUT_DIR [--model preset:paper] [--device cuda] [--budget 420] [--quick]

`--quick` (the CPU smoke test at preset tiny) measures few blocks. Timings come from `portrait_rt.bench`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from portrait_rt import bench
from portrait_rt.loading import choose_model, load_pipeline

PAPER = {"1 stream": "42.3 FPS, first block 378 ms (H100)"}
TARGETS = {"fps_1_stream": 127.0, "first_block_ms": 150.0, "fps_per_stream_4": 25.0, "block1_fps": 25.0}


def bench_args(model: str, device: str | None, dtype: str | None, **options) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench.add_cli_arguments(parser)
    args = parser.parse_args(["--model", model] + (["--device", device] if device else []))
    args.dtype = dtype
    for key, value in options.items():
        setattr(args, key, value)
    return args


def summary(r: dict) -> dict:
    keep = ("fps_total", "fps_per_stream", "block_ms_mean", "first_block_latency_ms", "warmup_s", "peak_memory_mb")
    out = {k: r.get(k) for k in keep}
    out["components_ms"] = r["components_ms"]
    if "long_stream" in r:
        out["long_stream"] = r["long_stream"]
    return out


def levels(a: np.ndarray, b: np.ndarray) -> dict:
    d = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return {"mean": float(d.mean()), "p99": float(np.percentile(d, 99)), "max": int(d.max())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir")
    parser.add_argument("--model", default="preset:paper")
    parser.add_argument("--demo", default="assets/portrait-rt-demo", help="the bundled model (correctness, demo)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--backend", default="inductor", help="torch.compile backend of the fast path")
    parser.add_argument("--budget", type=float, default=420.0, help="seconds; later phases are skipped past it")
    parser.add_argument("--flat-minutes", type=float, default=1.0, help="video minutes of the flatness run")
    parser.add_argument("--quick", action="store_true", help="few blocks (the CPU smoke test)")
    parser.add_argument("--phases", default="eager,fast,correctness,demo")
    args = parser.parse_args()
    start = time.time()
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cuda = torch.cuda.is_available() and args.device != "cpu"
    report: dict = {
        "env": {
            "torch": torch.__version__,
            "device": torch.cuda.get_device_name() if cuda else "cpu",
            "model": args.model,
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        },
        "phases": {},
        "errors": {},
    }
    name = f"gpu_check_{args.model.replace('preset:', '').replace('/', '_')}_{report['env']['device']}"
    path = out_dir / (name.replace(" ", "_").lower() + ".json")

    def save():
        report["wall_s"] = time.time() - start
        path.write_text(json.dumps(report, indent=2, default=str) + "\n")

    def log(*items):
        print(f"[{time.time() - start:6.1f}s]", *items, flush=True)

    blocks = 2 if args.quick else 6
    settings = {  # label: bench options (eager and fast path alike)
        "1 stream": {"streams": 1, "blocks": blocks},
        "4 streams": {"streams": 4, "blocks": max(2, blocks // 2)},
        "block size 1": {"streams": 1, "blocks": 2 * blocks, "block_size": 1},
        "8 streams": {"streams": 8, "blocks": 2},  # last: the first to go when the budget runs out
    }
    pipe = choice = None

    def run(phase: str, label: str, **options):
        if time.time() - start > args.budget:
            report["phases"].setdefault(phase, {})[label] = "skipped: time budget spent"
            log(phase, label, "skipped (budget)")
            return
        try:
            a = bench_args(args.model, args.device, args.dtype, steps=12, warmup=1, **options)
            r = bench.run_benchmark(a, loaded=(pipe, choice))
            report["phases"].setdefault(phase, {})[label] = summary(r)
            log(phase, label, f"{r['fps_total']:.1f} FPS total, {r['fps_per_stream']:.1f}/stream")
        except Exception as e:  # record and go on: one failed setting must not cost the others
            report["errors"][f"{phase}/{label}"] = traceback.format_exc()[-3000:]
            log("ERROR", phase, label, repr(e)[:300])
            if cuda:
                torch.cuda.empty_cache()
        save()

    phases = args.phases.split(",")
    if {"eager", "fast"} & set(phases):
        choice = choose_model(args.model)
        dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32}.get(args.dtype)
        pipe = load_pipeline(choice.model, args.device, dtype)
        log("loaded", args.model, pipe.device, pipe.transformer.dtype)
    if "eager" in phases:
        for label, options in settings.items():
            run("eager", label, **options)
    if "fast" in phases:
        s = time.time()
        pipe.enable_fast_path(backend=args.backend)
        report["phases"]["fast_enable_s"] = time.time() - s
        for label, options in settings.items():
            run("fast", label, fast_path=True, **options)
            if label == "1 stream":
                run("fast", "flatness", fast_path=True, streams=1, blocks=blocks, minutes=args.flat_minutes)
    pipe = None
    if cuda:
        torch.cuda.empty_cache()

    if "correctness" in phases and time.time() - start < args.budget:
        try:
            report["phases"]["correctness"] = correctness(args, cuda, log)
        except Exception:
            report["errors"]["correctness"] = traceback.format_exc()[-3000:]
            log("ERROR correctness")
        save()
    if "demo" in phases:
        choice = choose_model(args.demo)
        pipe = load_pipeline(choice.model, args.device, None)
        pipe.enable_fast_path(backend=args.backend)
        for streams in (1, 4, 16) if not args.quick else (1,):
            run("demo", f"{streams} streams", fast_path=True, streams=streams, blocks=blocks // 2 or 1)

    print_table(report)
    save()
    log("wrote", path)
    return 1 if report["errors"] else 0


def correctness(args, cuda: bool, log) -> dict:
    """The demo model on 3 s of speech-like audio: fast path vs eager at fp32, and bf16 fast vs fp32 eager."""
    device = args.device or ("cuda" if cuda else "cpu")
    rng = np.random.default_rng(0)
    t = np.arange(48000) / 16000
    audio = (0.3 * (np.sin(2 * np.pi * 2.5 * t) > 0) * np.sin(2 * np.pi * 180 * t)).astype(np.float32)
    audio += 0.02 * rng.standard_normal(audio.size).astype(np.float32)
    res = None
    frames = {}
    for label, dtype, fast in (("fp32 eager", torch.float32, False), ("fp32 fast", torch.float32, True),
                               ("bf16 fast", torch.bfloat16, True)):  # fmt: skip
        pipe = load_pipeline(args.demo, device, dtype)
        res = pipe.resolution
        if fast:
            pipe.enable_fast_path(backend=args.backend)
        refs = [np.full((res, res, 3), 128, np.uint8)]
        refs[0][res // 4 : 3 * res // 4, res // 4 : 3 * res // 4] = (200, 150, 120)
        frames[label] = pipe(refs, (audio, 16000), generator=torch.Generator().manual_seed(0)).frames
        log("correctness", label, frames[label].shape)
    out = {"frames": int(frames["fp32 eager"].shape[0]), "resolution": res}
    out["fp32 fast vs fp32 eager"] = levels(frames["fp32 fast"], frames["fp32 eager"])
    out["bf16 fast vs fp32 eager"] = levels(frames["bf16 fast"], frames["fp32 eager"])
    out["reference"] = "issue 16, H200 eager: fp32 CUDA vs CPU max 1 level; bf16 vs fp32 mean 1.7, p99 10, max 83"
    return out


def print_table(report: dict) -> None:
    print("\n| setting | eager FPS (total / per stream) | fast FPS (total / per stream) | fast block ms | "
          "fast first block ms | warm-up s | paper |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    eager, fast = report["phases"].get("eager", {}), report["phases"].get("fast", {})
    for label in dict.fromkeys([*eager, *fast]):
        e, f = eager.get(label), fast.get(label)

        def fps(r):
            return f"{r['fps_total']:.1f} / {r['fps_per_stream']:.1f}" if isinstance(r, dict) else str(r or "-")

        fb = f"{f['block_ms_mean']:.0f}" if isinstance(f, dict) else "-"
        ff = f"{f['first_block_latency_ms']:.0f}" if isinstance(f, dict) else "-"
        fw = f"{f['warmup_s']:.1f}" if isinstance(f, dict) and f.get("warmup_s") is not None else "-"
        print(f"| {label} | {fps(e)} | {fps(f)} | {fb} | {ff} | {fw} | {PAPER.get(label, '')} |")
    for label, r in report["phases"].get("demo", {}).items():
        print(f"| demo, {label} | | {r['fps_total']:.1f} / {r['fps_per_stream']:.1f} | | | |" if isinstance(r, dict)
              else f"| demo, {label} | {r} |")  # fmt: skip
    if "correctness" in report["phases"]:
        print("correctness:", json.dumps(report["phases"]["correctness"]))
    for key in report["errors"]:
        print("ERROR in", key)


if __name__ == "__main__":
    sys.exit(main())
