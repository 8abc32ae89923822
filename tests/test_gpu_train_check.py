"""`benchmarks/gpu_train_check.sh` (the GPU training check) as a CPU smoke test at preset tiny: every phase runs,
checkpoints and resumes, and the JSON carries the figures a GPU run reports. No timings are asserted."""

import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_train_check_runs_on_cpu_at_preset_tiny(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path / "out"), "WORK": str(tmp_path / "work"), "OMP_NUM_THREADS": "1"}
    cmd = ["bash", "benchmarks/gpu_train_check.sh", "--preset", "tiny", "--steps", "8", "--clips", "2"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((tmp_path / "out" / "train_check_tiny_cpu.json").read_text())
    assert results["data"]["clips"] == 2 and results["latents"]["clips"] == 2
    for phase in ("vae", "dit", "dit_fsdp"):
        r = results[phase]
        assert r["loss_finite"] and r["loss_falls"], (phase, r)
        assert r["steps"] == 8 and r["stopped_at"] == r["resumed_at"] == 4, (phase, r)  # saved, then resumed
        assert r["step_s"] > 0 and r["samples_per_s"] > 0 and r["checkpoint_gib"] >= 0
    assert results["dit"]["exported"] and results["dit"]["window_latent_frames"] == 8
    # On CPU accelerate runs the FSDP launch unsharded (FSDP is for accelerators); the JSON says so.
    assert results["dit_fsdp"]["distributed_type"] == "NO" and not results["dit_fsdp"]["sharded"]
    assert not (tmp_path / "work").exists()  # checkpoints cleaned up
