"""Streaming speed benchmark: `python -m portrait_rt bench` (also `python benchmarks/stream.py`), prints JSON.

Runs `pipe.start_streams` / `pipe.feed_group` (one stream is a group of one; `--streams N` batches N) on synthetic
speech-like audio, after warm-up, and reports sustained FPS, first-block latency, per-component milliseconds from the
block records' timings (audio encoder, denoising, KV pass, decode: a group's block step is shared by its streams),
peak memory, the analytical FLOPs of G per block (counted by `torch.utils.flop_counter` on the meta device) with the
MFU they imply, and the same figures over the last minutes of a long stream (flatness). The model is loaded as
everywhere else (`portrait_rt.loading`); random weights (`--model preset:NAME`) are fine for speed.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time

import numpy as np
import torch

from portrait_rt.constants import FPS, SAMPLE_RATE, SAMPLES_PER_FRAME, video_frames_for_latents
from portrait_rt.loading import add_model_arguments, load_from_args


def add_cli_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--no-guidance", action="store_true", help="guidance 1/1: a single CFG row")
    parser.add_argument("--guidance", type=float, default=2.0, help="audio and reference guidance scale")
    parser.add_argument("--block-size", type=int, default=None, help="latent frames per block (default: the model's)")
    parser.add_argument("--streams", type=int, default=1, help="concurrent streams (their blocks batched)")
    parser.add_argument("--blocks", type=int, default=8, help="measured blocks per stream (after warm-up)")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up blocks per stream")
    parser.add_argument("--minutes", type=float, default=0.0, help="stream this long and report flatness")
    parser.add_argument("--peak-tflops", type=float, default=None, help="device peak for MFU (default: known GPUs)")
    parser.add_argument(
        "--fast-path",
        action="store_true",
        help="pipe.enable_fast_path() (regional compile, static KV shapes, CUDA graphs, decode overlap) + warm_up",
    )
    parser.add_argument("--out", default=None, help="also write the JSON here")


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def transformer_flops_per_block(pipe, group) -> float:
    """FLOPs of G for one block: steps x (all CFG rows) forwards + the t=0 KV pass, with a full KV window.

    Counted by `torch.utils.flop_counter.FlopCounterMode` on a meta-device copy of the transformer, so it is exact
    for the matmuls and attention of this implementation (elementwise work is not counted, as usual for MFU).
    """
    from torch.utils.flop_counter import FlopCounterMode

    dit = pipe.transformer
    with torch.device("meta"):
        meta = type(dit).from_config(dit.config)
    rows, k = group.settings.num_cfg_rows, group.settings.block_size
    h = w = pipe.resolution // 64
    m = group.streams[0].reference_frames.shape[0]
    cache = meta.init_kv_cache(rows, m, latent_size=(h, w), block_size=k, device="meta", dtype=torch.float32)
    z_r = torch.zeros(rows, m, dit.config.in_channels, h, w, device="meta")
    meta.prefill_references(cache, z_r)
    audio_dim = dit.config.audio_dim
    # fill the window up to its last block: the slowest (longest-context) block, as the paper reports
    window = meta.config.kv_window
    for block in range(window // k - 1):
        meta.update_cache(
            cache,
            torch.zeros(rows, dit.config.in_channels, k, h, w, device="meta"),
            torch.zeros(rows, video_frames_for_latents(k, first=block == 0), audio_dim, device="meta"),
        )
    x = torch.zeros(rows, dit.config.in_channels, k, h, w, device="meta")
    a = torch.zeros(rows, video_frames_for_latents(k, first=False), audio_dim, device="meta")
    t = torch.zeros(rows, device="meta")
    with FlopCounterMode(display=False) as counter:
        meta.forward_cached(cache, x, t, a)
    step = counter.get_total_flops()
    with FlopCounterMode(display=False) as counter:
        meta.update_cache(cache, x, a)
    return float(step * group.settings.num_inference_steps + counter.get_total_flops())


KNOWN_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0, "A10G": 125.0, "RTX 4090": 165.0}


def run_benchmark(args: argparse.Namespace, loaded: tuple | None = None) -> dict:
    """The benchmark of `args`; `loaded`: an already loaded `(pipe, choice)` (with `--fast-path`, one on which
    `enable_fast_path()` already ran is reused as it is)."""
    pipe, choice = loaded or load_from_args(args)
    device = pipe.device
    guidance = 1.0 if args.no_guidance else args.guidance
    res = pipe.resolution
    refs = [np.random.default_rng(i).integers(0, 255, (res, res, 3), dtype=np.uint8) for i in range(2)]
    warmup_s = None
    if getattr(args, "fast_path", False):
        if pipe._fast_path is None:
            pipe.enable_fast_path()
        settings = {"guidance_audio": guidance, "guidance_reference": guidance, "num_inference_steps": args.steps}
        warmup_s = pipe.warm_up(args.streams, len(refs), block_size=args.block_size, **settings)
    generators = [torch.Generator().manual_seed(i) for i in range(args.streams)]
    group = pipe.start_streams(
        [refs] * args.streams,
        generators,
        guidance_audio=guidance,
        guidance_reference=guidance,
        num_inference_steps=args.steps,
        block_size=args.block_size,
    )
    position = group.position
    block_frames = position.block_video_frames(1)
    rng = np.random.default_rng(0)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def one_block() -> tuple[int, list, float]:
        """Feed every stream one block's worth of audio (their blocks run batched): (frames, timings, seconds)."""
        n = position.block_video_frames() + (
            pipe.audio_encoder.config.lookahead_frames if not position.block_index else 0
        )
        audio = (0.2 * rng.standard_normal(n * SAMPLES_PER_FRAME)).astype(np.float32)
        start = time.perf_counter()
        out = pipe.feed_group(group, [(audio, SAMPLE_RATE)] * len(group.streams))
        sync()
        records = [record for records in out for record in records]
        return sum(len(r.frames) for r in records), [r.timing for r in records], time.perf_counter() - start

    first_latency = one_block()[2] * 1e3  # compute time of the first block (its audio and look-ahead all arrived)
    for _ in range(max(0, args.warmup - 1)):
        one_block()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def measure(num_blocks: int) -> dict:
        frames, timings, start = 0, [], time.perf_counter()
        for _ in range(num_blocks):
            n, block_timings, _ = one_block()
            frames, timings = frames + n, timings + block_timings
        seconds = time.perf_counter() - start
        mean = {
            k: float(np.mean([getattr(t, k) for t in timings]))
            for k in ("audio_ms", "denoise_ms", "kv_ms", "decode_ms", "total_ms")
        }
        return {
            "fps_total": frames / seconds,
            "fps_per_stream": frames / seconds / len(group.streams),
            "block_ms_mean": mean["total_ms"],
            "block_ms_p95": float(np.percentile([t.total_ms for t in timings], 95)),
            "components_ms": mean,
            "rss_mb": _rss_mb(),
            "device_memory_mb": torch.cuda.memory_allocated() / 2**20 if device.type == "cuda" else None,
        }

    result = measure(args.blocks)
    flops = transformer_flops_per_block(pipe, group)
    g_seconds = (result["components_ms"]["denoise_ms"] + result["components_ms"]["kv_ms"]) / 1e3
    name = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu"
    peak = args.peak_tflops or next((v for k, v in KNOWN_PEAK_TFLOPS.items() if k in name), None)
    report = {
        "model": choice.model,
        "device": name,
        "device_kind": device.type,
        "threads": torch.get_num_threads(),
        "dtype": str(pipe.transformer.dtype).removeprefix("torch."),
        "fast_path": bool(getattr(args, "fast_path", False)),
        "warmup_s": warmup_s,  # the fast path's compile + a throwaway window before the measured group starts
        "resolution": res,
        "steps": args.steps,
        "guidance": guidance,
        "cfg_rows": group.settings.num_cfg_rows,
        "block_size": group.settings.block_size,
        "frames_per_block": block_frames,
        "streams": args.streams,
        "first_block_latency_ms": first_latency,
        **result,
        "peak_memory_mb": _peak_memory_mb(device),
        "g_tflop_per_block": flops / 1e12,
        "g_tflops_achieved": flops / g_seconds / 1e12 if g_seconds else None,
        "mfu": flops / g_seconds / (peak * 1e12) if peak and g_seconds else None,
        "realtime": result["fps_per_stream"] >= FPS,
    }
    if args.minutes > 0:
        # Means per minute of video over the whole stream: time and memory must stay flat (the KV window bounds both).
        window_min = min(1.0, args.minutes)
        blocks_per_window = max(1, round(window_min * 60 * FPS / block_frames))
        start = time.perf_counter()
        series = [measure(blocks_per_window) for _ in range(max(1, round(args.minutes / window_min)))]
        report["long_stream"] = {
            "minutes_of_video": len(series) * blocks_per_window * block_frames / FPS / 60,
            "window_minutes": window_min,
            "wall_s": time.perf_counter() - start,
            "block_ms_per_window": [m["block_ms_mean"] for m in series],
            "rss_mb_per_window": [m["rss_mb"] for m in series],
            "device_memory_mb_per_window": [m["device_memory_mb"] for m in series],
            "block_ms_ratio_last_vs_first": series[-1]["block_ms_mean"] / series[0]["block_ms_mean"],
            "rss_ratio_last_vs_first": series[-1]["rss_mb"] / series[0]["rss_mb"],
        }
    return report


def cli_main(args: argparse.Namespace) -> int:
    report = run_benchmark(args)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    add_cli_arguments(parser)
    sys.exit(cli_main(parser.parse_args()))
