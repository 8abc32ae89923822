import json
import subprocess
import sys


def test_stream_benchmark_smoke(tmp_path):
    """benchmarks/stream.py runs a few tiny blocks (two batched streams) and prints the documented JSON fields."""
    out = tmp_path / "bench.json"
    cmd = [
        sys.executable,
        "benchmarks/stream.py",
        "--model",
        "preset:tiny",
        "--steps",
        "2",
        "--streams",
        "2",
        "--blocks",
        "2",
        "--warmup",
        "1",
        "--minutes",
        "0.02",
        "--threads",
        "1",
        "--out",
        str(out),
    ]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    report = json.loads(out.read_text())
    for key in (
        "fps_total",
        "fps_per_stream",
        "first_block_latency_ms",
        "components_ms",
        "peak_memory_mb",
        "g_tflop_per_block",
        "long_stream",
    ):
        assert key in report, key
    assert report["streams"] == 2 and report["cfg_rows"] == 3 and report["fps_total"] > 0
    assert set(report["components_ms"]) >= {"audio_ms", "denoise_ms", "kv_ms", "decode_ms"}
    assert report["g_tflop_per_block"] > 0  # the analytical FLOP count ran on the meta device
